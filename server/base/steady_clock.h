// Time for deadlines and intervals: a clock that only moves forward.
//
// absl::Now() is the wall clock, which an operator, NTP or a virtual
// machine's restore may step backwards; a deadline or an interval measured
// by it then lasts as much longer as the step (a router's prober stopped
// probing for as long as its clock was set back). SteadyNow() reads the
// steady clock as an absl::Time with an arbitrary epoch: subtract two,
// compare two, add durations to one; never show one as a date or store it.
//
//   const absl::Time give_up = SteadyNow() + timeout;
//   while (!TryIt()) {
//     if (SteadyNow() > give_up) return absl::AbortedError(...);
//   }
//
// (To wait for a condition, engram::CondVar::AwaitWithTimeout, mutex.h.)
//
// A deadline that comes as a wall-clock time (a gRPC call's) is turned into
// one on this clock once, on arrival: SteadyDeadline(deadline).
//
// Thread-safe: pure functions.
#ifndef ENGRAM_SERVER_BASE_STEADY_CLOCK_H_
#define ENGRAM_SERVER_BASE_STEADY_CLOCK_H_

#include <chrono>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace engram {

inline absl::Time SteadyNow() {
  return absl::UnixEpoch() +
         absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

// Seconds from `start` (a SteadyNow()) to now: a duration as metrics,
// logs and job records give it.
inline double SecondsSince(absl::Time start) {
  return absl::ToDoubleSeconds(SteadyNow() - start);
}

// The wall-clock `deadline` on the steady clock (infinite stays infinite).
// A deadline as gRPC holds one (a system_clock time point; "none" is the
// far future), as an absl::Time on the wall clock: InfiniteFuture for none
// and for one more than a day away.
inline absl::Time WallDeadline(std::chrono::system_clock::time_point deadline) {
  if (deadline > std::chrono::system_clock::now() + std::chrono::hours(24)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

inline absl::Time SteadyDeadline(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return deadline;
  return SteadyNow() + (deadline - absl::Now());
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_STEADY_CLOCK_H_
