// A named set of patterns of one dimension, with its retrieval settings.
//
//   std::shared_ptr<const StoreView> view = store.view();
//   core::RetrieveExact(view->memories(), queries, n,
//   view->settings().retrieval);
//
// Patterns live in fixed-capacity chunks. A StoreView is an immutable snapshot
// (settings, chunk pointers, count); writers never change a row a published
// view can see: they append past it or copy the chunk first. Readers only copy
// a shared_ptr, so retrieval never waits on a writer longer than that.
//
// Thread-safe: all methods may be called concurrently; writes are serialised.
#ifndef ENGRAM_SERVER_STORE_STORE_H_
#define ENGRAM_SERVER_STORE_STORE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/base/mutex.h"
#include "server/core/feature_map.h"
#include "server/core/low_rank.h"
#include "server/core/retrieval.h"
#include "server/store/filter_index.h"
#include "server/store/pattern.h"
#include "server/store/settings.h"
#include "server/store/storage.h"

namespace engram::store {

// Rows of one store: values (capacity * dim, in the store's precision), per
// row squared norm and largest |entry|, and id, label and metadata; with
// U-Hop also each row's features Phi(row) (capacity * key_dim, same
// precision) for the map of the chunk's view. Rows a view can see are never
// written again. The value rows are shared with the chunk a new map's keys
// are rebuilt into (WithKeys), so publishing a map costs the keys' memory,
// not a copy of the store.
class Chunk {
 public:
  struct RowInfo {
    uint64_t id = 0;
    std::string label;
    Metadata metadata;
    int64_t expire_ns = 0;  // Unix nanoseconds; 0: never.
  };

  // `key_dim` > 0 keeps features Phi(row) of that size beside each row.
  Chunk(size_t dim, size_t capacity, size_t key_dim = 0,
        core::Precision precision = core::Precision::kFloat32);
  Chunk(const Chunk&) = delete;
  Chunk& operator=(const Chunk&) = delete;

  // A new chunk holding a copy of this one's first `rows` rows and keys.
  std::unique_ptr<Chunk> Clone(size_t rows) const;
  // A new chunk sharing this one's value rows, with the first `rows` keys
  // computed by `map`.
  std::unique_ptr<Chunk> WithKeys(const core::FeatureMap& map,
                                  size_t rows) const;

  size_t capacity() const { return capacity_; }
  core::Precision precision() const { return precision_; }
  // Values and keys in the chunk's precision.
  const void* values() const { return rows_->values.get(); }
  const void* keys() const { return keys_.get(); }
  // Row r's values (dim) / features (key_dim) as float32, exactly.
  void CopyValues(size_t r, float* out) const;
  void CopyKey(size_t r, float* out) const;
  // The first `rows` rows' values / keys as float32 (for the float32 chunk,
  // a view of its own memory; otherwise widened into `buffer`).
  const float* ValuesAsFloats(size_t rows, std::vector<float>& buffer) const;
  const float* KeysAsFloats(size_t rows, std::vector<float>& buffer) const;
  const float* sq_norms() const { return rows_->sq_norms.get(); }
  float max_abs(size_t r) const { return rows_->max_abs[r]; }
  const RowInfo& info(size_t r) const { return rows_->info[r]; }
  size_t key_dim() const { return key_dim_; }
  const float* key_sq_norms() const { return key_sq_norms_.get(); }
  // Bytes the chunk's arrays take (values, keys, norms, row records).
  size_t bytes() const;
  // What one row of such a chunk takes.
  static size_t RowBytes(size_t dim, size_t key_dim, core::Precision precision);

  // Row r <- pattern (its values already representable in the chunk's
  // precision), stored under `id`; `key` (key_dim values) if keyed.
  void Set(size_t r, const Pattern& pattern, uint64_t id, const float* key);
  void CopyRow(size_t to, const Chunk& from, size_t r);

 private:
  struct Rows;
  Chunk(size_t dim, size_t capacity, size_t key_dim, core::Precision precision,
        std::shared_ptr<Rows> rows);
  // key_sq_norms_[r] <- ||key r||^2, from the features `key` (key_dim)
  // before they were narrowed into the chunk.
  void SetKeyNorm(size_t r, const float* key);

  // Rows and keys start on a cache line (64 bytes): sgemm packs them with
  // aligned loads, and a row of d = 784 floats spans 49 lines, not 50.
  struct AlignedFree {
    void operator()(unsigned char* p) const;
  };
  using AlignedBytes = std::unique_ptr<unsigned char[], AlignedFree>;
  static AlignedBytes NewAligned(size_t bytes);

  struct Rows {
    Rows(size_t dim, size_t capacity, core::Precision precision);
    AlignedBytes values;
    std::unique_ptr<float[]> sq_norms;
    std::unique_ptr<float[]> max_abs;
    std::unique_ptr<RowInfo[]> info;
  };

  const size_t dim_;
  const size_t capacity_;
  const size_t key_dim_;
  const core::Precision precision_;
  const size_t element_bytes_;
  std::shared_ptr<Rows> rows_;
  AlignedBytes keys_;
  std::unique_ptr<float[]> key_sq_norms_;
};

struct NormStats {
  double max_norm = 0;
  double mean_norm = 0;
  double max_abs_entry = 0;
  double max_feature_norm = 0;  // Of Phi(xi); equal to max_norm without a map.
  double mean_feature_norm = 0;
};

// Norm statistics of a set of rows, counted one row at a time.
class NormTally {
 public:
  // Counts row r of `chunk` (and its features, if the chunk keeps them).
  void Add(const Chunk& chunk, size_t r);
  // Counts the rows `other` counted.
  void Merge(const NormTally& other);
  // The statistics of the `rows` rows counted.
  NormStats Stats(size_t rows) const;

 private:
  double sum_norm_ = 0, max_norm_ = 0, max_abs_ = 0;
  double sum_feature_norm_ = 0, max_feature_norm_ = 0;
  bool keyed_ = false;  // The rows have features.
};

// The low-rank sums a store keeps (docs/low-rank.md).
struct LowRankState {
  uint32_t degree = 0;  // Largest Taylor degree kept; 0: none.
  uint64_t rank = 0;    // Rank of the sums at that degree.
  std::string detail;   // Why there are none, when there are none.
};

// An immutable snapshot of a store. Thread-safe: immutable.
class StoreView {
 public:
  const StoreSettings& settings() const { return settings_; }
  size_t size() const { return count_; }
  uint64_t version() const { return version_; }
  const NormStats& norms() const { return norms_; }
  // The feature map retrieval uses (null without U-Hop) and its record.
  const std::shared_ptr<const core::FeatureMap>& map() const { return map_; }
  const FitRecord& fit() const { return fit_; }
  // The low-rank sums over exactly this view's patterns (null if the store
  // keeps none), what they are, and an upper bound on ||Phi||_2.
  const std::shared_ptr<const core::LowRankSums>& low_rank() const {
    return low_rank_;
  }
  const LowRankState& low_rank_state() const { return low_rank_state_; }
  double map_norm() const { return map_norm_; }
  // The longest label ever added (deletes do not lower it): bounds the size
  // of an answer before it is computed.
  size_t max_label_bytes() const { return max_label_bytes_; }
  // The sum of a hash of every pattern (id, values, label, metadata): equal
  // for equal contents, whatever the order they came in (replicas compare
  // it).
  uint64_t digest() const { return digest_; }
  // The store's next automatic id at this view (0: none left).
  uint64_t next_id() const { return next_id_; }

  // The rows of this view that match `filter` (not empty), ascending; the
  // status of `check` if it fails while the rows are indexed (see
  // FilterIndex::Match).
  absl::StatusOr<std::vector<uint32_t>> Matching(
      const Filter& filter,
      const std::function<absl::Status()>& check = {}) const;

  // Expiry (docs/expiry.md): whether some row expired at `now_ns` (Unix
  // nanoseconds) and is not reclaimed yet; whether row `index` did; the
  // rows of `rows` (or of the view) that did not; how many did not.
  // Without expired rows these cost nothing but LiveRows, one pass.
  bool HasExpired(int64_t now_ns) const { return min_expire_ns_ <= now_ns; }
  bool Expired(size_t index, int64_t now_ns) const;
  std::vector<uint32_t> Live(absl::Span<const uint32_t> rows,
                             int64_t now_ns) const;
  std::vector<uint32_t> LiveRows(int64_t now_ns) const;
  size_t LiveCount(int64_t now_ns) const;
  // norms() over the rows that have not expired at `now_ns`.
  NormStats LiveNorms(int64_t now_ns) const;
  // The earliest expiry of a row (INT64_MAX: none expires).
  int64_t min_expire_ns() const { return min_expire_ns_; }
  // Patterns that expired and were reclaimed since the process started.
  uint64_t expired_count() const { return expired_count_; }

  // The patterns as blocks for core retrieval, valid while this view lives:
  // one block per chunk of chunk_capacity() rows (the last one shorter).
  core::MemorySet memories() const;
  size_t chunk_capacity() const { return chunk_capacity_; }
  // Row `index`'s values as float32 (size dimension).
  std::vector<float> Row(size_t index) const;
  // Bytes of memory the view's chunks take (Chunk::bytes).
  size_t memory_bytes() const;
  const Chunk::RowInfo& info(size_t index) const;
  Pattern pattern(size_t index, bool with_values = true) const;

 private:
  friend class Store;
  StoreSettings settings_;
  std::vector<std::shared_ptr<const Chunk>> chunks_;
  size_t chunk_capacity_ = 0;
  size_t count_ = 0;
  uint64_t version_ = 0;
  NormStats norms_;
  std::shared_ptr<const core::FeatureMap> map_;
  FitRecord fit_;
  std::shared_ptr<const core::LowRankSums> low_rank_;
  LowRankState low_rank_state_;
  double map_norm_ = 1;
  size_t max_label_bytes_ = 0;
  uint64_t digest_ = 0;
  uint64_t next_id_ = 1;
  // Shared by the views between two deletes; built by filtered reads.
  std::shared_ptr<FilterIndex> filter_index_;
  int64_t min_expire_ns_ = std::numeric_limits<int64_t>::max();
  uint64_t expired_count_ = 0;
};

class Store {
 public:
  // `storage` is borrowed and must outlive the store.
  Store(StoreSettings settings, const Limits& limits, StorageBackend* storage);
  // Takes its patterns' bytes off Limits::store_memory.
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& name() const { return name_; }

  // The current snapshot.
  std::shared_ptr<const StoreView> view() const;

  // Adds all patterns or none; returns their ids in order. Ids of 0 are
  // assigned above every id in use or in the batch.
  absl::StatusOr<std::vector<uint64_t>> Add(absl::Span<const Pattern> patterns);
  // The same for a caller that gives its patterns up: ids, expiry times and
  // rounding are filled in place, so a large add holds no second copy.
  absl::StatusOr<std::vector<uint64_t>> AddOwned(std::vector<Pattern> patterns);
  // Deletes all ids or none.
  absl::Status Delete(absl::Span<const uint64_t> ids);
  // What Delete(ids) would answer now, deleting nothing (OK where it would
  // delete them all).
  absl::Status CheckDelete(absl::Span<const uint64_t> ids);
  // Deletes every pattern whose expiry is at or before `now_ns` (Unix
  // nanoseconds), in batches of max_batch, each atomic; how many.
  absl::StatusOr<size_t> ExpireDue(int64_t now_ns);
  // ExpireDue(now) if the current snapshot holds an expired pattern (else
  // 0 at the cost of one comparison).
  absl::StatusOr<size_t> ReclaimExpired();
  absl::StatusOr<Pattern> Get(uint64_t id) const;

  struct Page {
    std::vector<Pattern> patterns;
    bool more = false;  // Patterns with larger ids exist.
  };
  // Up to `page_size` patterns with id > after_id, in id order.
  Page List(uint64_t after_id, size_t page_size, bool with_values) const;

  // Applies `mutate` to a copy of the settings, validates the result (name
  // and dimension cannot change), stores it and publishes it.
  absl::Status UpdateSettings(
      const std::function<absl::Status(StoreSettings&)>& mutate);

  // Stores a fitted map durably, recomputes every pattern's features with it
  // and publishes it with a new view, all at once: until then retrieval uses
  // the previous map. Patterns added meanwhile get the new features too.
  // FAILED_PRECONDITION unless record.version is newer than the store's.
  absl::Status PublishMap(std::shared_ptr<const core::FeatureMap> map,
                          const FitRecord& record);
  // Restores a map read back from storage (before its patterns).
  void RestoreMap(std::shared_ptr<const core::FeatureMap> map,
                  const FitRecord& record);

  // Deletes the store's data from storage; every later write fails with
  // NOT_FOUND. Waits for a write in progress.
  absl::Status Drop();

  // Refuses every later write with `why` (waiting for a write in progress)
  // while a restore replaces the store; storage is left alone. Reinstate()
  // takes writes again (the restore failed).
  void Retire(absl::Status why);
  void Reinstate();

  // Loads patterns read back from storage without writing them again, and
  // the id sequence (ids below `next_id` are never assigned again; 0: no
  // automatic id is left).
  absl::Status Restore(absl::Span<const Pattern> patterns);
  void RestoreNextId(uint64_t next_id);

  // The write stamp: the largest stamp a router sent with a write this store
  // applied (0: none). RaiseStamp records a larger one durably; a smaller
  // one changes nothing. RestoreStamp sets it from storage.
  uint64_t stamp() const;
  absl::Status RaiseStamp(uint64_t stamp);
  void RestoreStamp(uint64_t stamp);

 private:
  absl::Status ValidateAdd(absl::Span<const Pattern> patterns,
                           std::vector<uint64_t>& ids) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Writes rows into the chunks and publishes a new view.
  std::vector<uint64_t> ApplyAdd(absl::Span<const Pattern> patterns,
                                 const std::vector<uint64_t>& ids)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // The chunk to write row `row` of chunk `c` into, copied first if a
  // published view can see that row.
  Chunk* WritableChunk(size_t c, size_t row)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  void Publish(const StoreSettings& settings)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_, mu_);
  // Norm statistics of every chunk from scratch (after the keys changed).
  void RecomputeNorms() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Counts chunk c's rows again (after rows moved in or out of it).
  void RecountChunk(size_t c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Fresh chunks with every key recomputed by map_.
  void RebuildKeys() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // The low-rank sums `settings` call for, rebuilt from every pattern (or
  // dropped), with map_norm_.
  void RebuildSums(const StoreSettings& settings)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // The sums `settings` call for: their degree and rank, or why none.
  LowRankState PlanSums(const StoreSettings& settings) const;
  // Adds (sign +1) or removes (sign -1) n patterns from a copy of the sums:
  // values n x dim, keys n x d_Phi (the values themselves for dot).
  void UpdateSums(const float* keys, const float* values, size_t n, double sign)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  absl::Status CheckWritable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // RESOURCE_EXHAUSTED if `rows` more rows would take every store's
  // patterns past Limits::max_store_memory_bytes.
  absl::Status CheckMemoryFor(size_t rows) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // The patterns with their values rounded to the store's precision (the
  // values it keeps, stores and hashes); INVALID_ARGUMENT naming the value
  // if one does not fit (float16 beyond 65504).
  absl::StatusOr<std::vector<Pattern>> Rounded(
      absl::Span<const Pattern> patterns) const;
  // The same in place; on an error some values may be rounded already.
  absl::Status RoundInPlace(absl::Span<Pattern> patterns) const;
  // Where each of `ids` is (its row), after the checks of a delete: the
  // store writable, 1 to max_batch ids, each stored and given once.
  absl::StatusOr<absl::flat_hash_map<uint64_t, size_t>> LocateLocked(
      absl::Span<const uint64_t> ids) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  absl::Status DeleteLocked(absl::Span<const uint64_t> ids)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  // Constant after construction.
  const std::string name_;
  const size_t dim_;
  const core::Precision precision_;
  const size_t key_dim_;  // d_Phi with U-Hop, else 0 (no keys kept).
  const size_t chunk_capacity_;
  const Limits limits_;
  StorageBackend* const storage_;

  // Serialises writers; held across the storage write.
  mutable Mutex write_mu_;
  std::vector<std::shared_ptr<Chunk>> chunks_ ABSL_GUARDED_BY(write_mu_);
  // Rows of each chunk that some published view may see.
  std::vector<size_t> sealed_ ABSL_GUARDED_BY(write_mu_);
  size_t count_ ABSL_GUARDED_BY(write_mu_) = 0;
  // The next automatic id; 0 once 2^64 - 1 was used.
  uint64_t digest_ ABSL_GUARDED_BY(write_mu_) = 0;
  uint64_t next_id_ ABSL_GUARDED_BY(write_mu_) = 1;
  std::atomic<uint64_t> stamp_{0};  // Written under write_mu_.
  std::shared_ptr<const core::FeatureMap> map_ ABSL_GUARDED_BY(write_mu_);
  FitRecord fit_ ABSL_GUARDED_BY(write_mu_);
  bool dropped_ ABSL_GUARDED_BY(write_mu_) = false;
  absl::Status retired_ ABSL_GUARDED_BY(write_mu_);
  // The norms of each chunk's rows, one per chunk as sealed_: a delete
  // counts again only the chunks it changed, and a view's statistics merge
  // them.
  std::vector<NormTally> chunk_norms_ ABSL_GUARDED_BY(write_mu_);
  size_t max_label_bytes_ ABSL_GUARDED_BY(write_mu_) = 0;
  // This store's share of Limits::store_memory, as of the last Publish.
  size_t counted_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<const core::LowRankSums> sums_ ABSL_GUARDED_BY(write_mu_);
  // (expiry, id) of every pattern that expires.
  absl::btree_set<std::pair<int64_t, uint64_t>> expiries_
      ABSL_GUARDED_BY(write_mu_);
  uint64_t expired_count_ ABSL_GUARDED_BY(write_mu_) = 0;
  // The views' filter index: a new, empty one after each delete (rows
  // moved); filtered reads build it (see filter_index.h).
  std::shared_ptr<FilterIndex> filter_index_ ABSL_GUARDED_BY(write_mu_) =
      std::make_shared<FilterIndex>();
  LowRankState sums_state_ ABSL_GUARDED_BY(write_mu_);
  double map_norm_ ABSL_GUARDED_BY(write_mu_) = 1;

  // Guards what readers see; held only to swap the view and update the index.
  mutable Mutex mu_ ABSL_ACQUIRED_AFTER(write_mu_);
  std::shared_ptr<const StoreView> view_ ABSL_GUARDED_BY(mu_);
  absl::btree_map<uint64_t, size_t> index_ ABSL_GUARDED_BY(mu_);
};

// The checks of a batch of patterns that need nothing of a store but its
// dimension: how many values each has (`dim`, and `dim_is` ends the
// message: "store 's' has dimension 8"), finite values, label and
// metadata sizes within `limits`, and no explicit id given twice. A
// router checks a batch so, with the first pattern's count of values,
// before it splits it over shard groups: a batch that one group would
// refuse for these reasons reaches none.
absl::Status CheckBatch(absl::Span<const Pattern> patterns, size_t dim,
                        absl::string_view dim_is, const Limits& limits);

// One pattern's share of a store's content digest (StoreView::digest()).
uint64_t PatternDigest(uint64_t id, const float* values, size_t dim,
                       absl::string_view label, const Metadata& metadata);

// Rows per chunk for a dimension: about 4 MiB of floats, a power of two.
size_t ChunkCapacity(size_t dim);

// The map a U-Hop store retrieves with before its first fit: the identity
// when d_Phi = d, else the seeded initial W of its fits.
std::shared_ptr<const core::FeatureMap> InitialMap(
    const StoreSettings& settings);

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_STORE_H_
