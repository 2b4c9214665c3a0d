// Where stores live between restarts. The registry calls a StorageBackend
// before it applies any change in memory, so nothing is acknowledged that the
// backend did not accept, and a failed write changes nothing.
//
// Implementations must be thread-safe; calls for one store are serialised by
// that store.
#ifndef ENGRAM_SERVER_STORE_STORAGE_H_
#define ENGRAM_SERVER_STORE_STORAGE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/core/feature_map.h"
#include "server/store/pattern.h"
#include "server/store/settings.h"

namespace engram::store {

// What a published feature map came from.
struct FitRecord {
  uint64_t version = 0;  // 0: the initial map, never fitted.
  double loss_before = 0;
  double loss_after = 0;
  uint32_t epochs = 0;
  double duration_seconds = 0;
  uint64_t patterns_fitted = 0;
};

// A whole store as a restore writes it, at once.
struct StoreImage {
  StoreSettings settings;
  uint64_t next_id = 1;  // 0: no automatic id is left.
  // Of a store spread over shard groups: each group's next id, in group
  // order (next_id is the largest); empty otherwise.
  std::vector<uint64_t> group_next_ids;
  uint64_t stamp = 0;
  uint64_t digest = 0;  // The content digest the patterns must have.
  std::shared_ptr<const core::FeatureMap> map;  // A fitted map, or null.
  FitRecord fit;
  std::vector<Pattern> patterns;  // In the row order of the original.
};

class StorageBackend {
 public:
  virtual ~StorageBackend() = default;

  // Creates or replaces a store's settings.
  virtual absl::Status PutStore(const StoreSettings& settings) = 0;
  // Removes a store and all its patterns.
  virtual absl::Status DeleteStore(absl::string_view name) = 0;
  // Stores a store's fitted feature map, replacing the previous one.
  virtual absl::Status PutMap(absl::string_view store, const FitRecord& record,
                              const core::FeatureMap& map) = 0;
  // Adds and removes patterns of one store in one atomic write, and records
  // `next_id`, the store's next unassigned id, so ids are never reused.
  virtual absl::Status WritePatterns(absl::string_view store,
                                     absl::Span<const Pattern> added,
                                     absl::Span<const uint64_t> deleted,
                                     uint64_t next_id) = 0;

  // Records a store's write stamp (the largest a router sent with a write
  // it applied; see server/cluster/shard_pool.h), after the write itself.
  // Need not reach the disk at once: written after its write, a lost stamp
  // is an older one, which never claims a write the store does not hold.
  virtual absl::Status PutStamp(absl::string_view store, uint64_t stamp) = 0;

  // Writes a whole store in one atomic write: a store of that name, with
  // everything it held, is replaced; else one is created. Never called for
  // a damaged store.
  virtual absl::Status PutWholeStore(const StoreImage& image) = 0;

  // Receives what Load() reads, store by store: OnStore, then that store's
  // patterns in batches; OnDamaged if its data cannot be read.
  class LoadVisitor {
   public:
    virtual ~LoadVisitor() = default;
    virtual void OnStore(const StoreSettings& settings, uint64_t next_id,
                         uint64_t stamp) = 0;
    // The store's fitted map, if it has one: after OnStore, before patterns.
    virtual void OnMap(absl::string_view store,
                       std::shared_ptr<const core::FeatureMap> map,
                       const FitRecord& record) = 0;
    // A non-OK status marks the store damaged; Load skips its other patterns.
    virtual absl::Status OnPatterns(absl::string_view store,
                                    std::vector<Pattern> batch) = 0;
    virtual void OnDamaged(absl::string_view store, absl::Status status) = 0;
  };
  // Reads every stored store. Fails only if storage as a whole is unreadable.
  virtual absl::Status Load(LoadVisitor& visitor) = 0;
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
  absl::Status PutMap(absl::string_view, const FitRecord&,
                      const core::FeatureMap&) override {
    return absl::OkStatus();
  }
  absl::Status WritePatterns(absl::string_view, absl::Span<const Pattern>,
                             absl::Span<const uint64_t>, uint64_t) override {
    return absl::OkStatus();
  }
  absl::Status PutStamp(absl::string_view, uint64_t) override {
    return absl::OkStatus();
  }
  absl::Status PutWholeStore(const StoreImage&) override {
    return absl::OkStatus();
  }
  absl::Status Load(LoadVisitor&) override { return absl::OkStatus(); }
};

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_STORAGE_H_
