// engramd's listening sockets, accepted on a thread of its own.
//
// gRPC's own listener (1.51, Debian 12's) stops accepting for good the first
// time accept() fails for want of a file descriptor: a flood of connections
// up to the process's open-file limit leaves a server that, once the flood
// is gone, takes no new connection again while it runs (the connections
// wait in the kernel's queue until their clients give up; CVE-2023-4785,
// mended in later gRPC releases). So engramd binds
// --listen itself, accepts here and hands each connection to gRPC
// (ServerBuilder::experimental().AddExternalConnectionAcceptor), which runs
// TLS and HTTP/2 on it as on a connection it accepted. Here:
//
//  - connections never take the last descriptors: while fewer than a
//    reserve are free (ReserveFor the open-file limit), a new connection is
//    closed at once — shed: its client sees the connection end and may try
//    again — so that the store's files, a router's channels to its shards
//    and the metrics endpoint still open;
//  - when accept() fails for want of descriptors or memory anyway, the
//    oldest waiting connection is shed (a spare descriptor is kept for it)
//    and accepting goes on.
//
//   absl::StatusOr<std::unique_ptr<Listener>> listener =
//       Listener::Bind("0.0.0.0:50051");
//   (*listener)->Start(acceptor, /*reserve=*/-1, on_shed);
//   ... (*listener)->port() ...
//   (*listener)->Stop();
//
// Thread-safe: Start and Stop from one thread (the server's), the rest from
// any.
#ifndef ENGRAM_SERVER_RPC_LISTENER_H_
#define ENGRAM_SERVER_RPC_LISTENER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/server_builder.h"
#include "server/base/mutex.h"

namespace engram::rpc {

// An IPv4 address mapped into IPv6 (::ffff:a.b.c.d) as its 4 bytes; any
// other address's bytes as they are.
std::string Unmapped(const std::string& ip);

// A TCP peer as gRPC names it, found anywhere in `name` ("ipv4:127.0.0.1:
// 34148", channelz's "chttp2 ipv6:[::1]:41000", a call's peer()
// "ipv6:%5B::1%5D:41000" or "ipv6:%5Bfe80::1%25eth0%5D:7"):
// its address's bytes (4 or 16, as written) and port. False for anything
// else (a Unix socket's "unix:...", garbage).
bool ParsePeer(absl::string_view name, std::string* ip, int* port);

class Listener {
 public:
  // Why a connection was shed (the label of the metric).
  static constexpr const char* kReserve = "reserve";
  static constexpr const char* kNoDescriptors = "no_descriptors";
  static constexpr const char* kNoMemory = "no_memory";
  // A connection cut for the streams its client reset (stream_flood.h), and
  // one refused while its address is kept out after that.
  static constexpr const char* kStreamFlood = "stream_flood";
  static constexpr const char* kBanned = "banned";
  // A connection cut when memory ran out, for what it sent that came to
  // nothing (StreamFloodGuard::Heaviest).
  static constexpr const char* kMemoryFlood = "memory_flood";
  // A connection cut for answers its client took none of (AnswerWatch).
  static constexpr const char* kUnreadAnswers = "unread_answers";
  using OnShed = std::function<void(absl::string_view reason)>;

  // Binds and listens on `listen` (--listen): HOST:PORT (a name resolved
  // to each of its addresses), [IPV6]:PORT, 0.0.0.0:PORT or [::]:PORT (every
  // address, IPv6 and IPv4 both where the machine has IPv6), port 0 for a
  // free one; unix:PATH, unix:///PATH (the caller holds the path's lock,
  // UnixSocketLock: whatever socket is there is replaced) or
  // unix-abstract:NAME. The refusal names --listen and says why.
  static absl::StatusOr<std::unique_ptr<Listener>> Bind(
      absl::string_view listen);

  // What connections leave free of an open-file limit of `limit`: an
  // eighth, at least 64, at most half.
  static size_t ReserveFor(size_t limit);

  ~Listener();  // Stops.
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // The port bound (the one chosen for port 0); 0 for a Unix socket.
  int port() const { return port_; }

  // Accepts until Stop, handing each connection to `acceptor` (borrowed,
  // must outlive Stop) unless fewer than reserve() descriptors are free
  // under the process's open-file limit: `reserve` of them, or with -1
  // ReserveFor the limit (looked at again as connections come: prlimit may
  // change it). `on_shed` (may be empty) hears of each connection closed
  // unserved, on the listener's thread.
  void Start(grpc::experimental::ExternalConnectionAcceptor* acceptor,
             int reserve, OnShed on_shed);

  // The descriptors connections leave free, as last worked out (0 without
  // a limit).
  size_t reserve() const { return reserve_.load(); }

  // Closes the sockets (new connections are refused; a Unix socket's file
  // is removed) and returns once the thread has.
  void Stop();

  // Connections shed since Start.
  size_t shed() const { return shed_.load(); }

  // Shuts down the connection this listener took from `ip` (the address's
  // 4 or 16 bytes; an IPv4 address mapped into IPv6 counts as itself) and
  // `port` — gRPC then ends its calls and closes it — and sheds new
  // connections from `ip` for `ban`. False if it took none from there (or
  // that one has closed): then nothing is cut and nobody kept out.
  bool Cut(const std::string& ip, int port, absl::Duration ban);

  // What has gone through each TCP connection this listener took so far:
  struct PeerBytes {
    int64_t read = 0;   // what gRPC has read of it (bytes received less
                        // those still queued in the socket),
    int64_t taken = 0;  // and what its client has taken (acknowledged).
  };
  // By the peer's address (4 or 16 bytes, an IPv4-mapped one as IPv4) and
  // port. Two system calls a connection; one that has closed is left out.
  using BytesByPeer =
      absl::flat_hash_map<std::pair<std::string, int>, PeerBytes>;
  BytesByPeer Bytes() const;

 private:
  struct Socket {
    int fd;
    bool tcp;
  };
  Listener(std::string listen, std::vector<Socket> sockets, int port,
           std::string unix_path);
  void Run();
  // Accepts every connection waiting on `socket`; false when accepting
  // failed for want of descriptors or memory (the caller waits a little).
  bool AcceptAll(const Socket& socket);
  // Works out limit_, reserve_ and shed_from_ from the open-file limit now.
  void ReadLimit();
  void Shed(const char* reason);

  const std::string listen_;
  std::vector<Socket> sockets_;
  const int port_;
  const std::string unix_path_;  // A Unix socket's file; else empty.
  int wake_fd_ = -1;             // An eventfd: Stop wakes the thread.
  int spare_fd_ = -1;            // Closed to shed when none is left.
  grpc::experimental::ExternalConnectionAcceptor* acceptor_ = nullptr;
  int reserve_option_ = -1;         // Start's `reserve`.
  size_t limit_ = 0;                // The open-file limit; 0: none.
  std::atomic<size_t> reserve_{0};  // What connections leave of it.
  size_t shed_from_ = SIZE_MAX;     // Descriptor numbers from here are shed.
  OnShed on_shed_;
  std::atomic<size_t> shed_{0};
  absl::Time last_warning_ = absl::InfinitePast();  // The thread's.
  size_t shed_unreported_ = 0;                      // The thread's.
  const char* last_reason_ = kReserve;              // The thread's.
  std::thread thread_;

  struct Peer {
    std::string ip;  // 4 or 16 bytes.
    int port = 0;
  };
  mutable Mutex peers_mu_;
  // The TCP connections handed to gRPC, by descriptor (gRPC closes them:
  // an entry is checked against getpeername before it is used, and
  // replaced when the number is accepted again).
  std::map<int, Peer> peers_ ABSL_GUARDED_BY(peers_mu_);
  std::map<std::string, absl::Time> banned_ ABSL_GUARDED_BY(peers_mu_);
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_LISTENER_H_
