// Files the client leaves behind (retrieved vectors, exports, backups),
// written so that a failure — a full disk, a killed process — never leaves
// a damaged file where a whole one was, nor one that only looks whole.
//
// Thread-safe: each call works on its own files.
#ifndef ENGRAM_CLIENT_FILES_H_
#define ENGRAM_CLIENT_FILES_H_

#include <cstddef>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace engram::client {

// `error` (an errno) as a status whose code fits it, naming what failed:
// "writing x.npy: No space left on device" (RESOURCE_EXHAUSTED).
absl::Status ErrnoStatus(int error, absl::string_view what);

// Writes all of `data` to `fd`, through short writes and interruptions;
// `path` names the file in the error.
absl::Status WriteAll(int fd, absl::string_view data, absl::string_view path);

// Flushes a file's or a directory's contents to the disk.
absl::Status SyncPath(const std::string& path);

// Replaces `path` with the concatenation of `pieces`: written into a new
// file beside it, synced, renamed over it, and its directory synced. On
// failure `path` is as it was and the new file is gone.
absl::Status ReplaceFile(const std::string& path,
                         absl::Span<const absl::string_view> pieces);

// `dir` as FillNewDirectory names it: normalized, without a trailing slash
// ("backups/monday/" is backups/monday).
std::string NewDirectoryName(const std::string& dir);

// Fills the new directory `dir` whole or not at all: `fill` writes into a
// fresh DIR.partial beside it (and syncs what it writes), which is then
// renamed to DIR, and DIR's parent synced. ALREADY_EXISTS if DIR exists and
// is not empty (`doing` names the work in the message: "export"); on
// failure DIR.partial is removed and DIR is as it was. DIR is
// NewDirectoryName(dir).
absl::Status FillNewDirectory(
    const std::string& dir, absl::string_view doing,
    const std::function<absl::Status(const std::string& partial)>& fill);

}  // namespace engram::client

#endif  // ENGRAM_CLIENT_FILES_H_
