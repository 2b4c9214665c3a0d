// A value read from a file that may change while engramd runs (a rotated
// token), read again when it does: Reload replaces the value only with a
// version that parses, so a damaged or half-written file never takes the
// place of a good one.
//
//   absl::StatusOr<FileBacked<Tokens>> tokens =
//       FileBacked<Tokens>::Load(path, &ParseTokens);
//   ... every so often: absl::StatusOr<bool> changed = tokens->Reload();
//   std::shared_ptr<const Tokens> now = tokens->get();
//
// Thread-safe; copies share nothing after the copy.
#ifndef ENGRAM_SERVER_BASE_FILE_BACKED_H_
#define ENGRAM_SERVER_BASE_FILE_BACKED_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "server/base/file_stamp.h"
#include "server/base/mutex.h"

namespace engram {

template <typename T>
class FileBacked {
 public:
  // Reads the file at `path` into a T (or the error to report).
  using Parse = std::function<absl::StatusOr<T>(const std::string& path)>;

  static absl::StatusOr<FileBacked> Load(std::string path, Parse parse) {
    const std::optional<FileStamp> stamp = FileStamp::Of(path);
    absl::StatusOr<T> value = parse(path);
    if (!value.ok()) return value.status();
    FileBacked out;
    out.path_ = std::move(path);
    out.parse_ = std::move(parse);
    {
      MutexLock lock(&out.mu_);
      out.value_ = std::make_shared<const T>(*std::move(value));
      out.stamp_ = stamp;
    }
    return out;
  }

  FileBacked(const FileBacked& other) { *this = other; }
  FileBacked& operator=(const FileBacked& other) {
    if (this == &other) return *this;
    MutexLock theirs(&other.mu_);
    MutexLock mine(&mu_);
    path_ = other.path_;
    parse_ = other.parse_;
    value_ = other.value_;
    stamp_ = other.stamp_;
    read_again_ = other.read_again_;
    return *this;
  }

  const std::string& path() const { return path_; }

  std::shared_ptr<const T> get() const {
    MutexLock lock(&mu_);
    return value_;
  }

  // Reads the file again if its stamp changed since it was last read (or
  // tried): true if the value was replaced; false if the file had not
  // changed, or changed while it was read (the next Reload reads it
  // again); the parse's error, the value kept, if the new version does not
  // parse — reported once per version.
  absl::StatusOr<bool> Reload() {
    const std::optional<FileStamp> before = FileStamp::Of(path_);
    {
      MutexLock lock(&mu_);
      if (before == stamp_ && !read_again_) return false;
      stamp_ = before;
      read_again_ = false;
    }
    absl::StatusOr<T> value = parse_(path_);
    MutexLock lock(&mu_);
    if (before.has_value() && FileStamp::Of(path_) != before) {
      read_again_ = true;
      return false;
    }
    if (!value.ok()) return value.status();
    value_ = std::make_shared<const T>(*std::move(value));
    return true;
  }

 private:
  FileBacked() = default;

  std::string path_;
  Parse parse_;
  mutable Mutex mu_;
  std::shared_ptr<const T> value_ ABSL_GUARDED_BY(mu_);
  // The version last read or tried (nullopt: the file was gone), and
  // whether to read it again whatever its stamp.
  std::optional<FileStamp> stamp_ ABSL_GUARDED_BY(mu_);
  bool read_again_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_FILE_BACKED_H_
