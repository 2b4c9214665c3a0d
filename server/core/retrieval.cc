#include "server/core/retrieval.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/core/blas.h"
#include "server/core/internal/half_loops.h"
#include "server/core/internal/parallel.h"
#include "server/core/internal/top_k.h"
#include "server/core/internal/vector_loops.h"
#include "server/core/partial.h"
#include "server/core/step_loop.h"

namespace engram::core {

absl::string_view SimilarityName(Similarity similarity) {
  switch (similarity) {
    case Similarity::kDot:
      return "dot";
    case Similarity::kL2:
      return "l2";
    case Similarity::kManhattan:
      return "manhattan";
    case Similarity::kCosine:
      return "cosine";
    case Similarity::kKernelDot:
      return "kernel_dot";
    case Similarity::kKernelL2:
      return "kernel_l2";
  }
  return "unknown";
}

bool IsKernel(Similarity similarity) {
  return similarity == Similarity::kKernelDot ||
         similarity == Similarity::kKernelL2;
}

namespace {

// The similarity computed on (possibly kernel) features.
Similarity OnFeatures(Similarity similarity) {
  switch (similarity) {
    case Similarity::kKernelDot:
      return Similarity::kDot;
    case Similarity::kKernelL2:
      return Similarity::kL2;
    default:
      return similarity;
  }
}

}  // namespace

size_t MemorySet::size() const {
  size_t total = 0;
  for (const MemoryBlock& block : blocks) total += block.count;
  return total;
}

std::pair<const MemoryBlock*, size_t> MemorySet::Locate(size_t index) const {
  for (const MemoryBlock& block : blocks) {
    if (index < block.count) return {&block, index};
    index -= block.count;
  }
  return {nullptr, 0};
}

void MemoryBlock::CopyRow(size_t r, size_t dim, float* out) const {
  Widen(precision,
        row_list != nullptr ? row_list[r] : Advance(precision, rows, r * dim),
        dim, out);
}

void MemoryBlock::CopyKey(size_t r, size_t key_dim, float* out) const {
  Widen(
      precision,
      key_list != nullptr ? key_list[r] : Advance(precision, keys, r * key_dim),
      key_dim, out);
}

const void* MemoryBlock::Consecutive(bool features, size_t r0, size_t n,
                                     size_t width,
                                     std::vector<float>& buffer) const {
  const void* const* list = features ? key_list : row_list;
  if (list == nullptr) {
    return Advance(precision, features ? keys : rows, r0 * width);
  }
  const size_t bytes = width * ElementBytes(precision);
  buffer.resize((n * bytes + sizeof(float) - 1) / sizeof(float));
  auto* out = reinterpret_cast<unsigned char*>(buffer.data());
  for (size_t i = 0; i < n; ++i) {
    std::memcpy(out + i * bytes, list[r0 + i], bytes);
  }
  return out;
}

void MemorySet::CopyRow(size_t index, float* out) const {
  const auto [block, r] = Locate(index);
  block->CopyRow(r, dim, out);
}

std::vector<float> MemorySet::Row(size_t index) const {
  std::vector<float> row(dim);
  CopyRow(index, row.data());
  return row;
}

RetrievalOutput StartOutput(const float* queries, size_t num_queries,
                            size_t dim) {
  RetrievalOutput out;
  out.states.assign(queries, queries + num_queries * dim);
  out.matches.resize(num_queries);
  out.energies.assign(num_queries, 0.0);
  out.steps.assign(num_queries, 0);
  out.converged.assign(num_queries, 0);
  return out;
}

double SelfSimilarity(Similarity similarity, double sq_norm) {
  switch (OnFeatures(similarity)) {
    case Similarity::kDot:
    case Similarity::kKernelDot:
      return sq_norm;
    case Similarity::kCosine:
      return sq_norm > 0 ? 1.0 : 0.0;
    case Similarity::kL2:
    case Similarity::kKernelL2:
    case Similarity::kManhattan:
      return 0.0;
  }
  return 0.0;
}

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Threads pay off once a request has a few MFLOP of work, and a thread's
// share of the memories is large enough for sgemm to run at speed.
constexpr double kMinWorkForThreads = 4e6;
constexpr size_t kMinRowsPerPart = 256;
// Rows of a bfloat16 / float16 block widened at a time for the products
// (6 MiB of float32 at d = 784). Measured at L = 256, M = 60,000 from 256 to
// 8,192 rows: 256 costs a third more (small sgemm calls repack the
// queries), 1,024 and up run level with float32 within the noise.
constexpr size_t kWidenRows = 2048;
// Rows the fused single-query pass scores before it updates the output.
constexpr size_t kFusedSpan = 64;
// Rows of a listed block the fused pass copies at a time: whole spans.
constexpr size_t kGatherRows = 2048;
static_assert(kGatherRows % kFusedSpan == 0);

using internal::TopK;

float SquaredDistance(const float* a, const float* b, size_t d) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t k = 0; k < d; ++k) sum += (a[k] - b[k]) * (a[k] - b[k]);
  return sum;
}

// Below this fraction of ||q||^2 + ||x||^2, a GEMM-form squared distance has
// lost most of its digits.
constexpr float kCancellation = 1e-3f;

// beta * s(q, x) of a GEMM-form similarity (dot, cosine, l2) from <q, x>
// and the squared norms; `x()` gives the row x as floats (size d), asked for
// only when an l2 distance cancels.
template <typename RowFn>
float ScoreFromDot(Similarity similarity, float beta, float dot, float q_sq,
                   float x_sq, const float* q, const RowFn& x, size_t d) {
  switch (similarity) {
    case Similarity::kCosine: {
      const float denominator = std::sqrt(q_sq) * std::sqrt(x_sq);
      return denominator > 0 ? beta * dot / denominator : 0.0f;
    }
    case Similarity::kL2: {
      float sq_distance = q_sq + x_sq - 2.0f * dot;
      if (sq_distance < kCancellation * (q_sq + x_sq)) {
        sq_distance = SquaredDistance(q, x(), d);
      }
      return -beta * std::sqrt(std::max(0.0f, sq_distance));
    }
    default:
      return beta * dot;
  }
}

// The similarity kernels. scores (L x n, row stride n) = beta * s(queries_i,
// rows_j), for the similarity on features (never a kernel form: those are
// mapped first).
void ComputeScores(Similarity similarity, float beta, const float* queries,
                   const float* query_sq_norms, size_t num_queries,
                   const float* rows, const float* row_sq_norms, size_t n,
                   size_t d, float* scores) {
  switch (similarity) {
    case Similarity::kDot:
      internal::ProductsNT(num_queries, n, d, beta, queries, rows, scores);
      return;
    case Similarity::kCosine:
      internal::ProductsNT(num_queries, n, d, 1.0f, queries, rows, scores);
      for (size_t i = 0; i < num_queries; ++i) {
        const float qn = std::sqrt(query_sq_norms[i]);
        float* row = scores + i * n;
        for (size_t j = 0; j < n; ++j) {
          const float denominator = qn * std::sqrt(row_sq_norms[j]);
          row[j] = denominator > 0 ? beta * row[j] / denominator : 0.0f;
        }
      }
      return;
    case Similarity::kL2:
      internal::ProductsNT(num_queries, n, d, -2.0f, queries, rows, scores);
      for (size_t i = 0; i < num_queries; ++i) {
        float* row = scores + i * n;
        const float qn = query_sq_norms[i];
        for (size_t j = 0; j < n; ++j) {
          float sq_distance = qn + row_sq_norms[j] + row[j];
          // ||q||^2 + ||x||^2 - 2 q.x cancels when q is close to x, exactly
          // where retrieval converges: recompute those few directly.
          if (sq_distance < kCancellation * (qn + row_sq_norms[j])) {
            sq_distance = SquaredDistance(queries + i * d, rows + j * d, d);
          }
          row[j] = -beta * std::sqrt(std::max(0.0f, sq_distance));
        }
      }
      return;
    case Similarity::kManhattan:
      for (size_t i = 0; i < num_queries; ++i) {
        for (size_t j = 0; j < n; ++j) {
          scores[i * n + j] =
              -beta * internal::L1Distance(queries + i * d, rows + j * d, d);
        }
      }
      return;
    case Similarity::kKernelDot:
    case Similarity::kKernelL2:
      return;  // Mapped to kDot / kL2 on features by the caller.
  }
}

// What a pass over some of the memories leaves per query: the running
// maximum of the scores and the sum of exp(score - max) (softmax's
// log-sum-exp, folded online), the best top_k, and for the sparse
// separations every score that may still be in the support.
struct RowState {
  explicit RowState(size_t top_k = 0) : top(top_k) {}
  double max = kNegInf;
  double sum = 0;
  TopK top;
  std::vector<TopK::Entry> candidates;
  size_t candidates_at_prune = 0;
};

// The queries of one step as the similarity compares them: Phi(state) for
// the kernel similarities, the states themselves otherwise (values, size
// count * dim), with their squared norms.
struct StepQueries {
  const float* values = nullptr;
  size_t count = 0;
  size_t dim = 0;
  std::vector<float> sq_norms;
  std::vector<double> exact_sq_norms;  // For the energy.
};

// One part's buffers: its score tile, and (for parts other than the first)
// its own rows and outputs until they are merged.
struct PartBuffers {
  std::vector<float> scores;
  std::vector<float> outputs;
  std::vector<RowState> rows;
  // Rows of a bfloat16 / float16 block widened to float32 (a tile for the
  // batched path, a few rows for the fused one).
  std::vector<float> wide_keys;
  std::vector<float> wide_values;
  // A tile of a listed block's rows, copied one after another as stored.
  std::vector<float> listed_keys;
  std::vector<float> listed_values;
};

// Rows [first, first + n) of `base` (rows of `width` values of `precision`)
// as float32: in place for float32, else widened into `buffer`.
const float* RowsAsFloats(Precision precision, const void* base, size_t first,
                          size_t n, size_t width, std::vector<float>& buffer) {
  return AsFloats(precision, Advance(precision, base, first * width), n * width,
                  buffer);
}

// Buffers a retrieval reuses from call to call in the thread that runs it
// (a gRPC handler's, a calibration's): fresh pages on every call measured
// 5% of a batched retrieval. Trimmed after a call that grew them past 64 MiB.
struct Workspace {
  std::vector<PartBuffers> parts;
  std::vector<float> features;
  std::vector<float> outputs;
  std::vector<RowState> rows;

  void Trim() {
    constexpr size_t kKeep = size_t{16} << 20;  // Floats.
    size_t held = features.capacity() + outputs.capacity();
    for (const PartBuffers& part : parts) {
      held += part.scores.capacity() + part.outputs.capacity() +
              part.wide_keys.capacity() + part.wide_values.capacity();
    }
    if (held > kKeep) *this = Workspace();
  }
};

Workspace& ThreadWorkspace() {
  thread_local Workspace workspace;
  return workspace;
}

// Folds a tile of scores (count x n; softmax: overwritten by the weights)
// of memories first_index.. into the rows' states and, under softmax, the
// outputs (count x d) += weights * values (n x d).
void FoldScores(const RetrievalParams& params, float* scores, size_t count,
                size_t n, const float* values, size_t d, size_t first_index,
                RowState* rows, float* outputs) {
  const bool softmax = params.separation == Separation::kSoftmax;
  const double margin = SupportMargin(params.separation);
  for (size_t i = 0; i < count; ++i) {
    RowState& state = rows[i];
    float* row = scores + i * n;
    const float tile_max = internal::Max(row, n);
    // Most scores lose to the weakest of the top k: no scan at all when the
    // tile's best loses.
    float threshold = state.top.threshold();
    if (tile_max >= threshold) {
      for (size_t j = 0; j < n; ++j) {
        if (row[j] >= threshold) {
          state.top.Push(row[j], first_index + j);
          threshold = state.top.threshold();
        }
      }
    }
    const double new_max = std::max(state.max, double{tile_max});
    if (!softmax) {
      const double floor = new_max - margin;
      for (size_t j = 0; j < n && tile_max > floor; ++j) {
        if (row[j] > floor)
          state.candidates.push_back({row[j], first_index + j});
      }
      if (state.candidates.size() > 2 * state.candidates_at_prune + 1024) {
        state.candidates.erase(
            std::remove_if(
                state.candidates.begin(), state.candidates.end(),
                [floor](const TopK::Entry& c) { return c.score <= floor; }),
            state.candidates.end());
        state.candidates_at_prune = state.candidates.size();
      }
    }
    const double rescale =
        state.max == kNegInf ? 0.0 : std::exp(state.max - new_max);
    state.sum *= rescale;
    state.max = new_max;
    if (softmax) {
      if (rescale != 1.0) {
        float* out = outputs + i * d;
        const float factor = static_cast<float>(rescale);
        for (size_t k = 0; k < d; ++k) out[k] *= factor;
      }
      state.sum += internal::ExpInPlace(row, n, static_cast<float>(new_max));
    } else {
      state.sum += internal::SumExp(row, n, static_cast<float>(new_max));
    }
  }
  if (softmax) internal::AccumulateNN(count, d, n, scores, values, outputs);
}

// Folds the scores z of a span of rows (first_index..) into one query's
// softmax state: its top k, its running maximum (rescaling its output when
// the maximum grows), and the sum of the weights, which replace the scores.
void FoldSpan(float* z, size_t n, size_t first_index, RowState& state,
              float* output, size_t d) {
  float span_max = -std::numeric_limits<float>::infinity();
  for (size_t j = 0; j < n; ++j) {
    if (z[j] >= state.top.threshold()) state.top.Push(z[j], first_index + j);
    span_max = std::max(span_max, z[j]);
  }
  if (span_max > state.max) {
    if (state.max != kNegInf) {
      const float rescale = std::exp(static_cast<float>(state.max) - span_max);
      for (size_t k = 0; k < d; ++k) output[k] *= rescale;
      state.sum *= rescale;
    }
    state.max = span_max;
  }
  state.sum += internal::ExpInPlace(z, n, static_cast<float>(state.max));
}

// One query under softmax, a span of rows at a time: the span's scores
// first (the rows stream from RAM with nothing waiting on them), then its
// weights, then the output += weights x rows while the span is still in L2
// (64 rows: 200 KB at d = 784 in float32). So the memories stream from RAM
// exactly once, and four rows share each update of the output. Rows in
// bfloat16 / float16 are widened in registers by the half kernels; the few
// groups those do not cover are widened into `part` first.
void FusedSoftmaxTile(Similarity on_features, float beta, const float* query,
                      float query_sq_norm, Precision precision,
                      const void* keys, const float* key_sq_norms,
                      size_t key_dim, const void* values, size_t n, size_t d,
                      size_t first_index, RowState& state, float* output,
                      PartBuffers& part) {
  constexpr size_t kGroup = 4;
  constexpr size_t kSpan = kFusedSpan;
  const bool half = precision != Precision::kFloat32;
  const auto* half_keys = static_cast<const uint16_t*>(keys);
  const auto* half_values = static_cast<const uint16_t*>(values);
  std::vector<float> wide_row;
  float z[kSpan];
  for (size_t s0 = 0; s0 < n; s0 += kSpan) {
    const size_t sn = std::min(kSpan, n - s0);
    // 1. Scores.
    for (size_t j0 = s0; j0 < s0 + sn; j0 += kGroup) {
      const size_t g = std::min(kGroup, s0 + sn - j0);
      float* zg = z + (j0 - s0);
      const bool gemm_form =
          g == kGroup && on_features != Similarity::kManhattan;
      const bool in_registers = half && gemm_form;
      // The group's keys as floats, unless the half kernels read them.
      const float* key = in_registers ? nullptr
                                      : RowsAsFloats(precision, keys, j0, g,
                                                     key_dim, part.wide_keys);
      if (gemm_form) {
        // The GEMM-form similarities, from four dot products at once.
        if (in_registers) {
          const uint16_t* k0 = half_keys + j0 * key_dim;
          internal::DotHalf4(precision, query, k0, k0 + key_dim,
                             k0 + 2 * key_dim, k0 + 3 * key_dim, key_dim, zg);
        } else {
          internal::Dot4(query, key, key + key_dim, key + 2 * key_dim,
                         key + 3 * key_dim, key_dim, zg);
        }
        for (size_t j = 0; j < g; ++j) {
          const auto row = [&]() -> const float* {
            return key != nullptr ? key + j * key_dim
                                  : RowsAsFloats(precision, keys, j0 + j, 1,
                                                 key_dim, wide_row);
          };
          zg[j] = ScoreFromDot(on_features, beta, zg[j], query_sq_norm,
                               key_sq_norms[j0 + j], query, row, key_dim);
        }
      } else {
        for (size_t j = 0; j < g; ++j) {
          ComputeScores(on_features, beta, query, &query_sq_norm, 1,
                        key + j * key_dim, key_sq_norms + j0 + j, 1, key_dim,
                        &zg[j]);
        }
      }
    }
    // 2. Top k, the running maximum, the weights.
    FoldSpan(z, sn, first_index + s0, state, output, d);
    // 3. output += weights x rows.
    for (size_t j0 = s0; j0 < s0 + sn; j0 += kGroup) {
      const size_t g = std::min(kGroup, s0 + sn - j0);
      const float* w = z + (j0 - s0);
      if (half && g == kGroup) {
        const uint16_t* v = half_values + j0 * d;
        internal::AddScaledHalf4(precision, w, v, v + d, v + 2 * d, v + 3 * d,
                                 output, d);
        continue;
      }
      const float* value =
          RowsAsFloats(precision, values, j0, g, d, part.wide_values);
      if (g == kGroup) {
        internal::AddScaled4(w, value, value + d, value + 2 * d, value + 3 * d,
                             output, d);
      } else {
        for (size_t j = 0; j < g; ++j) {
          internal::AddScaled(w[j], value + j * d, output, d);
        }
      }
    }
  }
}

// A few queries under softmax, as FusedSoftmaxTile: a span of rows at a
// time, its scores for every query (the rows stream from RAM once, each
// loaded row serves several queries), each query's fold, then all the outputs
// += weights x rows while the span is in L2. Unlike sgemm, nothing is
// packed: at L = 16 packing Xi twice was almost half of a batched pass.
// Rows in bfloat16 / float16 are widened a span at a time.
void FusedSoftmaxQueriesTile(Similarity on_features, float beta,
                             const StepQueries& q, Precision precision,
                             const void* keys, const float* key_sq_norms,
                             size_t key_dim, const void* values, size_t n,
                             size_t d, size_t first_index, RowState* rows,
                             float* outputs, PartBuffers& part) {
  constexpr size_t kSpan = kFusedSpan;
  const size_t count = q.count;
  part.scores.resize(count * kSpan);
  for (size_t s0 = 0; s0 < n; s0 += kSpan) {
    const size_t sn = std::min(kSpan, n - s0);
    float* z = part.scores.data();  // count x sn.
    const float* key =
        RowsAsFloats(precision, keys, s0, sn, key_dim, part.wide_keys);
    const float* value = values == keys ? key
                                        : RowsAsFloats(precision, values, s0,
                                                       sn, d, part.wide_values);
    // 1. Scores.
    if (on_features == Similarity::kManhattan) {
      ComputeScores(on_features, beta, q.values, q.sq_norms.data(), count, key,
                    key_sq_norms + s0, sn, key_dim, z);
    } else {
      internal::DotsNT(q.values, count, key, sn, key_dim, z, sn);
      for (size_t i = 0; i < count; ++i) {
        const float* query = q.values + i * key_dim;
        for (size_t j = 0; j < sn; ++j) {
          const float* row = key + j * key_dim;
          z[i * sn + j] = ScoreFromDot(
              on_features, beta, z[i * sn + j], q.sq_norms[i],
              key_sq_norms[s0 + j], query, [row] { return row; }, key_dim);
        }
      }
    }
    // 2. Each query's top k, running maximum and weights.
    for (size_t i = 0; i < count; ++i) {
      FoldSpan(z + i * sn, sn, first_index + s0, rows[i], outputs + i * d, d);
    }
    // 3. outputs += weights x rows.
    internal::AccumulateRows(z, count, sn, value, sn, d, outputs);
  }
}

// Scores the queries against the memories [first, last) of the set (tile by
// tile within each block, the score buffer bounded by
// options.max_score_floats) and folds them into `rows` and `outputs`
// (count x d).
absl::Status PassOverMemories(const MemorySet& memories, size_t first,
                              size_t last, const StepQueries& q,
                              const RetrievalParams& params,
                              const RetrievalOptions& options,
                              PartBuffers& part, RowState* rows,
                              float* outputs) {
  const size_t d = memories.dim;
  const bool kernel = IsKernel(params.similarity);
  const Similarity on_features = OnFeatures(params.similarity);
  // Softmax over one or a few queries reads the rows once (fused passes);
  // larger batches, and the sparse separations, go through sgemm.
  const size_t fused_queries = options.fused_queries > 0
                                   ? options.fused_queries
                                   : internal::FusedQueries();
  const bool fused =
      q.count <= fused_queries && params.separation == Separation::kSoftmax;
  const size_t tile = std::max<size_t>(
      1, options.max_score_floats / std::max<size_t>(q.count, 1));
  // Fused passes score whole spans (their score buffer is a span per query):
  // their tiles, which only space the checks, are whole spans too unless
  // the budget is smaller than one.
  const size_t fused_tile =
      tile < kFusedSpan ? tile : tile / kFusedSpan * kFusedSpan;
  size_t block_start = 0;
  for (const MemoryBlock& block : memories.blocks) {
    const size_t begin = std::max(first, block_start);
    const size_t end = std::min(last, block_start + block.count);
    const Precision precision = block.precision;
    const float* key_sq_norms = kernel ? block.key_sq_norms : block.sq_norms;
    const bool listed = block.row_list != nullptr;
    // Reduced-precision rows are widened a tile at a time (while they stay
    // in L2) for the products; the fused passes widen in registers (one
    // query) or a span at a time (several). The rows of a listed block are
    // copied a tile at a time too; for the fused passes in pieces of whole
    // spans, so the spans are those of a block that held the rows one after
    // another.
    const size_t block_tile =
        fused ? (listed ? std::min(fused_tile, kGatherRows) : fused_tile)
        : precision == Precision::kFloat32 ? tile
                                           : std::min(tile, kWidenRows);
    for (size_t g0 = begin; g0 < end; g0 += block_tile) {
      if (options.check) {
        if (absl::Status status = options.check(); !status.ok()) return status;
      }
      const size_t r0 = g0 - block_start;
      const size_t n = std::min(block_tile, end - g0);
      const void* tile_values =
          block.Consecutive(false, r0, n, d, part.listed_values);
      const void* tile_keys_as_stored =
          kernel ? block.Consecutive(true, r0, n, q.dim, part.listed_keys)
                 : tile_values;
      if (fused && q.count == 1) {
        FusedSoftmaxTile(on_features, params.beta, q.values, q.sq_norms[0],
                         precision, tile_keys_as_stored, key_sq_norms + r0,
                         q.dim, tile_values, n, d, g0, rows[0], outputs, part);
        continue;
      }
      if (fused) {
        FusedSoftmaxQueriesTile(on_features, params.beta, q, precision,
                                tile_keys_as_stored, key_sq_norms + r0, q.dim,
                                tile_values, n, d, g0, rows, outputs, part);
        continue;
      }
      const float* values =
          AsFloats(precision, tile_values, n * d, part.wide_values);
      const float* tile_keys = !kernel
                                   ? values
                                   : AsFloats(precision, tile_keys_as_stored,
                                              n * q.dim, part.wide_keys);
      part.scores.resize(q.count * n);
      ComputeScores(on_features, params.beta, q.values, q.sq_norms.data(),
                    q.count, tile_keys, key_sq_norms + r0, n, q.dim,
                    part.scores.data());
      FoldScores(params, part.scores.data(), q.count, n, values, d, g0, rows,
                 outputs);
    }
    block_start += block.count;
    if (block_start >= last) break;
  }
  return absl::OkStatus();
}

// Folds a part's rows and outputs (count x d) into the first part's: the
// partial softmaxes by log-sum-exp, the top k and the candidates by union.
void MergePart(const PartBuffers& part, size_t count, size_t d, RowState* rows,
               float* outputs) {
  for (size_t i = 0; i < count; ++i) {
    const RowState& from = part.rows[i];
    RowState& into = rows[i];
    into.top.Merge(from.top);
    into.candidates.insert(into.candidates.end(), from.candidates.begin(),
                           from.candidates.end());
    if (from.max == kNegInf) continue;
    const double max = std::max(into.max, from.max);
    const double scale_into =
        into.max == kNegInf ? 0.0 : std::exp(into.max - max);
    const double scale_from = std::exp(from.max - max);
    into.sum = into.sum * scale_into + from.sum * scale_from;
    into.max = max;
    float* out = outputs + i * d;
    const float* add = part.outputs.data() + i * d;
    const float a = static_cast<float>(scale_into);
    const float b = static_cast<float>(scale_from);
    for (size_t k = 0; k < d; ++k) out[k] = a * out[k] + b * add[k];
  }
}

// One update step for the states (count x d): the rows' states and the
// unnormalised outputs (softmax; zero otherwise), over all memories. Large
// steps split the memories over options.threads threads, each scoring every
// query against its share (and packing only that share of Xi for sgemm, as
// a threaded sgemm does); their partial results merge exactly.
absl::Status Pass(const MemorySet& memories, const float* states, size_t count,
                  const RetrievalParams& params,
                  const RetrievalOptions& options, Workspace& ws,
                  StepQueries& q) {
  const size_t d = memories.dim;
  const bool kernel = IsKernel(params.similarity);
  q.count = count;
  q.dim = kernel ? memories.map->out_dim() : d;
  q.values = states;
  if (kernel) {
    ws.features.resize(count * q.dim);
    memories.map->Apply(states, count, ws.features.data());
    q.values = ws.features.data();
  }
  q.sq_norms.resize(count);
  q.exact_sq_norms.resize(count);
  for (size_t i = 0; i < count; ++i) {
    const double s = internal::SquaredNormWide(q.values + i * q.dim, q.dim);
    q.sq_norms[i] = static_cast<float>(s);
    q.exact_sq_norms[i] = s;
  }
  ws.rows.assign(count, RowState(params.top_k));
  ws.outputs.assign(count * d, 0.0f);

  // Each thread takes an equal share of the memories (by rows, across block
  // boundaries), at least a few blocks' worth.
  const size_t m = memories.size();
  const double work = 4.0 * count * m * q.dim;
  const size_t parts =
      work < kMinWorkForThreads
          ? 1
          : std::min<size_t>(std::max(options.threads, 1),
                             std::max<size_t>(1, m / kMinRowsPerPart));
  if (ws.parts.size() < parts) ws.parts.resize(parts);
  for (size_t p = 1; p < parts; ++p) {
    ws.parts[p].rows.assign(count, RowState(params.top_k));
    ws.parts[p].outputs.assign(count * d, 0.0f);
  }
  std::vector<absl::Status> status(parts);
  internal::ParallelFor(parts, [&](size_t p) {
    RowState* rows = p == 0 ? ws.rows.data() : ws.parts[p].rows.data();
    float* outputs = p == 0 ? ws.outputs.data() : ws.parts[p].outputs.data();
    status[p] =
        PassOverMemories(memories, p * m / parts, (p + 1) * m / parts, q,
                         params, options, ws.parts[p], rows, outputs);
  });
  for (const absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  for (size_t p = 1; p < parts; ++p) {
    MergePart(ws.parts[p], count, d, ws.rows.data(), ws.outputs.data());
  }
  return absl::OkStatus();
}

// The end of a step for one query: its next state (softmax: the output
// normalised; sparse separations: the weighted sum of the support), its
// energy and its matches.
void FinishRow(const MemorySet& memories, const RetrievalParams& params,
               RowState& state, double query_sq_norm, const float* output,
               float* next, double& energy, std::vector<Match>& matches) {
  const size_t d = memories.dim;
  const double lse = state.max + std::log(state.sum);
  double threshold = lse, total = 1.0;
  if (params.separation == Separation::kSoftmax) {
    const float inverse = static_cast<float>(1.0 / state.sum);
    for (size_t k = 0; k < d; ++k) next[k] = output[k] * inverse;
  } else {
    const double floor = state.max - SupportMargin(params.separation);
    std::vector<double> support;
    std::vector<size_t> support_index;
    for (const TopK::Entry& c : state.candidates) {
      if (c.score > floor) {
        support.push_back(c.score);
        support_index.push_back(c.index);
      }
    }
    threshold = SeparationThreshold(params.separation, support);
    total = 0;
    for (double z : support) {
      total += SeparationWeight(params.separation, z, threshold);
    }
    std::fill(next, next + d, 0.0f);
    std::vector<float> row(d);
    for (size_t c = 0; c < support.size(); ++c) {
      const double w =
          SeparationWeight(params.separation, support[c], threshold);
      if (w > 0) {
        memories.CopyRow(support_index[c], row.data());
        blas::Axpy(d, static_cast<float>(w / total), row.data(), next);
      }
    }
  }
  energy = -lse / params.beta +
           0.5 * SelfSimilarity(params.similarity, query_sq_norm);
  for (const TopK::Entry& s : state.top.Sorted()) {
    const double w = SeparationWeight(params.separation, s.score, threshold);
    matches.push_back({s.index, static_cast<float>(w / total), s.score});
  }
}

// Splits the queries over threads, each an independent retrieval: for
// requests with too few memories to split (the memories split otherwise).
absl::StatusOr<RetrievalOutput> RetrieveSliced(const MemorySet& memories,
                                               const float* queries,
                                               size_t num_queries,
                                               const RetrievalParams& params,
                                               const RetrievalOptions& options,
                                               size_t slices) {
  RetrievalOptions one = options;
  one.threads = 1;
  const size_t d = memories.dim;
  std::vector<absl::StatusOr<RetrievalOutput>> parts(slices);
  const size_t per = (num_queries + slices - 1) / slices;
  internal::ParallelFor(slices, [&](size_t s) {
    const size_t first = std::min(num_queries, s * per);
    const size_t count = std::min(per, num_queries - first);
    parts[s] = RetrieveExact(memories, queries + first * d, count, params, one);
  });
  RetrievalOutput out;
  for (absl::StatusOr<RetrievalOutput>& part : parts) {
    if (!part.ok()) return part.status();
    out.states.insert(out.states.end(), part->states.begin(),
                      part->states.end());
    for (auto& m : part->matches) out.matches.push_back(std::move(m));
    out.energies.insert(out.energies.end(), part->energies.begin(),
                        part->energies.end());
    out.steps.insert(out.steps.end(), part->steps.begin(), part->steps.end());
    out.converged.insert(out.converged.end(), part->converged.begin(),
                         part->converged.end());
  }
  return out;
}

absl::Status Validate(const MemorySet& memories,
                      const RetrievalParams& params) {
  if (memories.size() == 0) {
    return absl::FailedPreconditionError("no memories to retrieve from");
  }
  if (memories.dim == 0) {
    return absl::InvalidArgumentError("dimension must be positive");
  }
  if (!(params.beta > 0) || !std::isfinite(params.beta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("beta must be finite and > 0, got ", params.beta));
  }
  if (params.steps < 1) return absl::InvalidArgumentError("steps must be >= 1");
  if (IsKernel(params.similarity) &&
      (memories.map == nullptr || memories.map->in_dim() != memories.dim)) {
    return absl::FailedPreconditionError(
        "a kernel similarity needs the feature map its keys were built with");
  }
  return absl::OkStatus();
}

}  // namespace

size_t DefaultFusedQueries() { return internal::FusedQueries(); }

absl::StatusOr<RetrievalOutput> RetrieveExact(const MemorySet& memories,
                                              const float* queries,
                                              size_t num_queries,
                                              const RetrievalParams& params,
                                              const RetrievalOptions& options) {
  if (absl::Status status = Validate(memories, params); !status.ok()) {
    return status;
  }
  const size_t threads = std::max(options.threads, 1);
  const double work = 4.0 * num_queries * memories.size() * memories.dim;
  if (threads > 1 && work >= kMinWorkForThreads &&
      memories.size() < threads * kMinRowsPerPart && num_queries > 1) {
    return RetrieveSliced(memories, queries, num_queries, params, options,
                          std::min<size_t>(threads, num_queries));
  }
  Workspace& ws = ThreadWorkspace();
  StepQueries q;
  absl::StatusOr<RetrievalOutput> out = RunSteps(
      queries, num_queries, memories.dim, params.steps, params.eps,
      [&](absl::Span<const size_t> ids, const float* states, float* next,
          double* energies, std::vector<Match>* matches) -> absl::Status {
        if (absl::Status status =
                Pass(memories, states, ids.size(), params, options, ws, q);
            !status.ok()) {
          return status;
        }
        for (size_t a = 0; a < ids.size(); ++a) {
          FinishRow(memories, params, ws.rows[a], q.exact_sq_norms[a],
                    ws.outputs.data() + a * memories.dim,
                    next + a * memories.dim, energies[a], matches[a]);
        }
        return absl::OkStatus();
      });
  ws.Trim();
  return out;
}

absl::StatusOr<std::vector<PartialRow>> PartialStep(
    const MemorySet& memories, absl::Span<const uint64_t> ids,
    const float* states, size_t count, const RetrievalParams& params,
    const RetrievalOptions& options) {
  if (absl::Status status = Validate(memories, params); !status.ok()) {
    return status;
  }
  if (!ids.empty() && ids.size() != memories.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(ids.size(), " ids for ", memories.size(), " memories"));
  }
  Workspace& ws = ThreadWorkspace();
  StepQueries q;
  if (absl::Status status =
          Pass(memories, states, count, params, options, ws, q);
      !status.ok()) {
    return status;
  }
  const size_t d = memories.dim;
  const bool softmax = params.separation == Separation::kSoftmax;
  std::vector<PartialRow> out(count);
  for (size_t i = 0; i < count; ++i) {
    RowState& row = ws.rows[i];
    PartialRow& p = out[i];
    p.max = row.max;
    p.sum = row.sum;
    p.query_sq_norm = q.exact_sq_norms[i];
    if (softmax) {
      p.weighted.assign(ws.outputs.begin() + i * d,
                        ws.outputs.begin() + (i + 1) * d);
    }
    for (const TopK::Entry& e : row.top.Sorted()) {
      p.top.push_back({e.score, ids.empty() ? e.index : ids[e.index]});
    }
    if (softmax) continue;
    const double floor = row.max - SupportMargin(params.separation);
    std::vector<TopK::Entry> kept;
    for (const TopK::Entry& c : row.candidates) {
      if (c.score > floor) kept.push_back(c);
    }
    std::sort(kept.begin(), kept.end(), TopK::Better);
    for (size_t c = 0; c < kept.size(); ++c) {
      p.candidates.push_back(
          {kept[c].score, ids.empty() ? kept[c].index : ids[kept[c].index]});
      if (c < kCandidateValues) {
        p.values.resize(p.values.size() + d);
        memories.CopyRow(kept[c].index, p.values.data() + p.values.size() - d);
      }
    }
  }
  ws.Trim();
  return out;
}

}  // namespace engram::core
