#include "server/app/timed_storage.h"

#include "server/base/steady_clock.h"

namespace engram::app {

template <typename Write>
absl::Status TimedStorage::Timed(Write&& write) {
  const absl::Time start = SteadyNow();
  absl::Status status = write();
  metrics_->RecordStorageWrite(SecondsSince(start), status.ok());
  return status;
}

absl::Status TimedStorage::PutStore(const store::StoreSettings& settings) {
  return Timed([&] { return storage_->PutStore(settings); });
}

absl::Status TimedStorage::DeleteStore(absl::string_view name) {
  return Timed([&] { return storage_->DeleteStore(name); });
}

absl::Status TimedStorage::PutMap(absl::string_view store,
                                  const store::FitRecord& record,
                                  const core::FeatureMap& map) {
  return Timed([&] { return storage_->PutMap(store, record, map); });
}

absl::Status TimedStorage::PutStamp(absl::string_view store, uint64_t stamp) {
  return Timed([&] { return storage_->PutStamp(store, stamp); });
}

absl::Status TimedStorage::PutWholeStore(const store::StoreImage& image) {
  return Timed([&] { return storage_->PutWholeStore(image); });
}

absl::Status TimedStorage::WritePatterns(absl::string_view store,
                                         absl::Span<const store::Pattern> added,
                                         absl::Span<const uint64_t> deleted,
                                         uint64_t next_id) {
  return Timed(
      [&] { return storage_->WritePatterns(store, added, deleted, next_id); });
}

absl::Status TimedStorage::Load(LoadVisitor& visitor) {
  return storage_->Load(visitor);
}

}  // namespace engram::app
