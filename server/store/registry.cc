#include "server/store/registry.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/base/clip.h"
#include "server/base/mib.h"

namespace engram::store {

namespace {

// `limits` with a counter of what the stores' patterns take.
Limits Counted(Limits limits) {
  if (!limits.store_memory) {
    limits.store_memory = std::make_shared<std::atomic<size_t>>(0);
  }
  return limits;
}

}  // namespace

StoreRegistry::StoreRegistry(const Limits& limits, StorageBackend* storage)
    : limits_(Counted(limits)), storage_(storage) {}

namespace {

// The answer for a store that is not there: INVALID_ARGUMENT when no store
// could have that name (it says why), else NOT_FOUND.
absl::Status NoSuchStore(absl::string_view name) {
  if (absl::Status valid = ValidateStoreName(name); !valid.ok()) return valid;
  return absl::NotFoundError(
      absl::StrCat("store '", Clip(name), "' not found"));
}

// OK if a stored map can serve the store `settings` describes.
absl::Status CheckMapFits(const StoreSettings& settings,
                          const core::FeatureMap& map) {
  if (settings.feature_map.kind != FeatureMapKind::kUhop ||
      map.in_dim() != settings.dimension ||
      map.out_dim() != FeatureDim(settings)) {
    return absl::DataLossError(
        "stored feature map does not fit the store's settings");
  }
  return absl::OkStatus();
}

// Builds stores from what storage reads back.
class Loader : public StorageBackend::LoadVisitor {
 public:
  Loader(const Limits& limits, StorageBackend* storage)
      : limits_(limits), storage_(storage) {}

  void OnStore(const StoreSettings& settings, uint64_t next_id,
               uint64_t stamp) override {
    if (absl::Status status = ValidateSettings(settings, limits_);
        !status.ok()) {
      OnDamaged(settings.name, status);
      return;
    }
    auto store = std::make_shared<Store>(settings, limits_, storage_);
    store->RestoreNextId(next_id);
    store->RestoreStamp(stamp);
    stores[settings.name] = std::move(store);
  }

  void OnMap(absl::string_view name,
             std::shared_ptr<const core::FeatureMap> map,
             const FitRecord& record) override {
    auto found = stores.find(name);
    if (found == stores.end()) return;
    if (absl::Status status =
            CheckMapFits(found->second->view()->settings(), *map);
        !status.ok()) {
      OnDamaged(name, status);
      return;
    }
    found->second->RestoreMap(std::move(map), record);
  }

  absl::Status OnPatterns(absl::string_view name,
                          std::vector<Pattern> batch) override {
    auto found = stores.find(name);
    if (found == stores.end()) {
      return absl::DataLossError(
          absl::StrCat("patterns of store '", name, "' without settings"));
    }
    if (absl::Status status = found->second->Restore(batch); !status.ok()) {
      OnDamaged(name, status);
      return status;
    }
    return absl::OkStatus();
  }

  void OnDamaged(absl::string_view name, absl::Status status) override {
    stores.erase(name);
    damaged.push_back({std::string(name), std::move(status)});
  }

  absl::btree_map<std::string, std::shared_ptr<Store>, std::less<>> stores;
  std::vector<StoreRegistry::DamagedStore> damaged;

 private:
  const Limits& limits_;
  StorageBackend* const storage_;
};

}  // namespace

absl::Status StoreRegistry::Load() {
  Loader loader(limits_, storage_);
  if (absl::Status status = storage_->Load(loader); !status.ok()) {
    return status;
  }
  MutexLock lock(&mu_);
  for (auto& [name, store] : loader.stores) stores_[name] = std::move(store);
  damaged_ = std::move(loader.damaged);
  loading_ = false;
  return absl::OkStatus();
}

absl::Status StoreRegistry::CheckLoaded() const {
  if (loading_) {
    return absl::UnavailableError(
        "engramd is still loading its stores; retry when the readiness check "
        "(grpc.health.v1, service engram.v1.Engram) is SERVING");
  }
  return absl::OkStatus();
}

absl::Status StoreRegistry::CheckNotBusy(absl::string_view name) const {
  if (auto found = busy_.find(name); found != busy_.end()) {
    return absl::AbortedError(absl::StrCat("store '", Clip(name), "' is being ",
                                           found->second, "; retry"));
  }
  return absl::OkStatus();
}

absl::Status StoreRegistry::CheckRoomForOneMore() const {
  const size_t held = stores_.size() + creating_;
  if (held >= limits_.max_stores) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server holds ", held, " stores, the limit max_stores"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Store>> StoreRegistry::Create(
    const StoreSettings& settings) {
  if (absl::Status status = ValidateSettings(settings, limits_); !status.ok()) {
    return status;
  }
  {
    MutexLock lock(&mu_);
    if (absl::Status status = CheckLoaded(); !status.ok()) return status;
    if (absl::Status status = CheckNotBusy(settings.name); !status.ok()) {
      return status;
    }
    if (stores_.contains(settings.name)) {
      return absl::AlreadyExistsError(
          absl::StrCat("store '", settings.name, "' already exists"));
    }
    if (FindDamaged(settings.name) != damaged_.end()) {
      return absl::AlreadyExistsError(absl::StrCat(
          "store '", settings.name,
          "' exists but is DAMAGED; delete it first to reuse the name"));
    }
    if (absl::Status status = CheckRoomForOneMore(); !status.ok()) {
      return status;
    }
    busy_.emplace(settings.name, "created");
    ++creating_;
  }
  absl::Status written = storage_->PutStore(settings);
  MutexLock lock(&mu_);
  busy_.erase(settings.name);
  --creating_;
  if (!written.ok()) return written;
  auto store = std::make_shared<Store>(settings, limits_, storage_);
  stores_[settings.name] = store;
  return store;
}

absl::StatusOr<std::shared_ptr<Store>> StoreRegistry::Get(
    absl::string_view name) const {
  ReaderMutexLock lock(&mu_);
  if (absl::Status status = CheckLoaded(); !status.ok()) return status;
  auto found = stores_.find(name);
  if (found == stores_.end()) {
    if (auto damaged = FindDamaged(name); damaged != damaged_.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "store '", Clip(name), "' is DAMAGED and out of service (",
          damaged->status.message(), "); delete it to reuse the name"));
    }
    return NoSuchStore(name);
  }
  return found->second;
}

absl::StatusOr<std::vector<std::shared_ptr<Store>>> StoreRegistry::List(
    absl::string_view after, size_t page_size, bool& more) const {
  ReaderMutexLock lock(&mu_);
  if (absl::Status status = CheckLoaded(); !status.ok()) return status;
  std::vector<std::shared_ptr<Store>> page;
  more = false;
  for (auto it = stores_.upper_bound(after); it != stores_.end(); ++it) {
    if (page.size() == page_size) {
      more = true;
      break;
    }
    page.push_back(it->second);
  }
  return page;
}

absl::StatusOr<std::shared_ptr<Store>> StoreRegistry::Restore(
    const StoreImage& image, bool replace) {
  const StoreSettings& settings = image.settings;
  if (absl::Status status = ValidateSettings(settings, limits_); !status.ok()) {
    return status;
  }
  // The new store is built in memory first: anything it cannot hold is
  // refused before a byte is written.
  auto store = std::make_shared<Store>(settings, limits_, storage_);
  store->RestoreNextId(image.next_id);
  store->RestoreStamp(image.stamp);
  if (image.map) {
    if (absl::Status status = CheckMapFits(settings, *image.map);
        !status.ok()) {
      return status;
    }
    store->RestoreMap(image.map, image.fit);
  }
  constexpr size_t kBatch = 4096;
  for (size_t i = 0; i < image.patterns.size(); i += kBatch) {
    const size_t n = std::min(kBatch, image.patterns.size() - i);
    absl::Status status =
        store->Restore(absl::MakeConstSpan(image.patterns).subspan(i, n));
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat("restoring store '", settings.name,
                                       "': ", status.message()));
    }
  }
  if (store->view()->digest() != image.digest) {
    return absl::DataLossError(absl::StrCat(
        "restoring store '", settings.name,
        "': the restored patterns' digest differs from the backup's"));
  }
  std::shared_ptr<Store> replaced;
  {
    MutexLock lock(&mu_);
    if (absl::Status status = CheckLoaded(); !status.ok()) return status;
    if (absl::Status status = CheckNotBusy(settings.name); !status.ok()) {
      return status;
    }
    if (FindDamaged(settings.name) != damaged_.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "store '", settings.name,
          "' is DAMAGED; delete it first, then restore under its name"));
    }
    auto found = stores_.find(settings.name);
    if (found != stores_.end()) {
      if (!replace) {
        return absl::AlreadyExistsError(absl::StrCat(
            "store '", settings.name,
            "' already exists; restore under another name, or replace it"));
      }
      replaced = found->second;
    } else if (absl::Status status = CheckRoomForOneMore(); !status.ok()) {
      return status;
    }
    // The restored store is built and counted; the one it replaces goes.
    const size_t after =
        limits_.store_memory->load() -
        (replaced ? replaced->view()->memory_bytes() : size_t{0});
    if (limits_.max_store_memory_bytes > 0 &&
        after > limits_.max_store_memory_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "restoring store '", settings.name, "' (",
          MiB(store->view()->memory_bytes()),
          " of patterns) would take the stores' patterns to ", MiB(after),
          ", past the limit max_store_memory_mb of ",
          limits_.max_store_memory_bytes >> 20,
          " (patterns stay in memory); delete patterns or stores, or raise "
          "the limit"));
    }
    busy_.emplace(settings.name, "restored");
    if (!replaced) ++creating_;
  }
  // Writes to the store being replaced stop here (a write in progress
  // finishes first), so none can land in storage after the restore's.
  if (replaced) {
    replaced->Retire(absl::AbortedError(absl::StrCat(
        "store '", settings.name, "' is being replaced by a restore; retry")));
  }
  absl::Status written = storage_->PutWholeStore(image);
  MutexLock lock(&mu_);
  busy_.erase(settings.name);
  if (!replaced) --creating_;
  if (!written.ok()) {
    if (replaced) replaced->Reinstate();
    return written;
  }
  if (replaced) {
    replaced->Retire(absl::AbortedError(absl::StrCat(
        "store '", settings.name, "' was replaced by a restore; retry")));
  }
  stores_[settings.name] = store;
  return store;
}

absl::Status StoreRegistry::Delete(absl::string_view name) {
  std::shared_ptr<Store> store;  // Null: a damaged store's data goes.
  {
    MutexLock lock(&mu_);
    if (absl::Status status = CheckLoaded(); !status.ok()) return status;
    if (absl::Status status = CheckNotBusy(name); !status.ok()) return status;
    if (auto found = stores_.find(name); found != stores_.end()) {
      store = found->second;
    } else if (FindDamaged(name) == damaged_.end()) {
      return NoSuchStore(name);
    }
    busy_.emplace(name, "deleted");
  }
  // Until the drop is written the store serves reads; its writes wait for
  // the drop and then fail.
  absl::Status dropped = store ? store->Drop() : storage_->DeleteStore(name);
  MutexLock lock(&mu_);
  busy_.erase(name);
  if (!dropped.ok()) return dropped;
  if (store) {
    stores_.erase(name);
  } else if (auto damaged = FindDamaged(name); damaged != damaged_.end()) {
    damaged_.erase(damaged);
  }
  return absl::OkStatus();
}

std::vector<StoreRegistry::DamagedStore>::const_iterator
StoreRegistry::FindDamaged(absl::string_view name) const {
  return std::find_if(
      damaged_.begin(), damaged_.end(),
      [name](const DamagedStore& damaged) { return damaged.name == name; });
}

std::vector<StoreRegistry::DamagedStore> StoreRegistry::Damaged() const {
  ReaderMutexLock lock(&mu_);
  return damaged_;
}

}  // namespace engram::store
