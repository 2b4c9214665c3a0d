// A storage backend that times every write for the metrics; reads (the
// load) pass through.
//
// Thread-safe as the backend it wraps.
#ifndef ENGRAM_SERVER_APP_TIMED_STORAGE_H_
#define ENGRAM_SERVER_APP_TIMED_STORAGE_H_

#include "server/metrics/metrics.h"
#include "server/store/storage.h"

namespace engram::app {

class TimedStorage : public store::StorageBackend {
 public:
  // Both borrowed; they must outlive this.
  TimedStorage(store::StorageBackend* storage, metrics::Metrics* metrics)
      : storage_(storage), metrics_(metrics) {}

  absl::Status PutStore(const store::StoreSettings& settings) override;
  absl::Status DeleteStore(absl::string_view name) override;
  absl::Status PutMap(absl::string_view store, const store::FitRecord& record,
                      const core::FeatureMap& map) override;
  absl::Status WritePatterns(absl::string_view store,
                             absl::Span<const store::Pattern> added,
                             absl::Span<const uint64_t> deleted,
                             uint64_t next_id) override;
  absl::Status PutStamp(absl::string_view store, uint64_t stamp) override;
  absl::Status PutWholeStore(const store::StoreImage& image) override;
  absl::Status Load(LoadVisitor& visitor) override;

 private:
  template <typename Write>
  absl::Status Timed(Write&& write);

  store::StorageBackend* const storage_;
  metrics::Metrics* const metrics_;
};

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_TIMED_STORAGE_H_
