// Which version of a file is on disk: its size, modification time, device
// and inode (stat, following symlinks, so that a Kubernetes secret's swapped
// `..data` link counts as a change). For files engramd reads again when they
// change (tokens, TLS certificates).
//
//   std::optional<FileStamp> before = FileStamp::Of(path);
//   ... read path ...
//   if (FileStamp::Of(path) != before) { /* written meanwhile: retry */ }
#ifndef ENGRAM_SERVER_BASE_FILE_STAMP_H_
#define ENGRAM_SERVER_BASE_FILE_STAMP_H_

#include <sys/stat.h>

#include <cstdint>
#include <optional>
#include <string>

namespace engram {

struct FileStamp {
  int64_t size = 0, mtime_ns = 0, device = 0, inode = 0;

  // Nullopt where the file cannot be stat'ed (gone, no permission).
  static std::optional<FileStamp> Of(const std::string& path) {
    struct stat info;
    if (stat(path.c_str(), &info) != 0) return std::nullopt;
    FileStamp stamp;
    stamp.size = static_cast<int64_t>(info.st_size);
    stamp.mtime_ns =
        int64_t{info.st_mtim.tv_sec} * 1000000000 + info.st_mtim.tv_nsec;
    stamp.device = static_cast<int64_t>(info.st_dev);
    stamp.inode = static_cast<int64_t>(info.st_ino);
    return stamp;
  }

  bool operator==(const FileStamp& o) const {
    return size == o.size && mtime_ns == o.mtime_ns && device == o.device &&
           inode == o.inode;
  }
  bool operator!=(const FileStamp& o) const { return !(*this == o); }
};

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_FILE_STAMP_H_
