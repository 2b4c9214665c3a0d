// A store's settings and the server's limits, with their validation.
//
// The API's messages (engram/v1/engram.proto) are the schema: a setting's
// name, type and documentation live there; StoreSettings holds the same
// settings typed for the code that uses them, and its member initialisers
// are the one place defaults are defined. SettingsFromProto and
// SettingsToProto are the only conversion between the two; storage records
// are the proto, serialized (docs/format.md).
//
// Plain values; thread-compatible.
#ifndef ENGRAM_SERVER_STORE_SETTINGS_H_
#define ENGRAM_SERVER_STORE_SETTINGS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engram/v1/engram.pb.h"
#include "google/protobuf/field_mask.pb.h"
#include "server/core/calibration.h"
#include "server/core/precision.h"
#include "server/core/retrieval.h"
#include "server/store/placement.h"

namespace engram::store {

enum class FeatureMapKind { kNone, kUhop };
enum class FitLoss { kMean, kMax };
enum class FitOptimizer { kSgd, kAdam };

struct FeatureMapSettings {
  FeatureMapKind kind = FeatureMapKind::kNone;
  uint32_t feature_dim = 0;  // 0: the store's dimension.
  FitLoss loss = FitLoss::kMax;
  FitOptimizer optimizer = FitOptimizer::kSgd;
  uint32_t epochs = 100;
  double learning_rate = 0;  // 0: the reference's rate for the loss.
  uint32_t batch_size = 1024;
  uint64_t seed = 0;
  uint32_t min_new_patterns = 1;
  uint32_t debounce_ms = 2000;
};

struct LowRankSettings {
  double tolerance = 1e-3;
  uint32_t max_degree = 4;  // Even, in [2, kMaxLowRankDegree].
};
inline constexpr uint32_t kMaxLowRankDegree = 8;

// Self-retrieval calibration (server/core/calibration.h).
struct CalibrationSettings {
  // Calibrate in the background after every fit (U-Hop stores) or once adds
  // go quiet (other stores, on the feature map's debounce).
  bool automatic = false;
  // Apply the setting found; otherwise only report it.
  bool apply = false;
  core::Corruption corruption = core::Corruption::kDropout;
  float level = 0.5f;
  bool search_similarity = false;
  bool search_separation = false;
  uint32_t sample_size = 256;
  uint64_t seed = 0;
};

// The outcome of the last calibration, as the API defines it (no time set:
// none yet). Kept with the settings, so it is durable with the setting it
// applied.
using CalibrationReport = v1::CalibrationReport;

struct ExpirySettings {
  // Lifetime of a pattern added without an expiry; zero: no default.
  absl::Duration default_ttl = absl::ZeroDuration();
};

struct StoreSettings {
  std::string name;
  uint32_t dimension = 0;
  // How values are kept, in memory and on disk; fixed at create.
  core::Precision precision = core::Precision::kFloat32;
  core::RetrievalParams retrieval;
  FeatureMapSettings feature_map;
  LowRankSettings low_rank;
  CalibrationSettings calibration;
  CalibrationReport calibration_report;  // Output only.
  ExpirySettings expiry;
  absl::Time create_time = absl::UnixEpoch();
};

// The most patterns one calibration corrupts (store.calibration.sample_size).
inline constexpr uint32_t kMaxCalibrationSample = 65536;

// Server-wide limits, every one a flag of engramd; and where this server's
// patterns belong when it is a shard (--shard_group, --shard_groups).
struct Limits {
  uint32_t max_dimension = 65536;
  size_t max_batch = 100000;  // Patterns per add or delete.
  size_t max_queries = 4096;  // Queries per Retrieve.
  size_t max_top_k = 1000;
  uint32_t max_steps = 1000;
  size_t max_stores = 1000;
  size_t max_patterns_per_store = 50'000'000;
  size_t max_label_bytes = 256;
  size_t max_metadata_entries = 16;
  size_t max_metadata_bytes = 256;  // Per key and per value.
  // Doubles one store's low-rank sums may hold (rank x (dimension + 1)).
  size_t max_low_rank_values = size_t{1} << 18;
  // Multiply-adds one calibration may spend (core::CalibrationOptions).
  double max_calibration_work = core::kDefaultCalibrationWork;
  // Bytes every store's patterns may take together (Chunk::bytes), 0: no
  // ceiling. An add that would take them past it is refused; loading the
  // stores at start is not.
  size_t max_store_memory_bytes = 0;
  // What they take now, kept by the stores as they change (Store::Publish)
  // and shared by every copy of these limits; set by StoreRegistry.
  std::shared_ptr<std::atomic<size_t>> store_memory;
  Placement placement;
};

// d_Phi: the feature dimension of a U-Hop store (feature_dim, or the store's
// dimension when that is 0).
uint32_t FeatureDim(const StoreSettings& settings);

// The longest lifetime a pattern may be given.
inline constexpr absl::Duration kMaxTtl = absl::Hours(24 * 36525);

// OK if `ttl` is > 0 and at most kMaxTtl; the message names `field`.
absl::Status ValidateTtl(absl::Duration ttl, absl::string_view field);

// Times and durations of the API's messages.
void TimeToProto(absl::Time time, google::protobuf::Timestamp& out);
absl::Time TimeFromProto(const google::protobuf::Timestamp& t);
void DurationToProto(absl::Duration d, google::protobuf::Duration& out);
absl::Duration DurationFromProto(const google::protobuf::Duration& d);

// OK if `name` is 1-63 characters of [a-z0-9_.-] starting with [a-z0-9].
absl::Status ValidateStoreName(absl::string_view name);

// OK if every setting is in range; messages name the field as in the proto
// ("store.retrieval.beta") and the limit.
absl::Status ValidateSettings(const StoreSettings& settings,
                              const Limits& limits);

// The settings a Store message describes. Unset (zero) fields take the
// defaults of StoreSettings when `fill_defaults` (a create); otherwise zero
// is taken as given (an update, whose message is complete). Unknown enum
// values are INVALID_ARGUMENT naming the field. Output-only fields are
// ignored but for create_time and calibration_report, which a stored record
// holds.
absl::StatusOr<StoreSettings> SettingsFromProto(const v1::Store& in,
                                                bool fill_defaults);
// Every setting, create_time and the calibration report (if there is one).
void SettingsToProto(const StoreSettings& settings, v1::Store& out);

// The API's names of the core's enums (for reports).
v1::Similarity SimilarityToProto(core::Similarity similarity);
v1::Separation SeparationToProto(core::Separation separation);
v1::Corruption CorruptionToProto(core::Corruption corruption);
// And back; UNSPECIFIED is the default (DOT, SOFTMAX); an unknown value is
// INVALID_ARGUMENT naming `field`.
absl::StatusOr<core::Similarity> SimilarityFromProto(int value,
                                                     absl::string_view field);
absl::StatusOr<core::Separation> SeparationFromProto(int value,
                                                     absl::string_view field);

// The fields UpdateStore may change, by FieldMask path ("retrieval" names
// the whole message).
absl::Span<const char* const> UpdatablePaths();
// `settings` with the fields `mask` names taken from `source`; refuses paths
// that are not updatable, naming them and the ones that are.
absl::Status ApplyUpdateMask(const v1::Store& source,
                             const google::protobuf::FieldMask& mask,
                             StoreSettings& settings);

// The storage record of the settings (docs/format.md): a serialized
// engram.storage.v1.SettingsRecord.
std::string EncodeSettingsRecord(const StoreSettings& settings);
absl::StatusOr<StoreSettings> DecodeSettingsRecord(absl::string_view bytes);
// engram 0.1's text record ("key=value" lines), read once by the migration
// to the current layout.
absl::StatusOr<StoreSettings> DecodeLegacySettings(absl::string_view text);

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_SETTINGS_H_
