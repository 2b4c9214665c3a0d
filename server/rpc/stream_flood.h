// Connections that open streams and reset them at once, cut.
//
// gRPC 1.51 keeps each stream a client opens queued until one of its
// threads takes it, however soon the client reset it (HTTP/2 "rapid reset",
// CVE-2023-44487): a client doing nothing else took engramd to 7-9 GB in
// 10 s, and nothing was answered for seconds after it stopped. gRPC gives
// no hook before that queue, but its channelz counts each connection's
// streams. StreamFloodGuard looks at those counts a few times a second and
// cuts a connection (Listener::Cut: its address is kept out for a while)
//  - with more streams started and not yet ended than twice the streams
//    engramd lets a client have open at once (HTTP/2's
//    MAX_CONCURRENT_STREAMS, which a well-behaved client keeps to: the
//    rest are streams its client reset and gRPC still queues), or
//  - whose streams fail (a reset, a cancel, a deadline passed) faster than
//    a limit a second, if one is set: a well-behaved client with tight
//    deadlines can pass any figure, so engramd sets none by default.
// It also keeps, for each connection, what gRPC has read of it since its
// last progress (a message received, a stream ended). A header block that
// never ends (HEADERS, then CONTINUATION frames without end) makes none,
// and gRPC 1.51 keeps all of it: 400 MiB sent took engramd 447 MiB more
// resident. When memory runs out, the caller cuts Heaviest(): all of them,
// since eight such connections at once, cut one a look, took engramd to
// 1 GiB past a limit of 360 MiB.
//
// Reading one connection's counts costs ~10 us (channelz renders them as
// JSON): 2,000 idle connections read four times a second took 9% of a
// core. So the guard reads a connection's counts only where they may have
// moved, since streams start only from bytes gRPC reads: while gRPC reads
// from it; until two looks in a row found nothing more read (bytes read
// just before a look may start their streams just after it); and every
// `recheck` whatever it does. With a limit on failures a second, every
// connection is read at every look (a deadline fails a stream with no byte
// read).
//
//   StreamFloodGuard guard({/*max_open=*/128, /*failed_per_second=*/0});
//   std::vector<SocketStreams> read;
//   std::vector<int64_t> unread;
//   for (const SocketRef& ref : ReadChannelzSocketRefs()) {
//     const int64_t bytes = ...;  // What gRPC has read of it.
//     SocketStreams s;
//     if (!guard.NeedsLook(now, ref.socket_id, bytes)) {
//       unread.push_back(ref.socket_id);
//     } else if (ReadChannelzSocket(ref.socket_id, &s)) {
//       s.bytes_read = bytes;
//       read.push_back(s);
//     }
//   }
//   std::vector<SocketStreams> cut = guard.Observe(now, read, unread);
//
// Thread-compatible: one thread calls NeedsLook and Observe.
#ifndef ENGRAM_SERVER_RPC_STREAM_FLOOD_H_
#define ENGRAM_SERVER_RPC_STREAM_FLOOD_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace engram::rpc {

// One connection as channelz lists it, before its counts are read.
struct SocketRef {
  int64_t socket_id = 0;
  std::string remote_ip;  // The address's bytes (4 or 16); empty: not TCP.
  int remote_port = 0;
};

// One connection as channelz sees it.
struct SocketStreams {
  int64_t socket_id = 0;
  std::string remote_ip;  // The address's bytes (4 or 16); empty: not TCP.
  int remote_port = 0;
  int64_t started = 0;    // Streams the client opened.
  int64_t succeeded = 0;  // Those that ended well,
  int64_t failed = 0;     // and those that ended in a reset or an error.
  int64_t messages_received = 0;
  int64_t bytes_read = -1;  // What gRPC had read of it; -1: not known.
};

// The connections of every gRPC server in the process, as channelz lists
// them.
std::vector<SocketRef> ReadChannelzSocketRefs();

// The counts of the connection `socket_id`; false if channelz no longer
// has it.
bool ReadChannelzSocket(int64_t socket_id, SocketStreams* out);

// The connections on one page of grpc_channelz_get_server_sockets, each
// peer read from its name ("chttp2 ipv4:127.0.0.1:34148", "chttp2
// ipv6:[::1]:41000"; anything else: not TCP).
std::vector<SocketRef> ParseChannelzSocketRefs(absl::string_view json);

// One socket's JSON as grpc_channelz_get_socket writes it; false if it is
// not one.
bool ParseChannelzSocket(absl::string_view json, SocketStreams* out);

class StreamFloodGuard {
 public:
  struct Limits {
    int64_t max_open = 1000;                          // 0: no limit.
    int64_t failed_per_second = 1000;                 // 0: no limit.
    absl::Duration window = absl::Milliseconds(200);  // Rates over at least.
    absl::Duration recheck = absl::Seconds(5);  // A quiet socket read again.
  };
  explicit StreamFloodGuard(const Limits& limits) : limits_(limits) {}

  // Whether the counts of the socket `socket_id`, of which gRPC has read
  // `bytes_read` bytes (-1: not known), are to be read at `now`.
  bool NeedsLook(absl::Time now, int64_t socket_id, int64_t bytes_read) const;

  // The connections to cut, given the counts of those read at `now` and the
  // ids of those open but not read (what was seen of them is kept; any
  // other socket is gone and forgotten).
  std::vector<SocketStreams> Observe(absl::Time now,
                                     const std::vector<SocketStreams>& read,
                                     const std::vector<int64_t>& unread = {});

  // Of the connections seen, those gRPC has read at least `min_bytes` of
  // since their last progress (a message received, a stream ended; their
  // first look if they made some before), the heaviest first.
  struct Heavy {
    SocketRef socket;
    int64_t bytes = 0;  // Read since its last progress.
  };
  std::vector<Heavy> Heaviest(int64_t min_bytes) const;
  // Whether Heaviest(min_bytes) would name any.
  bool AnyHeavier(int64_t min_bytes) const;

 private:
  struct Seen {
    absl::Time since;               // Failures counted from here,
    int64_t failed = 0;             // these many then.
    absl::Time looked;              // The last look,
    int64_t bytes_read = -1;        // what gRPC had read then,
    bool quiet = false;             // and whether the look before saw as much.
    int64_t progress = 0;           // Messages received and streams ended,
    int64_t bytes_at_progress = 0;  // and what had been read when they were.
    std::string remote_ip;
    int remote_port = 0;
  };
  bool Floods(absl::Time now, const SocketStreams& s, const Seen* seen) const;

  const Limits limits_;
  std::map<int64_t, Seen> seen_;  // By socket id.
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_STREAM_FLOOD_H_
