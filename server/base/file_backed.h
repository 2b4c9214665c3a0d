// A value read from files that may change while engramd runs (a rotated
// token, a renewed certificate and its key), read again when they do:
// Reload replaces the value only with a version that reads, so a damaged or
// half-written file never takes the place of a good one.
//
//   absl::StatusOr<FileBacked<Tokens>> tokens =
//       FileBacked<Tokens>::Load(path, &ParseTokens);
//   ... every so often: absl::StatusOr<bool> changed = tokens->Reload();
//   std::shared_ptr<const Tokens> now = tokens->get();
//
// A value of several files (Load({cert, key}, read)) is one version: a
// change to any of them reads them all again, and a version one of them
// changed in while they were read is read again, whole, next time.
//
// A file's stamp (size, time, inode) cannot tell apart two writes of the
// same size in place within one tick of the file system's clock (a few
// milliseconds on Linux, up to 2 s on some file systems). So a version
// written less than kStampResolution before it was read is read again at
// the next Reload, whatever its stamp, and taken if its value differs (T
// has operator==) — as git treats a "racily clean" index entry.
//
// Thread-safe; copies share nothing after the copy.
#ifndef ENGRAM_SERVER_BASE_FILE_BACKED_H_
#define ENGRAM_SERVER_BASE_FILE_BACKED_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/base/file_stamp.h"
#include "server/base/mutex.h"

namespace engram {

template <typename T>
class FileBacked {
 public:
  // The coarsest file time stamp engramd expects (FAT's 2 s).
  static constexpr absl::Duration kStampResolution = absl::Seconds(2);

  // Reads the files into a T (or the error to report).
  using Read = std::function<absl::StatusOr<T>()>;
  // Reads the one file at `path` into a T.
  using Parse = std::function<absl::StatusOr<T>(const std::string& path)>;

  // The value of the files at `paths` (empty ones are no file): what `read`
  // gives, read again (up to 5 times) while a file changes as it is read.
  static absl::StatusOr<FileBacked> Load(std::vector<std::string> paths,
                                         Read read) {
    FileBacked out;
    out.paths_ = std::move(paths);
    out.read_ = std::move(read);
    for (int tries = 1;; ++tries) {
      const Stamps before = out.Stamp();
      const absl::Time start = absl::Now();
      absl::StatusOr<T> value = out.read_();
      if (!value.ok()) return value.status();
      const bool changed = out.Stamp() != before;
      if (changed && tries < 5) continue;
      {
        MutexLock lock(&out.mu_);
        out.value_ = std::make_shared<const T>(*std::move(value));
        out.stamps_ = before;
        out.read_again_ = changed;
        out.unsettled_ = Unsettled(before, start);
      }
      return out;
    }
  }
  static absl::StatusOr<FileBacked> Load(std::string path, Parse parse) {
    Read read = [path, parse = std::move(parse)] { return parse(path); };
    return Load(std::vector<std::string>{std::move(path)}, std::move(read));
  }

  FileBacked(const FileBacked& other) { *this = other; }
  FileBacked& operator=(const FileBacked& other) {
    if (this == &other) return *this;
    MutexLock theirs(&other.mu_);
    MutexLock mine(&mu_);
    paths_ = other.paths_;
    read_ = other.read_;
    value_ = other.value_;
    stamps_ = other.stamps_;
    read_again_ = other.read_again_;
    unsettled_ = other.unsettled_;
    failed_ = other.failed_;
    return *this;
  }

  std::shared_ptr<const T> get() const {
    MutexLock lock(&mu_);
    return value_;
  }

  // Reads the files again if a stamp changed since they were last read (or
  // tried), or the version was written too recently for its stamp to tell:
  // true if the value was replaced; false if no file had changed (or a
  // version read again holds the value in force), or one changed while
  // they were read (the next Reload reads them again); the read's error,
  // the value kept, if the new version does not read — reported once per
  // version.
  absl::StatusOr<bool> Reload() {
    const Stamps before = Stamp();
    const absl::Time start = absl::Now();
    bool recheck;  // Read only because the version was unsettled.
    {
      MutexLock lock(&mu_);
      const bool same = before == stamps_;
      if (same && !read_again_ && !unsettled_) return false;
      recheck = same && !read_again_;
      stamps_ = before;
      read_again_ = false;
    }
    absl::StatusOr<T> value = read_();
    const bool changed = Stamp() != before;
    MutexLock lock(&mu_);
    if (changed) {
      read_again_ = true;
      return false;
    }
    unsettled_ = Unsettled(before, start);
    if (!value.ok()) {
      if (recheck && failed_) return false;  // Reported already.
      failed_ = true;
      return value.status();
    }
    const bool was_failed = std::exchange(failed_, false);
    if (recheck && !was_failed && *value == *value_) return false;
    value_ = std::make_shared<const T>(*std::move(value));
    return true;
  }

 private:
  // Each file's version (nullopt: no file, gone or not to be stat'ed).
  using Stamps = std::vector<std::optional<FileStamp>>;

  FileBacked() = default;

  Stamps Stamp() const {
    Stamps out;
    out.reserve(paths_.size());
    for (const std::string& path : paths_) {
      out.push_back(path.empty() ? std::nullopt : FileStamp::Of(path));
    }
    return out;
  }

  // Whether a file of `stamps` was written less than kStampResolution
  // before `read` (or after it: a clock set back).
  static bool Unsettled(const Stamps& stamps, absl::Time read) {
    const int64_t settled = absl::ToUnixNanos(read - kStampResolution);
    for (const std::optional<FileStamp>& stamp : stamps) {
      if (stamp.has_value() && stamp->mtime_ns > settled) return true;
    }
    return false;
  }

  std::vector<std::string> paths_;
  Read read_;
  mutable Mutex mu_;
  std::shared_ptr<const T> value_ ABSL_GUARDED_BY(mu_);
  // The versions last read or tried, and whether to read them again
  // whatever their stamps: one changed while read, or it was unsettled.
  Stamps stamps_ ABSL_GUARDED_BY(mu_);
  bool read_again_ ABSL_GUARDED_BY(mu_) = false;
  bool unsettled_ ABSL_GUARDED_BY(mu_) = false;
  // Whether the version last read or tried did not read.
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_FILE_BACKED_H_
