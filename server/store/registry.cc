#include "server/store/registry.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace engram::store {

StoreRegistry::StoreRegistry(const Limits& limits, StorageBackend* storage)
    : limits_(limits), storage_(storage) {}

absl::Status StoreRegistry::Load() {
  std::vector<StorageBackend::LoadedStore> loaded;
  if (absl::Status status =
          storage_->LoadAll([&](StorageBackend::LoadedStore s) {
            loaded.push_back(std::move(s));
          });
      !status.ok()) {
    return status;
  }
  MutexLock lock(&mu_);
  for (StorageBackend::LoadedStore& s : loaded) {
    absl::Status status = s.status;
    if (status.ok()) {
      auto store = std::make_shared<Store>(s.settings, limits_, storage_);
      if (!s.patterns.empty()) status = store->Restore(s.patterns);
      if (status.ok()) {
        stores_[s.settings.name] = std::move(store);
        continue;
      }
    }
    damaged_.push_back({s.settings.name, status});
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Store>> StoreRegistry::Create(
    const StoreSettings& settings) {
  if (absl::Status status = ValidateSettings(settings, limits_); !status.ok()) {
    return status;
  }
  MutexLock lock(&mu_);
  if (stores_.contains(settings.name)) {
    return absl::AlreadyExistsError(
        absl::StrCat("store '", settings.name, "' already exists"));
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
  auto found = stores_.find(name);
  if (found == stores_.end()) {
    return absl::NotFoundError(absl::StrCat("store '", name, "' not found"));
  }
  return found->second;
}

std::vector<std::shared_ptr<Store>> StoreRegistry::List(absl::string_view after,
                                                        size_t page_size,
                                                        bool& more) const {
  ReaderMutexLock lock(&mu_);
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
  auto found = stores_.find(name);
  if (found == stores_.end()) {
    return absl::NotFoundError(absl::StrCat("store '", name, "' not found"));
  }
  if (absl::Status status = found->second->Drop(); !status.ok()) return status;
  stores_.erase(found);
  return absl::OkStatus();
}

std::vector<StoreRegistry::DamagedStore> StoreRegistry::Damaged() const {
  ReaderMutexLock lock(&mu_);
  return damaged_;
}

}  // namespace engram::store
