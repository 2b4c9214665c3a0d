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
#include <unistd.h>

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
  const int fd = path.empty() ? -1 : open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return failed(absl::StatusCode::kNotFound,
                  path.empty() ? "no file named" : std::strerror(errno));
  }
  std::string text;
  char buffer[16 << 10];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      close(fd);
      return failed(absl::StatusCode::kDataLoss, std::strerror(error));
    }
    if (n == 0) break;
    if (static_cast<size_t>(n) > max_bytes - text.size()) {
      close(fd);
      return failed(absl::StatusCode::kOutOfRange,
                    absl::StrCat("over ", max_bytes, " bytes"));
    }
    text.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return text;
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_FILE_TEXT_H_
