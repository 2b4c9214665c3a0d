// Exact Stage II retrieval: x <- Xi * Sep(beta * s(Xi, x)), for a batch of
// queries over memories held in contiguous blocks.
//
//   MemorySet memories{.dim = d, .blocks = {{rows, sq_norms, count}, ...}};
//   RetrievalParams params{.similarity = Similarity::kDot, .beta = 1.0f};
//   absl::StatusOr<RetrievalOutput> out =
//       RetrieveExact(memories, queries, num_queries, params);
//
// Scores are computed a tile of memories at a time (sgemm where a GEMM form
// exists), with an online log-sum-exp, so the score buffer stays bounded by
// RetrievalOptions::max_score_floats whatever the number of memories.
//
// Thread-safe: pure functions of their arguments.
#ifndef ENGRAM_SERVER_CORE_RETRIEVAL_H_
#define ENGRAM_SERVER_CORE_RETRIEVAL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/core/feature_map.h"
#include "server/core/precision.h"
#include "server/core/separation.h"

namespace engram::core {

// The kernel forms score Phi(xi) against Phi(x) with the store's feature map
// (MemorySet::map): kKernelDot = <Phi xi, Phi x>, kKernelL2 = -||Phi xi - Phi
// x||.
enum class Similarity { kDot, kL2, kManhattan, kCosine, kKernelDot, kKernelL2 };

bool IsKernel(Similarity similarity);

absl::string_view SimilarityName(Similarity similarity);

// `count` memories, row-major, size count * dim values of `precision`, with
// their squared L2 norms (size count); for kernel similarities also their
// features Phi(row) (size count * map->out_dim(), same precision) and the
// features' squared norms. Borrowed: the caller keeps them alive during a
// call. Rows kept in bfloat16 or float16 are widened exactly as they are
// read; every score and sum is float32.
//
// A listed block holds rows of other blocks, one pointer per row (a filter's
// matches, gathered without copying them): row r's values at row_list[r]
// and its features at key_list[r]; `rows` and `keys` are then unused, and
// sq_norms / key_sq_norms are this block's own arrays. The retrieval copies
// a listed block's rows a tile at a time, in its cache, as it reaches them.
struct MemoryBlock {
  const void* rows = nullptr;
  const float* sq_norms = nullptr;
  size_t count = 0;
  const void* keys = nullptr;
  const float* key_sq_norms = nullptr;
  Precision precision = Precision::kFloat32;
  const void* const* row_list = nullptr;
  const void* const* key_list = nullptr;

  // Row r's values (size dim) and features (size key_dim), widened to
  // float32 into `out`.
  void CopyRow(size_t r, size_t dim, float* out) const;
  void CopyKey(size_t r, size_t key_dim, float* out) const;
  // Rows [r0, r0 + n) of the values (or, with `features`, of the features),
  // `width` elements each, one after another in the block's precision: in
  // place, or for a listed block copied into `buffer`.
  const void* Consecutive(bool features, size_t r0, size_t n, size_t width,
                          std::vector<float>& buffer) const;
};

// All memories of one retrieval, in order; memory i of the set is row
// i - (rows of the blocks before it) of its block.
struct MemorySet {
  size_t dim = 0;
  std::vector<MemoryBlock> blocks;
  // The feature map the blocks' keys were computed with (kernel
  // similarities only).
  const FeatureMap* map = nullptr;

  size_t size() const;
  // The block holding memory `index` (< size()) and its row in that block.
  std::pair<const MemoryBlock*, size_t> Locate(size_t index) const;
  // The row of memory `index` (< size()) as float32, size dim.
  void CopyRow(size_t index, float* out) const;
  std::vector<float> Row(size_t index) const;
};

struct RetrievalParams {
  Similarity similarity = Similarity::kDot;
  Separation separation = Separation::kSoftmax;
  float beta = 1.0f;   // Inverse temperature, > 0.
  uint32_t steps = 1;  // Maximum update steps, >= 1.
  float eps = 0.0f;    // Stop once ||x_{t+1} - x_t||_2 <= eps (if > 0).
  uint32_t top_k = 5;  // Best matches reported per query.
};

struct RetrievalOptions {
  // Upper bound on the score buffer, in floats (default 16 MiB).
  size_t max_score_floats = size_t{4} << 20;
  // Called between tiles; a non-OK status aborts the retrieval with it
  // (deadlines, cancellation). Must be safe to call from several threads.
  std::function<absl::Status()> check;
  // Threads a batch is split over, by queries (each slice runs every phase:
  // products, exp, top-k, output). Meant for single-threaded BLAS, so no
  // thread ever waits on another. Small requests stay on one thread.
  int threads = 1;
  // Softmax batches of up to this many queries take the fused pass (each
  // span of rows read once, scored and folded into every output while in
  // cache); larger ones go through sgemm. 1: only single queries; 0: up to
  // where the fused pass measured faster with this CPU's instruction set.
  size_t fused_queries = 0;
};

// Up to how many queries a softmax batch takes the fused pass when
// RetrievalOptions::fused_queries is 0 (by the kernels' instruction set).
size_t DefaultFusedQueries();

struct Match {
  size_t index = 0;  // Memory index in the MemorySet.
  float weight = 0;  // Weight in the final update.
  float score = 0;   // beta * s(xi, x) in the final update.
};

// Results for L queries of dimension d.
struct RetrievalOutput {
  std::vector<float> states;                // Retrieved vectors, L * d.
  std::vector<std::vector<Match>> matches;  // L lists, best first.
  std::vector<double> energies;             // L, of the last state scored.
  std::vector<uint32_t> steps;              // L, update steps taken.
  std::vector<uint8_t> converged;           // L, 1 if eps was reached.
};

// The output of a retrieval before its first step: the queries as states,
// no matches, zero steps.
RetrievalOutput StartOutput(const float* queries, size_t num_queries,
                            size_t dim);

// The similarity of x with itself, s(x, x), given ||x||^2 (for the energy).
double SelfSimilarity(Similarity similarity, double sq_norm);

// Runs exact retrieval of `num_queries` queries (row-major, size
// num_queries * memories.dim). Requires at least one memory.
absl::StatusOr<RetrievalOutput> RetrieveExact(
    const MemorySet& memories, const float* queries, size_t num_queries,
    const RetrievalParams& params, const RetrievalOptions& options = {});

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_RETRIEVAL_H_
