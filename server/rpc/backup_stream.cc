#include "server/rpc/backup_stream.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/rpc/call.h"
#include "server/rpc/client_stream.h"
#include "server/store/settings.h"

namespace engram::rpc {

absl::Status ChunkWriter::Write(absl::string_view file,
                                absl::string_view data) {
  if (context_->IsCancelled()) {
    return absl::CancelledError("the client went away during the backup");
  }
  chunk_.set_file(std::string(file));
  chunk_.set_data(std::string(data));
  if (!writer_->Write(chunk_)) {
    return absl::CancelledError("the client stopped reading the backup");
  }
  return absl::OkStatus();
}

size_t BackupPieceBytes(const CallPolicy& policy) {
  return std::min<size_t>(1 << 20, policy.max_message_bytes / 2);
}

absl::StatusOr<RestoreRequest> ReceiveRestore(
    grpc::ServerReaderInterface<v1::RestoreStoreRequest>* reader,
    size_t max_message_bytes, size_t max_restore_bytes, Call& call) {
  store::MemorySource files(max_restore_bytes);
  v1::RestoreStoreRequest message, first;
  uint64_t messages = 0;
  bool unparsed = false;
  while (ReadNext(*reader, message, unparsed)) {
    const uint64_t index = messages++;
    const size_t message_bytes = message.ByteSizeLong();
    if (message_bytes > max_message_bytes) {
      return TooLarge(absl::StrCat("message ", index), message_bytes,
                      max_message_bytes, "send smaller pieces of the files");
    }
    if (absl::Status status = call.GrowWrite(
            message_bytes,
            "raise it, or restore the backup with engramd --restore_from "
            "into an empty data directory");
        !status.ok()) {
      return absl::Status(status.code(), absl::StrCat("message ", index, ": ",
                                                      status.message()));
    }
    if (index == 0) {
      first.set_source(message.source());
      first.set_name(message.name());
      first.set_replace(message.replace());
    }
    if (message.has_chunk()) {
      if (absl::Status status =
              files.Append(message.chunk().file(), message.chunk().data());
          !status.ok()) {
        return absl::Status(status.code(), absl::StrCat("message ", index, ": ",
                                                        status.message()));
      }
    }
  }
  if (unparsed) return UnparsedMessage(messages, message);
  if (messages == 0) {
    return absl::InvalidArgumentError(
        "the stream held no message; send the backup's files");
  }
  absl::StatusOr<store::BackupManifest> manifest = store::ReadManifest(files);
  if (!manifest.ok()) return manifest.status();
  absl::StatusOr<const store::BackupStore*> entry =
      store::FindStore(*manifest, first.source());
  if (!entry.ok()) return entry.status();
  const std::string name =
      first.name().empty() ? (*entry)->name() : first.name();
  if (absl::Status status = store::ValidateStoreName(name); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("name: ", status.message()));
  }
  absl::StatusOr<store::StoreImage> image = store::ReadStore(files, **entry);
  if (!image.ok()) return image.status();
  RestoreRequest restore;
  restore.image = *std::move(image);
  restore.image.settings.name = name;
  restore.replace = first.replace();
  restore.source = (*entry)->name();
  restore.backup_time = manifest->create_time();
  return restore;
}

}  // namespace engram::rpc
