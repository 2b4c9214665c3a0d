// Runs the parts of one computation on a process-wide pool of threads.
//
//   ParallelFor(parts, [&](size_t p) { ScoreShare(p); });
//
// Part 0 runs in the calling thread, the others on pool threads; parts that
// no pool thread has started by the time the caller is free run in the
// caller, so a busy pool (other requests' parts) delays nobody. Pool threads
// live for the process: no thread is created per request (a thread per
// request measured 10-20% of a small batch on 2 cores: clone, stack faults,
// cold caches). They inherit the floating-point mode of the thread that
// first needed them.
//
// Internal to server/core. Thread-safe; `fn` must be safe to call from
// several threads at once.
#ifndef ENGRAM_SERVER_CORE_INTERNAL_PARALLEL_H_
#define ENGRAM_SERVER_CORE_INTERNAL_PARALLEL_H_

#include <cstddef>

#include "absl/functional/function_ref.h"

namespace engram::core::internal {

// Calls fn(p) for p in [0, parts) and returns when all calls have returned.
void ParallelFor(size_t parts, absl::FunctionRef<void(size_t)> fn);

}  // namespace engram::core::internal

#endif  // ENGRAM_SERVER_CORE_INTERNAL_PARALLEL_H_
