// Outgoing calls ended by the steady clock when gRPC's deadline does not end
// them.
//
// gRPC 1.51 ends a call at its deadline on a timer thread whose sleep is
// turned into a wall-clock deadline (through Abseil) when it starts: a clock
// set back during that sleep holds every timer until the clock catches up,
// unless a new timer earlier than all the others wakes the thread (a
// router's probe of a stopped shard was seen held until the clock was set
// right again). A CallCutter watches calls in flight and cancels each one
// still out `grace` past its deadline by the steady clock; a call it cut
// ends CANCELLED, which Unwatch turns into the DEADLINE_EXCEEDED it missed.
// It also cancels every call still watched when it stops (a router's
// shutdown waits for none of them).
//
//   auto context = std::make_shared<grpc::ClientContext>();
//   context->set_deadline(...);
//   if (!cutter.Watch(context)) return absl::CancelledError("stopping");
//   const grpc::Status s = cutter.Unwatch(
//       context.get(), stub->Method(context.get(), request, &response));
//
// Its one thread sleeps until the earliest cutoff of the calls it watches,
// and for good while it watches none.
//
// Thread-safe.
#ifndef ENGRAM_SERVER_RPC_CALL_CUTTER_H_
#define ENGRAM_SERVER_RPC_CALL_CUTTER_H_

#include <chrono>
#include <memory>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "server/base/mutex.h"

namespace engram::rpc {

class CallCutter {
 public:
  explicit CallCutter(absl::Duration grace = absl::Milliseconds(500));
  // Stop(), then waits for its thread.
  ~CallCutter();
  CallCutter(const CallCutter&) = delete;
  CallCutter& operator=(const CallCutter&) = delete;

  // Watches a call about to start, cut `grace` past its context's deadline
  // (none: only at Stop). The cutter may hold `context` a moment past
  // Unwatch. False once stopped: then the context is cancelled already.
  bool Watch(std::shared_ptr<grpc::ClientContext> context);
  // As Watch, cut at `cutoff` on SteadyNow()'s clock.
  bool Watch(std::shared_ptr<grpc::ClientContext> context, absl::Time cutoff);
  // After the call ended with `status`: stops watching it; the status it
  // ended with, DEADLINE_EXCEEDED for one the cutter cut (CANCELLED).
  grpc::Status Unwatch(grpc::ClientContext* context, grpc::Status status);
  // Cancels every call watched; later Watches fail.
  void Stop();

  // When a call with `deadline` (a ClientContext's) is cut: `grace` past
  // it on SteadyNow()'s clock; never when it has none (WallDeadline).
  static absl::Time Cutoff(std::chrono::system_clock::time_point deadline,
                           absl::Duration grace);

 private:
  struct Watched {
    std::shared_ptr<grpc::ClientContext> context;
    absl::Time cutoff;
    bool cut = false;
  };
  void Loop();

  const absl::Duration grace_;
  Mutex mu_;
  CondVar changed_;
  absl::flat_hash_map<grpc::ClientContext*, Watched> calls_
      ABSL_GUARDED_BY(mu_);
  // When the thread wakes next (InfiniteFuture: only when signalled).
  absl::Time wakes_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_CALL_CUTTER_H_
