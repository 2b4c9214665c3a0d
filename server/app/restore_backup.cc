#include "server/app/restore_backup.h"

#include <filesystem>
#include <memory>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/base/log.h"
#include "server/base/steady_clock.h"
#include "server/store/backup.h"
#include "server/store/registry.h"

namespace engram::app {

namespace {

// Writes every store of the backup into a new database at storage.path;
// the number of patterns written.
absl::StatusOr<uint64_t> WriteStores(store::BackupSource& source,
                                     const store::BackupManifest& manifest,
                                     const std::string& backup_dir,
                                     const store::RocksDbOptions& storage,
                                     const store::Limits& limits) {
  absl::StatusOr<std::unique_ptr<store::RocksDbStorage>> db =
      store::RocksDbStorage::Open(storage);
  if (!db.ok()) return db.status();
  store::StoreRegistry registry(limits, db->get());
  if (absl::Status status = registry.Load(); !status.ok()) return status;
  uint64_t patterns = 0;
  for (const store::BackupStore& entry : manifest.stores()) {
    absl::StatusOr<store::StoreImage> image = store::ReadStore(source, entry);
    if (!image.ok()) {
      return absl::Status(image.status().code(),
                          absl::StrCat("--restore_from=", backup_dir, ": ",
                                       image.status().message()));
    }
    if (absl::Status status =
            registry.Restore(*image, /*replace=*/false).status();
        !status.ok()) {
      return status;
    }
    patterns += image->patterns.size();
  }
  if (absl::Status status = (*db)->Close(); !status.ok()) return status;
  return patterns;
}

}  // namespace

absl::Status RestoreServer(const std::string& backup_dir,
                           store::RocksDbOptions storage,
                           const store::Limits& limits) {
  namespace fs = std::filesystem;
  const absl::Time start = SteadyNow();
  const fs::path target = storage.path;
  std::error_code error;
  if (fs::exists(target, error) && !fs::is_empty(target, error)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--restore_from needs an empty --data_dir, and ", target.string(),
        " holds a database; start with an empty or new --data_dir"));
  }
  store::DirectorySource source(backup_dir);
  absl::StatusOr<store::BackupManifest> manifest = store::ReadManifest(source);
  if (!manifest.ok()) {
    return absl::Status(manifest.status().code(),
                        absl::StrCat("--restore_from=", backup_dir, ": ",
                                     manifest.status().message()));
  }
  const fs::path staging = target.string() + ".restoring";
  fs::remove_all(staging, error);
  if (error) {
    return absl::UnavailableError(absl::StrCat(
        "cannot remove ", staging.string(), ": ", error.message()));
  }
  storage.path = staging.string();
  absl::StatusOr<uint64_t> patterns =
      WriteStores(source, *manifest, backup_dir, storage, limits);
  if (!patterns.ok()) {
    fs::remove_all(staging, error);
    return patterns.status();
  }
  if (fs::exists(target, error)) fs::remove(target, error);  // Empty.
  fs::rename(staging, target, error);
  if (error) {
    return absl::UnavailableError(
        absl::StrCat("cannot move the restored database ", staging.string(),
                     " to ", target.string(), ": ", error.message()));
  }
  Log(LogLevel::kInfo,
      "restored %d stores (%d patterns) from the backup in %s, taken %s by "
      "engram %s, in %.1f s",
      manifest->stores_size(), *patterns, backup_dir, manifest->create_time(),
      manifest->engram_version(), SecondsSince(start));
  return absl::OkStatus();
}

}  // namespace engram::app
