#include "server/jobs/expiry_sweeper.h"

#include <memory>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "server/base/log.h"
#include "server/base/steady_clock.h"

namespace engram::jobs {

ExpirySweeper::ExpirySweeper(store::StoreRegistry* registry,
                             absl::Duration interval, Observer observer)
    : registry_(registry),
      interval_(interval),
      observer_(std::move(observer)),
      thread_([this] { Loop(); }) {}

ExpirySweeper::~ExpirySweeper() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    stop_.SignalAll();
  }
  thread_.join();
}

size_t ExpirySweeper::SweepOnce() {
  bool more = false;
  absl::StatusOr<std::vector<std::shared_ptr<store::Store>>> stores =
      registry_->List("", registry_->limits().max_stores, more);
  if (!stores.ok()) return 0;  // Still loading.
  size_t total = 0;
  for (const std::shared_ptr<store::Store>& s : *stores) {
    const absl::Time start = SteadyNow();
    absl::StatusOr<size_t> reclaimed = s->ReclaimExpired();
    if (reclaimed.ok() && *reclaimed == 0) continue;
    if (!reclaimed.ok()) {
      // A full disk or a store being replaced: the patterns stay out of
      // every answer, and the next pass tries again.
      Log(LogLevel::kWarning, "expiry: store '%s': %s", s->name(),
          reclaimed.status().ToString());
      continue;
    }
    const double seconds = SecondsSince(start);
    if (observer_) observer_(s->name(), *reclaimed, seconds);
    Log(LogLevel::kDebug, "expiry: store '%s': %d patterns reclaimed in %.3fs",
        s->name(), *reclaimed, seconds);
    total += *reclaimed;
  }
  return total;
}

void ExpirySweeper::Loop() {
  MutexLock lock(&mu_);
  while (!stop_.AwaitWithTimeout(
      &mu_, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; },
      interval_)) {
    mu_.Unlock();
    SweepOnce();
    mu_.Lock();
  }
}

}  // namespace engram::jobs
