// Backups over gRPC, for engramd and a router alike: CreateBackup's files
// sent as BackupChunk messages, and RestoreStore's stream received, checked
// and decoded into the store it restores.
//
//   ChunkWriter sink(context, writer);
//   store::WriteBackup(stores, sink, ENGRAM_VERSION, piece);
//
//   absl::StatusOr<RestoreRequest> restore =
//       ReceiveRestore(reader, policy.max_message_bytes, max_restore_bytes);
//
// Thread-safe: one call's objects belong to that call.
#ifndef ENGRAM_SERVER_RPC_BACKUP_STREAM_H_
#define ENGRAM_SERVER_RPC_BACKUP_STREAM_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engram/v1/engram.grpc.pb.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/sync_stream.h"
#include "server/rpc/call.h"
#include "server/store/backup.h"

namespace engram::rpc {

// Sends a backup's files as BackupChunk messages; CANCELLED once the client
// has gone.
class ChunkWriter : public store::BackupSink {
 public:
  ChunkWriter(grpc::ServerContext* context,
              grpc::ServerWriter<v1::BackupChunk>* writer)
      : context_(context), writer_(writer) {}

  absl::Status Write(absl::string_view file, absl::string_view data) override;

 private:
  grpc::ServerContext* const context_;
  grpc::ServerWriter<v1::BackupChunk>* const writer_;
  v1::BackupChunk chunk_;
};

// The size of the pieces a backup is sent in: 1 MiB, or half a message if
// messages are smaller.
size_t BackupPieceBytes(const CallPolicy& policy);

// One store of a backup a RestoreStore stream sent, every byte checked.
struct RestoreRequest {
  store::StoreImage image;  // Named as it is to be restored.
  bool replace = false;
  std::string source;       // Its name in the backup.
  std::string backup_time;  // When the backup was taken.
};

// Reads the whole stream (at most `max_restore_bytes` of files, each message
// at most `max_message_bytes`; a message that does not parse is refused, see
// ReadNext), checks the manifest and the chosen store's files, and decodes
// the store. Every message takes its share of the write budget for `call`
// (a restore holds all it is sent, and the store decoded from it, until it
// is stored) and the stream is refused when that share is not free.
absl::StatusOr<RestoreRequest> ReceiveRestore(
    grpc::ServerReaderInterface<v1::RestoreStoreRequest>* reader,
    size_t max_message_bytes, size_t max_restore_bytes, Call& call);

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_BACKUP_STREAM_H_
