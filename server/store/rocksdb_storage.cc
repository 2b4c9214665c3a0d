#include "server/store/rocksdb_storage.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "rocksdb/db.h"
#include "rocksdb/listener.h"
#include "rocksdb/options.h"
#include "rocksdb/sst_file_reader.h"
#include "rocksdb/write_batch.h"
#include "server/base/log.h"
#include "server/base/steady_clock.h"
#include "server/store/internal/little_endian.h"
#include "server/store/internal/wal_scan.h"
#include "server/store/records.h"

namespace engram::store {

namespace {

// Layout 2 (docs/format.md). The default column family holds only the
// format marker; each store has a column family "store/NAME" with:
//   "settings" -> settings record     "next_id" -> 8 bytes, little-endian
//   "map"      -> fitted feature map  "damage"  -> why the store is DAMAGED
//   "stamp"    -> 8 bytes, little-endian: the last router write stamp
//   "p" id     -> pattern (id: 8 bytes big-endian, so patterns sort by id)
constexpr char kFormatKey[] = "engram.format";
constexpr char kFormat[] = "2";
constexpr char kFamilyPrefix[] = "store/";
constexpr char kSettingsKey[] = "settings";
constexpr char kNextIdKey[] = "next_id";
constexpr char kMapKey[] = "map";
constexpr char kDamageKey[] = "damage";
constexpr char kStampKey[] = "stamp";
constexpr char kPatternPrefix = 'p';
constexpr size_t kLoadBatch = 4096;
constexpr size_t kMigrationBatchBytes = 8 << 20;

std::string PatternKey(uint64_t id) {
  std::string key(1, kPatternPrefix);
  for (int shift = 56; shift >= 0; shift -= 8) {
    key.push_back(static_cast<char>((id >> shift) & 0xff));
  }
  return key;
}

// At least the bytes of a write batch that puts `patterns` and a few small
// records: per pattern its record, its 9-byte key, and the batch's tag,
// family and length varints.
size_t BatchBytes(absl::Span<const Pattern> patterns) {
  size_t bytes = 4096;
  for (const Pattern& p : patterns) bytes += EncodedPatternBound(p) + 32;
  return bytes;
}

uint64_t BigEndian64(const char* p) {
  uint64_t id = 0;
  for (int k = 0; k < 8; ++k) id = (id << 8) | static_cast<unsigned char>(p[k]);
  return id;
}

std::string Fixed64(uint64_t v) {
  std::string out;
  internal::PutFixed64(out, v);
  return out;
}

absl::string_view View(const rocksdb::Slice& s) {
  return absl::string_view(s.data(), s.size());
}

bool IsSpace(const rocksdb::Status& s) {
  return s.IsNoSpace() ||
         absl::StrContains(s.ToString(), "No space left on device");
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string message =
      absl::StrCat("storage ", what, ": ", s.ToString());
  if (IsSpace(s)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        message, " (writes resume once space is freed; reads are served)"));
  }
  if (s.IsCorruption()) return absl::DataLossError(message);
  if (s.IsIOError() || s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
}

// An 8-byte little-endian value of a store's family; `absent` if it has
// none (or one of another size).
absl::StatusOr<uint64_t> ReadFixed64(rocksdb::DB& db,
                                     const rocksdb::ReadOptions& read,
                                     rocksdb::ColumnFamilyHandle* family,
                                     const char* key, uint64_t absent) {
  std::string value;
  const rocksdb::Status s = db.Get(read, family, key, &value);
  if (s.ok() && value.size() == 8) return internal::LoadFixed64(value.data());
  if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "load");
  return absent;
}

// RocksDB's own log lines go to engramd's log (warnings and errors only), not
// to a LOG file in the database directory: a log file that cannot be written
// (a full disk) must not be able to take the process down.
class EngramLogger : public rocksdb::Logger {
 public:
  EngramLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format,
            va_list ap) override {
    if (level < GetInfoLogLevel() ||
        level == rocksdb::InfoLogLevel::HEADER_LEVEL) {
      return;
    }
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    Log(level >= rocksdb::InfoLogLevel::ERROR_LEVEL ? LogLevel::kError
                                                    : LogLevel::kWarning,
        "rocksdb: %s", line);
  }
};

// RocksDB's own recovery from a full disk waits until a whole write buffer
// (64 MiB) is free, which a small volume may never have; engram resumes on
// the next write instead (RetryWritable), which needs only the space the
// flush takes.
class NoAutoRecovery : public rocksdb::EventListener {
 public:
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason,
                            rocksdb::Status error,
                            bool* auto_recovery) override {
    error.PermitUncheckedError();
    *auto_recovery = false;
  }
};

}  // namespace

rocksdb::Options RocksDbStorage::DbOptions(const RocksDbOptions& options,
                                           OpenMode mode) {
  static const std::shared_ptr<rocksdb::Logger> logger =
      std::make_shared<EngramLogger>();
  static const std::shared_ptr<rocksdb::EventListener> listener =
      std::make_shared<NoAutoRecovery>();
  rocksdb::Options o;
  o.create_if_missing = true;
  o.IncreaseParallelism(2);
  o.compression = rocksdb::kNoCompression;  // Floats do not compress.
  o.write_buffer_size = 64 << 20;
  // No compaction by age: it would read a damaged store's files long after
  // the damage was found, and a compaction that fails on damage stops every
  // write (RocksDB's unrecoverable error).
  o.ttl = 0;
  o.periodic_compaction_seconds = 0;
  o.db_write_buffer_size = 256 << 20;  // All stores' memtables together.
  o.max_total_wal_size = 512 << 20;
  // Paranoid checks stop writes after a failed log write (RocksDB 7.8 would
  // otherwise write on to a log file in error, and abort) and make any
  // table file that cannot be opened fail the open. Only the inspecting and
  // repairing opens relax them, to reach the files around a damaged table;
  // the logs were checked by ScanLogs before.
  o.paranoid_checks =
      mode == OpenMode::kWritable || mode == OpenMode::kReadOnly;
  o.info_log = logger;
  o.listeners.push_back(listener);
  // A log that ends inside a record is a write cut short by a crash, never
  // acknowledged; damage anywhere else stops the open, so that no
  // acknowledged write is dropped silently. Accepting the loss recovers every
  // readable record and keeps the damaged log until the loss is recorded.
  o.wal_recovery_mode =
      options.accept_data_loss || mode == OpenMode::kInspect
          ? rocksdb::WALRecoveryMode::kSkipAnyCorruptedRecords
          : rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  o.avoid_flush_during_recovery = options.accept_data_loss;
  return o;
}

namespace {

std::string FamilyName(absl::string_view store) {
  return absl::StrCat(kFamilyPrefix, store);
}

// The stores each damaged stretch lost writes of; `names` maps column
// family ids to store names (the default family, 0, held engram 0.1's
// stores). A stretch that cannot be attributed affects every store.
struct Loss {
  std::string description;       // One line per damaged stretch.
  std::set<std::string> stores;  // Stores that lost writes.
  bool every_store = false;      // Some loss could not be attributed.
};
Loss DescribeLoss(const std::vector<internal::WalFile>& logs,
                  const std::map<uint32_t, std::string>& names) {
  Loss loss;
  std::vector<std::string> lines;
  for (const internal::WalFile& log : logs) {
    for (const internal::WalDamage& d : log.scan.damage) {
      std::vector<std::string> stores;
      bool attributed = d.attributed;
      for (uint32_t cf : d.column_families) {
        auto found = names.find(cf);
        if (found == names.end()) {
          // A dropped store's family: nothing of it is left to lose.
          continue;
        }
        if (found->second.empty()) {
          attributed = false;  // engram 0.1's shared key space.
          continue;
        }
        stores.push_back(absl::StrCat("'", found->second, "'"));
        loss.stores.insert(found->second);
      }
      if (!attributed) loss.every_store = true;
      std::string sequences;
      if (!d.sequences.empty()) {
        sequences = absl::StrCat(
            d.sequences.size(), " write batch(es) from sequence number ",
            *std::min_element(d.sequences.begin(), d.sequences.end()));
      } else {
        sequences = "write batches";
      }
      lines.push_back(absl::StrCat(
          std::filesystem::path(log.path).filename().string(), " at byte ",
          d.offset, " (", d.reason, ", ", d.bytes,
          " bytes unreadable): ", sequences, " of ",
          stores.empty() ? std::string("no known store")
                         : absl::StrJoin(stores, ", "),
          attributed ? "" : ", and records whose store cannot be read"));
    }
  }
  loss.description = absl::StrJoin(lines, "; ");
  return loss;
}

}  // namespace

RocksDbStorage::RocksDbStorage(const RocksDbOptions& options)
    : options_(options) {}

RocksDbStorage::~RocksDbStorage() { Close().IgnoreError(); }

absl::StatusOr<std::unique_ptr<RocksDbStorage>> RocksDbStorage::Open(
    const RocksDbOptions& options) {
  std::error_code error;
  std::filesystem::create_directories(options.path, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create the database directory ", options.path,
                     ": ", error.message()));
  }
  std::unique_ptr<RocksDbStorage> storage(new RocksDbStorage(options));
  MutexLock lock(&storage->mu_);
  // The logs are read before RocksDB replays them: a replay that skips
  // damage retires them afterwards.
  const std::vector<internal::WalFile> logs =
      internal::ScanWalDirectory(options.path);
  const bool damaged_log = internal::HasDamage(logs);
  if (damaged_log && !options.accept_data_loss) {
    return storage->RefuseDamagedLog(logs);
  }
  absl::Status opened = storage->OpenDb(OpenMode::kWritable);
  if (absl::IsDataLoss(opened)) {
    // Table files RocksDB cannot open stop the open: find them, and the
    // stores they belong to.
    std::map<std::string, std::string> damaged = storage->FindDamagedTables();
    if (damaged.count("")) {
      // The default family's files: they hold only the format marker.
      opened = storage->RewriteMarker(damaged[""]);
      if (!opened.ok()) return opened;
      damaged.erase("");
      if (damaged.empty()) opened = storage->OpenDb(OpenMode::kWritable);
    }
    if (!opened.ok() && !damaged.empty() && options.accept_data_loss) {
      opened = storage->SetAsideStores(damaged);
    } else if (!opened.ok() && !damaged.empty()) {
      // Serve every other store, read-only, without touching the damaged
      // files; the operator decides what to do with them.
      if (!storage->OpenDb(OpenMode::kInspect).ok()) return opened;
      std::vector<std::string> lines;
      for (const auto& [store, tables] : damaged) {
        lines.push_back(absl::StrCat("store '", store, "': ", tables));
      }
      storage->damaged_tables_ = std::move(damaged);
      storage->retry_writes_ = false;
      storage->read_only_reason_ = absl::StrCat(
          "storage is read-only: table files are damaged (",
          absl::StrJoin(lines, "; "),
          "); those stores are DAMAGED, every other store serves reads. "
          "Restore the data directory from a backup, or restart engramd with "
          "--accept_data_loss to set the damaged stores' data aside and take "
          "writes again");
      storage->open_report_ = storage->read_only_reason_;
      if (absl::Status status = storage->CheckLayoutReadOnly(); !status.ok()) {
        return status;
      }
      return storage;
    } else if (!opened.ok()) {
      return absl::DataLossError(absl::StrCat(
          opened.message(),
          ". The database's own records (MANIFEST, CURRENT) are damaged: "
          "restore the data directory from a backup"));
    }
  }
  if (absl::IsResourceExhausted(opened)) {
    // A full disk: RocksDB cannot write its new manifest or log. Serve what
    // is there, read-only, until a write finds space again.
    if (!storage->OpenDb(OpenMode::kReadOnly).ok()) return opened;
    storage->read_only_reason_ = absl::StrCat(
        "storage is read-only: the disk was full when engramd started (",
        opened.message(),
        "); writes are retried as space is freed, reads are served");
    storage->open_report_ = storage->read_only_reason_;
    if (absl::Status status = storage->CheckLayoutReadOnly(); !status.ok()) {
      return status;
    }
    return storage;
  }
  if (!opened.ok()) return opened;
  if (absl::Status status = storage->PrepareLayout(); !status.ok()) {
    return status;
  }
  if (damaged_log) {
    if (absl::Status status = storage->RecordLogLoss(logs); !status.ok()) {
      return status;
    }
  }
  return storage;
}

absl::Status RocksDbStorage::CheckLayoutReadOnly() {
  std::string format;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), default_family_, kFormatKey, &format);
  if (s.ok() && format == kFormat) return absl::OkStatus();
  CloseDb();
  return absl::FailedPreconditionError(absl::StrCat(
      read_only_reason_, "; but the data directory ", options_.path,
      s.ok() ? absl::StrCat(" has format ", format, " (this engramd reads ",
                            kFormat, ")")
             : " needs migrating from the engram 0.1 layout, which needs a "
               "writable database"));
}

std::map<uint32_t, std::string> RocksDbStorage::FamilyNames() const {
  std::map<uint32_t, std::string> names{{0, ""}};
  for (const auto& [name, handle] : families_) names[handle->GetID()] = name;
  return names;
}

absl::Status RocksDbStorage::RefuseDamagedLog(
    const std::vector<internal::WalFile>& logs) {
  // Name the stores at risk: a read-only replay that skips the damage maps
  // column families to stores and writes nothing.
  std::map<uint32_t, std::string> names;
  if (OpenDb(OpenMode::kInspect).ok()) {
    names = FamilyNames();
    CloseDb();
  }
  return absl::DataLossError(absl::StrCat(
      "the write-ahead log in ", options_.path,
      " is damaged, so acknowledged writes cannot all be recovered: ",
      DescribeLoss(logs, names).description,
      ". Restore the data directory from a backup, or start engramd with "
      "--accept_data_loss to recover every readable record and mark the "
      "stores that lost writes DAMAGED"));
}

absl::Status RocksDbStorage::RecordLogLoss(
    const std::vector<internal::WalFile>& logs) {
  // Opened with accept_data_loss: write the loss into every store it hit,
  // then flush, which retires the damaged log. Until the flush the damaged
  // log stays, so a crash in between refuses the next start again.
  const Loss loss = DescribeLoss(logs, FamilyNames());
  const std::string report = absl::StrCat(
      "acknowledged writes were lost when engramd started with "
      "--accept_data_loss at ",
      absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone()),
      ": ", loss.description,
      loss.every_store ? " (not all lost records could be attributed, so "
                         "every store is marked)"
                       : "");
  rocksdb::WriteBatch batch;
  size_t marked = 0;
  for (const auto& [name, handle] : families_) {
    if (!loss.every_store && !loss.stores.count(name)) continue;
    std::string previous;
    const bool had =
        db_->Get(rocksdb::ReadOptions(), handle, kDamageKey, &previous).ok();
    batch.Put(handle, kDamageKey,
              had ? absl::StrCat(previous, "; ", report) : report);
    ++marked;
  }
  if (absl::Status status = WriteSynced(batch, "recording the loss");
      !status.ok()) {
    return status;
  }
  if (absl::Status status = FlushAll(); !status.ok()) return status;
  open_report_ = absl::StrCat(
      "recovered around a damaged write-ahead log (--accept_data_loss): ",
      loss.description, "; ", marked, " store(s) marked DAMAGED");
  return absl::OkStatus();
}

std::map<std::string, std::string> RocksDbStorage::FindDamagedTables() {
  // RocksDB opens every table file at start; one it cannot open (a damaged
  // footer, index or properties block) stops the whole open. Each table file
  // belongs to one store's family: a read-only open that skips such files
  // lists them, and each is tried on its own.
  std::map<std::string, std::string> damaged;  // Store -> its files.
  if (!OpenDb(OpenMode::kInspect).ok()) return damaged;
  std::vector<rocksdb::LiveFileMetaData> files;
  db_->GetLiveFilesMetaData(&files);
  CloseDb();
  const rocksdb::Options options = DbOptions(options_, OpenMode::kReadOnly);
  for (const rocksdb::LiveFileMetaData& file : files) {
    rocksdb::SstFileReader reader(options);
    rocksdb::Status s = reader.Open(file.db_path + file.name);
    if (s.ok()) continue;
    std::string& tables =
        damaged[absl::StartsWith(file.column_family_name, kFamilyPrefix)
                    ? file.column_family_name.substr(sizeof(kFamilyPrefix) - 1)
                    : ""];
    absl::StrAppend(&tables, tables.empty() ? "" : ", ", file.name.substr(1),
                    " (", s.ToString(), ")");
  }
  return damaged;
}

absl::Status RocksDbStorage::RewriteMarker(const std::string& tables) {
  // Layout 2 keeps nothing in the default family but the format marker, so
  // its unreadable files can go and the marker be written again. In the
  // engram 0.1 layout they hold every store: nothing can be set aside.
  auto refuse = [&](absl::string_view why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    CloseDb();
    return absl::DataLossError(
        absl::StrCat("table files in ", options_.path, " are damaged: ", tables,
                     "; ", why, ": restore the data directory from a backup"));
  };
  if (absl::Status status = OpenDb(OpenMode::kRepair); !status.ok()) {
    return refuse(status.message());
  }
  if (families_.empty()) {
    return refuse("they hold the stores of the engram 0.1 layout");
  }
  std::vector<rocksdb::LiveFileMetaData> files;
  db_->GetLiveFilesMetaData(&files);
  for (const rocksdb::LiveFileMetaData& file : files) {
    if (file.column_family_name != rocksdb::kDefaultColumnFamilyName) continue;
    rocksdb::Status deleted = db_->DeleteFile(file.name);
    if (!deleted.ok()) return refuse(deleted.ToString());
  }
  rocksdb::WriteBatch batch;
  batch.Put(default_family_, kFormatKey, kFormat);
  absl::Status status = WriteSynced(batch, "rewriting the format marker");
  if (status.ok()) status = FlushAll();
  CloseDb();
  if (!status.ok()) return status;
  Log(LogLevel::kWarning,
      "storage: the format marker's table files were damaged (%s) and were "
      "replaced; they held nothing else",
      tables);
  return absl::OkStatus();
}

absl::Status RocksDbStorage::SetAsideStores(
    const std::map<std::string, std::string>& damaged) {
  // Replace each damaged store's family by one that holds only its settings
  // (if readable) and the damage report, from a writable open that skips
  // the unreadable files; then open as usual.
  if (absl::Status status = OpenDb(OpenMode::kRepair); !status.ok()) {
    return status;
  }
  absl::Status repaired;
  std::vector<std::string> lines;
  for (const auto& [store, tables] : damaged) {
    lines.push_back(absl::StrCat("store '", store, "': ", tables));
    repaired = ReplaceWithDamageRecord(
        store, absl::StrCat("its table files were unreadable (", tables,
                            ") and its data was set aside when engramd "
                            "started with --accept_data_loss at ",
                            absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(),
                                             absl::UTCTimeZone())));
    if (!repaired.ok()) break;
  }
  if (repaired.ok()) repaired = FlushAll();
  CloseDb();
  if (!repaired.ok()) return repaired;
  absl::Status reopened = OpenDb(OpenMode::kWritable);
  if (reopened.ok()) {
    open_report_ = absl::StrCat("set aside the data of damaged stores (",
                                absl::StrJoin(lines, "; "),
                                "); they are DAMAGED, the other stores serve");
  }
  return reopened;
}

absl::Status RocksDbStorage::ReplaceWithDamageRecord(
    const std::string& store, const std::string& report) {
  auto found = families_.find(store);
  if (found == families_.end()) {
    return absl::NotFoundError(absl::StrCat("no family for store ", store));
  }
  std::string settings;
  const bool readable =
      db_->Get(rocksdb::ReadOptions(), found->second, kSettingsKey, &settings)
          .ok();
  if (absl::Status status =
          FromRocks(db_->DropColumnFamily(found->second), "setting aside");
      !status.ok()) {
    return status;
  }
  db_->DestroyColumnFamilyHandle(found->second).PermitUncheckedError();
  families_.erase(found);
  absl::StatusOr<rocksdb::ColumnFamilyHandle*> handle =
      CreateFamily(store, "setting aside");
  if (!handle.ok()) return handle.status();
  rocksdb::WriteBatch batch;
  if (readable) batch.Put(*handle, kSettingsKey, settings);
  batch.Put(*handle, kDamageKey, report);
  return WriteSynced(batch, "setting aside");
}

absl::StatusOr<rocksdb::ColumnFamilyHandle*> RocksDbStorage::CreateFamily(
    const std::string& store, absl::string_view what) {
  rocksdb::ColumnFamilyHandle* handle = nullptr;
  rocksdb::Status s = db_->CreateColumnFamily(
      rocksdb::ColumnFamilyOptions(DbOptions(options_, OpenMode::kWritable)),
      FamilyName(store), &handle);
  if (!s.ok()) return FromRocks(s, what);
  families_[store] = handle;
  return handle;
}

absl::Status RocksDbStorage::WriteSynced(rocksdb::WriteBatch& batch,
                                         absl::string_view what) {
  rocksdb::WriteOptions write;
  write.sync = true;
  return FromRocks(db_->Write(write, &batch), what);
}

absl::Status RocksDbStorage::FlushAll() {
  rocksdb::FlushOptions flush;
  flush.allow_write_stall = true;
  std::vector<rocksdb::ColumnFamilyHandle*> handles{default_family_};
  for (const auto& [name, handle] : families_) handles.push_back(handle);
  return FromRocks(db_->Flush(flush, handles), "flush");
}

absl::Status RocksDbStorage::OpenDb(OpenMode mode) {
  const bool read_only =
      mode == OpenMode::kReadOnly || mode == OpenMode::kInspect;
  const rocksdb::Options db_options = DbOptions(options_, mode);
  std::vector<std::string> names{rocksdb::kDefaultColumnFamilyName};
  if (std::filesystem::exists(std::filesystem::path(options_.path) /
                              "CURRENT")) {
    names.clear();
    rocksdb::Status listed =
        rocksdb::DB::ListColumnFamilies(db_options, options_.path, &names);
    if (!listed.ok()) {
      return FromRocks(listed, absl::StrCat("open ", options_.path));
    }
  } else if (read_only) {
    return absl::FailedPreconditionError(
        absl::StrCat("no database in ", options_.path));
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : names) {
    descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions(db_options));
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s =
      read_only ? rocksdb::DB::OpenForReadOnly(db_options, options_.path,
                                               descriptors, &handles, &db)
                : rocksdb::DB::Open(db_options, options_.path, descriptors,
                                    &handles, &db);
  // RocksDB's words for a LOCK file another process holds, or this one.
  if (s.IsIOError() && (absl::StrContains(s.ToString(), "While lock file") ||
                        absl::StrContains(s.ToString(), "lock hold by"))) {
    return absl::UnavailableError(absl::StrCat(
        "storage open ", options_.path,
        ": the data directory is in use (by another engramd on the same "
        "--data_dir?): ",
        s.ToString()));
  }
  if (!s.ok()) return FromRocks(s, absl::StrCat("open ", options_.path));
  db_.reset(db);
  read_only_ = read_only;
  families_.clear();
  for (rocksdb::ColumnFamilyHandle* handle : handles) {
    const std::string& name = handle->GetName();
    if (name == rocksdb::kDefaultColumnFamilyName) {
      default_family_ = handle;
    } else if (absl::StartsWith(name, kFamilyPrefix)) {
      families_[name.substr(sizeof(kFamilyPrefix) - 1)] = handle;
    } else {
      Log(LogLevel::kWarning, "storage: ignoring column family '%s'", name);
      families_[absl::StrCat("\x01", name)] = handle;  // Closed with the rest.
    }
  }
  return absl::OkStatus();
}

void RocksDbStorage::CloseDb() {
  if (!db_) return;
  for (const auto& [name, handle] : families_) {
    db_->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
  }
  families_.clear();
  if (default_family_ != nullptr) {
    db_->DestroyColumnFamilyHandle(default_family_).PermitUncheckedError();
    default_family_ = nullptr;
  }
  db_->Close().PermitUncheckedError();
  db_.reset();
}

absl::Status RocksDbStorage::PrepareLayout() {
  std::string format;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), default_family_, kFormatKey, &format);
  if (s.ok()) {
    if (format != kFormat) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the data directory ", options_.path, " has format ", format,
          ", written by a newer engram; this engramd reads format ", kFormat));
    }
    return absl::OkStatus();
  }
  if (s.IsCorruption() && !families_.empty()) {
    // The marker's own table file is damaged; it holds nothing else.
    CloseDb();
    if (absl::Status status = RewriteMarker(s.ToString()); !status.ok()) {
      return status;
    }
    if (absl::Status status = OpenDb(OpenMode::kWritable); !status.ok()) {
      return status;
    }
    return PrepareLayout();
  }
  if (!s.IsNotFound()) return FromRocks(s, "reading the format marker");
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), default_family_));
  it->SeekToFirst();
  if (!it->status().ok()) return FromRocks(it->status(), "reading the layout");
  if (it->Valid()) return MigrateFromLayout1();
  rocksdb::WriteOptions write;
  write.sync = true;
  return FromRocks(db_->Put(write, default_family_, kFormatKey, kFormat),
                   "writing the format marker");
}

absl::Status RocksDbStorage::MigrateFromLayout1() {
  // engram 0.1 kept every store in the default column family under "S"
  // name (settings), "N" name (next id), "M" name (map) and "P" name "\0" id.
  // Each store is copied into its own family; one final synced batch writes
  // the marker and deletes the old keys, so an interrupted migration leaves
  // the old layout intact and starts over.
  const absl::Time start = SteadyNow();
  for (auto& [name, handle] : families_) {
    if (absl::Status status = FromRocks(db_->DropColumnFamily(handle),
                                        "migration: dropping a partial copy");
        !status.ok()) {
      return status;
    }
    db_->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
  }
  families_.clear();
  rocksdb::ReadOptions read;
  read.fill_cache = false;
  std::vector<std::pair<std::string, std::string>> stores;  // Name, settings.
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(read, default_family_));
  for (it->Seek("S"); it->Valid() && it->key()[0] == 'S'; it->Next()) {
    stores.emplace_back(it->key().ToString().substr(1), it->value().ToString());
  }
  if (!it->status().ok()) {
    return absl::DataLossError(
        absl::StrCat("cannot migrate the engram 0.1 data directory ",
                     options_.path, ": its store list is unreadable (",
                     it->status().ToString(), "); restore it from a backup"));
  }
  size_t patterns = 0, damaged = 0;
  rocksdb::WriteOptions unsynced;
  for (const auto& [name, settings] : stores) {
    absl::StatusOr<rocksdb::ColumnFamilyHandle*> created =
        CreateFamily(name, "migration");
    if (!created.ok()) return created.status();
    rocksdb::ColumnFamilyHandle* handle = *created;
    rocksdb::WriteBatch batch;
    absl::StatusOr<StoreSettings> decoded = DecodeLegacySettings(settings);
    if (decoded.ok()) {
      batch.Put(handle, kSettingsKey, EncodeSettingsRecord(*decoded));
    } else {
      batch.Put(handle, kDamageKey,
                absl::StrCat("its engram 0.1 settings record was unreadable "
                             "during migration: ",
                             decoded.status().message()));
    }
    std::string value;
    if (db_->Get(read, default_family_, absl::StrCat("N", name), &value).ok() &&
        value.size() == 8) {
      batch.Put(handle, kNextIdKey, value);  // Both layouts: little-endian.
    }
    if (db_->Get(read, default_family_, absl::StrCat("M", name), &value).ok()) {
      batch.Put(handle, kMapKey, value);
    }
    std::string prefix = absl::StrCat("P", name);
    prefix.push_back('\0');
    rocksdb::Status scanned;
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix);
         it->Next()) {
      if (it->key().size() != prefix.size() + 8) continue;
      batch.Put(handle,
                PatternKey(BigEndian64(it->key().data() + prefix.size())),
                it->value());
      ++patterns;
      if (batch.GetDataSize() >= kMigrationBatchBytes) {
        scanned = db_->Write(unsynced, &batch);
        if (!scanned.ok()) return FromRocks(scanned, "migration");
        batch.Clear();
      }
    }
    if (!it->status().ok()) {
      ++damaged;
      batch.Put(handle, kDamageKey,
                absl::StrCat("its data in the engram 0.1 layout was "
                             "unreadable during migration: ",
                             it->status().ToString()));
    }
    if (absl::Status status =
            FromRocks(db_->Write(unsynced, &batch), "migration");
        !status.ok()) {
      return status;
    }
  }
  rocksdb::WriteBatch commit;
  commit.Put(default_family_, kFormatKey, kFormat);
  for (const char* prefix : {"M", "N", "P", "S"}) {
    const char end[2] = {static_cast<char>(prefix[0] + 1), '\0'};
    commit.DeleteRange(default_family_, prefix, end);
  }
  rocksdb::WriteOptions synced;
  synced.sync = true;
  if (absl::Status status = FromRocks(db_->Write(synced, &commit), "migration");
      !status.ok()) {
    return status;
  }
  rocksdb::CompactRangeOptions compact;
  db_->CompactRange(compact, default_family_, nullptr, nullptr)
      .PermitUncheckedError();
  open_report_ = absl::StrCat(
      "migrated ", stores.size(), " stores (", patterns,
      " patterns) from the engram 0.1 layout to one column family per store "
      "in ",
      absl::FormatDuration(SteadyNow() - start),
      damaged ? absl::StrCat("; ", damaged, " were unreadable and are DAMAGED")
              : "");
  return absl::OkStatus();
}

absl::Status RocksDbStorage::Close() {
  MutexLock lock(&mu_);
  if (!db_) return absl::OkStatus();
  absl::Status status;
  if (!read_only_) {
    // Flushing every store leaves nothing only in the log, so a damaged log
    // after a clean stop can lose nothing.
    absl::Status flushed = FlushAll();
    if (!flushed.ok()) {
      Log(LogLevel::kWarning,
          "storage: could not flush at close (%s); the write-ahead log keeps "
          "the data",
          flushed.ToString());
      // Without sync, the log tail may still be in the page cache; not after
      // a failed write, whose log tail is unusable.
      if (!options_.sync && !stopped_) {
        status = FromRocks(db_->FlushWAL(/*sync=*/true), "close");
      }
    }
  }
  CloseDb();
  return status;
}

bool RocksDbStorage::read_only() const {
  ReaderMutexLock lock(&mu_);
  return read_only_;
}

void RocksDbStorage::RetryWritable() {
  bool read_only;
  {
    ReaderMutexLock lock(&mu_);
    read_only = read_only_ || !db_;
    if (read_only && !retry_writes_) return;
  }
  if (!read_only && !stopped_) return;
  const int64_t now = absl::GetCurrentTimeNanos();
  int64_t last = last_retry_ns_.load();
  if (now - last < absl::ToInt64Nanoseconds(options_.retry_interval) ||
      !last_retry_ns_.compare_exchange_strong(last, now)) {
    return;
  }
  std::string stopped_by;  // Why RocksDB cannot resume a stopped database.
  if (!read_only) {
    rocksdb::Status resumed;
    {
      ReaderMutexLock lock(&mu_);
      if (!db_) return;
      resumed = db_->Resume();
    }
    if (resumed.ok()) {
      stopped_ = false;
      Log(LogLevel::kInfo, "storage: writes resumed");
      return;
    }
    // A full disk resumes once space is freed. Some I/O errors RocksDB
    // keeps until the database is opened again: a log file it could not
    // create (every file descriptor taken by connections, say) stops writes
    // for good. Reopening replays the log, which holds every acknowledged
    // write. Damage (a corrupt table a compaction read) is not retried: the
    // next start finds the damaged store.
    if (IsSpace(resumed) || !resumed.IsIOError()) return;
    stopped_by = resumed.ToString();
  }
  MutexLock lock(&mu_);
  if (read_only ? (!read_only_ && db_) : (!stopped_ || !db_ || read_only_)) {
    return;  // Another write got there first.
  }
  CloseDb();
  const absl::Status opened = OpenDb(OpenMode::kWritable);
  if (opened.ok()) {
    Log(LogLevel::kInfo, "storage: reopened %s for writing%s", options_.path,
        stopped_by.empty()
            ? ""
            : absl::StrCat(" (writes had stopped: ", stopped_by, ")"));
    stopped_ = false;
    return;
  }
  Log(LogLevel::kWarning, "storage: cannot reopen %s for writing: %s",
      options_.path, opened.ToString());
  if (!OpenDb(OpenMode::kReadOnly).ok()) {
    Log(LogLevel::kError, "storage: cannot reopen %s even read-only",
        options_.path);
    return;
  }
  if (!stopped_by.empty()) {
    read_only_reason_ =
        absl::StrCat("storage is read-only: writes stopped (", stopped_by,
                     ") and reopening for writing failed (", opened.message(),
                     "); writes are retried, reads are served");
  }
}

absl::Status RocksDbStorage::Commit(
    absl::string_view store,
    absl::FunctionRef<void(rocksdb::WriteBatch&, rocksdb::ColumnFamilyHandle*)>
        fill,
    bool sync, size_t reserve) {
  RetryWritable();
  ReaderMutexLock lock(&mu_);
  if (!db_) return absl::UnavailableError("storage is closed");
  if (read_only_) return absl::ResourceExhaustedError(read_only_reason_);
  auto found = families_.find(store);
  if (found == families_.end()) {
    return absl::NotFoundError(
        absl::StrCat("storage: no column family for store '", store, "'"));
  }
  rocksdb::WriteBatch batch(reserve);
  fill(batch, found->second);
  rocksdb::WriteOptions write;
  write.sync = options_.sync && sync;
  rocksdb::Status s = db_->Write(write, &batch);
  if (!s.ok()) stopped_ = true;
  return FromRocks(s, "write");
}

absl::Status RocksDbStorage::PutStore(const StoreSettings& settings) {
  bool exists;
  {
    ReaderMutexLock lock(&mu_);
    exists = families_.contains(settings.name);
  }
  if (exists) {
    const std::string record = EncodeSettingsRecord(settings);
    return Commit(settings.name, [&](rocksdb::WriteBatch& batch,
                                     rocksdb::ColumnFamilyHandle* family) {
      batch.Put(family, kSettingsKey, record);
    });
  }
  // A new store: its column family, then its first records in one write.
  StoreImage image;
  image.settings = settings;
  return WriteWholeStore(image, "creating a store");
}

absl::Status RocksDbStorage::DeleteStore(absl::string_view name) {
  RetryWritable();
  MutexLock lock(&mu_);
  if (!db_) return absl::UnavailableError("storage is closed");
  if (read_only_) return absl::ResourceExhaustedError(read_only_reason_);
  auto found = families_.find(name);
  if (found == families_.end()) return absl::OkStatus();
  rocksdb::Status s = db_->DropColumnFamily(found->second);
  if (!s.ok()) {
    stopped_ = true;
    return FromRocks(s, "deleting a store");
  }
  db_->DestroyColumnFamilyHandle(found->second).PermitUncheckedError();
  families_.erase(found);
  return absl::OkStatus();
}

absl::Status RocksDbStorage::PutMap(absl::string_view store,
                                    const FitRecord& record,
                                    const core::FeatureMap& map) {
  const std::string value = EncodeMap(record, map);
  return Commit(store, [&](rocksdb::WriteBatch& batch,
                           rocksdb::ColumnFamilyHandle* family) {
    batch.Put(family, kMapKey, value);
  });
}

absl::Status RocksDbStorage::WritePatterns(absl::string_view store,
                                           absl::Span<const Pattern> added,
                                           absl::Span<const uint64_t> deleted,
                                           uint64_t next_id) {
  return Commit(
      store,
      [&](rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* family) {
        for (const Pattern& p : added) {
          batch.Put(family, PatternKey(p.id), EncodePattern(p));
        }
        for (uint64_t id : deleted) batch.Delete(family, PatternKey(id));
        batch.Put(family, kNextIdKey, Fixed64(next_id));
      },
      /*sync=*/true, BatchBytes(added) + 32 * deleted.size());
}

absl::Status RocksDbStorage::PutStamp(absl::string_view store, uint64_t stamp) {
  return Commit(
      store,
      [&](rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* family) {
        batch.Put(family, kStampKey, Fixed64(stamp));
      },
      /*sync=*/false);
}

absl::Status RocksDbStorage::PutWholeStore(const StoreImage& image) {
  return WriteWholeStore(image, "restoring a store");
}

absl::Status RocksDbStorage::WriteWholeStore(const StoreImage& image,
                                             absl::string_view what) {
  RetryWritable();
  MutexLock lock(&mu_);
  if (!db_) return absl::UnavailableError("storage is closed");
  if (read_only_) return absl::ResourceExhaustedError(read_only_reason_);
  const std::string& name = image.settings.name;
  rocksdb::ColumnFamilyHandle* handle;
  const bool created = !families_.contains(name);
  size_t bytes = BatchBytes(image.patterns);
  if (image.map) bytes += image.map->weights().size() * 4;
  rocksdb::WriteBatch batch(bytes);
  if (created) {
    // Its settings come in the same write as everything else: a crash
    // before it leaves a family without settings, which Load drops.
    absl::StatusOr<rocksdb::ColumnFamilyHandle*> family =
        CreateFamily(name, what);
    if (!family.ok()) {
      stopped_ = true;
      return family.status();
    }
    handle = *family;
  } else {
    // Every key a store's family holds is below "\xff": the old store goes
    // in the same write that brings the new one.
    handle = families_[name];
    batch.DeleteRange(handle, "", "\xff");
  }
  batch.Put(handle, kSettingsKey, EncodeSettingsRecord(image.settings));
  batch.Put(handle, kNextIdKey, Fixed64(image.next_id));
  if (image.stamp != 0) batch.Put(handle, kStampKey, Fixed64(image.stamp));
  if (image.map) batch.Put(handle, kMapKey, EncodeMap(image.fit, *image.map));
  for (const Pattern& p : image.patterns) {
    batch.Put(handle, PatternKey(p.id), EncodePattern(p));
  }
  rocksdb::WriteOptions write;
  write.sync = options_.sync;
  rocksdb::Status s = db_->Write(write, &batch);
  if (!s.ok()) {
    stopped_ = true;
    if (created) {
      families_.erase(name);
      db_->DropColumnFamily(handle).PermitUncheckedError();
      db_->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
    }
    return FromRocks(s, what);
  }
  return absl::OkStatus();
}

absl::Status RocksDbStorage::Load(LoadVisitor& visitor) {
  std::vector<std::string> orphans;
  if (absl::Status status = LoadStores(visitor, orphans); !status.ok()) {
    return status;
  }
  MutexLock lock(&mu_);
  if (read_only_ || !db_) return absl::OkStatus();
  for (const std::string& name : orphans) {
    auto found = families_.find(name);
    if (found == families_.end()) continue;
    if (db_->DropColumnFamily(found->second).ok()) {
      db_->DestroyColumnFamilyHandle(found->second).PermitUncheckedError();
      families_.erase(found);
      Log(LogLevel::kInfo,
          "storage: removed store '%s', whose creation never completed", name);
    }
  }
  return absl::OkStatus();
}

absl::Status RocksDbStorage::LoadStores(LoadVisitor& visitor,
                                        std::vector<std::string>& orphans) {
  // The visitor builds stores, which take their own locks and later call
  // back into storage: it runs without mu_. Nothing else changes the
  // database or its families during a load (the registry answers every
  // call UNAVAILABLE until it is done).
  rocksdb::DB* db;
  std::map<std::string, rocksdb::ColumnFamilyHandle*> ordered;
  std::map<std::string, std::string> damaged_tables;
  {
    ReaderMutexLock lock(&mu_);
    if (!db_) return absl::UnavailableError("storage is closed");
    db = db_.get();
    ordered.insert(families_.begin(), families_.end());
    damaged_tables = damaged_tables_;
  }
  rocksdb::ReadOptions read;
  read.fill_cache = false;
  read.readahead_size = 4 << 20;
  for (const auto& [name, handle] : ordered) {
    if (name[0] == '\x01') continue;  // Not a store's family.
    // Every read error below names the store and comes from its own family:
    // the damage stays with it.
    auto damaged = [&, name = name, handle = handle](absl::Status status) {
      // Nothing may compact a damaged store's files (see DbOptions).
      db->SetOptions(handle, {{"disable_auto_compactions", "true"}})
          .PermitUncheckedError();
      visitor.OnDamaged(name, std::move(status));
    };
    if (auto table = damaged_tables.find(name); table != damaged_tables.end()) {
      damaged(absl::DataLossError(
          absl::StrCat("its table files are unreadable: ", table->second)));
      continue;
    }
    std::string value;
    rocksdb::Status s = db->Get(read, handle, kDamageKey, &value);
    if (s.ok()) {
      damaged(absl::DataLossError(value));
      continue;
    }
    if (!s.IsNotFound()) {
      damaged(FromRocks(s, "load"));
      continue;
    }
    s = db->Get(read, handle, kSettingsKey, &value);
    if (s.IsNotFound()) {
      orphans.push_back(name);  // A create that never completed.
      continue;
    }
    if (!s.ok()) {
      damaged(FromRocks(s, "load"));
      continue;
    }
    absl::StatusOr<StoreSettings> settings = DecodeSettingsRecord(value);
    if (!settings.ok()) {
      damaged(settings.status());
      continue;
    }
    if (settings->name != name) {
      damaged(absl::DataLossError(absl::StrCat(
          "its settings record names store '", settings->name, "'")));
      continue;
    }
    absl::StatusOr<uint64_t> next_id =
        ReadFixed64(*db, read, handle, kNextIdKey, 1);
    absl::StatusOr<uint64_t> stamp =
        ReadFixed64(*db, read, handle, kStampKey, 0);
    if (!next_id.ok() || !stamp.ok()) {
      damaged(!next_id.ok() ? next_id.status() : stamp.status());
      continue;
    }
    visitor.OnStore(*settings, *next_id, *stamp);
    s = db->Get(read, handle, kMapKey, &value);
    if (s.ok()) {
      FitRecord record;
      std::shared_ptr<const core::FeatureMap> map;
      if (absl::Status decoded = DecodeMap(value, record, map); !decoded.ok()) {
        damaged(decoded);
        continue;
      }
      visitor.OnMap(name, std::move(map), record);
    } else if (!s.IsNotFound()) {
      damaged(FromRocks(s, "load"));
      continue;
    }
    std::vector<Pattern> batch;
    bool failed = false;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(read, handle));
    for (it->Seek(std::string(1, kPatternPrefix));
         it->Valid() && it->key()[0] == kPatternPrefix; it->Next()) {
      if (it->key().size() != 9) {
        damaged(absl::DataLossError(absl::StrCat(
            "malformed pattern key ", it->key().ToString(/*hex=*/true))));
        failed = true;
        break;
      }
      absl::StatusOr<Pattern> p =
          DecodePattern(BigEndian64(it->key().data() + 1), View(it->value()));
      if (!p.ok()) {
        damaged(p.status());
        failed = true;
        break;
      }
      batch.push_back(std::move(*p));
      if (batch.size() == kLoadBatch) {
        if (!visitor.OnPatterns(name, std::move(batch)).ok()) failed = true;
        batch.clear();
        if (failed) break;
      }
    }
    if (failed) continue;
    if (!it->status().ok()) {
      damaged(FromRocks(it->status(), "load"));
      continue;
    }
    if (!batch.empty())
      visitor.OnPatterns(name, std::move(batch)).IgnoreError();
  }
  return absl::OkStatus();
}

}  // namespace engram::store
