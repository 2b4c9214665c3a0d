#include "server/store/settings.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "server/base/clip.h"

namespace engram::store {

uint32_t FeatureDim(const StoreSettings& settings) {
  return settings.feature_map.feature_dim ? settings.feature_map.feature_dim
                                          : settings.dimension;
}

absl::Status ValidateStoreName(absl::string_view name) {
  if (name.empty() || name.size() > 63) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store name must be 1 to 63 characters, got ", name.size()));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = absl::ascii_islower(c) || absl::ascii_isdigit(c);
    if (!alnum && (i == 0 || (c != '_' && c != '-' && c != '.'))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "store name '", Clip(name),
          "' must be lowercase letters, digits, '_', '-' or '.', starting "
          "with a letter or digit"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateSettings(const StoreSettings& settings,
                              const Limits& limits) {
  if (absl::Status status = ValidateStoreName(settings.name); !status.ok()) {
    return status;
  }
  if (settings.dimension < 1) {
    return absl::InvalidArgumentError("store.dimension must be at least 1");
  }
  if (settings.dimension > limits.max_dimension) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "store.dimension ", settings.dimension,
        " exceeds the limit max_dimension ", limits.max_dimension));
  }
  const core::RetrievalParams& r = settings.retrieval;
  if (!(r.beta > 0) || !std::isfinite(r.beta)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.retrieval.beta must be finite and > 0, got ", r.beta));
  }
  if (r.steps < 1 || r.steps > limits.max_steps) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.retrieval.steps must be in [1, ", limits.max_steps,
                     "], got ", r.steps));
  }
  if (!(r.eps >= 0) || !std::isfinite(r.eps)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.retrieval.eps must be finite and >= 0, got ", r.eps));
  }
  if (r.top_k > limits.max_top_k) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.retrieval.top_k must be at most ", limits.max_top_k,
                     ", got ", r.top_k));
  }
  const LowRankSettings& low_rank = settings.low_rank;
  if (!(low_rank.tolerance > 0) || !std::isfinite(low_rank.tolerance)) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.low_rank.tolerance must be finite and > 0, got ",
                     low_rank.tolerance));
  }
  if (low_rank.max_degree % 2 != 0 || low_rank.max_degree < 2 ||
      low_rank.max_degree > 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.low_rank.max_degree must be an even number in [2, 8], got ",
        low_rank.max_degree));
  }
  const CalibrationSettings& calibration = settings.calibration;
  if (!core::CorruptionLevelValid(calibration.corruption, calibration.level)) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.calibration.level for ",
                     core::CorruptionName(calibration.corruption), " must be ",
                     core::CorruptionLevelRange(calibration.corruption),
                     ", got ", calibration.level));
  }
  if (calibration.sample_size < 1 ||
      calibration.sample_size > kMaxCalibrationSample) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.calibration.sample_size must be in [1, ", kMaxCalibrationSample,
        "], got ", calibration.sample_size));
  }
  const FeatureMapSettings& map = settings.feature_map;
  if (core::IsKernel(r.similarity) && map.kind != FeatureMapKind::kUhop) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.retrieval.similarity ", core::SimilarityName(r.similarity),
        " needs store.feature_map.kind UHOP"));
  }
  if (map.feature_dim > limits.max_dimension) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.feature_map.feature_dim must be at most ",
                     limits.max_dimension, ", got ", map.feature_dim));
  }
  if (map.epochs < 1 || map.epochs > 100000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.feature_map.epochs must be in [1, 100000], got ", map.epochs));
  }
  if (!(map.learning_rate >= 0) || !std::isfinite(map.learning_rate)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.feature_map.learning_rate must be finite and >= 0, got ",
        map.learning_rate));
  }
  if (map.batch_size < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.feature_map.batch_size must be at least 2, got ",
                     map.batch_size));
  }
  return absl::OkStatus();
}

}  // namespace engram::store

namespace engram::store {

namespace {

template <typename Enum>
struct EnumNames {
  Enum value;
  const char* name;
};

constexpr EnumNames<core::Similarity> kSimilarities[] = {
    {core::Similarity::kDot, "dot"},
    {core::Similarity::kL2, "l2"},
    {core::Similarity::kManhattan, "manhattan"},
    {core::Similarity::kCosine, "cosine"},
    {core::Similarity::kKernelDot, "kernel_dot"},
    {core::Similarity::kKernelL2, "kernel_l2"}};
constexpr EnumNames<core::Separation> kSeparations[] = {
    {core::Separation::kSoftmax, "softmax"},
    {core::Separation::kSparsemax, "sparsemax"},
    {core::Separation::kEntmax15, "entmax15"}};
constexpr EnumNames<core::Corruption> kCorruptions[] = {
    {core::Corruption::kDropout, "dropout"},
    {core::Corruption::kGaussian, "gaussian"},
    {core::Corruption::kMask, "mask"}};
constexpr EnumNames<FeatureMapKind> kMapKinds[] = {
    {FeatureMapKind::kNone, "none"}, {FeatureMapKind::kUhop, "uhop"}};
constexpr EnumNames<FitLoss> kLosses[] = {{FitLoss::kMean, "mean"},
                                          {FitLoss::kMax, "max"}};
constexpr EnumNames<FitOptimizer> kOptimizers[] = {
    {FitOptimizer::kSgd, "sgd"}, {FitOptimizer::kAdam, "adam"}};

template <typename Enum, size_t N>
const char* NameOf(const EnumNames<Enum> (&names)[N], Enum value) {
  for (const auto& n : names) {
    if (n.value == value) return n.name;
  }
  return "?";
}

template <typename Enum, size_t N>
bool ParseEnum(const EnumNames<Enum> (&names)[N], absl::string_view text,
               Enum& out) {
  for (const auto& n : names) {
    if (text == n.name) {
      out = n.value;
      return true;
    }
  }
  return false;
}

// The calibration settings, and the last report if there is one.
std::string EncodeCalibration(const CalibrationSettings& c,
                              const CalibrationReport& r) {
  std::string out = absl::StrCat(
      "calibration.automatic=", c.automatic ? 1 : 0,
      "\ncalibration.apply=", c.apply ? 1 : 0,
      "\ncalibration.corruption=", NameOf(kCorruptions, c.corruption),
      "\ncalibration.level=", absl::StrFormat("%.9g", c.level),
      "\ncalibration.search_similarity=", c.search_similarity ? 1 : 0,
      "\ncalibration.search_separation=", c.search_separation ? 1 : 0,
      "\ncalibration.sample_size=", c.sample_size,
      "\ncalibration.seed=", c.seed, "\n");
  if (r.time == absl::InfinitePast()) return out;
  absl::StrAppend(
      &out, "report.time_unix_ns=", absl::ToUnixNanos(r.time),
      "\nreport.store_version=", r.store_version,
      "\nreport.patterns=", r.patterns,
      "\nreport.corruption=", NameOf(kCorruptions, r.corruption),
      "\nreport.level=", absl::StrFormat("%.9g", r.level),
      "\nreport.similarity=", NameOf(kSimilarities, r.similarity),
      "\nreport.separation=", NameOf(kSeparations, r.separation),
      "\nreport.beta=", absl::StrFormat("%.9g", r.beta),
      "\nreport.error=", absl::StrFormat("%.17g", r.error),
      "\nreport.recall_at_1=", absl::StrFormat("%.17g", r.recall_at_1),
      "\nreport.previous_error=", absl::StrFormat("%.17g", r.previous_error),
      "\nreport.previous_recall_at_1=",
      absl::StrFormat("%.17g", r.previous_recall_at_1),
      "\nreport.improved=", r.improved ? 1 : 0,
      "\nreport.applied=", r.applied ? 1 : 0);
  absl::StrAppend(
      &out, "\nreport.well_separated_fraction=",
      absl::StrFormat("%.17g", r.well_separated_fraction),
      "\nreport.theory_beta_median=",
      absl::StrFormat("%.17g", r.theory_beta_median),
      "\nreport.theory_beta_p90=", absl::StrFormat("%.17g", r.theory_beta_p90),
      "\nreport.sample_size=", r.sample_size,
      "\nreport.memories_used=", r.memories_used,
      "\nreport.candidates=", r.candidates, "\nreport.duration_seconds=",
      absl::StrFormat("%.17g", r.duration_seconds),
      "\nreport.detail=", absl::CEscape(r.detail), "\n");
  return out;
}

// Parses one calibration line into `c` or `r`; false if `key` is not one.
bool DecodeCalibration(absl::string_view key, absl::string_view value,
                       CalibrationSettings& c, CalibrationReport& r, bool& ok) {
  int64_t nanos = 0;
  std::string detail;
  if (key == "calibration.automatic") {
    ok = absl::SimpleAtob(value, &c.automatic);
  } else if (key == "calibration.apply") {
    ok = absl::SimpleAtob(value, &c.apply);
  } else if (key == "calibration.corruption") {
    ok = ParseEnum(kCorruptions, value, c.corruption);
  } else if (key == "calibration.level") {
    ok = absl::SimpleAtof(value, &c.level);
  } else if (key == "calibration.search_similarity") {
    ok = absl::SimpleAtob(value, &c.search_similarity);
  } else if (key == "calibration.search_separation") {
    ok = absl::SimpleAtob(value, &c.search_separation);
  } else if (key == "calibration.sample_size") {
    ok = absl::SimpleAtoi(value, &c.sample_size);
  } else if (key == "calibration.seed") {
    ok = absl::SimpleAtoi(value, &c.seed);
  } else if (key == "report.time_unix_ns") {
    ok = absl::SimpleAtoi(value, &nanos);
    r.time = absl::FromUnixNanos(nanos);
  } else if (key == "report.store_version") {
    ok = absl::SimpleAtoi(value, &r.store_version);
  } else if (key == "report.patterns") {
    ok = absl::SimpleAtoi(value, &r.patterns);
  } else if (key == "report.corruption") {
    ok = ParseEnum(kCorruptions, value, r.corruption);
  } else if (key == "report.level") {
    ok = absl::SimpleAtof(value, &r.level);
  } else if (key == "report.similarity") {
    ok = ParseEnum(kSimilarities, value, r.similarity);
  } else if (key == "report.separation") {
    ok = ParseEnum(kSeparations, value, r.separation);
  } else if (key == "report.beta") {
    ok = absl::SimpleAtof(value, &r.beta);
  } else if (key == "report.error") {
    ok = absl::SimpleAtod(value, &r.error);
  } else if (key == "report.recall_at_1") {
    ok = absl::SimpleAtod(value, &r.recall_at_1);
  } else if (key == "report.previous_error") {
    ok = absl::SimpleAtod(value, &r.previous_error);
  } else if (key == "report.previous_recall_at_1") {
    ok = absl::SimpleAtod(value, &r.previous_recall_at_1);
  } else if (key == "report.improved") {
    ok = absl::SimpleAtob(value, &r.improved);
  } else if (key == "report.applied") {
    ok = absl::SimpleAtob(value, &r.applied);
  } else if (key == "report.well_separated_fraction") {
    ok = absl::SimpleAtod(value, &r.well_separated_fraction);
  } else if (key == "report.theory_beta_median") {
    ok = absl::SimpleAtod(value, &r.theory_beta_median);
  } else if (key == "report.theory_beta_p90") {
    ok = absl::SimpleAtod(value, &r.theory_beta_p90);
  } else if (key == "report.sample_size") {
    ok = absl::SimpleAtoi(value, &r.sample_size);
  } else if (key == "report.memories_used") {
    ok = absl::SimpleAtoi(value, &r.memories_used);
  } else if (key == "report.candidates") {
    ok = absl::SimpleAtoi(value, &r.candidates);
  } else if (key == "report.duration_seconds") {
    ok = absl::SimpleAtod(value, &r.duration_seconds);
  } else if (key == "report.detail") {
    ok = absl::CUnescape(value, &detail);
    r.detail = detail;
  } else {
    return false;
  }
  return true;
}

}  // namespace

std::string EncodeSettings(const StoreSettings& s) {
  const core::RetrievalParams& r = s.retrieval;
  const FeatureMapSettings& f = s.feature_map;
  return absl::StrCat(
      "format=1\nname=", s.name, "\ndimension=", s.dimension,
      "\nsimilarity=", NameOf(kSimilarities, r.similarity),
      "\nseparation=", NameOf(kSeparations, r.separation),
      "\nbeta=", absl::StrFormat("%.9g", r.beta), "\nsteps=", r.steps,
      "\neps=", absl::StrFormat("%.9g", r.eps), "\ntop_k=", r.top_k,
      "\nfeature_map.kind=", NameOf(kMapKinds, f.kind),
      "\nfeature_map.feature_dim=", f.feature_dim,
      "\nfeature_map.loss=", NameOf(kLosses, f.loss),
      "\nfeature_map.optimizer=", NameOf(kOptimizers, f.optimizer),
      "\nfeature_map.epochs=", f.epochs,
      "\nfeature_map.learning_rate=", absl::StrFormat("%.17g", f.learning_rate),
      "\nfeature_map.batch_size=", f.batch_size, "\nfeature_map.seed=", f.seed,
      "\nfeature_map.min_new_patterns=", f.min_new_patterns,
      "\nfeature_map.debounce_ms=", f.debounce_ms,
      "\nlow_rank.tolerance=", absl::StrFormat("%.17g", s.low_rank.tolerance),
      "\nlow_rank.max_degree=", s.low_rank.max_degree,
      "\ncreate_time_unix_ns=", absl::ToUnixNanos(s.create_time), "\n",
      EncodeCalibration(s.calibration, s.calibration_report));
}

absl::StatusOr<StoreSettings> DecodeSettings(absl::string_view text) {
  StoreSettings s;
  core::RetrievalParams& r = s.retrieval;
  FeatureMapSettings& f = s.feature_map;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos) {
      return absl::DataLossError(
          absl::StrCat("settings line '", line, "' has no '='"));
    }
    const absl::string_view key = line.substr(0, eq),
                            value = line.substr(eq + 1);
    int64_t nanos = 0;
    bool ok = true;
    if (key == "format") {
      ok = value == "1";
    } else if (key == "name") {
      s.name = std::string(value);
    } else if (key == "dimension") {
      ok = absl::SimpleAtoi(value, &s.dimension);
    } else if (key == "similarity") {
      ok = ParseEnum(kSimilarities, value, r.similarity);
    } else if (key == "separation") {
      ok = ParseEnum(kSeparations, value, r.separation);
    } else if (key == "beta") {
      ok = absl::SimpleAtof(value, &r.beta);
    } else if (key == "steps") {
      ok = absl::SimpleAtoi(value, &r.steps);
    } else if (key == "eps") {
      ok = absl::SimpleAtof(value, &r.eps);
    } else if (key == "top_k") {
      ok = absl::SimpleAtoi(value, &r.top_k);
    } else if (key == "feature_map.kind") {
      ok = ParseEnum(kMapKinds, value, f.kind);
    } else if (key == "feature_map.feature_dim") {
      ok = absl::SimpleAtoi(value, &f.feature_dim);
    } else if (key == "feature_map.loss") {
      ok = ParseEnum(kLosses, value, f.loss);
    } else if (key == "feature_map.optimizer") {
      ok = ParseEnum(kOptimizers, value, f.optimizer);
    } else if (key == "feature_map.epochs") {
      ok = absl::SimpleAtoi(value, &f.epochs);
    } else if (key == "feature_map.learning_rate") {
      ok = absl::SimpleAtod(value, &f.learning_rate);
    } else if (key == "feature_map.batch_size") {
      ok = absl::SimpleAtoi(value, &f.batch_size);
    } else if (key == "feature_map.seed") {
      ok = absl::SimpleAtoi(value, &f.seed);
    } else if (key == "feature_map.min_new_patterns") {
      ok = absl::SimpleAtoi(value, &f.min_new_patterns);
    } else if (key == "feature_map.debounce_ms") {
      ok = absl::SimpleAtoi(value, &f.debounce_ms);
    } else if (key == "low_rank.tolerance") {
      ok = absl::SimpleAtod(value, &s.low_rank.tolerance);
    } else if (key == "low_rank.max_degree") {
      ok = absl::SimpleAtoi(value, &s.low_rank.max_degree);
    } else if (key == "create_time_unix_ns") {
      ok = absl::SimpleAtoi(value, &nanos);
      s.create_time = absl::FromUnixNanos(nanos);
    } else {
      DecodeCalibration(key, value, s.calibration, s.calibration_report, ok);
    }
    if (!ok) {
      return absl::DataLossError(
          absl::StrCat("settings line '", line, "' has a bad value"));
    }
  }
  return s;
}

}  // namespace engram::store
