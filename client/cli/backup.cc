#include "client/cli/backup.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/files.h"

namespace engram::client {

namespace {

namespace fs = std::filesystem;

absl::Status Errno(const std::string& what) { return ErrnoStatus(errno, what); }

// Writes the pieces of a backup's files into a directory, one open file at
// a time, each fsynced when it is complete.
class DirectoryWriter {
 public:
  explicit DirectoryWriter(fs::path dir) : dir_(std::move(dir)) {}
  ~DirectoryWriter() {
    if (fd_ >= 0) ::close(fd_);
  }

  absl::Status Write(const v1::BackupChunk& chunk) {
    if (chunk.file() != file_) {
      if (absl::Status status = Close(); !status.ok()) return status;
      // The server names the files; a name that is not a backup's would
      // write outside the directory.
      if (absl::Status status = store::CheckBackupPath(chunk.file());
          !status.ok()) {
        return status;
      }
      const fs::path path = dir_ / chunk.file();
      std::error_code error;
      fs::create_directories(path.parent_path(), error);
      if (error) {
        return absl::UnavailableError(absl::StrCat(
            "creating ", path.parent_path().string(), ": ", error.message()));
      }
      fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
      if (fd_ < 0) return Errno(absl::StrCat("creating ", path.string()));
      file_ = chunk.file();
      if (path.parent_path() != dir_) dirs_.insert(path.parent_path());
    }
    return WriteAll(fd_, chunk.data(), (dir_ / file_).string());
  }

  // Closes the last file and syncs every directory written to below the
  // backup's own (which FillNewDirectory syncs), once each.
  absl::Status Finish() {
    if (absl::Status status = Close(); !status.ok()) return status;
    for (const fs::path& dir : dirs_) {
      if (absl::Status status = SyncPath(dir); !status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Close() {
    if (fd_ < 0) return absl::OkStatus();
    const bool synced = ::fsync(fd_) == 0;
    const bool closed = ::close(fd_) == 0;
    fd_ = -1;
    if (!synced || !closed) {
      return Errno(absl::StrCat("writing ", (dir_ / file_).string()));
    }
    return absl::OkStatus();
  }

  const fs::path dir_;
  std::string file_;
  int fd_ = -1;
  std::set<fs::path> dirs_;
};

}  // namespace

absl::StatusOr<store::BackupManifest> CreateBackupDir(Client& client,
                                                      const std::string& store,
                                                      const std::string& dir) {
  absl::Status status =
      FillNewDirectory(dir, "back up", [&](const std::string& partial) {
        DirectoryWriter writer(partial);
        absl::Status written = client.CreateBackup(
            store,
            [&](const v1::BackupChunk& chunk) { return writer.Write(chunk); });
        return written.ok() ? writer.Finish() : written;
      });
  if (!status.ok()) return status;
  return VerifyBackupDir(dir);
}

absl::StatusOr<store::BackupManifest> VerifyBackupDir(const std::string& dir) {
  store::DirectorySource source(dir);
  absl::StatusOr<store::BackupManifest> manifest = store::ReadManifest(source);
  if (!manifest.ok()) return manifest.status();
  for (const store::BackupStore& entry : manifest->stores()) {
    absl::StatusOr<store::StoreImage> image = store::ReadStore(source, entry);
    if (!image.ok()) return image.status();
  }
  return manifest;
}

absl::StatusOr<v1::Store> RestoreFromDir(Client& client, const std::string& dir,
                                         const std::string& source,
                                         const std::string& name,
                                         bool replace) {
  store::DirectorySource files(dir);
  absl::StatusOr<store::BackupManifest> manifest = store::ReadManifest(files);
  if (!manifest.ok()) return manifest.status();
  absl::StatusOr<const store::BackupStore*> entry =
      store::FindStore(*manifest, source);
  if (!entry.ok()) return entry.status();
  // Every file is checked against the manifest here first, so a damaged
  // backup is refused before it is sent (the server checks it all again,
  // records included).
  std::vector<std::pair<std::string, std::string>> sent;
  for (const std::string& path : {std::string(store::kManifestFile),
                                  std::string(store::kManifestSumFile)}) {
    absl::StatusOr<std::string> data = files.Read(path);
    if (!data.ok()) return data.status();
    sent.emplace_back(path, *std::move(data));
  }
  for (const auto& file : (*entry)->files()) {
    absl::StatusOr<std::string> data =
        store::ReadListedFile(files, **entry, file.path());
    if (!data.ok()) return data.status();
    sent.emplace_back(file.path(), *std::move(data));
  }
  v1::RestoreStoreRequest request;
  request.set_source((*entry)->name());
  request.set_name(name);
  request.set_replace(replace);
  return client.RestoreStore(request, sent);
}

}  // namespace engram::client
