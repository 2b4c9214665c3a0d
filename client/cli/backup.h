// `engram backup`: an engramd's backups as directories of files
// (docs/backup.md; the format is server/store/backup.h's).
#ifndef ENGRAM_CLIENT_CLI_BACKUP_H_
#define ENGRAM_CLIENT_CLI_BACKUP_H_

#include <string>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "server/store/backup.h"

namespace engram::client {

// Writes the backup of `store` ("" for every store) the server streams into
// `dir`, which must not exist or be empty: into DIR.partial first, every
// file fsynced, then renamed to DIR, so a DIR that exists is complete; then
// checks it as VerifyBackupDir does.
absl::StatusOr<store::BackupManifest> CreateBackupDir(Client& client,
                                                      const std::string& store,
                                                      const std::string& dir);

// Checks every file of the backup in `dir` against the manifest and decodes
// every store; the manifest if all of it is sound.
absl::StatusOr<store::BackupManifest> VerifyBackupDir(const std::string& dir);

// Restores store `source` of the backup in `dir` ("": its only store) under
// `name` ("": its own): checked here first, then sent to the server.
absl::StatusOr<v1::Store> RestoreFromDir(Client& client, const std::string& dir,
                                         const std::string& source,
                                         const std::string& name, bool replace);

}  // namespace engram::client

#endif  // ENGRAM_CLIENT_CLI_BACKUP_H_
