#include "server/store/store.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/base/mib.h"
#include "server/core/finite.h"

namespace engram::store {

namespace {

// The next automatic id once `id` is used, from `next`. Ids run from 1 to
// 2^64 - 1; 0 means none is left (2^64 - 1 was used), and stays so.
uint64_t NextAfter(uint64_t next, uint64_t id) {
  if (next == 0 || id < next) return next;
  return id == std::numeric_limits<uint64_t>::max() ? 0 : id + 1;
}

}  // namespace

// One pattern's share of a store's content digest: FNV-1a over its id,
// values, label and metadata. The digest of a store is the sum over its
// patterns, so adds and deletes update it and equal contents give equal
// digests whatever their order.
absl::Status CheckBatch(absl::Span<const Pattern> patterns, size_t dim,
                        absl::string_view dim_is, const Limits& limits) {
  absl::flat_hash_map<uint64_t, size_t> explicit_ids;
  for (size_t i = 0; i < patterns.size(); ++i) {
    const Pattern& p = patterns[i];
    if (p.values.size() != dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("patterns[", i, "].values has ", p.values.size(),
                       " values; ", dim_is));
    }
    if (const size_t k = core::FirstNonFinite(p.values); k < dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("patterns[", i, "].values[", k, "] is ", p.values[k],
                       "; values must be finite"));
    }
    if (const double norm = core::Norm(p.values); !(norm <= core::kMaxNorm)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "patterns[%d].values has norm %.3g; a pattern's norm must be at "
          "most %.3g, or its scores overflow float",
          i, norm, core::kMaxNorm));
    }
    if (p.label.size() > limits.max_label_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("patterns[", i, "].label has ", p.label.size(),
                       " bytes; the limit is ", limits.max_label_bytes));
    }
    if (p.metadata.size() > limits.max_metadata_entries) {
      return absl::InvalidArgumentError(
          absl::StrCat("patterns[", i, "].metadata has ", p.metadata.size(),
                       " entries; the limit is ", limits.max_metadata_entries));
    }
    for (const auto& [key, value] : p.metadata) {
      if (key.size() > limits.max_metadata_bytes ||
          value.size() > limits.max_metadata_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "patterns[", i, "].metadata['", key.substr(0, 32),
            "'] is longer than the limit of ", limits.max_metadata_bytes,
            " bytes per key and value"));
      }
    }
    if (p.id != 0) {
      auto [it, inserted] = explicit_ids.emplace(p.id, i);
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat("patterns[", i, "].id ", p.id, " repeats patterns[",
                         it->second, "].id"));
      }
    }
  }
  return absl::OkStatus();
}

uint64_t PatternDigest(uint64_t id, const float* values, size_t dim,
                       absl::string_view label, const Metadata& metadata) {
  uint64_t h = 0xcbf29ce484222325ULL;
  auto bytes = [&h](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  };
  bytes(&id, sizeof(id));
  bytes(values, dim * sizeof(float));
  bytes(label.data(), label.size());
  for (const auto& [key, value] : metadata) {
    bytes(key.data(), key.size());
    bytes("=", 1);
    bytes(value.data(), value.size());
  }
  return h;
}

size_t ChunkCapacity(size_t dim) {
  const size_t rows = (size_t{1} << 20) / std::max<size_t>(dim, 1);
  size_t capacity = 64;
  while (capacity * 2 <= rows && capacity < 65536) capacity *= 2;
  return capacity;
}

std::shared_ptr<const core::FeatureMap> InitialMap(
    const StoreSettings& settings) {
  if (settings.feature_map.kind != FeatureMapKind::kUhop) return nullptr;
  const size_t d = settings.dimension;
  const size_t p = FeatureDim(settings);
  if (p == d) {
    return std::make_shared<core::FeatureMap>(core::FeatureMap::Identity(d));
  }
  return std::make_shared<core::FeatureMap>(
      core::FeatureMap::RandomNormal(d, p, settings.feature_map.seed));
}

void Chunk::AlignedFree::operator()(unsigned char* p) const { std::free(p); }

Chunk::AlignedBytes Chunk::NewAligned(size_t bytes) {
  const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) throw std::bad_alloc();
  return AlignedBytes(static_cast<unsigned char*>(p));
}

Chunk::Rows::Rows(size_t dim, size_t capacity, core::Precision precision)
    : values(NewAligned(dim * capacity * core::ElementBytes(precision))),
      sq_norms(new float[capacity]),
      max_abs(new float[capacity]),
      info(new RowInfo[capacity]) {}

Chunk::Chunk(size_t dim, size_t capacity, size_t key_dim,
             core::Precision precision)
    : Chunk(dim, capacity, key_dim, precision,
            std::make_shared<Rows>(dim, capacity, precision)) {}

Chunk::Chunk(size_t dim, size_t capacity, size_t key_dim,
             core::Precision precision, std::shared_ptr<Rows> rows)
    : dim_(dim),
      capacity_(capacity),
      key_dim_(key_dim),
      precision_(precision),
      element_bytes_(core::ElementBytes(precision)),
      rows_(std::move(rows)),
      keys_(key_dim ? NewAligned(key_dim * capacity * element_bytes_)
                    : nullptr),
      key_sq_norms_(key_dim ? new float[capacity] : nullptr) {}

std::unique_ptr<Chunk> Chunk::Clone(size_t rows) const {
  auto copy = std::make_unique<Chunk>(dim_, capacity_, key_dim_, precision_);
  std::copy_n(rows_->values.get(), rows * dim_ * element_bytes_,
              copy->rows_->values.get());
  std::copy_n(rows_->sq_norms.get(), rows, copy->rows_->sq_norms.get());
  std::copy_n(rows_->max_abs.get(), rows, copy->rows_->max_abs.get());
  std::copy_n(rows_->info.get(), rows, copy->rows_->info.get());
  if (key_dim_) {
    std::copy_n(keys_.get(), rows * key_dim_ * element_bytes_,
                copy->keys_.get());
    std::copy_n(key_sq_norms_.get(), rows, copy->key_sq_norms_.get());
  }
  return copy;
}

std::unique_ptr<Chunk> Chunk::WithKeys(const core::FeatureMap& map,
                                       size_t rows) const {
  std::unique_ptr<Chunk> keyed(
      new Chunk(dim_, capacity_, key_dim_, precision_, rows_));
  std::vector<float> values, keys(rows * key_dim_);
  map.Apply(ValuesAsFloats(rows, values), rows, keys.data());
  core::Narrow(precision_, keys.data(), rows * key_dim_, keyed->keys_.get());
  for (size_t r = 0; r < rows; ++r) {
    keyed->SetKeyNorm(r, keys.data() + r * key_dim_);
  }
  return keyed;
}

void Chunk::CopyValues(size_t r, float* out) const {
  core::Widen(precision_, rows_->values.get() + r * dim_ * element_bytes_, dim_,
              out);
}

void Chunk::CopyKey(size_t r, float* out) const {
  core::Widen(precision_, keys_.get() + r * key_dim_ * element_bytes_, key_dim_,
              out);
}

const float* Chunk::ValuesAsFloats(size_t rows,
                                   std::vector<float>& buffer) const {
  return core::AsFloats(precision_, rows_->values.get(), rows * dim_, buffer);
}

const float* Chunk::KeysAsFloats(size_t rows,
                                 std::vector<float>& buffer) const {
  return core::AsFloats(precision_, keys_.get(), rows * key_dim_, buffer);
}

size_t Chunk::bytes() const {
  return capacity_ * RowBytes(dim_, key_dim_, precision_);
}

size_t Chunk::RowBytes(size_t dim, size_t key_dim, core::Precision precision) {
  return (dim + key_dim) * core::ElementBytes(precision) +
         (key_dim ? 3 : 2) * sizeof(float) + sizeof(RowInfo);
}

void Chunk::Set(size_t r, const Pattern& pattern, uint64_t id,
                const float* key) {
  if (key_dim_) {
    core::Narrow(precision_, key, key_dim_,
                 keys_.get() + r * key_dim_ * element_bytes_);
    SetKeyNorm(r, key);
  }
  // The values are representable: narrowing keeps them exactly.
  core::Narrow(precision_, pattern.values.data(), dim_,
               rows_->values.get() + r * dim_ * element_bytes_);
  double sq_norm = 0;
  float max_abs = 0;
  for (size_t k = 0; k < dim_; ++k) {
    const float v = pattern.values[k];
    sq_norm += double{v} * v;
    max_abs = std::max(max_abs, std::fabs(v));
  }
  rows_->sq_norms[r] = static_cast<float>(sq_norm);
  rows_->max_abs[r] = max_abs;
  rows_->info[r] =
      RowInfo{id, pattern.label, pattern.metadata, pattern.expire_ns};
}

void Chunk::SetKeyNorm(size_t r, const float* key) {
  double sq = 0;
  for (size_t k = 0; k < key_dim_; ++k) {
    const double kept = core::Round(precision_, key[k]);  // As stored.
    sq += kept * kept;
  }
  key_sq_norms_[r] = static_cast<float>(sq);
}

void Chunk::CopyRow(size_t to, const Chunk& from, size_t r) {
  std::copy_n(from.rows_->values.get() + r * dim_ * element_bytes_,
              dim_ * element_bytes_,
              rows_->values.get() + to * dim_ * element_bytes_);
  rows_->sq_norms[to] = from.rows_->sq_norms[r];
  rows_->max_abs[to] = from.rows_->max_abs[r];
  rows_->info[to] = from.rows_->info[r];
  if (key_dim_) {
    std::copy_n(from.keys_.get() + r * key_dim_ * element_bytes_,
                key_dim_ * element_bytes_,
                keys_.get() + to * key_dim_ * element_bytes_);
    key_sq_norms_[to] = from.key_sq_norms_[r];
  }
}

core::MemorySet StoreView::memories() const {
  core::MemorySet set;
  set.dim = settings_.dimension;
  size_t left = count_;
  for (const auto& chunk : chunks_) {
    const size_t rows = std::min(left, chunk_capacity_);
    if (rows == 0) break;
    set.blocks.push_back({chunk->values(), chunk->sq_norms(), rows,
                          chunk->keys(), chunk->key_sq_norms(),
                          chunk->precision()});
    left -= rows;
  }
  set.map = map_.get();
  return set;
}

size_t StoreView::memory_bytes() const {
  size_t bytes = 0;
  for (const auto& chunk : chunks_) bytes += chunk->bytes();
  return bytes;
}

absl::StatusOr<std::vector<uint32_t>> StoreView::Matching(
    const Filter& filter, const std::function<absl::Status()>& check) const {
  return filter_index_->Match(
      filter, count_,
      [this](size_t g) -> const std::string& { return info(g).label; },
      [this](size_t g) -> const Metadata& { return info(g).metadata; }, check);
}

bool StoreView::Expired(size_t index, int64_t now_ns) const {
  if (now_ns < min_expire_ns_) return false;
  const int64_t at = info(index).expire_ns;
  return at != 0 && at <= now_ns;
}

std::vector<uint32_t> StoreView::Live(absl::Span<const uint32_t> rows,
                                      int64_t now_ns) const {
  std::vector<uint32_t> live;
  live.reserve(rows.size());
  for (uint32_t r : rows) {
    if (!Expired(r, now_ns)) live.push_back(r);
  }
  return live;
}

std::vector<uint32_t> StoreView::LiveRows(int64_t now_ns) const {
  std::vector<uint32_t> live;
  live.reserve(count_);
  for (size_t r = 0; r < count_; ++r) {
    if (!Expired(r, now_ns)) live.push_back(static_cast<uint32_t>(r));
  }
  return live;
}

NormStats StoreView::LiveNorms(int64_t now_ns) const {
  if (!HasExpired(now_ns)) return norms_;
  NormTally live;
  size_t rows = 0;
  for (size_t g = 0; g < count_; ++g) {
    if (Expired(g, now_ns)) continue;
    live.Add(*chunks_[g / chunk_capacity_], g % chunk_capacity_);
    ++rows;
  }
  return live.Stats(rows);
}

size_t StoreView::LiveCount(int64_t now_ns) const {
  if (!HasExpired(now_ns)) return count_;
  size_t live = 0;
  for (size_t r = 0; r < count_; ++r) live += !Expired(r, now_ns);
  return live;
}

std::vector<float> StoreView::Row(size_t index) const {
  std::vector<float> row(settings_.dimension);
  chunks_[index / chunk_capacity_]->CopyValues(index % chunk_capacity_,
                                               row.data());
  return row;
}

const Chunk::RowInfo& StoreView::info(size_t index) const {
  return chunks_[index / chunk_capacity_]->info(index % chunk_capacity_);
}

Pattern StoreView::pattern(size_t index, bool with_values) const {
  const Chunk::RowInfo& row_info = info(index);
  Pattern pattern{
      row_info.id, {}, row_info.label, row_info.metadata, row_info.expire_ns};
  if (with_values) pattern.values = Row(index);
  return pattern;
}

Store::Store(StoreSettings settings, const Limits& limits,
             StorageBackend* storage)
    : name_(settings.name),
      dim_(settings.dimension),
      precision_(settings.precision),
      key_dim_(settings.feature_map.kind == FeatureMapKind::kUhop
                   ? FeatureDim(settings)
                   : 0),
      chunk_capacity_(ChunkCapacity(settings.dimension + key_dim_)),
      limits_(limits),
      storage_(storage) {
  MutexLock write_lock(&write_mu_);
  next_id_ = FirstAutoId(limits.placement);
  map_ = InitialMap(settings);
  RebuildSums(settings);
  MutexLock lock(&mu_);
  Publish(settings);
}

std::shared_ptr<const StoreView> Store::view() const {
  ReaderMutexLock lock(&mu_);
  return view_;
}

absl::Status Store::CheckWritable() const {
  if (dropped_) {
    return absl::NotFoundError(absl::StrCat("store '", name_, "' was deleted"));
  }
  return retired_;
}

void Store::Retire(absl::Status why) {
  MutexLock write_lock(&write_mu_);
  retired_ = std::move(why);
}

void Store::Reinstate() {
  MutexLock write_lock(&write_mu_);
  retired_ = absl::OkStatus();
}

absl::Status Store::ValidateAdd(absl::Span<const Pattern> patterns,
                                std::vector<uint64_t>& ids) const {
  if (patterns.empty()) {
    return absl::InvalidArgumentError("patterns must not be empty");
  }
  if (patterns.size() > limits_.max_batch) {
    return absl::ResourceExhaustedError(
        absl::StrCat("patterns holds ", patterns.size(),
                     " patterns; the limit max_batch is ", limits_.max_batch));
  }
  if (count_ + patterns.size() > limits_.max_patterns_per_store) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "store '", name_, "' holds ", count_, " patterns; adding ",
        patterns.size(), " would pass the limit max_patterns_per_store of ",
        limits_.max_patterns_per_store));
  }
  if (absl::Status checked = CheckBatch(
          patterns, dim_,
          absl::StrCat("store '", name_, "' has dimension ", dim_), limits_);
      !checked.ok()) {
    return checked;
  }
  uint64_t next = next_id_;
  size_t automatic = 0;
  const Placement& placement = limits_.placement;
  for (size_t i = 0; i < patterns.size(); ++i) {
    const Pattern& p = patterns[i];
    if (p.id == 0) continue;
    if (GroupOf(p.id, placement.groups) != placement.group) {
      return absl::InvalidArgumentError(absl::StrCat(
          "patterns[", i, "].id ", p.id, " belongs to shard group ",
          GroupOf(p.id, placement.groups), " of ", placement.groups,
          "; this shard is group ", placement.group));
    }
    next = NextAfter(next, p.id);
  }
  {
    ReaderMutexLock lock(&mu_);
    for (size_t i = 0; i < patterns.size(); ++i) {
      if (patterns[i].id != 0 && index_.contains(patterns[i].id)) {
        return absl::AlreadyExistsError(
            absl::StrCat("patterns[", i, "].id ", patterns[i].id,
                         " already exists in store '", name_, "'"));
      }
    }
  }
  for (const Pattern& p : patterns) automatic += p.id == 0;
  // Automatic ids come after every explicit id of the batch and never wrap:
  // an id, once used, is never handed out again.
  if (automatic > 0 &&
      (next == 0 ||
       automatic - 1 > std::numeric_limits<uint64_t>::max() - next)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "store '", name_, "' has ",
        next == 0 ? uint64_t{0}
                  : std::numeric_limits<uint64_t>::max() - next + 1,
        " automatic ids left (they run to 18446744073709551615) and the "
        "request needs ",
        automatic, "; give explicit ids (any id not in use) instead"));
  }
  // A shard's automatic ids stay in its own range (placement.h).
  if (automatic > 0 && placement.sharded() && next != 0 &&
      ((next + automatic - 1) >> kGroupShift) != (next >> kGroupShift)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "store '", name_, "' has used the automatic ids of shard group ",
        placement.group, "'s range ", next >> kGroupShift,
        "; give explicit ids of this group instead"));
  }
  ids.clear();
  for (const Pattern& p : patterns) ids.push_back(p.id != 0 ? p.id : next++);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Pattern>> Store::Rounded(
    absl::Span<const Pattern> patterns) const {
  std::vector<Pattern> rounded(patterns.begin(), patterns.end());
  if (absl::Status status = RoundInPlace(absl::MakeSpan(rounded));
      !status.ok()) {
    return status;
  }
  return rounded;
}

absl::Status Store::RoundInPlace(absl::Span<Pattern> patterns) const {
  if (precision_ == core::Precision::kFloat32) return absl::OkStatus();
  for (size_t i = 0; i < patterns.size(); ++i) {
    std::vector<float>& values = patterns[i].values;
    for (size_t k = 0; k < values.size(); ++k) {
      const float kept = core::Round(precision_, values[k]);
      if (!std::isfinite(kept)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "patterns[", i, "].values[", k, "] is ", values[k], "; store '",
            name_, "' keeps ", core::PrecisionName(precision_),
            ", whose largest magnitude is ",
            precision_ == core::Precision::kFloat16 ? "65504" : "3.39e38"));
      }
      values[k] = kept;
    }
  }
  return absl::OkStatus();
}

Chunk* Store::WritableChunk(size_t c, size_t row) {
  if (c == chunks_.size()) {
    chunks_.push_back(
        std::make_shared<Chunk>(dim_, chunk_capacity_, key_dim_, precision_));
    sealed_.push_back(0);
    chunk_norms_.emplace_back();
  } else if (row < sealed_[c]) {
    const size_t rows = std::min(chunk_capacity_, count_ - c * chunk_capacity_);
    chunks_[c] = chunks_[c]->Clone(rows);
    sealed_[c] = 0;
  }
  return chunks_[c].get();
}

std::vector<uint64_t> Store::ApplyAdd(absl::Span<const Pattern> patterns,
                                      const std::vector<uint64_t>& ids) {
  // Features of the whole batch in one product.
  std::vector<float> keys;
  std::vector<float> values;
  if (key_dim_ || sums_) {
    values.resize(patterns.size() * dim_);
    for (size_t i = 0; i < patterns.size(); ++i) {
      std::copy_n(patterns[i].values.data(), dim_, values.data() + i * dim_);
    }
  }
  if (key_dim_) {
    keys.resize(patterns.size() * key_dim_);
    map_->Apply(values.data(), patterns.size(), keys.data());
    // The features as the chunks keep them, for the low-rank sums too.
    if (precision_ != core::Precision::kFloat32) {
      for (float& k : keys) k = core::Round(precision_, k);
    }
  }
  for (size_t i = 0; i < patterns.size(); ++i) {
    const size_t g = count_;
    Chunk* chunk = WritableChunk(g / chunk_capacity_, g % chunk_capacity_);
    const size_t r = g % chunk_capacity_;
    chunk->Set(r, patterns[i], ids[i],
               key_dim_ ? keys.data() + i * key_dim_ : nullptr);
    ++count_;
    chunk_norms_[g / chunk_capacity_].Add(*chunk, r);
    digest_ += PatternDigest(ids[i], patterns[i].values.data(), dim_,
                             patterns[i].label, patterns[i].metadata);
    max_label_bytes_ = std::max(max_label_bytes_, patterns[i].label.size());
    next_id_ = NextAfter(next_id_, ids[i]);
    if (patterns[i].expire_ns != 0) {
      expiries_.insert({patterns[i].expire_ns, ids[i]});
    }
  }
  UpdateSums(keys.data(), values.data(), patterns.size(), 1.0);
  MutexLock lock(&mu_);
  size_t g = count_ - patterns.size();
  for (uint64_t id : ids) index_[id] = g++;
  Publish(view_->settings());
  return ids;
}

absl::StatusOr<std::vector<uint64_t>> Store::Add(
    absl::Span<const Pattern> patterns) {
  return AddOwned(std::vector<Pattern>(patterns.begin(), patterns.end()));
}

absl::StatusOr<std::vector<uint64_t>> Store::AddOwned(
    std::vector<Pattern> patterns) {
  MutexLock write_lock(&write_mu_);
  if (absl::Status status = CheckWritable(); !status.ok()) return status;
  std::vector<uint64_t> ids;
  if (absl::Status status = ValidateAdd(patterns, ids); !status.ok()) {
    return status;
  }
  if (absl::Status status = CheckMemoryFor(patterns.size()); !status.ok()) {
    return status;
  }
  // Expiry: a given one must be ahead; none takes the store's default TTL.
  const int64_t now = absl::GetCurrentTimeNanos();
  for (size_t i = 0; i < patterns.size(); ++i) {
    if (patterns[i].expire_ns != 0 && patterns[i].expire_ns <= now) {
      return absl::InvalidArgumentError(absl::StrCat(
          "patterns[", i, "].expire_time ",
          absl::FormatTime(absl::FromUnixNanos(patterns[i].expire_ns)),
          " is not in the future"));
    }
  }
  if (absl::Status status = RoundInPlace(absl::MakeSpan(patterns));
      !status.ok()) {
    return status;
  }
  const absl::Duration ttl = view()->settings().expiry.default_ttl;
  const int64_t default_expiry =
      ttl > absl::ZeroDuration() ? now + absl::ToInt64Nanoseconds(ttl) : 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    patterns[i].id = ids[i];
    if (patterns[i].expire_ns == 0) patterns[i].expire_ns = default_expiry;
  }
  uint64_t next_id = next_id_;
  for (uint64_t id : ids) next_id = NextAfter(next_id, id);
  if (absl::Status status =
          storage_->WritePatterns(name_, patterns, {}, next_id);
      !status.ok()) {
    return status;
  }
  return ApplyAdd(patterns, ids);
}

absl::Status Store::Restore(absl::Span<const Pattern> patterns) {
  MutexLock write_lock(&write_mu_);
  std::vector<uint64_t> ids;
  if (absl::Status status = ValidateAdd(patterns, ids); !status.ok()) {
    return status;
  }
  if (precision_ == core::Precision::kFloat32) {
    ApplyAdd(patterns, ids);  // Loading a float32 store copies nothing.
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<Pattern>> rounded = Rounded(patterns);
  if (!rounded.ok()) return rounded.status();
  ApplyAdd(*rounded, ids);
  return absl::OkStatus();
}

void Store::RestoreNextId(uint64_t next_id) {
  MutexLock write_lock(&write_mu_);
  next_id_ = next_id == 0 ? 0 : NextAfter(next_id_, next_id - 1);
  MutexLock lock(&mu_);
  Publish(view_->settings());
}

uint64_t Store::stamp() const { return stamp_.load(); }

absl::Status Store::RaiseStamp(uint64_t stamp) {
  MutexLock write_lock(&write_mu_);
  if (stamp <= stamp_.load()) return absl::OkStatus();
  if (absl::Status status = CheckWritable(); !status.ok()) return status;
  if (absl::Status status = storage_->PutStamp(name_, stamp); !status.ok()) {
    return status;
  }
  stamp_ = stamp;
  return absl::OkStatus();
}

void Store::RestoreStamp(uint64_t stamp) {
  MutexLock write_lock(&write_mu_);
  stamp_ = stamp;
}

absl::Status Store::Delete(absl::Span<const uint64_t> ids) {
  MutexLock write_lock(&write_mu_);
  return DeleteLocked(ids);
}

absl::Status Store::CheckDelete(absl::Span<const uint64_t> ids) {
  MutexLock write_lock(&write_mu_);
  return LocateLocked(ids).status();
}

absl::StatusOr<size_t> Store::ExpireDue(int64_t now_ns) {
  MutexLock write_lock(&write_mu_);
  size_t expired = 0;
  while (!expiries_.empty() && expiries_.begin()->first <= now_ns) {
    std::vector<uint64_t> ids;
    for (auto it = expiries_.begin();
         it != expiries_.end() && it->first <= now_ns &&
         ids.size() < limits_.max_batch;
         ++it) {
      ids.push_back(it->second);
    }
    if (absl::Status status = DeleteLocked(ids); !status.ok()) return status;
    expired += ids.size();
    expired_count_ += ids.size();
  }
  if (expired > 0) {
    MutexLock lock(&mu_);
    Publish(view_->settings());  // The count of expired patterns.
  }
  return expired;
}

absl::StatusOr<size_t> Store::ReclaimExpired() {
  const int64_t now = absl::GetCurrentTimeNanos();
  if (!view()->HasExpired(now)) return 0;
  return ExpireDue(now);
}

absl::StatusOr<absl::flat_hash_map<uint64_t, size_t>> Store::LocateLocked(
    absl::Span<const uint64_t> ids) {
  if (absl::Status status = CheckWritable(); !status.ok()) return status;
  if (ids.empty()) return absl::InvalidArgumentError("ids must not be empty");
  if (ids.size() > limits_.max_batch) {
    return absl::ResourceExhaustedError(
        absl::StrCat("ids holds ", ids.size(), " ids; the limit max_batch is ",
                     limits_.max_batch));
  }
  absl::flat_hash_map<uint64_t, size_t> location;
  {
    ReaderMutexLock lock(&mu_);
    for (size_t i = 0; i < ids.size(); ++i) {
      auto found = index_.find(ids[i]);
      if (found == index_.end()) {
        return absl::NotFoundError(absl::StrCat(
            "ids[", i, "] ", ids[i], " is not in store '", name_, "'"));
      }
      if (!location.emplace(ids[i], found->second).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("ids[", i, "] ", ids[i], " appears twice"));
      }
    }
  }
  return location;
}

absl::Status Store::DeleteLocked(absl::Span<const uint64_t> ids) {
  absl::StatusOr<absl::flat_hash_map<uint64_t, size_t>> located =
      LocateLocked(ids);
  if (!located.ok()) return located.status();
  absl::flat_hash_map<uint64_t, size_t>& location = *located;
  if (absl::Status status = storage_->WritePatterns(name_, {}, ids, next_id_);
      !status.ok()) {
    return status;
  }
  std::vector<float> row(dim_);
  for (uint64_t id : ids) {
    const size_t g = location[id];
    const Chunk& chunk = *chunks_[g / chunk_capacity_];
    const size_t r = g % chunk_capacity_;
    chunk.CopyValues(r, row.data());
    digest_ -= PatternDigest(id, row.data(), dim_, chunk.info(r).label,
                             chunk.info(r).metadata);
    if (chunk.info(r).expire_ns != 0) {
      expiries_.erase({chunk.info(r).expire_ns, id});
    }
  }
  // What leaves the low-rank sums, read before rows move.
  std::vector<float> gone_values;
  std::vector<float> gone_keys;
  if (sums_) {
    for (uint64_t id : ids) {
      const size_t g = location[id];
      const Chunk& chunk = *chunks_[g / chunk_capacity_];
      const size_t r = g % chunk_capacity_;
      gone_values.resize(gone_values.size() + dim_);
      chunk.CopyValues(r, gone_values.data() + gone_values.size() - dim_);
      if (key_dim_) {
        gone_keys.resize(gone_keys.size() + key_dim_);
        chunk.CopyKey(r, gone_keys.data() + gone_keys.size() - key_dim_);
      }
    }
  }
  // Swap-remove: the last row moves into each freed slot.
  absl::flat_hash_map<uint64_t, size_t> moved;
  absl::flat_hash_set<size_t> changed;  // Chunks whose rows changed.
  for (uint64_t id : ids) {
    auto at = moved.find(id);
    const size_t g = at != moved.end() ? at->second : location[id];
    moved.erase(id);
    const size_t last = count_ - 1;
    changed.insert(g / chunk_capacity_);
    changed.insert(last / chunk_capacity_);
    if (g != last) {
      Chunk* target = WritableChunk(g / chunk_capacity_, g % chunk_capacity_);
      const Chunk& source = *chunks_[last / chunk_capacity_];
      target->CopyRow(g % chunk_capacity_, source, last % chunk_capacity_);
      moved[target->info(g % chunk_capacity_).id] = g;
    }
    --count_;
    while (chunks_.size() * chunk_capacity_ >= count_ + chunk_capacity_ &&
           !chunks_.empty()) {
      chunks_.pop_back();
      sealed_.pop_back();
      chunk_norms_.pop_back();
    }
  }
  for (size_t c : changed) {
    if (c < chunks_.size()) RecountChunk(c);
  }
  // Rows moved: views from here on read a new index; older views keep theirs.
  filter_index_ = std::make_shared<FilterIndex>();
  if (count_ == 0) {
    RebuildSums(view()->settings());  // Exactly zero again.
  } else {
    UpdateSums(gone_keys.data(), gone_values.data(), ids.size(), -1.0);
  }
  MutexLock lock(&mu_);
  for (uint64_t id : ids) index_.erase(id);
  for (const auto& [id, g] : moved) index_[id] = g;
  Publish(view_->settings());
  return absl::OkStatus();
}

void Store::RecomputeNorms() {
  chunk_norms_.assign(chunks_.size(), NormTally());
  for (size_t c = 0; c < chunks_.size(); ++c) RecountChunk(c);
}

void Store::RecountChunk(size_t c) {
  const size_t rows = std::min(chunk_capacity_, count_ - c * chunk_capacity_);
  NormTally tally;
  for (size_t r = 0; r < rows; ++r) tally.Add(*chunks_[c], r);
  chunk_norms_[c] = tally;
}

void NormTally::Merge(const NormTally& other) {
  sum_norm_ += other.sum_norm_;
  max_norm_ = std::max(max_norm_, other.max_norm_);
  max_abs_ = std::max(max_abs_, other.max_abs_);
  sum_feature_norm_ += other.sum_feature_norm_;
  max_feature_norm_ = std::max(max_feature_norm_, other.max_feature_norm_);
  keyed_ = keyed_ || other.keyed_;
}

void NormTally::Add(const Chunk& chunk, size_t r) {
  const double norm = std::sqrt(double{chunk.sq_norms()[r]});
  sum_norm_ += norm;
  max_norm_ = std::max(max_norm_, norm);
  max_abs_ = std::max(max_abs_, double{chunk.max_abs(r)});
  if (chunk.key_dim() > 0) {
    keyed_ = true;
    const double feature_norm = std::sqrt(double{chunk.key_sq_norms()[r]});
    sum_feature_norm_ += feature_norm;
    max_feature_norm_ = std::max(max_feature_norm_, feature_norm);
  }
}

NormStats NormTally::Stats(size_t rows) const {
  const double mean_norm = rows ? sum_norm_ / rows : 0.0;
  return {max_norm_, mean_norm, max_abs_,
          keyed_ ? max_feature_norm_ : max_norm_,
          keyed_ ? (rows ? sum_feature_norm_ / rows : 0.0) : mean_norm};
}

void Store::RebuildKeys() {
  // The new chunks share their value rows with the old ones, which published
  // views still read: sealed_ stays as it is, so rows they can see are never
  // written in place.
  for (size_t c = 0; c < chunks_.size(); ++c) {
    const size_t rows = std::min(chunk_capacity_, count_ - c * chunk_capacity_);
    chunks_[c] = chunks_[c]->WithKeys(*map_, rows);
  }
  RecomputeNorms();
  RebuildSums(view()->settings());
}

LowRankState Store::PlanSums(const StoreSettings& settings) const {
  LowRankState state;
  const core::RetrievalParams& retrieval = settings.retrieval;
  const bool kernel = retrieval.similarity == core::Similarity::kKernelDot;
  if (retrieval.similarity != core::Similarity::kDot && !kernel) {
    state.detail =
        absl::StrCat("similarity ", core::SimilarityName(retrieval.similarity),
                     " has no low-rank form (dot and kernel_dot have)");
    return state;
  }
  if (retrieval.separation != core::Separation::kSoftmax) {
    state.detail =
        absl::StrCat("separation ", core::SeparationName(retrieval.separation),
                     " has no low-rank form (softmax has)");
    return state;
  }
  const size_t n = kernel ? key_dim_ : dim_;
  state.degree = core::SumsDegree(n, dim_, settings.low_rank.max_degree,
                                  limits_.max_low_rank_values);
  if (state.degree == 0) {
    state.detail = absl::StrCat("the sums at degree 2 would hold ",
                                core::TaylorRank(n, 2), " x ", dim_ + 1,
                                " values; the limit max_low_rank_values is ",
                                limits_.max_low_rank_values);
    return state;
  }
  state.rank = core::TaylorRank(n, state.degree);
  return state;
}

void Store::RebuildSums(const StoreSettings& settings) {
  sums_state_ = PlanSums(settings);
  sums_.reset();
  map_norm_ = 1;
  if (sums_state_.degree == 0) return;
  const bool kernel =
      settings.retrieval.similarity == core::Similarity::kKernelDot;
  const size_t n = kernel ? key_dim_ : dim_;
  auto sums = std::make_shared<core::LowRankSums>(
      std::make_shared<const core::TaylorBasis>(n, sums_state_.degree), dim_,
      !kernel);
  std::vector<float> values, keys;  // A chunk's rows as float32.
  for (size_t c = 0; c < chunks_.size(); ++c) {
    const size_t rows = std::min(chunk_capacity_, count_ - c * chunk_capacity_);
    const Chunk& chunk = *chunks_[c];
    const float* v = chunk.ValuesAsFloats(rows, values);
    sums->Add(kernel ? chunk.KeysAsFloats(rows, keys) : v, v, rows, 1.0);
  }
  sums->Finish();
  sums_ = std::move(sums);
  if (kernel) map_norm_ = core::SpectralNormBound(*map_);
}

void Store::UpdateSums(const float* keys, const float* values, size_t n,
                       double sign) {
  if (!sums_ || n == 0) return;
  auto sums = std::make_shared<core::LowRankSums>(*sums_);
  sums->Add(sums->keys_are_rows() ? values : keys, values, n, sign);
  if (sums->Drifted()) {
    // Removals cancelled far more than the sums hold (an outsized pattern
    // deleted): their rounding would escape the error bound.
    RebuildSums(view()->settings());
    return;
  }
  sums->Finish();
  sums_ = std::move(sums);
}

absl::Status Store::PublishMap(std::shared_ptr<const core::FeatureMap> map,
                               const FitRecord& record) {
  MutexLock write_lock(&write_mu_);
  if (absl::Status status = CheckWritable(); !status.ok()) return status;
  if (!key_dim_ || map->in_dim() != dim_ || map->out_dim() != key_dim_) {
    return absl::InvalidArgumentError(
        absl::StrCat("store '", name_, "' cannot use a ", map->out_dim(), "x",
                     map->in_dim(), " feature map"));
  }
  if (record.version <= fit_.version) {
    return absl::FailedPreconditionError(
        absl::StrCat("store '", name_, "' already has feature map v",
                     fit_.version, "; map v", record.version, " is not newer"));
  }
  if (absl::Status status = storage_->PutMap(name_, record, *map);
      !status.ok()) {
    return status;
  }
  map_ = std::move(map);
  fit_ = record;
  RebuildKeys();
  MutexLock lock(&mu_);
  Publish(view_->settings());
  return absl::OkStatus();
}

void Store::RestoreMap(std::shared_ptr<const core::FeatureMap> map,
                       const FitRecord& record) {
  MutexLock write_lock(&write_mu_);
  map_ = std::move(map);
  fit_ = record;
  RebuildKeys();
  MutexLock lock(&mu_);
  Publish(view_->settings());
}

Store::~Store() {
  if (limits_.store_memory) limits_.store_memory->fetch_sub(counted_bytes_);
}

absl::Status Store::CheckMemoryFor(size_t rows) const {
  const size_t limit = limits_.max_store_memory_bytes;
  if (limit == 0 || !limits_.store_memory) return absl::OkStatus();
  const size_t key_dim = chunks_.empty() ? 0 : chunks_.back()->key_dim();
  const size_t adding =
      rows * Chunk::RowBytes(view()->settings().dimension, key_dim, precision_);
  const size_t held = limits_.store_memory->load();
  if (held + adding <= limit) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the stores' patterns take ", MiB(held), "; ", rows, " more (",
      MiB(adding), ") would take them past the limit max_store_memory_mb of ",
      limit >> 20,
      " (patterns stay in memory); delete patterns or stores, or raise the "
      "limit"));
}

void Store::Publish(const StoreSettings& settings) {
  auto view = std::make_shared<StoreView>();
  view->settings_ = settings;
  view->chunks_.assign(chunks_.begin(), chunks_.end());
  view->chunk_capacity_ = chunk_capacity_;
  view->count_ = count_;
  view->version_ = view_ ? view_->version_ + 1 : 1;
  NormTally norms;
  for (const NormTally& chunk : chunk_norms_) norms.Merge(chunk);
  view->norms_ = norms.Stats(count_);
  view->map_ = map_;
  view->fit_ = fit_;
  view->low_rank_ = sums_;
  view->low_rank_state_ = sums_state_;
  view->map_norm_ = map_norm_;
  view->max_label_bytes_ = max_label_bytes_;
  view->digest_ = digest_;
  view->next_id_ = next_id_;
  view->filter_index_ = filter_index_;
  view->min_expire_ns_ = expiries_.empty() ? std::numeric_limits<int64_t>::max()
                                           : expiries_.begin()->first;
  view->expired_count_ = expired_count_;
  if (limits_.store_memory) {
    const size_t bytes = view->memory_bytes();
    // One change, by the difference (modulo 2^64 when the store shrank).
    limits_.store_memory->fetch_add(bytes - counted_bytes_);
    counted_bytes_ = bytes;
  }
  view_ = std::move(view);
  for (size_t c = 0; c < chunks_.size(); ++c) {
    const size_t rows = std::min(chunk_capacity_, count_ - c * chunk_capacity_);
    sealed_[c] = std::max(sealed_[c], rows);
  }
}

absl::StatusOr<Pattern> Store::Get(uint64_t id) const {
  ReaderMutexLock lock(&mu_);
  auto found = index_.find(id);
  if (found == index_.end()) {
    return absl::NotFoundError(
        absl::StrCat("pattern ", id, " is not in store '", name_, "'"));
  }
  if (view_->Expired(found->second, absl::GetCurrentTimeNanos())) {
    return absl::NotFoundError(absl::StrCat(
        "pattern ", id, " of store '", name_, "' expired at ",
        absl::FormatTime(
            absl::FromUnixNanos(view_->info(found->second).expire_ns))));
  }
  return view_->pattern(found->second);
}

Store::Page Store::List(uint64_t after_id, size_t page_size,
                        bool with_values) const {
  // The rows are found under the lock, their values copied after it from
  // the view they belong to (immutable), so that a large page holds up
  // neither writers nor, behind a waiting writer, other readers.
  std::shared_ptr<const StoreView> view;
  std::vector<size_t> rows;
  Page page;
  {
    ReaderMutexLock lock(&mu_);
    view = view_;
    const int64_t now = absl::GetCurrentTimeNanos();
    for (auto it = index_.upper_bound(after_id); it != index_.end(); ++it) {
      if (view->Expired(it->second, now)) continue;
      if (rows.size() == page_size) {
        page.more = true;
        break;
      }
      rows.push_back(it->second);
    }
  }
  page.patterns.reserve(rows.size());
  for (size_t row : rows) {
    page.patterns.push_back(view->pattern(row, with_values));
  }
  return page;
}

absl::Status Store::UpdateSettings(
    const std::function<absl::Status(StoreSettings&)>& mutate) {
  MutexLock write_lock(&write_mu_);
  if (absl::Status status = CheckWritable(); !status.ok()) return status;
  StoreSettings settings = view()->settings();
  if (absl::Status status = mutate(settings); !status.ok()) return status;
  if (settings.name != name_ || settings.dimension != dim_) {
    return absl::InvalidArgumentError(
        "store.name and store.dimension cannot be changed");
  }
  if (absl::Status status = ValidateSettings(settings, limits_); !status.ok()) {
    return status;
  }
  if (absl::Status status = storage_->PutStore(settings); !status.ok()) {
    return status;
  }
  LowRankState planned = PlanSums(settings);
  if (planned.degree != sums_state_.degree ||
      settings.retrieval.similarity !=
          view()->settings().retrieval.similarity) {
    RebuildSums(settings);
  } else {
    sums_state_ = std::move(planned);  // Same sums; the detail may differ.
  }
  MutexLock lock(&mu_);
  Publish(settings);
  return absl::OkStatus();
}

absl::Status Store::Drop() {
  MutexLock write_lock(&write_mu_);
  if (absl::Status status = CheckWritable(); !status.ok()) return status;
  if (absl::Status status = storage_->DeleteStore(name_); !status.ok()) {
    return status;
  }
  dropped_ = true;
  return absl::OkStatus();
}

}  // namespace engram::store
