#include "server/rpc/unix_socket.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace engram::rpc {

std::optional<std::string> UnixSocketPath(absl::string_view listen) {
  if (absl::ConsumePrefix(&listen, "unix://")) return std::string(listen);
  if (absl::ConsumePrefix(&listen, "unix:")) return std::string(listen);
  return std::nullopt;
}

bool IsUnixAddress(absl::string_view listen) {
  return UnixSocketPath(listen).has_value() ||
         absl::StartsWith(listen, "unix-abstract:");
}

namespace {

// Whether a connection to the socket at `path` is taken (or queued: a full
// backlog is a live server too).
bool Answers(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return false;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  int connected;
  do {
    connected = connect(fd, reinterpret_cast<const sockaddr*>(&address),
                        sizeof(address));
  } while (connected != 0 && errno == EINTR);
  const bool answers = connected == 0 || errno == EAGAIN;
  close(fd);
  return answers;
}

}  // namespace

absl::StatusOr<std::unique_ptr<UnixSocketLock>> UnixSocketLock::Take(
    const std::string& path) {
  const std::string where = absl::StrCat("--listen=unix:", path);
  if (path.empty()) {
    return absl::InvalidArgumentError(
        "--listen=unix: names no path (unix:PATH or unix:///ABSOLUTE/PATH)");
  }
  // The path and its terminating zero must fit in sockaddr_un::sun_path.
  constexpr size_t kMaxPath = sizeof(sockaddr_un::sun_path) - 1;
  if (path.size() > kMaxPath) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": the path is ", path.size(),
                     " bytes; a Unix socket's path holds at most ", kMaxPath));
  }
  struct stat st;
  const bool exists = lstat(path.c_str(), &st) == 0;
  if (exists) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(
          where,
          ": something other than a socket is there; engramd replaces "
          "only a socket"));
    }
  } else if (errno != ENOENT) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": ", std::strerror(errno)));
  } else {
    const size_t slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "."
                            : slash == 0               ? "/"
                                                       : path.substr(0, slash);
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat(where, ": the directory ", dir, " does not exist"));
    }
  }
  const std::string lock_path = absl::StrCat(path, ".lock");
  const int fd =
      open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": cannot open its lock ", lock_path, ": ",
                     std::strerror(errno)));
  }
  int locked;
  do {
    locked = flock(fd, LOCK_EX | LOCK_NB);
  } while (locked != 0 && errno == EINTR);
  if (locked != 0) {
    const int error = errno;
    close(fd);
    if (error == EWOULDBLOCK) {
      return absl::UnavailableError(absl::StrCat(
          where, ": another server serves on this socket (it holds ", lock_path,
          ")"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        where, ": cannot lock ", lock_path, ": ", std::strerror(error)));
  }
  auto lock = std::unique_ptr<UnixSocketLock>(new UnixSocketLock(fd));
  // A socket there with no lock held: left by a server that died, unless a
  // program that takes no lock serves on it.
  if (exists && Answers(path)) {
    return absl::UnavailableError(absl::StrCat(
        where, ": a program that holds no lock on it serves on this socket"));
  }
  return lock;
}

UnixSocketLock::~UnixSocketLock() { close(fd_); }

}  // namespace engram::rpc
