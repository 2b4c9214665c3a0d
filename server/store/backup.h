// Backups of stores as a directory of plain files (docs/backup.md):
//
//   manifest.json              what the backup holds (BackupManifest, JSON)
//   manifest.sha256            SHA-256 of manifest.json, lowercase hex
//   stores/NAME/settings.pb    the store's settings record
//   stores/NAME/map.bin        its fitted feature map, if it has one
//   stores/NAME/patterns.bin   its patterns: u64 id, u32 length, record
//
// The manifest lists every file with its size and SHA-256, and each store's
// pattern count, next id and content digest, so a reader checks every byte
// before it trusts any: a truncated, damaged or edited file is DATA_LOSS
// naming it, a directory that is not an engram backup (or of a format this
// engram does not know) is INVALID_ARGUMENT.
//
// A backup reads one immutable view per store, so writes and fits go on while
// it is taken, and each store is captured exactly as it was after one
// acknowledged write. Patterns are written in the view's row order, so a
// restored store computes exactly what the original did.
//
// Thread-safe: the functions share nothing; a source or sink belongs to one
// caller.
#ifndef ENGRAM_SERVER_STORE_BACKUP_H_
#define ENGRAM_SERVER_STORE_BACKUP_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engram/storage/v1/records.pb.h"
#include "server/store/storage.h"
#include "server/store/store.h"

namespace engram::store {

using BackupManifest = storage::v1::BackupManifest;
using BackupStore = storage::v1::BackupStore;

inline constexpr char kManifestFile[] = "manifest.json";
inline constexpr char kManifestSumFile[] = "manifest.sha256";

// Receives a backup's files: the pieces of one file in order, one file after
// another, the manifest last.
class BackupSink {
 public:
  virtual ~BackupSink() = default;
  virtual absl::Status Write(absl::string_view file,
                             absl::string_view data) = 0;
};

// Writes a backup of `stores` to `sink`, pieces of at most `piece_bytes`.
// `engram_version` goes into the manifest.
absl::StatusOr<BackupManifest> WriteBackup(
    absl::Span<const std::shared_ptr<Store>> stores, BackupSink& sink,
    absl::string_view engram_version, size_t piece_bytes = 1 << 20);

// The same from `count` images, store i's made by `image(i)` when its turn
// comes (one at a time in memory): stores put together from elsewhere, such
// as a router's backup of a store spread over shard groups.
absl::StatusOr<BackupManifest> WriteBackup(
    size_t count,
    const std::function<absl::StatusOr<StoreImage>(size_t)>& image,
    BackupSink& sink, absl::string_view engram_version,
    size_t piece_bytes = 1 << 20);

// A store spread over shard groups, as one: the images of its groups (in
// group order, each from one replica's backup) put together — every group's
// patterns in group order, the digests summed, each group's next id kept
// (group_next_ids; next_id the largest), the newest fitted map, the earliest
// creation time. FAILED_PRECONDITION if the groups' settings differ (a
// change was still reaching them).
absl::StatusOr<StoreImage> MergeGroupImages(std::vector<StoreImage> groups);

// What each of `groups` shard groups holds of `image` (placement.h): its
// patterns in the image's order, their digest, and a next id that hands out
// no id the backup's store or groups had handed out. Settings and map are
// every group's. The patterns move from `image` into the parts.
std::vector<StoreImage> SplitImageByGroup(StoreImage image, uint32_t groups);

// Gives a backup's files, whole, by their path in the backup.
class BackupSource {
 public:
  virtual ~BackupSource() = default;
  // NOT_FOUND if there is no such file.
  virtual absl::StatusOr<std::string> Read(const std::string& file) = 0;
};

// A backup directory on disk. Only paths a backup has are ever read.
class DirectorySource : public BackupSource {
 public:
  explicit DirectorySource(std::string dir) : dir_(std::move(dir)) {}
  absl::StatusOr<std::string> Read(const std::string& file) override;

 private:
  const std::string dir_;
};

// A backup's files received in pieces (a streamed restore), at most
// `max_bytes` in all; only the manifest and store files are accepted. Each
// file can be read once: Read hands it over rather than copy it.
class MemorySource : public BackupSource {
 public:
  explicit MemorySource(size_t max_bytes) : max_bytes_(max_bytes) {}
  absl::Status Append(const std::string& file, absl::string_view data);
  absl::StatusOr<std::string> Read(const std::string& file) override;

 private:
  const size_t max_bytes_;
  size_t bytes_ = 0;
  std::map<std::string, std::string> files_;
};

// The manifest, checked against manifest.sha256, its kind and its format.
absl::StatusOr<BackupManifest> ReadManifest(BackupSource& source);

// The store of the manifest named `name` (empty: the only one), or
// NOT_FOUND naming the stores it holds.
absl::StatusOr<const BackupStore*> FindStore(const BackupManifest& manifest,
                                             absl::string_view name);

// One store of a backup, every file checked against its size and SHA-256
// and decoded, its pattern count and digest checked against the manifest.
// Reads each of the store's files once.
absl::StatusOr<StoreImage> ReadStore(BackupSource& source,
                                     const BackupStore& entry);

// OK if `path` is one a backup has (the manifest, its checksum, or
// stores/NAME/FILE of a valid store name and a store file's name); a writer
// checks the names it is sent before it creates a file.
absl::Status CheckBackupPath(absl::string_view path);

// The file at `path` the manifest lists for `entry`, read and checked
// against its size and SHA-256; DATA_LOSS naming the file if it is not
// listed, missing, or differs.
absl::StatusOr<std::string> ReadListedFile(BackupSource& source,
                                           const BackupStore& entry,
                                           const std::string& path);

// Lowercase hex SHA-256 of `data`.
std::string Sha256Hex(absl::string_view data);

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_BACKUP_H_
