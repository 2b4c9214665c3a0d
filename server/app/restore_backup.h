// engramd --restore_from: a whole server from a backup directory, before it
// serves.
#ifndef ENGRAM_SERVER_APP_RESTORE_BACKUP_H_
#define ENGRAM_SERVER_APP_RESTORE_BACKUP_H_

#include <string>

#include "absl/status/status.h"
#include "server/store/rocksdb_storage.h"
#include "server/store/settings.h"

namespace engram::app {

// Restores every store of the backup in `backup_dir` into a new database at
// storage.path, which must not exist or be empty (FAILED_PRECONDITION
// otherwise). The stores are written to a sibling directory first and it is
// renamed into place at the end: a restore that fails or is killed leaves
// storage.path as it was. Every file is checked before anything is written.
absl::Status RestoreServer(const std::string& backup_dir,
                           store::RocksDbOptions storage,
                           const store::Limits& limits);

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_RESTORE_BACKUP_H_
