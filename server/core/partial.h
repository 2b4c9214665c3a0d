// Retrieval split over parts of the memories, merged exactly: what a shard
// computes for its part of a store, and how a router makes one step of the
// whole store from the parts (docs/scale-out.md proves each merge).
//
//   // On each shard, for the states of one step:
//   absl::StatusOr<std::vector<PartialRow>> part =
//       PartialStep(memories, states, count, params);
//   // On the router, per query, from every shard's row:
//   absl::StatusOr<MergedRow> row = MergeRows(params, rows, dim, lookup);
//
// A part reports, per query: the largest score z = beta * s(xi, x) over its
// memories and the sum of exp(z - max) (softmax's log-sum-exp, which also
// gives every separation's energy); under softmax the sum of
// exp(z - max) * xi; its best top_k; and under sparsemax and 1.5-entmax every
// memory whose score is within the support margin of its own maximum (1 and
// 2), with the values of the best few, since only those can carry weight.
//
// Thread-safe: pure functions of their arguments.
#ifndef ENGRAM_SERVER_CORE_PARTIAL_H_
#define ENGRAM_SERVER_CORE_PARTIAL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/core/retrieval.h"

namespace engram::core {

// A memory of a part, named by the caller's identifier (a shard maps memory
// indices to pattern ids).
struct Scored {
  float score = 0;  // beta * s(xi, x).
  uint64_t id = 0;
};

struct PartialRow {
  double max = -std::numeric_limits<double>::infinity();
  double sum = 0;               // sum over the part of exp(z - max).
  std::vector<float> weighted;  // softmax: sum of exp(z - max) * xi (dim).
  std::vector<Scored> top;      // The part's best top_k, best first.
  // Sparse separations: every memory with z > max - margin, best first,
  // and the values of the first `values.size() / dim` of them.
  std::vector<Scored> candidates;
  std::vector<float> values;
  double query_sq_norm = 0;  // ||x||^2, or ||Phi x||^2 (for the energy).
};

// Candidates of one query that carry values, at most (sparse separations);
// the router fetches the values of support members beyond them.
inline constexpr size_t kCandidateValues = 16;

// The partial rows of `count` states (row-major, count * memories.dim) over
// all of `memories`; ids[i] names memory i (empty: memories are named by
// their index). Requires at least one memory.
absl::StatusOr<std::vector<PartialRow>> PartialStep(
    const MemorySet& memories, absl::Span<const uint64_t> ids,
    const float* states, size_t count, const RetrievalParams& params,
    const RetrievalOptions& options = {});

// One query's step, merged from its parts.
struct MergedRow {
  std::vector<float> next;  // The next state (dim).
  double energy = 0;        // Of the state the parts scored.
  // The top_k by weight in this step, best first (ties: the smaller id).
  struct Match {
    uint64_t id;
    float weight;
    float score;
  };
  std::vector<Match> matches;
};

// The values of the memory `id` (dim floats) for a support member no part
// sent values for; NOT_FOUND if it is gone (the router then retries the step).
using ValuesLookup =
    std::function<absl::StatusOr<std::vector<float>>(uint64_t id)>;

// Merges one query's rows from every part (at least one non-empty) exactly:
// by log-sum-exp under softmax; under the sparse separations the threshold
// is solved on the union of the candidates within the margin of the global
// maximum, which holds every support member. Parts that do not fit
// together (a weighted sum or values not of `dim`, a maximum no candidate
// reaches, numbers no row has) are INTERNAL.
absl::StatusOr<MergedRow> MergeRows(const RetrievalParams& params,
                                    absl::Span<const PartialRow* const> rows,
                                    size_t dim, const ValuesLookup& lookup);

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_PARTIAL_H_
