// Serving on a Unix socket: --listen=unix:PATH (or unix:///ABSOLUTE/PATH).
//
// Before it binds, gRPC removes whatever socket is at PATH, a live server's
// included: a second engramd given the same path would take the socket from
// the first without a word, and the first would serve no one. So engramd
// first takes an exclusive lock on PATH.lock and holds it while it runs (the
// system drops it when the process ends, however it ends): a second engramd
// is refused while the first lives, and the socket a killed one left behind
// is replaced. Who may connect is whoever may write the socket file (its
// mode comes from engramd's umask) and search its directory.
#ifndef ENGRAM_SERVER_RPC_UNIX_SOCKET_H_
#define ENGRAM_SERVER_RPC_UNIX_SOCKET_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace engram::rpc {

// The file system path of a listen address "unix:PATH" or
// "unix://ABSOLUTE_PATH"; nullopt for any other address (host:port, or
// "unix-abstract:NAME", which has no file).
std::optional<std::string> UnixSocketPath(absl::string_view listen);

// Whether a listen address is a Unix socket: unix:PATH, unix:///PATH or
// unix-abstract:NAME (not a host whose name starts with "unix").
bool IsUnixAddress(absl::string_view listen);

// The lock on a socket's path, held until destroyed.
class UnixSocketLock {
 public:
  // Checks that `path` can become the socket (a path short enough for a
  // socket, in a directory that exists, nothing there but a socket) and
  // locks it, or says why not: UNAVAILABLE while another process holds the
  // lock.
  static absl::StatusOr<std::unique_ptr<UnixSocketLock>> Take(
      const std::string& path);
  ~UnixSocketLock();
  UnixSocketLock(const UnixSocketLock&) = delete;
  UnixSocketLock& operator=(const UnixSocketLock&) = delete;

 private:
  explicit UnixSocketLock(int fd) : fd_(fd) {}
  const int fd_;
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_UNIX_SOCKET_H_
