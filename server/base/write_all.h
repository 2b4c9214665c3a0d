// Writes all of a buffer to a file descriptor, through short writes and
// interruptions; safe in a signal handler (write and poll only).
//
//   if (!WriteAll(fd, line)) ... the file refused it (EPIPE, EIO, ...) ...
//
// Thread-safe; a write of at most PIPE_BUF bytes reaches a pipe whole.
#ifndef ENGRAM_SERVER_BASE_WRITE_ALL_H_
#define ENGRAM_SERVER_BASE_WRITE_ALL_H_

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

#include "absl/strings/string_view.h"

namespace engram {

// All of `bytes` to `fd`, or false when the file refuses them.
inline bool WriteAll(int fd, absl::string_view bytes) {
  size_t at = 0;
  while (at < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + at, bytes.size() - at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Another process made the file non-blocking: wait as a blocking
      // write would.
      pollfd writable{fd, POLLOUT, 0};
      poll(&writable, 1, -1);
      continue;
    }
    if (n <= 0) return false;
    at += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_WRITE_ALL_H_
