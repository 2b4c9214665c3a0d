#include "server/core/retrieval.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/core/blas.h"
#include "server/core/internal/vector_loops.h"

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

const float* MemorySet::row(size_t index) const {
  const auto [block, r] = Locate(index);
  return block ? block->rows + r * dim : nullptr;
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

// Threads pay off once a request has a few MFLOP of work.
constexpr double kMinWorkForThreads = 4e6;

using Scored = std::pair<float, size_t>;  // (score, memory index)

// Min-heap order on score, so the heap's front is the weakest of the top k.
bool Stronger(const Scored& a, const Scored& b) { return a.first > b.first; }

float RowMax(const float* row, size_t n) {
  float max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max)
  for (size_t j = 0; j < n; ++j) max = std::max(max, row[j]);
  return max;
}

float SquaredDistance(const float* a, const float* b, size_t d) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t k = 0; k < d; ++k) sum += (a[k] - b[k]) * (a[k] - b[k]);
  return sum;
}

// Below this fraction of ||q||^2 + ||x||^2, a GEMM-form squared distance has
// lost most of its digits.
constexpr float kCancellation = 1e-3f;

// scores (L x n, row stride n) = beta * s(queries_i, rows_j), for the
// similarity on features (never a kernel form: those are mapped first).
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

// What one pass over all memories leaves per query row.
struct RowState {
  double max = kNegInf;            // Running max of the scores.
  double sum = 0;                  // Sum of exp(score - max).
  std::vector<Scored> top;         // Heap of the best top_k scores.
  std::vector<Scored> candidates;  // Sparse separations: possible support.
  size_t candidates_at_prune = 0;
  double query_sq_norm = 0;  // ||state||^2, or ||Phi(state)||^2 for kernels.
};

void PushTop(RowState& state, size_t k, float score, size_t index) {
  if (state.top.size() < k) {
    state.top.emplace_back(score, index);
    std::push_heap(state.top.begin(), state.top.end(), Stronger);
  } else if (k > 0 && score > state.top.front().first) {
    std::pop_heap(state.top.begin(), state.top.end(), Stronger);
    state.top.back() = {score, index};
    std::push_heap(state.top.begin(), state.top.end(), Stronger);
  }
}

// One query under softmax: rows are scored and folded into the output while
// they are in L1, so the memories stream from RAM exactly once. Four rows
// share each update of the output (one read and write of it per four rows).
void FusedSoftmaxTile(Similarity on_features, float beta, const float* query,
                      float query_sq_norm, const float* keys,
                      const float* key_sq_norms, size_t key_dim,
                      const float* values, size_t n, size_t d,
                      size_t first_index, size_t top_k, RowState& state,
                      float* output) {
  constexpr size_t kGroup = 4;
  float max = static_cast<float>(state.max);
  for (size_t j0 = 0; j0 < n; j0 += kGroup) {
    const size_t g = std::min(kGroup, n - j0);
    float z[kGroup];
    float group_max = -std::numeric_limits<float>::infinity();
    for (size_t j = 0; j < g; ++j) {
      ComputeScores(on_features, beta, query, &query_sq_norm, 1,
                    keys + (j0 + j) * key_dim, key_sq_norms + j0 + j, 1,
                    key_dim, &z[j]);
      PushTop(state, top_k, z[j], first_index + j0 + j);
      group_max = std::max(group_max, z[j]);
    }
    if (group_max > max) {
      const float rescale =
          state.max == kNegInf ? 0.0f : std::exp(max - group_max);
      for (size_t k = 0; k < d; ++k) output[k] *= rescale;
      state.sum *= rescale;
      state.max = max = group_max;
    }
    float w[kGroup] = {0, 0, 0, 0};
    for (size_t j = 0; j < g; ++j) {
      w[j] = std::exp(z[j] - max);
      state.sum += w[j];
    }
    if (g == kGroup) {
      const float* v = values + j0 * d;
      internal::AddScaled4(w, v, v + d, v + 2 * d, v + 3 * d, output, d);
    } else {
      for (size_t j = 0; j < g; ++j) {
        internal::AddScaled(w[j], values + (j0 + j) * d, output, d);
      }
    }
  }
}

// One update step for `num_queries` states: outputs (size num_queries * d)
// and the per-row states from which thresholds and weights follow.
absl::Status Pass(const MemorySet& memories, const float* states,
                  size_t num_queries, const RetrievalParams& params,
                  const RetrievalOptions& options, float* outputs,
                  std::vector<RowState>& rows_state) {
  const size_t d = memories.dim;
  const bool softmax = params.separation == Separation::kSoftmax;
  const double margin = SupportMargin(params.separation);
  const size_t tile = std::max<size_t>(
      1, options.max_score_floats / std::max<size_t>(num_queries, 1));

  // Scores compare features: Phi(state) against the blocks' keys for kernel
  // similarities, the states and rows themselves otherwise.
  const bool kernel = IsKernel(params.similarity);
  const Similarity on_features = OnFeatures(params.similarity);
  const size_t key_dim = kernel ? memories.map->out_dim() : d;
  std::vector<float> features;
  const float* queries = states;
  if (kernel) {
    features.resize(num_queries * key_dim);
    memories.map->Apply(states, num_queries, features.data());
    queries = features.data();
  }
  rows_state.assign(num_queries, RowState{});
  std::vector<float> query_sq_norms(num_queries);
  for (size_t i = 0; i < num_queries; ++i) {
    const float* q = queries + i * key_dim;
    double s = 0;
    for (size_t k = 0; k < key_dim; ++k) s += double{q[k]} * q[k];
    query_sq_norms[i] = static_cast<float>(s);
    rows_state[i].query_sq_norm = s;
  }
  std::fill(outputs, outputs + num_queries * d, 0.0f);

  // One query over many memories: split the memories over threads, each
  // running the fused pass on its blocks, then merge the partial softmaxes.
  const size_t parts =
      std::min<size_t>(std::max(options.threads, 1), memories.blocks.size());
  if (num_queries == 1 && softmax && parts > 1 &&
      4.0 * memories.size() * d >= kMinWorkForThreads) {
    std::vector<size_t> starts(memories.blocks.size() + 1, 0);
    for (size_t b = 0; b < memories.blocks.size(); ++b) {
      starts[b + 1] = starts[b] + memories.blocks[b].count;
    }
    std::vector<RowState> partial(parts, rows_state[0]);
    std::vector<std::vector<float>> partial_out(parts,
                                                std::vector<float>(d, 0.0f));
    std::vector<absl::Status> status(parts);
    auto run = [&](size_t p) {
      const size_t first = p * memories.blocks.size() / parts;
      const size_t last = (p + 1) * memories.blocks.size() / parts;
      for (size_t b = first; b < last; ++b) {
        if (options.check) {
          status[p] = options.check();
          if (!status[p].ok()) return;
        }
        const MemoryBlock& block = memories.blocks[b];
        FusedSoftmaxTile(on_features, params.beta, queries, query_sq_norms[0],
                         kernel ? block.keys : block.rows,
                         kernel ? block.key_sq_norms : block.sq_norms, key_dim,
                         block.rows, block.count, d, starts[b], params.top_k,
                         partial[p], partial_out[p].data());
      }
    };
    std::vector<std::thread> workers;
    for (size_t p = 1; p < parts; ++p) workers.emplace_back(run, p);
    run(0);
    for (std::thread& t : workers) t.join();
    RowState& merged = rows_state[0];
    for (size_t p = 0; p < parts; ++p) {
      if (!status[p].ok()) return status[p];
      merged.max = std::max(merged.max, partial[p].max);
    }
    for (size_t p = 0; p < parts; ++p) {
      if (partial[p].max == kNegInf) continue;
      const double scale = std::exp(partial[p].max - merged.max);
      merged.sum += partial[p].sum * scale;
      internal::AddScaled(static_cast<float>(scale), partial_out[p].data(),
                          outputs, d);
      for (const Scored& s : partial[p].top) {
        PushTop(merged, params.top_k, s.first, s.second);
      }
    }
    return absl::OkStatus();
  }

  std::vector<float> scores;

  size_t block_start = 0;
  for (const MemoryBlock& block : memories.blocks) {
    for (size_t r0 = 0; r0 < block.count; r0 += tile) {
      if (options.check) {
        if (absl::Status status = options.check(); !status.ok()) return status;
      }
      const size_t n = std::min(tile, block.count - r0);
      const float* rows = block.rows + r0 * d;
      if (num_queries == 1 && softmax) {
        FusedSoftmaxTile(on_features, params.beta, queries, query_sq_norms[0],
                         kernel ? block.keys + r0 * key_dim : rows,
                         kernel ? block.key_sq_norms + r0 : block.sq_norms + r0,
                         key_dim, rows, n, d, block_start + r0, params.top_k,
                         rows_state[0], outputs);
        continue;
      }
      scores.resize(num_queries * n);
      if (kernel) {
        ComputeScores(on_features, params.beta, queries, query_sq_norms.data(),
                      num_queries, block.keys + r0 * key_dim,
                      block.key_sq_norms + r0, n, key_dim, scores.data());
      } else {
        ComputeScores(on_features, params.beta, queries, query_sq_norms.data(),
                      num_queries, rows, block.sq_norms + r0, n, d,
                      scores.data());
      }
      const size_t first_index = block_start + r0;
      for (size_t i = 0; i < num_queries; ++i) {
        RowState& state = rows_state[i];
        float* row = scores.data() + i * n;
        const double tile_max = RowMax(row, n);

        // Most scores lose to the weakest of the top k: one compare each,
        // and none at all when the tile's best loses.
        const size_t k = params.top_k;
        float weakest = k == 0 || state.top.size() < k
                            ? -std::numeric_limits<float>::infinity()
                            : state.top.front().first;
        for (size_t j = 0;
             k > 0 && j < n && (tile_max > weakest || state.top.size() < k);
             ++j) {
          if (row[j] > weakest || state.top.size() < k) {
            PushTop(state, k, row[j], first_index + j);
            if (state.top.size() == k) weakest = state.top.front().first;
          }
        }

        const double new_max = std::max(state.max, tile_max);
        if (!softmax) {
          const double floor = new_max - margin;
          for (size_t j = 0; j < n && tile_max > floor; ++j) {
            if (row[j] > floor)
              state.candidates.emplace_back(row[j], first_index + j);
          }
          if (state.candidates.size() > 2 * state.candidates_at_prune + 1024) {
            state.candidates.erase(
                std::remove_if(
                    state.candidates.begin(), state.candidates.end(),
                    [floor](const Scored& c) { return c.first <= floor; }),
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
          state.sum +=
              internal::ExpInPlace(row, n, static_cast<float>(new_max));
        } else {
          state.sum += internal::SumExp(row, n, static_cast<float>(new_max));
        }
      }
      if (softmax) {
        // outputs += exp(scores - max) * rows, rescaled per row above.
        internal::AccumulateNN(num_queries, d, n, scores.data(), rows, outputs);
      }
    }
    block_start += block.count;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RetrievalOutput> RetrieveExact(const MemorySet& memories,
                                              const float* queries,
                                              size_t num_queries,
                                              const RetrievalParams& params,
                                              const RetrievalOptions& options) {
  // A slice of one query takes the fused single-pass path (and splits the
  // memories over the threads instead).
  const double work = 4.0 * num_queries * memories.size() * memories.dim;
  const size_t slices =
      work < kMinWorkForThreads
          ? 1
          : std::min<size_t>(std::max(options.threads, 1), num_queries);
  if (slices > 1) {
    // Each slice is an independent retrieval of some of the queries.
    RetrievalOptions one = options;
    one.threads = 1;
    const size_t d = memories.dim;
    std::vector<absl::StatusOr<RetrievalOutput>> parts(slices);
    std::vector<std::thread> workers;
    const size_t per = (num_queries + slices - 1) / slices;
    for (size_t s = 0; s < slices; ++s) {
      const size_t first = s * per, count = std::min(per, num_queries - first);
      auto run = [&, s, first, count] {
        parts[s] =
            RetrieveExact(memories, queries + first * d, count, params, one);
      };
      if (s + 1 < slices) {
        workers.emplace_back(run);
      } else {
        run();
      }
    }
    for (std::thread& t : workers) t.join();
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
  const size_t d = memories.dim;
  const size_t m = memories.size();
  if (m == 0)
    return absl::FailedPreconditionError("no memories to retrieve from");
  if (d == 0) return absl::InvalidArgumentError("dimension must be positive");
  if (!(params.beta > 0) || !std::isfinite(params.beta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("beta must be finite and > 0, got ", params.beta));
  }
  if (params.steps < 1) return absl::InvalidArgumentError("steps must be >= 1");
  if (IsKernel(params.similarity) &&
      (memories.map == nullptr || memories.map->in_dim() != d)) {
    return absl::FailedPreconditionError(
        "a kernel similarity needs the feature map its keys were built with");
  }
  const bool softmax = params.separation == Separation::kSoftmax;

  RetrievalOutput out = StartOutput(queries, num_queries, d);

  std::vector<size_t> active(num_queries);
  for (size_t i = 0; i < num_queries; ++i) active[i] = i;
  std::vector<float> states, outputs;
  std::vector<RowState> rows_state;
  std::vector<double> candidate_scores;

  for (uint32_t step = 1; step <= params.steps && !active.empty(); ++step) {
    const size_t count = active.size();
    states.resize(count * d);
    outputs.resize(count * d);
    for (size_t a = 0; a < count; ++a) {
      std::copy_n(out.states.data() + active[a] * d, d, states.data() + a * d);
    }
    if (absl::Status status = Pass(memories, states.data(), count, params,
                                   options, outputs.data(), rows_state);
        !status.ok()) {
      return status;
    }

    std::vector<size_t> still_active;
    for (size_t a = 0; a < count; ++a) {
      RowState& state = rows_state[a];
      const double lse = state.max + std::log(state.sum);
      float* y = outputs.data() + a * d;
      const float* x = states.data() + a * d;
      double threshold = lse, total = 1.0;
      if (softmax) {
        const float inverse = static_cast<float>(1.0 / state.sum);
        for (size_t k = 0; k < d; ++k) y[k] *= inverse;
      } else {
        const double floor = state.max - SupportMargin(params.separation);
        state.candidates.erase(
            std::remove_if(
                state.candidates.begin(), state.candidates.end(),
                [floor](const Scored& c) { return c.first <= floor; }),
            state.candidates.end());
        candidate_scores.clear();
        for (const Scored& c : state.candidates)
          candidate_scores.push_back(c.first);
        threshold = SeparationThreshold(params.separation, candidate_scores);
        total = 0;
        for (const Scored& c : state.candidates) {
          total += SeparationWeight(params.separation, c.first, threshold);
        }
        for (const Scored& c : state.candidates) {
          const double w =
              SeparationWeight(params.separation, c.first, threshold);
          if (w > 0)
            blas::Axpy(d, static_cast<float>(w / total), memories.row(c.second),
                       y);
        }
      }

      const size_t i = active[a];
      double sq_change = 0;
      for (size_t k = 0; k < d; ++k) {
        const double change = double{y[k]} - x[k];
        sq_change += change * change;
      }
      std::copy_n(y, d, out.states.data() + i * d);
      out.steps[i] = step;
      out.energies[i] =
          -lse / params.beta +
          0.5 * SelfSimilarity(params.similarity, state.query_sq_norm);
      std::sort_heap(state.top.begin(), state.top.end(), Stronger);
      std::vector<Match>& matches = out.matches[i];
      matches.clear();
      for (const Scored& s : state.top) {
        const double w =
            SeparationWeight(params.separation, s.first, threshold);
        matches.push_back({s.second, static_cast<float>(w / total), s.first});
      }
      if (params.eps > 0 && std::sqrt(sq_change) <= params.eps) {
        out.converged[i] = 1;
      } else {
        still_active.push_back(i);
      }
    }
    active.swap(still_active);
  }
  return out;
}

}  // namespace engram::core
