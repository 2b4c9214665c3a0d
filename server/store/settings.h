// A store's settings and the server's limits, with their validation.
//
// Plain values; thread-compatible.
#ifndef ENGRAM_SERVER_STORE_SETTINGS_H_
#define ENGRAM_SERVER_STORE_SETTINGS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/core/calibration.h"
#include "server/core/retrieval.h"

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
  uint32_t max_degree = 4;
};

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

// The outcome of the last calibration. Kept with the settings, so it is
// durable with the setting it applied.
struct CalibrationReport {
  absl::Time time = absl::InfinitePast();  // InfinitePast: none yet.
  uint64_t store_version = 0;              // Of the snapshot calibrated.
  uint64_t patterns = 0;
  core::Corruption corruption = core::Corruption::kDropout;
  float level = 0;
  // The best setting found (the previous one when none beat it).
  core::Similarity similarity = core::Similarity::kDot;
  core::Separation separation = core::Separation::kSoftmax;
  float beta = 1;
  double error = 0;
  double recall_at_1 = 0;
  // At the setting the store had.
  double previous_error = 0;
  double previous_recall_at_1 = 0;
  bool improved = false;  // The best beat the previous setting.
  bool applied = false;   // ...and the store now uses it.
  double well_separated_fraction = 0;
  double theory_beta_median = 0;
  double theory_beta_p90 = 0;
  uint32_t sample_size = 0;
  uint64_t memories_used = 0;
  uint32_t candidates = 0;
  double duration_seconds = 0;
  std::string detail;  // Why a better setting was not applied, if so.
};

struct StoreSettings {
  std::string name;
  uint32_t dimension = 0;
  core::RetrievalParams retrieval;
  FeatureMapSettings feature_map;
  LowRankSettings low_rank;
  CalibrationSettings calibration;
  CalibrationReport calibration_report;  // Output only.
  absl::Time create_time = absl::UnixEpoch();
};

// The most patterns one calibration corrupts (store.calibration.sample_size).
inline constexpr uint32_t kMaxCalibrationSample = 65536;

// Server-wide limits; every one is a flag of engramd.
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
};

// d_Phi: the feature dimension of a U-Hop store (feature_dim, or the store's
// dimension when that is 0).
uint32_t FeatureDim(const StoreSettings& settings);

// OK if `name` is 1-63 characters of [a-z0-9_.-] starting with [a-z0-9].
absl::Status ValidateStoreName(absl::string_view name);

// OK if every setting is in range; messages name the field as in the proto
// ("store.retrieval.beta") and the limit.
absl::Status ValidateSettings(const StoreSettings& settings,
                              const Limits& limits);

// A readable, versioned text form ("key=value" lines) for storage. Decoding
// ignores unknown keys and keeps defaults for missing ones.
std::string EncodeSettings(const StoreSettings& settings);
absl::StatusOr<StoreSettings> DecodeSettings(absl::string_view text);

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_SETTINGS_H_
