// The byte formats of a pattern and of a fitted feature map, as storage keeps
// them and backups carry them (docs/format.md). Decoding never trusts its
// input: a short, long or malformed record is DATA_LOSS naming what it is.
//
// Thread-safe: pure functions.
#ifndef ENGRAM_SERVER_STORE_RECORDS_H_
#define ENGRAM_SERVER_STORE_RECORDS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/core/feature_map.h"
#include "server/store/pattern.h"
#include "server/store/storage.h"

namespace engram::store {

// One pattern without its id (storage keys it by id).
std::string EncodePattern(const Pattern& pattern);
// At least EncodePattern(pattern).size(), without encoding it.
size_t EncodedPatternBound(const Pattern& pattern);
absl::StatusOr<Pattern> DecodePattern(uint64_t id, absl::string_view bytes);

// A fitted feature map with the record of its fit.
std::string EncodeMap(const FitRecord& record, const core::FeatureMap& map);
absl::Status DecodeMap(absl::string_view bytes, FitRecord& record,
                       std::shared_ptr<const core::FeatureMap>& map);

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_RECORDS_H_
