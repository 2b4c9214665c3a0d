#include "server/core/step_loop.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "server/core/internal/vector_loops.h"

namespace engram::core {

absl::StatusOr<RetrievalOutput> RunSteps(const float* queries,
                                         size_t num_queries, size_t d,
                                         uint32_t steps, float eps,
                                         StepFunction step) {
  RetrievalOutput out = StartOutput(queries, num_queries, d);
  std::vector<size_t> active(num_queries);
  for (size_t i = 0; i < num_queries; ++i) active[i] = i;
  // Later steps gather the still active rows into these, reused from call to
  // call in this thread (fresh pages for every call measured 2% of a batched
  // retrieval); dropped if a call grew them large.
  thread_local std::vector<float> states, next;
  std::vector<double> energies;
  std::vector<std::vector<Match>> matches;
  for (uint32_t s = 1; s <= steps && !active.empty(); ++s) {
    const size_t count = active.size();
    // The first step, every query active, reads the queries and writes the
    // output in place: no copy of either.
    const bool first = s == 1;
    const float* from = queries;
    float* to = out.states.data();
    if (!first) {
      states.resize(count * d);
      next.resize(count * d);
      for (size_t a = 0; a < count; ++a) {
        std::copy_n(out.states.data() + active[a] * d, d,
                    states.data() + a * d);
      }
      from = states.data();
      to = next.data();
    }
    energies.assign(count, 0.0);
    matches.assign(count, {});
    if (absl::Status status =
            step(active, from, to, energies.data(), matches.data());
        !status.ok()) {
      return status;
    }
    std::vector<size_t> still_active;
    for (size_t a = 0; a < count; ++a) {
      const size_t i = active[a];
      const float* y = to + a * d;
      const double sq_change =
          internal::SquaredDistanceWide(from + a * d, y, d);
      if (!first) std::copy_n(y, d, out.states.data() + i * d);
      out.steps[i] = s;
      out.energies[i] = energies[a];
      out.matches[i] = std::move(matches[a]);
      if (eps > 0 && std::sqrt(sq_change) <= eps) {
        out.converged[i] = 1;
      } else {
        still_active.push_back(i);
      }
    }
    active.swap(still_active);
  }
  constexpr size_t kKeep = size_t{4} << 20;  // Floats.
  if (states.capacity() > kKeep) {
    states = std::vector<float>();
    next = std::vector<float>();
  }
  return out;
}

}  // namespace engram::core
