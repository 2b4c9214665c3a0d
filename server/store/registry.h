// All stores of one server, by name.
//
//   StoreRegistry registry(limits, &storage);
//   registry.Load();
//   absl::StatusOr<std::shared_ptr<Store>> store = registry.Get("faces");
//
// Thread-safe: all methods may be called concurrently.
#ifndef ENGRAM_SERVER_STORE_REGISTRY_H_
#define ENGRAM_SERVER_STORE_REGISTRY_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/base/mutex.h"
#include "server/store/settings.h"
#include "server/store/storage.h"
#include "server/store/store.h"

namespace engram::store {

class StoreRegistry {
 public:
  // `storage` is borrowed and must outlive the registry.
  StoreRegistry(const Limits& limits, StorageBackend* storage);
  StoreRegistry(const StoreRegistry&) = delete;
  StoreRegistry& operator=(const StoreRegistry&) = delete;

  const Limits& limits() const { return limits_; }

  // Loads every stored store. A store whose data is damaged is kept out of
  // service and reported by Damaged(); the others serve. Until Load() has
  // run, every other method answers UNAVAILABLE.
  absl::Status Load();

  absl::StatusOr<std::shared_ptr<Store>> Create(const StoreSettings& settings);
  absl::StatusOr<std::shared_ptr<Store>> Get(absl::string_view name) const;
  // Up to `page_size` stores named after `after`, in name order; `more` says
  // whether further stores follow.
  absl::StatusOr<std::vector<std::shared_ptr<Store>>> List(
      absl::string_view after, size_t page_size, bool& more) const;
  // Builds a store from `image` and writes it in one atomic write, under
  // image.settings.name: ALREADY_EXISTS if that store exists, unless
  // `replace`; FAILED_PRECONDITION if it is DAMAGED (delete it first).
  // While the restore writes, the store it replaces serves reads and
  // refuses writes (ABORTED); if the restore fails it takes writes again.
  absl::StatusOr<std::shared_ptr<Store>> Restore(const StoreImage& image,
                                                 bool replace);
  // Deletes a store, damaged or not.
  absl::Status Delete(absl::string_view name);

  struct DamagedStore {
    std::string name;
    absl::Status status;
  };
  std::vector<DamagedStore> Damaged() const;

 private:
  // Constant after construction.
  const Limits limits_;
  StorageBackend* const storage_;

  mutable Mutex mu_;
  absl::btree_map<std::string, std::shared_ptr<Store>> stores_
      ABSL_GUARDED_BY(mu_);
  std::vector<DamagedStore> damaged_ ABSL_GUARDED_BY(mu_);
  bool loading_ ABSL_GUARDED_BY(mu_) = true;
  // Names a create, delete or restore is writing to storage, with which
  // ("created", ...): other creates, deletes and restores of them are
  // refused until it ends. Storage is written outside mu_, so a slow disk
  // (or a delete waiting for its store's write in progress) holds up only
  // changes to that name, never the reads of any store.
  absl::flat_hash_map<std::string, const char*> busy_ ABSL_GUARDED_BY(mu_);
  // Stores being created: they count against max_stores.
  size_t creating_ ABSL_GUARDED_BY(mu_) = 0;

  absl::Status CheckLoaded() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // ABORTED if a create, delete or restore is writing `name`.
  absl::Status CheckNotBusy(absl::string_view name) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // RESOURCE_EXHAUSTED if the stores held and being created reach
  // max_stores.
  absl::Status CheckRoomForOneMore() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  std::vector<DamagedStore>::const_iterator FindDamaged(
      absl::string_view name) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
};

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_REGISTRY_H_
