// Stores on RocksDB under one directory, one column family per store, so a
// damaged table file can only ever harm the one store whose data it holds.
// docs/format.md describes the layout; a data directory of engram 0.1 (one
// key space for all stores) is migrated at open.
//
// Every call is one atomic WriteBatch; with `sync` (the default) the
// write-ahead log is fsynced before the call returns, so an acknowledged
// write survives kill -9 and power loss. Without it, a write survives kill -9
// (the log is in the OS page cache) but may be lost if the machine goes down.
// A clean Close() flushes every store into table files, so nothing stays only
// in the log.
//
// Faults:
// - A write that fails for want of space (or any I/O error) changes nothing
//   and returns RESOURCE_EXHAUSTED (UNAVAILABLE for other I/O errors); later
//   writes retry RocksDB's recovery, so writes work again once space is freed,
//   without a restart.
// - Open on a full disk opens the database read-only: Load works, writes are
//   refused, and each write (at most every `reopen_interval`) tries to reopen
//   it for writing.
// - A damaged write-ahead log makes Open fail with DATA_LOSS naming the file,
//   where it is damaged and what would be lost, unless `accept_data_loss`:
//   then every readable record is recovered and the stores whose writes were
//   lost are marked DAMAGED, durably, with the report.
// - A damaged table file makes Load report the store it belongs to as
//   damaged; the others load.
//
// Derived data (per-row norms, the id index) is rebuilt at load: it costs one
// pass over the rows, which the load makes anyway, and can never disagree
// with the rows.
//
// Thread-safe: RocksDB serialises writes and groups concurrent commits;
// creating and dropping a store's column family, and reopening, take an
// exclusive lock.
#ifndef ENGRAM_SERVER_STORE_ROCKSDB_STORAGE_H_
#define ENGRAM_SERVER_STORE_ROCKSDB_STORAGE_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/base/mutex.h"
#include "server/store/storage.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
struct Options;
class WriteBatch;
}  // namespace rocksdb

namespace engram::store {

namespace internal {
struct WalFile;
}  // namespace internal

struct RocksDbOptions {
  std::string path;  // The database directory; created if missing.
  bool sync = true;  // fsync the write-ahead log before acknowledging.
  // Start despite a damaged write-ahead log: recover every readable record
  // and mark the stores that lost writes DAMAGED.
  bool accept_data_loss = false;
  // How often a read-only database (opened on a full disk) tries to reopen
  // for writing, and a stopped one (a write failed) tries to resume.
  absl::Duration retry_interval = absl::Seconds(1);
};

class RocksDbStorage : public StorageBackend {
 public:
  // Opens (or creates) the database; fails if another process holds it, if
  // its files are damaged beyond what Load can isolate to one store, or if
  // its write-ahead log is damaged (unless accept_data_loss).
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
  absl::Status PutStamp(absl::string_view store, uint64_t stamp) override;
  absl::Status PutWholeStore(const StoreImage& image) override;
  absl::Status Load(LoadVisitor& visitor) override;

  // What Open had to do beyond opening, for the log: a migration, a
  // read-only open, a recovery that accepted data loss; empty if nothing.
  std::string open_report() const { return open_report_; }
  bool read_only() const;

  // Flushes every store into table files and closes the database.
  absl::Status Close();

 private:
  // kWritable and kReadOnly serve; kInspect (read-only) and kRepair
  // (writable) skip table files RocksDB cannot open and damaged log records,
  // to find and set aside a damaged store.
  enum class OpenMode { kWritable, kReadOnly, kInspect, kRepair };
  static rocksdb::Options DbOptions(const RocksDbOptions& options,
                                    OpenMode mode);

  explicit RocksDbStorage(const RocksDbOptions& options);

  // Opens the database with the column families it has.
  absl::Status OpenDb(OpenMode mode) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseDb() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Column family id -> store name ("" for the default family).
  std::map<uint32_t, std::string> FamilyNames() const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The DATA_LOSS refusal of a start on a damaged write-ahead log, naming
  // the file, where it is damaged and which stores would lose writes.
  absl::Status RefuseDamagedLog(const std::vector<internal::WalFile>& logs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After an open that accepted data loss: marks the stores that lost
  // writes DAMAGED and retires the damaged log.
  absl::Status RecordLogLoss(const std::vector<internal::WalFile>& logs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Table files RocksDB cannot open, by the store they belong to (store ->
  // "file (error), ..."; "" for the default family).
  std::map<std::string, std::string> FindDamagedTables()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Replaces the default family's damaged files (they hold only the format
  // marker) by a new marker; leaves the database closed.
  absl::Status RewriteMarker(const std::string& tables)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // With accept_data_loss: replaces those stores' data by a damage record
  // each, then opens for writing.
  absl::Status SetAsideStores(const std::map<std::string, std::string>& damaged)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a read-only open: OK if the layout is current (a read-only
  // database cannot be migrated), else an error (and the database closed).
  absl::Status CheckLayoutReadOnly() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Replaces a store's family by its settings and a damage record.
  absl::Status ReplaceWithDamageRecord(const std::string& store,
                                       const std::string& report)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A new family for `store`, recorded in families_.
  absl::StatusOr<rocksdb::ColumnFamilyHandle*> CreateFamily(
      const std::string& store, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A whole store in one write (`what` names it in errors): a new family
  // with every record, or an existing one's keys replaced. A crash before
  // the write leaves a family without settings, which Load drops.
  absl::Status WriteWholeStore(const StoreImage& image, absl::string_view what);
  absl::Status WriteSynced(rocksdb::WriteBatch& batch, absl::string_view what)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status FlushAll() ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Layout: a fresh database gets the format marker; engram 0.1's single
  // key space is migrated to column families.
  absl::Status PrepareLayout() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MigrateFromLayout1() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes `batch` to the store's column family, atomically, synced if
  // options_.sync and `sync` (false for a record that may be lost with the
  // writes after it, the log keeping writes in order: the write stamp).
  // `reserve`: the batch's size if known, so that it is allocated once.
  absl::Status Commit(absl::string_view store,
                      absl::FunctionRef<void(rocksdb::WriteBatch&,
                                             rocksdb::ColumnFamilyHandle*)>
                          fill,
                      bool sync = true, size_t reserve = 0);
  // Load's reading part; `orphans` gets the families of creates that never
  // completed.
  absl::Status LoadStores(LoadVisitor& visitor,
                          std::vector<std::string>& orphans);
  // Before a write: reopens a read-only database for writing, or resumes a
  // stopped one, at most once per retry_interval.
  void RetryWritable();

  const RocksDbOptions options_;
  std::string open_report_;

  mutable Mutex mu_;
  std::unique_ptr<rocksdb::DB> db_ ABSL_GUARDED_BY(mu_);
  rocksdb::ColumnFamilyHandle* default_family_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Store name -> its column family.
  absl::flat_hash_map<std::string, rocksdb::ColumnFamilyHandle*> families_
      ABSL_GUARDED_BY(mu_);
  bool read_only_ ABSL_GUARDED_BY(mu_) = false;
  std::string read_only_reason_ ABSL_GUARDED_BY(mu_);
  // Read-only for want of space (retry) or because of damage (no retry).
  bool retry_writes_ ABSL_GUARDED_BY(mu_) = true;
  // Stores whose table files RocksDB cannot open (read-only start).
  std::map<std::string, std::string> damaged_tables_ ABSL_GUARDED_BY(mu_);
  // A write failed: RocksDB stops writes until it resumes.
  std::atomic<bool> stopped_{false};
  std::atomic<int64_t> last_retry_ns_{0};
};

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_ROCKSDB_STORAGE_H_
