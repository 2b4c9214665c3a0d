#include "server/store/rocksdb_storage.h"

#include <cstring>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace engram::store {

namespace {

// Keys: "S" name -> settings; "N" name -> next id (8 bytes); "M" name ->
// fitted feature map; "P" name "\0"
// id (8 bytes, big-endian, so a store's patterns sort by id) -> pattern.
// Store names never hold '\0', so "P" name "\0" prefixes exactly one store.
constexpr char kSettings = 'S';
constexpr char kNextId = 'N';
constexpr char kPattern = 'P';
constexpr char kMap = 'M';
constexpr size_t kLoadBatch = 4096;

std::string SettingsKey(absl::string_view name) {
  return absl::StrCat(absl::string_view(&kSettings, 1), name);
}
std::string NextIdKey(absl::string_view name) {
  return absl::StrCat(absl::string_view(&kNextId, 1), name);
}
std::string MapKey(absl::string_view name) {
  return absl::StrCat(absl::string_view(&kMap, 1), name);
}
std::string PatternPrefix(absl::string_view name) {
  std::string key(1, kPattern);
  key.append(name.data(), name.size());
  key.push_back('\0');
  return key;
}
std::string PatternKey(absl::string_view name, uint64_t id) {
  std::string key = PatternPrefix(name);
  for (int shift = 56; shift >= 0; shift -= 8) {
    key.push_back(static_cast<char>((id >> shift) & 0xff));
  }
  return key;
}

std::string Fixed64(uint64_t v) {
  std::string out(8, '\0');
  std::memcpy(out.data(), &v, 8);
  return out;
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string message =
      absl::StrCat("storage ", what, ": ", s.ToString());
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(message);
  if (s.IsCorruption()) return absl::DataLossError(message);
  if (s.IsIOError() || s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
}

void PutU32(std::string& out, uint32_t v) {
  out.append(reinterpret_cast<const char*>(&v), 4);
}

void PutString(std::string& out, absl::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out.append(s.data(), s.size());
}

template <typename T>
void PutRaw(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Reads little-endian fields off the front of a record.
class Reader {
 public:
  explicit Reader(absl::string_view bytes) : bytes_(bytes) {}
  bool U32(uint32_t& v) {
    if (bytes_.size() < 4) return false;
    std::memcpy(&v, bytes_.data(), 4);
    bytes_.remove_prefix(4);
    return true;
  }
  bool String(std::string& s) {
    uint32_t n;
    if (!U32(n) || bytes_.size() < n) return false;
    s.assign(bytes_.data(), n);
    bytes_.remove_prefix(n);
    return true;
  }
  bool Floats(std::vector<float>& v, uint32_t n) {
    if (bytes_.size() < size_t{n} * 4) return false;
    v.resize(n);
    std::memcpy(v.data(), bytes_.data(), size_t{n} * 4);
    bytes_.remove_prefix(size_t{n} * 4);
    return true;
  }
  template <typename T>
  bool Raw(T& v) {
    if (bytes_.size() < sizeof(T)) return false;
    std::memcpy(&v, bytes_.data(), sizeof(T));
    bytes_.remove_prefix(sizeof(T));
    return true;
  }
  bool done() const { return bytes_.empty(); }

 private:
  absl::string_view bytes_;
};

}  // namespace

// Format 1: u8 format, u32 dim, dim x f32, label, u32 entries, entries x
// (key, value); strings as u32 length + bytes; all little-endian.
std::string EncodePattern(const Pattern& p) {
  std::string out(1, '\x01');
  out.reserve(1 + 4 + p.values.size() * 4 + p.label.size() + 8);
  PutU32(out, static_cast<uint32_t>(p.values.size()));
  out.append(reinterpret_cast<const char*>(p.values.data()),
             p.values.size() * 4);
  PutString(out, p.label);
  PutU32(out, static_cast<uint32_t>(p.metadata.size()));
  for (const auto& [key, value] : p.metadata) {
    PutString(out, key);
    PutString(out, value);
  }
  return out;
}

absl::StatusOr<Pattern> DecodePattern(uint64_t id, absl::string_view bytes) {
  Pattern p;
  p.id = id;
  uint32_t dim = 0, entries = 0;
  if (bytes.empty() || bytes[0] != '\x01') {
    return absl::DataLossError(
        absl::StrCat("pattern ", id, ": unknown record format"));
  }
  Reader reader(bytes.substr(1));
  bool ok = reader.U32(dim) && reader.Floats(p.values, dim) &&
            reader.String(p.label) && reader.U32(entries);
  for (uint32_t i = 0; ok && i < entries; ++i) {
    std::string key, value;
    ok = reader.String(key) && reader.String(value);
    p.metadata.emplace_back(std::move(key), std::move(value));
  }
  if (!ok || !reader.done()) {
    return absl::DataLossError(
        absl::StrCat("pattern ", id, ": truncated or malformed record"));
  }
  return p;
}

namespace {

// Format 1: u8 format, u64 version, f64 loss before, f64 loss after, u32
// epochs, f64 seconds, u64 patterns, u32 in_dim, u32 out_dim, weights f32.
std::string EncodeMap(const FitRecord& r, const core::FeatureMap& map) {
  std::string out(1, '\x01');
  PutRaw(out, r.version);
  PutRaw(out, r.loss_before);
  PutRaw(out, r.loss_after);
  PutRaw(out, r.epochs);
  PutRaw(out, r.duration_seconds);
  PutRaw(out, r.patterns_fitted);
  PutRaw(out, static_cast<uint32_t>(map.in_dim()));
  PutRaw(out, static_cast<uint32_t>(map.out_dim()));
  out.append(reinterpret_cast<const char*>(map.weights().data()),
             map.weights().size() * 4);
  return out;
}

absl::Status DecodeMap(absl::string_view bytes, FitRecord& r,
                       std::shared_ptr<const core::FeatureMap>& map) {
  if (bytes.empty() || bytes[0] != '\x01') {
    return absl::DataLossError("feature map: unknown record format");
  }
  Reader reader(bytes.substr(1));
  uint32_t in = 0, out = 0;
  std::vector<float> weights;
  if (!reader.Raw(r.version) || !reader.Raw(r.loss_before) ||
      !reader.Raw(r.loss_after) || !reader.Raw(r.epochs) ||
      !reader.Raw(r.duration_seconds) || !reader.Raw(r.patterns_fitted) ||
      !reader.Raw(in) || !reader.Raw(out) ||
      !reader.Floats(weights, in * out) || !reader.done()) {
    return absl::DataLossError("feature map: truncated or malformed record");
  }
  map = std::make_shared<core::FeatureMap>(in, out, std::move(weights));
  return absl::OkStatus();
}

}  // namespace

RocksDbStorage::RocksDbStorage(const RocksDbOptions& options, rocksdb::DB* db)
    : options_(options), db_(db) {}

RocksDbStorage::~RocksDbStorage() { Close().IgnoreError(); }

absl::StatusOr<std::unique_ptr<RocksDbStorage>> RocksDbStorage::Open(
    const RocksDbOptions& options) {
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.IncreaseParallelism(2);
  db_options.compression = rocksdb::kNoCompression;  // Floats do not compress.
  db_options.write_buffer_size = 64 << 20;
  db_options.paranoid_checks = true;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.path, &db);
  if (!s.ok()) return FromRocks(s, absl::StrCat("open ", options.path));
  return std::unique_ptr<RocksDbStorage>(new RocksDbStorage(options, db));
}

absl::Status RocksDbStorage::Close() {
  if (!db_) return absl::OkStatus();
  // With sync every acknowledged write is already on disk. Without it, sync
  // the log once now; not after a failed write, whose log tail is unusable
  // (RocksDB asserts on it).
  rocksdb::Status flushed;
  if (!options_.sync && !write_failed_) flushed = db_->FlushWAL(/*sync=*/true);
  rocksdb::Status closed = db_->Close();
  db_.reset();
  if (!flushed.ok()) return FromRocks(flushed, "close");
  return FromRocks(closed, "close");
}

absl::Status RocksDbStorage::Commit(rocksdb::WriteBatch& batch) {
  rocksdb::WriteOptions write;
  write.sync = options_.sync;
  rocksdb::Status s = db_->Write(write, &batch);
  if (!s.ok()) write_failed_ = true;
  return FromRocks(s, "write");
}

absl::Status RocksDbStorage::PutStore(const StoreSettings& settings) {
  rocksdb::WriteBatch batch;
  batch.Put(SettingsKey(settings.name), EncodeSettings(settings));
  return Commit(batch);
}

absl::Status RocksDbStorage::DeleteStore(absl::string_view name) {
  rocksdb::WriteBatch batch;
  batch.Delete(SettingsKey(name));
  batch.Delete(NextIdKey(name));
  batch.Delete(MapKey(name));
  std::string end = PatternPrefix(name);
  end.back() = '\1';
  batch.DeleteRange(PatternPrefix(name), end);
  return Commit(batch);
}

absl::Status RocksDbStorage::PutMap(absl::string_view store,
                                    const FitRecord& record,
                                    const core::FeatureMap& map) {
  rocksdb::WriteBatch batch;
  batch.Put(MapKey(store), EncodeMap(record, map));
  return Commit(batch);
}

absl::Status RocksDbStorage::WritePatterns(absl::string_view store,
                                           absl::Span<const Pattern> added,
                                           absl::Span<const uint64_t> deleted,
                                           uint64_t next_id) {
  rocksdb::WriteBatch batch;
  for (const Pattern& p : added)
    batch.Put(PatternKey(store, p.id), EncodePattern(p));
  for (uint64_t id : deleted) batch.Delete(PatternKey(store, id));
  batch.Put(NextIdKey(store), Fixed64(next_id));
  return Commit(batch);
}

absl::Status RocksDbStorage::Load(LoadVisitor& visitor) {
  rocksdb::ReadOptions read;
  read.fill_cache = false;
  read.readahead_size = 4 << 20;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read));

  std::set<std::string, std::less<>> loaded;
  for (it->Seek(std::string(1, kSettings));
       it->Valid() && it->key()[0] == kSettings; it->Next()) {
    const std::string name = it->key().ToString().substr(1);
    absl::StatusOr<StoreSettings> settings = DecodeSettings(
        absl::string_view(it->value().data(), it->value().size()));
    if (!settings.ok()) {
      visitor.OnDamaged(name, settings.status());
      continue;
    }
    uint64_t next_id = 1;
    std::string value;
    rocksdb::Status s = db_->Get(read, NextIdKey(name), &value);
    if (s.ok() && value.size() == 8) std::memcpy(&next_id, value.data(), 8);
    visitor.OnStore(*settings, next_id);
    s = db_->Get(read, MapKey(name), &value);
    if (s.ok()) {
      FitRecord record;
      std::shared_ptr<const core::FeatureMap> map;
      if (absl::Status decoded = DecodeMap(value, record, map); !decoded.ok()) {
        visitor.OnDamaged(name, decoded);
        continue;
      }
      visitor.OnMap(name, std::move(map), record);
    } else if (!s.IsNotFound()) {
      return FromRocks(s, "load");
    }
    loaded.insert(name);
  }
  if (!it->status().ok()) return FromRocks(it->status(), "load");

  std::string current;
  std::vector<Pattern> batch;
  bool skipping = false;
  auto flush = [&]() {
    if (!batch.empty() && !skipping) {
      skipping = !visitor.OnPatterns(current, std::move(batch)).ok();
    }
    batch.clear();
  };
  for (it->Seek(std::string(1, kPattern));
       it->Valid() && it->key()[0] == kPattern; it->Next()) {
    const rocksdb::Slice key = it->key();
    const size_t zero = std::string_view(key.data(), key.size()).find('\0', 1);
    if (zero == std::string::npos || key.size() != zero + 9) {
      return absl::DataLossError(
          absl::StrCat("storage load: malformed key ", key.ToString(true)));
    }
    const absl::string_view name(key.data() + 1, zero - 1);
    if (name != current) {
      flush();
      current = std::string(name);
      skipping = !loaded.count(current);
    }
    if (skipping) continue;
    uint64_t id = 0;
    for (size_t k = zero + 1; k < key.size(); ++k) {
      id = (id << 8) | static_cast<unsigned char>(key[k]);
    }
    absl::StatusOr<Pattern> p = DecodePattern(
        id, absl::string_view(it->value().data(), it->value().size()));
    if (!p.ok()) {
      batch.clear();
      visitor.OnDamaged(current, p.status());
      skipping = true;
      continue;
    }
    batch.push_back(std::move(*p));
    if (batch.size() == kLoadBatch) flush();
  }
  flush();
  return FromRocks(it->status(), "load");
}

}  // namespace engram::store
