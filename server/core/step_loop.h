// The update loop every retrieval path shares: run x <- step(x) for up to
// `steps` steps, each query until it moves by at most eps, and collect the
// output. The paths differ only in their step.
//
//   absl::StatusOr<RetrievalOutput> out = RunSteps(
//       queries, num_queries, d, params.steps, params.eps,
//       [&](absl::Span<const size_t> ids, const float* states, float* next,
//           double* energies, std::vector<Match>* matches) { ... });
//
// Used by the exact and low-rank paths and by a router merging the steps of
// its shards. Thread-compatible.
#ifndef ENGRAM_SERVER_CORE_STEP_LOOP_H_
#define ENGRAM_SERVER_CORE_STEP_LOOP_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/core/retrieval.h"

namespace engram::core {

// One update of the still active queries `ids`: their states (ids.size() x
// d, row-major) in; their next states (same shape), the energies of the
// states scored (ids.size()) and, if the path reports them per step, their
// matches (ids.size() lists, best first) out.
using StepFunction = absl::FunctionRef<absl::Status(
    absl::Span<const size_t> ids, const float* states, float* next,
    double* energies, std::vector<Match>* matches)>;

// Runs up to `steps` (>= 1) steps from `queries` (num_queries x d); a query
// stops once ||next - state||_2 <= eps (if eps > 0) and counts as converged.
absl::StatusOr<RetrievalOutput> RunSteps(const float* queries,
                                         size_t num_queries, size_t d,
                                         uint32_t steps, float eps,
                                         StepFunction step);

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_STEP_LOOP_H_
