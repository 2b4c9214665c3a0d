// Backups through a router (docs/backup.md, "A store spread over shard
// groups"): CreateBackup puts each store together from the backup of one
// ready replica of every group; RestoreStore splits a backup's store over
// the groups by placement and restores each part on every ready replica of
// its group.
#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpcpp/client_context.h"
#include "server/base/log.h"
#include "server/base/steady_clock.h"
#include "server/cluster/router.h"
#include "server/cluster/shard_calls.h"
#include "server/rpc/backup_stream.h"
#include "server/store/backup.h"

namespace engram::cluster {

namespace {

namespace api = engram::v1;

// A backup's files kept as the messages that send them.
class CollectedFiles : public store::BackupSink {
 public:
  absl::Status Write(absl::string_view file, absl::string_view data) override {
    api::BackupChunk& chunk = chunks_.emplace_back();
    chunk.set_file(std::string(file));
    chunk.set_data(std::string(data));
    return absl::OkStatus();
  }
  const std::vector<api::BackupChunk>& chunks() const { return chunks_; }

 private:
  std::vector<api::BackupChunk> chunks_;
};

}  // namespace

absl::StatusOr<store::StoreImage> Router::BackupFrom(const Replica& replica,
                                                     const std::string& name,
                                                     absl::Time deadline) {
  absl::StatusOr<std::shared_ptr<grpc::ClientContext>> watched =
      pool_->WatchedContext(deadline);
  if (!watched.ok()) return watched.status();
  grpc::ClientContext* context = watched->get();
  api::CreateBackupRequest request;
  request.set_store(name);
  const absl::Time start = SteadyNow();
  std::unique_ptr<grpc::ClientReader<api::BackupChunk>> reader =
      replica.engram->CreateBackup(context, request);
  store::MemorySource files(options_.max_restore_bytes);
  api::BackupChunk chunk;
  size_t received = 0;
  absl::Status kept;
  while (reader->Read(&chunk)) {
    received += chunk.ByteSizeLong();
    kept = files.Append(chunk.file(), chunk.data());
    if (!kept.ok()) {
      context->TryCancel();
      while (reader->Read(&chunk)) {
      }
      break;
    }
  }
  const grpc::Status status =
      pool_->cutter().Unwatch(context, reader->Finish());
  pool_->Record(replica, "CreateBackup", status, SteadyNow() - start,
                request.ByteSizeLong(), received);
  auto from_shard = [&](const absl::Status& s) {
    return absl::Status(
        s.code(), absl::StrCat("the backup of store '", name, "' from shard ",
                               replica.address, ": ", s.message()));
  };
  if (!kept.ok()) return from_shard(kept);
  if (absl::Status s = FromShard(status, replica); !s.ok()) return s;
  absl::StatusOr<store::BackupManifest> manifest = store::ReadManifest(files);
  if (!manifest.ok()) return from_shard(manifest.status());
  absl::StatusOr<const store::BackupStore*> entry =
      store::FindStore(*manifest, name);
  if (!entry.ok()) return from_shard(entry.status());
  absl::StatusOr<store::StoreImage> image = store::ReadStore(files, **entry);
  if (!image.ok()) return from_shard(image.status());
  return image;
}

absl::StatusOr<store::StoreImage> Router::GroupBackup(const std::string& name,
                                                      uint32_t group,
                                                      absl::Time deadline) {
  absl::StatusOr<store::StoreImage> image;
  if (absl::Status s = ReadFromGroup(*pool_, group,
                                     [&](const Replica& replica) {
                                       image =
                                           BackupFrom(replica, name, deadline);
                                       return image.status();
                                     });
      !s.ok()) {
    return s;
  }
  return image;
}

grpc::Status Router::CreateBackup(
    Ctx* context, const api::CreateBackupRequest* request,
    grpc::ServerWriter<api::BackupChunk>* writer) {
  rpc::Call call(policy_, "CreateBackup", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  const absl::Time deadline = DeadlineOf(context);
  std::vector<std::string> names;
  if (!request->store().empty()) {
    names.push_back(request->store());
  } else {
    absl::StatusOr<std::vector<std::string>> all = StoreNames(deadline);
    if (!all.ok()) return call.Done(all.status());
    // As one engramd does: a store DAMAGED in any group is left out.
    for (std::string& name : *all) {
      absl::StatusOr<api::Store> merged = MergedStore(name, deadline);
      if (!merged.ok()) return call.Done(merged.status());
      if (merged->state() == api::Store::DAMAGED) {
        Log(LogLevel::kWarning,
            "backup: store '%s' is DAMAGED (%s) and left out", name,
            merged->state_detail());
        continue;
      }
      names.push_back(std::move(name));
    }
  }
  const uint32_t groups = pool_->groups();
  rpc::ChunkWriter sink(context, writer);
  absl::StatusOr<store::BackupManifest> written = store::WriteBackup(
      names.size(),
      [&](size_t i) -> absl::StatusOr<store::StoreImage> {
        std::vector<store::StoreImage> parts(groups);
        absl::Status got = FirstError(InParallel(groups, [&](size_t g) {
          absl::StatusOr<store::StoreImage> part =
              GroupBackup(names[i], static_cast<uint32_t>(g), deadline);
          if (!part.ok()) return part.status();
          parts[g] = *std::move(part);
          return absl::OkStatus();
        }));
        if (!got.ok()) return got;
        return store::MergeGroupImages(std::move(parts));
      },
      sink, ENGRAM_VERSION, rpc::BackupPieceBytes(*policy_));
  if (written.ok()) {
    uint64_t patterns = 0;
    for (const store::BackupStore& s : written->stores()) {
      patterns += s.patterns();
    }
    Log(LogLevel::kInfo,
        "backup of %d stores, %d patterns from %d shard groups sent",
        written->stores_size(), patterns, groups);
  }
  return call.Done(written.status());
}

absl::Status Router::RestoreOn(const Replica& replica, const std::string& name,
                               bool replace,
                               const std::vector<api::BackupChunk>& files,
                               absl::Time deadline) {
  absl::StatusOr<std::shared_ptr<grpc::ClientContext>> watched =
      pool_->WatchedContext(deadline);
  if (!watched.ok()) return watched.status();
  grpc::ClientContext* context = watched->get();
  api::Store restored;
  const absl::Time start = SteadyNow();
  std::unique_ptr<grpc::ClientWriter<api::RestoreStoreRequest>> writer =
      replica.engram->RestoreStore(context, &restored);
  api::RestoreStoreRequest message;
  message.set_name(name);
  message.set_replace(replace);
  size_t sent = 0;
  for (const api::BackupChunk& chunk : files) {
    *message.mutable_chunk() = chunk;
    sent += message.ByteSizeLong();
    if (!writer->Write(message)) break;  // Finish says why.
    message.Clear();
  }
  writer->WritesDone();
  const grpc::Status status =
      pool_->cutter().Unwatch(context, writer->Finish());
  pool_->Record(replica, "RestoreStore", status, SteadyNow() - start, sent,
                restored.ByteSizeLong());
  return FromShard(status, replica);
}

grpc::Status Router::RestoreStore(
    Ctx* context, grpc::ServerReader<api::RestoreStoreRequest>* reader,
    api::Store* response) {
  rpc::Call call(policy_, "RestoreStore", "");
  if (!call.Admit(*context, nullptr)) return call.Refused();
  absl::StatusOr<rpc::RestoreRequest> restore = rpc::ReceiveRestore(
      reader, policy_->max_message_bytes, options_.max_restore_bytes, call);
  if (!restore.ok()) return call.Done(restore.status());
  const std::string name = restore->image.settings.name;
  if (absl::Status status =
          store::ValidateSettings(restore->image.settings, options_.limits);
      !status.ok()) {
    return call.Done(status);
  }
  const absl::Time deadline = DeadlineOf(context);
  ForgetRetrieval(name);  // A store of this name may be replaced.
  // Every group must have a replica to take its part before any is sent.
  absl::ReaderMutexLock writing(&pool_->write_gate());
  const uint32_t groups = pool_->groups();
  std::vector<std::vector<const Replica*>> targets;
  for (uint32_t g = 0; g < groups; ++g) {
    absl::StatusOr<std::vector<const Replica*>> ready = pool_->ReadyReplicas(g);
    if (!ready.ok()) return call.Done(ready.status());
    targets.push_back(*std::move(ready));
  }
  const size_t patterns = restore->image.patterns.size();
  std::vector<store::StoreImage> parts =
      store::SplitImageByGroup(std::move(restore->image), groups);
  // The groups at once, each replica of a group in turn. As a write: the
  // group's first replica must take its part; one after it that does not
  // (gone meanwhile, a stream cut) goes stale, and is repaired from the
  // replica that took it before it serves again.
  std::vector<std::vector<const Replica*>> took(groups);
  const absl::Status failed = FirstError(InParallel(groups, [&](size_t g) {
    CollectedFiles files;
    absl::StatusOr<store::BackupManifest> written = store::WriteBackup(
        1, [&](size_t) { return std::move(parts[g]); }, files, ENGRAM_VERSION,
        rpc::BackupPieceBytes(*policy_));
    if (!written.ok()) return written.status();
    for (const Replica* replica : targets[g]) {
      if (absl::Status s = RestoreOn(*replica, name, restore->replace,
                                     files.chunks(), deadline);
          !s.ok()) {
        if (took[g].empty()) return s;
        pool_->MarkStale(*replica, s.message());
        continue;
      }
      took[g].push_back(replica);
    }
    return absl::OkStatus();
  }));
  std::vector<const Replica*> restored;
  for (const std::vector<const Replica*>& group : took) {
    restored.insert(restored.end(), group.begin(), group.end());
  }
  if (!failed.ok()) {
    std::vector<std::string> kept;
    for (const Replica* replica : restored) {
      if (!restore->replace) {
        // Undone: the name was free, so nothing of it was anyone's.
        api::DeleteStoreRequest undo;
        undo.set_name(name);
        api::DeleteStoreResponse ignored;
        if (Unary(*pool_, *replica, *replica->engram,
                  &api::Engram::Stub::DeleteStore, undo, &ignored, deadline)
                .ok()) {
          continue;
        }
      }
      kept.push_back(replica->address);
    }
    return call.Done(absl::Status(
        failed.code(),
        absl::StrCat(
            "restoring store '", name, "': ", failed.message(), "; ",
            kept.empty()
                ? "nothing of it was kept"
                : absl::StrCat("the replicas ", absl::StrJoin(kept, ", "),
                               " took their part already and keep it: run "
                               "the restore again (with replace)"))));
  }
  Log(LogLevel::kInfo,
      "restored store '%s' (%d patterns over %d shard groups) from store "
      "'%s' of a backup of %s",
      name, patterns, groups, restore->source, restore->backup_time);
  absl::StatusOr<api::Store> merged = MergedStore(name, deadline);
  if (!merged.ok()) return call.Done(merged.status());
  *response = *std::move(merged);
  return call.Done(absl::OkStatus());
}

}  // namespace engram::cluster
