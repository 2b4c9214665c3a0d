// The whole text of a file (a token file, a certificate, a topology), with
// the reason when it cannot be read.
//
//   absl::StatusOr<std::string> text = ReadFileText(path, 4 << 20);
//   if (!text.ok()) return Named("--token_file", text.status());
//
// The error's message is "cannot read '<path>': <why>" (no such file,
// permission denied, is a directory, over the size given): callers prefix
// the flag that named the file. Thread-safe: a pure function.
#ifndef ENGRAM_SERVER_BASE_FILE_TEXT_H_
#define ENGRAM_SERVER_BASE_FILE_TEXT_H_

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace engram {

// The file at `path`, at most `max_bytes` of it (more is an error: a path
// naming /dev/zero must not fill memory). NOT_FOUND if it cannot be opened,
// DATA_LOSS if a read fails, OUT_OF_RANGE past `max_bytes`.
inline absl::StatusOr<std::string> ReadFileText(const std::string& path,
                                                size_t max_bytes = SIZE_MAX) {
  const auto failed = [&path](absl::StatusCode code, const std::string& why) {
    return absl::Status(code, absl::StrCat("cannot read '", path, "': ", why));
  };
  // Opened without waiting: a named pipe that nobody writes would hold the
  // caller (a credential watcher, engramd's start) forever; read, it ends
  // at once, empty. Reads then wait as usual (a pipe being written).
  const int fd =
      path.empty() ? -1 : open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    return failed(absl::StatusCode::kNotFound,
                  path.empty() ? "no file named" : std::strerror(errno));
  }
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  // Read straight into the text: a regular file's size up front (and one
  // byte more, to meet its end), growing otherwise; never past the limit.
  const size_t cap = max_bytes < SIZE_MAX ? max_bytes + 1 : SIZE_MAX;
  struct stat info;
  const size_t expected = fstat(fd, &info) == 0 && S_ISREG(info.st_mode)
                              ? static_cast<size_t>(info.st_size)
                              : 0;
  std::string text(std::min(cap, expected + 1), '\0');
  size_t size = 0;
  for (;;) {
    if (size == text.size()) {
      if (size > max_bytes) {
        close(fd);
        return failed(absl::StatusCode::kOutOfRange,
                      absl::StrCat("over ", max_bytes, " bytes"));
      }
      text.resize(std::min(cap, size + std::max<size_t>(size, 64 << 10)));
    }
    const ssize_t n = read(fd, &text[size], text.size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      close(fd);
      return failed(absl::StatusCode::kDataLoss, std::strerror(error));
    }
    if (n == 0) break;
    size += static_cast<size_t>(n);
  }
  text.resize(size);
  close(fd);
  return text;
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_FILE_TEXT_H_
