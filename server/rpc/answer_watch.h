// Connections whose clients take none of their answers, found.
//
// HTTP/2 sends a stream's data only as far as its client's window allows,
// and gRPC's synchronous server holds the thread of a unary call until its
// answer is written. A client that gives its streams a window of 0
// (SETTINGS_INITIAL_WINDOW_SIZE), or stops reading its socket, holds a
// thread with each call for as long as it keeps the connection open (it
// need only answer pings): 70 GetStore calls on one such connection left
// engramd refusing every other call but Retrieve ("Server Threadpool
// Exhausted"), and 120 ListPatterns of 1,000 patterns of 512 floats held
// 320 MiB of answers besides.
//
// AnswerWatch keeps the answers being sent: each from when gRPC is handed
// it (Begin, at its interceptors' PRE_SEND_MESSAGE) until it is written or
// its call ends (End). Look names the connections with at least
// `min_waiting` answers that have waited `settle` or longer and whose client
// has taken (acknowledged, on TCP) less than `min_taken` bytes in
// `patience`, or in `hurry` while such answers number `pressure` or more
// over all connections (they hold that many of gRPC's threads; a
// connection with a single answer waiting then counts too), or leave fewer
// than `min_free` of the threads others do not hold (`held` of `threads`:
// streams and writes, which have bounds of their own). A client
// that reads, however slowly, takes bytes; one with a window of 0 takes
// only the pings' few. Cutting such a connection ends its calls and gives
// their threads back.
//
//   AnswerWatch watch({});
//   watch.Begin(call, context->peer(), SteadyNow());  // Interceptor.
//   watch.End(call);                                   // Written, or gone.
//   for (const AnswerWatch::Stalled& s : watch.Look(SteadyNow(), bytes)) ...
//
// Thread-safe; one thread calls Look.
#ifndef ENGRAM_SERVER_RPC_ANSWER_WATCH_H_
#define ENGRAM_SERVER_RPC_ANSWER_WATCH_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/base/mutex.h"
#include "server/rpc/listener.h"
#include "server/rpc/thread_floor.h"

namespace engram::rpc {

class AnswerWatch {
 public:
  struct Options {
    // How long an answer waits before it counts: a well-read one is gone in
    // well under this.
    absl::Duration settle = absl::Milliseconds(500);
    int min_waiting = 2;
    // Less than this taken over the time below is taking nothing (what a
    // client with a window of 0 takes: engramd's pings and their answers).
    int64_t min_taken = 16 << 10;
    absl::Duration patience = absl::Seconds(10);  // Zero: never cut.
    absl::Duration hurry = absl::Seconds(1);
    int pressure = 16;
    // gRPC's threads, and how many of them others hold now; 0 or empty:
    // `pressure` alone.
    int threads = 0;
    std::function<int()> held;
    int min_free = kFewestThreadsLeft;
  };
  explicit AnswerWatch(const Options& options) : options_(options) {}
  AnswerWatch(const AnswerWatch&) = delete;
  AnswerWatch& operator=(const AnswerWatch&) = delete;

  // The answer of `call` (any pointer that names the call while it lasts)
  // to a client at `peer` (as gRPC names it: "ipv4:127.0.0.1:34148") is
  // being sent from `now`.
  void Begin(const void* call, absl::string_view peer, absl::Time now)
      ABSL_LOCKS_EXCLUDED(mu_);
  // It was written, or the call ended; either is fine to repeat.
  void End(const void* call) ABSL_LOCKS_EXCLUDED(mu_);

  struct Stalled {
    std::string ip;  // 4 or 16 bytes, an IPv4-mapped one as IPv4.
    int port = 0;
    int waiting = 0;       // Answers waiting `settle` or more,
    int64_t taken = 0;     // what its client has taken while they waited,
    absl::Duration for_;   // over how long,
    bool hurried = false;  // shorter than `patience` (under pressure).
  };
  // The connections to cut at `now`, given what each TCP connection's
  // client has taken so far (Listener::Bytes). A connection not in `bytes`
  // (a Unix socket's, or one closed) is never named.
  std::vector<Stalled> Look(absl::Time now, const Listener::BytesByPeer& bytes)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Answers being sent now (for tests).
  size_t sending() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Answer {
    std::string peer;
    absl::Time since;
  };
  // A connection seen with answers waiting: since when, and what its
  // client had taken then (both moved on whenever it takes min_taken).
  struct Watched {
    absl::Time since;
    int64_t taken = 0;
  };

  const Options options_;
  mutable Mutex mu_;
  absl::flat_hash_map<const void*, Answer> answers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Watched> watched_;  // Look's thread's.
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_ANSWER_WATCH_H_
