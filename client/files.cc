#include "client/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace engram::client {

absl::Status ErrnoStatus(int error, absl::string_view what) {
  return absl::ErrnoToStatus(error, what);
}

absl::Status WriteAll(int fd, absl::string_view data, absl::string_view path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("writing ", path));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status SyncPath(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("opening ", path));
  const bool synced = ::fsync(fd) == 0;
  const int error = errno;
  ::close(fd);
  return synced ? absl::OkStatus()
                : ErrnoStatus(error, absl::StrCat("fsync ", path));
}

namespace {

// The directory that holds `path`.
std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

absl::Status ReplaceFile(const std::string& path,
                         absl::Span<const absl::string_view> pieces) {
  // A name of its own beside `path` (O_EXCL: never another writer's), with
  // the mode a new file gets (the umask applies).
  static std::atomic<uint64_t> counter{0};
  std::string temp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    temp = absl::StrCat(path, ".partial-", ::getpid(), "-", counter++);
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && (errno != EEXIST || attempt == 100)) {
      return ErrnoStatus(errno, absl::StrCat("writing ", path));
    }
  }
  absl::Status status;
  for (absl::string_view piece : pieces) {
    status = WriteAll(fd, piece, path);
    if (!status.ok()) break;
  }
  if (status.ok() && ::fsync(fd) != 0) {
    status = ErrnoStatus(errno, absl::StrCat("writing ", path));
  }
  if (::close(fd) != 0 && status.ok()) {
    status = ErrnoStatus(errno, absl::StrCat("writing ", path));
  }
  if (status.ok() && std::rename(temp.c_str(), path.c_str()) != 0) {
    status = ErrnoStatus(errno, absl::StrCat("replacing ", path));
  }
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  return SyncPath(DirectoryOf(path));
}

std::string NewDirectoryName(const std::string& dir) {
  std::filesystem::path name = std::filesystem::path(dir).lexically_normal();
  if (!name.empty() && !name.has_filename()) name = name.parent_path();
  return name.string();
}

absl::Status FillNewDirectory(
    const std::string& dir, absl::string_view doing,
    const std::function<absl::Status(const std::string& partial)>& fill) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::path target = NewDirectoryName(dir);
  if (target.empty() || target == "." || target == ".." ||
      target.filename() == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat("'", dir, "' names no new directory"));
  }
  if (fs::exists(target, error) && !fs::is_empty(target, error)) {
    return absl::AlreadyExistsError(absl::StrCat(
        dir, " exists and is not empty; ", doing, " into a new directory"));
  }
  const fs::path partial = target.string() + ".partial";
  fs::remove_all(partial, error);
  fs::create_directories(partial, error);
  if (error) {
    return absl::UnavailableError(
        absl::StrCat("creating ", partial.string(), ": ", error.message()));
  }
  if (absl::Status status = fill(partial.string()); !status.ok()) {
    // Half of it is of no use (the next attempt starts over); left behind
    // it would only fill the disk (and count as a backup in a rotation).
    fs::remove_all(partial, error);
    return status;
  }
  if (absl::Status synced = SyncPath(partial.string()); !synced.ok()) {
    fs::remove_all(partial, error);
    return synced;
  }
  if (fs::exists(target, error)) fs::remove(target, error);  // Empty.
  fs::rename(partial, target, error);
  if (error) {
    const std::string message = error.message();
    fs::remove_all(partial, error);
    return absl::UnavailableError(absl::StrCat(
        "renaming ", partial.string(), " to ", target.string(), ": ", message));
  }
  return SyncPath(target.has_parent_path() ? target.parent_path().string()
                                           : std::string("."));
}

}  // namespace engram::client
