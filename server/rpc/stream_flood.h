// Connections that open streams and reset them at once, cut.
//
// gRPC 1.51 keeps each stream a client opens queued until one of its
// threads takes it, however soon the client reset it (HTTP/2 "rapid reset",
// CVE-2023-44487): a client doing nothing else took engramd to 7-9 GB in
// 10 s, and nothing was answered for seconds after it stopped. gRPC gives
// no hook before that queue, but its channelz counts each connection's
// streams. StreamFloodGuard reads those counts a few times a second and
// cuts a connection (Listener::Cut: its address is kept out for a while)
//  - with more streams started and not yet ended than twice the streams
//    engramd lets a client have open at once (HTTP/2's
//    MAX_CONCURRENT_STREAMS, which a well-behaved client keeps to: the
//    rest are streams its client reset and gRPC still queues), or
//  - whose streams fail (a reset, a cancel, a deadline passed) faster than
//    a limit a second, if one is set: a well-behaved client with tight
//    deadlines can pass any figure, so engramd sets none by default.
//
//   StreamFloodGuard guard({/*max_open=*/128, /*failed_per_second=*/0});
//   std::vector<SocketStreams> cut =
//       guard.Observe(SteadyNow(), ReadChannelzSockets());
//
// Thread-compatible: one thread calls Observe.
#ifndef ENGRAM_SERVER_RPC_STREAM_FLOOD_H_
#define ENGRAM_SERVER_RPC_STREAM_FLOOD_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace engram::rpc {

// One connection as channelz sees it.
struct SocketStreams {
  int64_t socket_id = 0;
  std::string remote_ip;  // The address's bytes (4 or 16); empty: not TCP.
  int remote_port = 0;
  int64_t started = 0;    // Streams the client opened.
  int64_t succeeded = 0;  // Those that ended well,
  int64_t failed = 0;     // and those that ended in a reset or an error.
};

// The connections of every gRPC server in the process, read from channelz.
std::vector<SocketStreams> ReadChannelzSockets();

// One socket's JSON as grpc_channelz_get_socket writes it; false if it is
// not one.
bool ParseChannelzSocket(absl::string_view json, SocketStreams* out);

class StreamFloodGuard {
 public:
  struct Limits {
    int64_t max_open = 1000;                          // 0: no limit.
    int64_t failed_per_second = 1000;                 // 0: no limit.
    absl::Duration window = absl::Milliseconds(200);  // Rates over at least.
  };
  explicit StreamFloodGuard(const Limits& limits) : limits_(limits) {}

  // The connections to cut, given every connection's counts at `now`.
  std::vector<SocketStreams> Observe(absl::Time now,
                                     const std::vector<SocketStreams>& sockets);

 private:
  struct Seen {
    absl::Time since;
    int64_t failed = 0;
  };
  bool Floods(absl::Time now, const SocketStreams& s, const Seen* seen) const;

  const Limits limits_;
  std::map<int64_t, Seen> seen_;  // By socket id.
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_STREAM_FLOOD_H_
