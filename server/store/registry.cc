#include "server/store/registry.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/base/clip.h"

namespace engram::store {

StoreRegistry::StoreRegistry(const Limits& limits, StorageBackend* storage)
    : limits_(limits), storage_(storage) {}

namespace {

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
    const StoreSettings& settings = found->second->view()->settings();
    const size_t expected = FeatureDim(settings);
    if (settings.feature_map.kind != FeatureMapKind::kUhop ||
        map->in_dim() != settings.dimension || map->out_dim() != expected) {
      OnDamaged(name, absl::DataLossError("stored feature map does not fit "
                                          "the store's settings"));
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

absl::StatusOr<std::shared_ptr<Store>> StoreRegistry::Create(
    const StoreSettings& settings) {
  if (absl::Status status = ValidateSettings(settings, limits_); !status.ok()) {
    return status;
  }
  MutexLock lock(&mu_);
  if (absl::Status status = CheckLoaded(); !status.ok()) return status;
  if (stores_.contains(settings.name)) {
    return absl::AlreadyExistsError(
        absl::StrCat("store '", settings.name, "' already exists"));
  }
  if (FindDamaged(settings.name) != damaged_.end()) {
    return absl::AlreadyExistsError(absl::StrCat(
        "store '", settings.name,
        "' exists but is DAMAGED; delete it first to reuse the name"));
  }
  if (stores_.size() >= limits_.max_stores) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server holds ", stores_.size(), " stores, the limit max_stores"));
  }
  if (absl::Status status = storage_->PutStore(settings); !status.ok()) {
    return status;
  }
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
    return absl::NotFoundError(
        absl::StrCat("store '", Clip(name), "' not found"));
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

absl::Status StoreRegistry::Delete(absl::string_view name) {
  MutexLock lock(&mu_);
  if (absl::Status status = CheckLoaded(); !status.ok()) return status;
  auto found = stores_.find(name);
  if (found == stores_.end()) {
    auto damaged = FindDamaged(name);
    if (damaged == damaged_.end()) {
      return absl::NotFoundError(
          absl::StrCat("store '", Clip(name), "' not found"));
    }
    // A damaged store has no Store object: its data goes directly.
    if (absl::Status status = storage_->DeleteStore(name); !status.ok()) {
      return status;
    }
    damaged_.erase(damaged);
    return absl::OkStatus();
  }
  if (absl::Status status = found->second->Drop(); !status.ok()) return status;
  stores_.erase(found);
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
