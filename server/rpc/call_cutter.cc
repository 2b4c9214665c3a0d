#include "server/rpc/call_cutter.h"

#if defined(__linux__)
#include <pthread.h>
#endif

#include <algorithm>
#include <utility>
#include <vector>

#include "server/base/steady_clock.h"

namespace engram::rpc {

CallCutter::CallCutter(absl::Duration grace)
    : grace_(grace), thread_([this] { Loop(); }) {}

CallCutter::~CallCutter() {
  Stop();
  thread_.join();
}

absl::Time CallCutter::Cutoff(std::chrono::system_clock::time_point deadline,
                              absl::Duration grace) {
  return SteadyDeadline(WallDeadline(deadline)) + grace;  // None: never.
}

bool CallCutter::Watch(std::shared_ptr<grpc::ClientContext> context) {
  const absl::Time cutoff = Cutoff(context->deadline(), grace_);
  return Watch(std::move(context), cutoff);
}

bool CallCutter::Watch(std::shared_ptr<grpc::ClientContext> context,
                       absl::Time cutoff) {
  {
    MutexLock lock(&mu_);
    if (!stopped_) {
      grpc::ClientContext* key = context.get();
      calls_[key] = Watched{std::move(context), cutoff};
      // The thread sleeps until a later cutoff, or for good.
      if (cutoff < wakes_) changed_.Signal();
      return true;
    }
  }
  context->TryCancel();
  return false;
}

grpc::Status CallCutter::Unwatch(grpc::ClientContext* context,
                                 grpc::Status status) {
  bool cut = false;
  {
    MutexLock lock(&mu_);
    auto found = calls_.find(context);
    if (found == calls_.end()) return status;
    cut = found->second.cut;
    calls_.erase(found);
  }
  if (!cut || status.error_code() != grpc::StatusCode::CANCELLED) {
    return status;  // It ended before the cut took.
  }
  return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                      "no answer by the call's deadline (ended by the steady "
                      "clock: the wall clock may have been set back)");
}

void CallCutter::Stop() {
  std::vector<std::shared_ptr<grpc::ClientContext>> watched;
  {
    MutexLock lock(&mu_);
    stopped_ = true;
    for (auto& [key, w] : calls_) watched.push_back(w.context);
    changed_.SignalAll();
  }
  for (const auto& context : watched) context->TryCancel();
}

void CallCutter::Loop() {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), "engram-cutter");
#endif
  MutexLock lock(&mu_);
  while (!stopped_) {
    const absl::Time now = SteadyNow();
    absl::Time next = absl::InfiniteFuture();
    std::vector<std::shared_ptr<grpc::ClientContext>> overdue;
    for (auto& [key, w] : calls_) {
      if (w.cut) continue;
      if (w.cutoff <= now) {
        w.cut = true;
        overdue.push_back(w.context);
      } else {
        next = std::min(next, w.cutoff);
      }
    }
    if (!overdue.empty()) {
      // Not under mu_: a cancelled call's callback may run on this thread
      // and Unwatch. The shared pointers keep the contexts alive.
      mu_.Unlock();
      for (const auto& context : overdue) context->TryCancel();
      overdue.clear();
      mu_.Lock();
      continue;  // Calls may have come meanwhile.
    }
    wakes_ = next;
    if (next == absl::InfiniteFuture()) {
      changed_.Wait(&mu_);
    } else {
      changed_.WaitWithTimeout(&mu_, next - now);
    }
    wakes_ = absl::InfiniteFuture();
  }
}

}  // namespace engram::rpc
