// Where stores live between restarts. The registry calls a StorageBackend
// before it applies any change in memory, so nothing is acknowledged that the
// backend did not accept, and a failed write changes nothing.
//
// Implementations must be thread-safe; calls for one store are serialised by
// that store.
#ifndef ENGRAM_SERVER_STORE_STORAGE_H_
#define ENGRAM_SERVER_STORE_STORAGE_H_

#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/store/pattern.h"
#include "server/store/settings.h"

namespace engram::store {

class StorageBackend {
 public:
  virtual ~StorageBackend() = default;

  // Creates or replaces a store's settings.
  virtual absl::Status PutStore(const StoreSettings& settings) = 0;
  // Removes a store and all its patterns.
  virtual absl::Status DeleteStore(absl::string_view name) = 0;
  // Adds and removes patterns of one store in one atomic write.
  virtual absl::Status WritePatterns(absl::string_view store,
                                     absl::Span<const Pattern> added,
                                     absl::Span<const uint64_t> deleted) = 0;

  // One stored store, as loaded at start.
  struct LoadedStore {
    StoreSettings settings;
    std::vector<Pattern> patterns;
    absl::Status status;  // Non-OK: the store's data is damaged.
  };
  // Calls `visit` once per stored store.
  virtual absl::Status LoadAll(
      const std::function<void(LoadedStore)>& visit) = 0;
};

// Keeps nothing: every store is lost when the process ends.
// Thread-safe: stateless.
class EphemeralStorage : public StorageBackend {
 public:
  absl::Status PutStore(const StoreSettings&) override {
    return absl::OkStatus();
  }
  absl::Status DeleteStore(absl::string_view) override {
    return absl::OkStatus();
  }
  absl::Status WritePatterns(absl::string_view, absl::Span<const Pattern>,
                             absl::Span<const uint64_t>) override {
    return absl::OkStatus();
  }
  absl::Status LoadAll(const std::function<void(LoadedStore)>&) override {
    return absl::OkStatus();
  }
};

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_STORAGE_H_
