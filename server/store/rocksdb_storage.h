// Stores on RocksDB under one directory: settings, patterns (ids, values,
// labels, metadata) and each store's id sequence. Every call is one atomic
// WriteBatch; with `sync` (the default) the write-ahead log is fsynced before
// the call returns, so an acknowledged write survives kill -9 and power loss.
// Without it, a write survives kill -9 (the log is in the OS page cache) but
// may be lost if the machine itself goes down.
//
// Derived data (per-row norms, the id index) is rebuilt at load: it costs one
// pass over the rows, which the load makes anyway, and can never disagree
// with the rows.
//
// Thread-safe: RocksDB serialises writes and groups concurrent commits.
#ifndef ENGRAM_SERVER_STORE_ROCKSDB_STORAGE_H_
#define ENGRAM_SERVER_STORE_ROCKSDB_STORAGE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/store/storage.h"

namespace rocksdb {
class DB;
class WriteBatch;
}  // namespace rocksdb

namespace engram::store {

struct RocksDbOptions {
  std::string path;  // The database directory; created if missing.
  bool sync = true;  // fsync the write-ahead log before acknowledging.
};

class RocksDbStorage : public StorageBackend {
 public:
  // Opens (or creates) the database; fails if another process holds it.
  static absl::StatusOr<std::unique_ptr<RocksDbStorage>> Open(
      const RocksDbOptions& options);
  ~RocksDbStorage() override;
  RocksDbStorage(const RocksDbStorage&) = delete;
  RocksDbStorage& operator=(const RocksDbStorage&) = delete;

  absl::Status PutStore(const StoreSettings& settings) override;
  absl::Status DeleteStore(absl::string_view name) override;
  absl::Status PutMap(absl::string_view store, const FitRecord& record,
                      const core::FeatureMap& map) override;
  absl::Status WritePatterns(absl::string_view store,
                             absl::Span<const Pattern> added,
                             absl::Span<const uint64_t> deleted,
                             uint64_t next_id) override;
  absl::Status Load(LoadVisitor& visitor) override;

  // Flushes memtables and closes the database.
  absl::Status Close();

 private:
  RocksDbStorage(const RocksDbOptions& options, rocksdb::DB* db);
  // Writes `batch` atomically, synced if options_.sync.
  absl::Status Commit(rocksdb::WriteBatch& batch);

  const RocksDbOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::atomic<bool> write_failed_{false};
};

// The record format of one pattern (exposed for tests of damaged data).
std::string EncodePattern(const Pattern& pattern);
absl::StatusOr<Pattern> DecodePattern(uint64_t id, absl::string_view bytes);

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_ROCKSDB_STORAGE_H_
