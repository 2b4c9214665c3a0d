#include "server/store/settings.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engram/storage/v1/records.pb.h"
#include "google/protobuf/util/field_mask_util.h"
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

void TimeToProto(absl::Time time, google::protobuf::Timestamp& out) {
  const int64_t nanos = absl::ToUnixNanos(time);
  out.set_seconds(nanos / 1000000000);
  out.set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

absl::Time TimeFromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

void DurationToProto(absl::Duration d, google::protobuf::Duration& out) {
  const int64_t nanos = absl::ToInt64Nanoseconds(d);
  out.set_seconds(nanos / 1000000000);
  out.set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

absl::Duration DurationFromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

absl::Status ValidateTtl(absl::Duration ttl, absl::string_view field) {
  if (ttl <= absl::ZeroDuration() || ttl > kMaxTtl) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be > 0 and at most 100 years, got ",
                     absl::FormatDuration(ttl)));
  }
  return absl::OkStatus();
}

absl::Status ValidateSettings(const StoreSettings& settings,
                              const Limits& limits) {
  if (settings.expiry.default_ttl != absl::ZeroDuration()) {
    if (absl::Status status = ValidateTtl(settings.expiry.default_ttl,
                                          "store.expiry.default_ttl");
        !status.ok()) {
      return status;
    }
  }
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
      low_rank.max_degree > kMaxLowRankDegree) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.low_rank.max_degree must be an even number in [2, ",
                     kMaxLowRankDegree, "], got ", low_rank.max_degree));
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

namespace {

// Each enum of the settings next to the API's: one table per pair, read
// both ways. UNSPECIFIED (0) is the default.
template <typename Ours, typename Theirs>
struct EnumPair {
  Ours ours;
  Theirs theirs;
};

constexpr EnumPair<core::Similarity, v1::Similarity> kSimilarities[] = {
    {core::Similarity::kDot, v1::DOT},
    {core::Similarity::kL2, v1::L2},
    {core::Similarity::kManhattan, v1::MANHATTAN},
    {core::Similarity::kCosine, v1::COSINE},
    {core::Similarity::kKernelDot, v1::KERNEL_DOT},
    {core::Similarity::kKernelL2, v1::KERNEL_L2}};
constexpr EnumPair<core::Separation, v1::Separation> kSeparations[] = {
    {core::Separation::kSoftmax, v1::SOFTMAX},
    {core::Separation::kSparsemax, v1::SPARSEMAX},
    {core::Separation::kEntmax15, v1::ENTMAX15}};
constexpr EnumPair<core::Corruption, v1::Corruption> kCorruptions[] = {
    {core::Corruption::kDropout, v1::DROPOUT},
    {core::Corruption::kGaussian, v1::GAUSSIAN},
    {core::Corruption::kMask, v1::MASK}};
constexpr EnumPair<core::Precision, v1::Precision> kPrecisions[] = {
    {core::Precision::kFloat32, v1::FLOAT32},
    {core::Precision::kBFloat16, v1::BFLOAT16},
    {core::Precision::kFloat16, v1::FLOAT16}};
constexpr EnumPair<FeatureMapKind, v1::FeatureMapKind> kMapKinds[] = {
    {FeatureMapKind::kNone, v1::NONE}, {FeatureMapKind::kUhop, v1::UHOP}};
constexpr EnumPair<FitLoss, v1::FitLoss> kLosses[] = {
    {FitLoss::kMean, v1::MEAN}, {FitLoss::kMax, v1::MAX}};
constexpr EnumPair<FitOptimizer, v1::FitOptimizer> kOptimizers[] = {
    {FitOptimizer::kSgd, v1::SGD}, {FitOptimizer::kAdam, v1::ADAM}};

template <typename Ours, typename Theirs, size_t N>
Theirs ToProtoEnum(const EnumPair<Ours, Theirs> (&pairs)[N], Ours value) {
  for (const auto& p : pairs) {
    if (p.ours == value) return p.theirs;
  }
  return Theirs{};
}

// The value of `field` (an API enum value), or `fallback` for UNSPECIFIED.
template <typename Ours, typename Theirs, size_t N>
absl::Status FromProtoEnum(const EnumPair<Ours, Theirs> (&pairs)[N], int value,
                           Ours fallback, absl::string_view field, Ours& out) {
  if (value == 0) {
    out = fallback;
    return absl::OkStatus();
  }
  for (const auto& p : pairs) {
    if (p.theirs == value) {
      out = p.ours;
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, " has unknown value ", value));
}

// `value`, or `fallback` where it is zero and defaults fill.
template <typename T>
T Or(T value, T fallback, bool fill_defaults) {
  return fill_defaults && value == T{} ? fallback : value;
}

// Sets the field at dotted `path` of `message` from its text, by the
// field's type (enum values by name, any case; strings C-unescaped). NOT_FOUND
// if no such field exists; INVALID_ARGUMENT if the text is not its type.
absl::Status SetField(google::protobuf::Message& message,
                      absl::string_view path, absl::string_view text) {
  const absl::Status bad = absl::InvalidArgumentError("bad value");
  using google::protobuf::FieldDescriptor;
  google::protobuf::Message* target = &message;
  std::vector<absl::string_view> parts = absl::StrSplit(path, '.');
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const FieldDescriptor* field =
        target->GetDescriptor()->FindFieldByName(std::string(parts[i]));
    if (field == nullptr || field->type() != FieldDescriptor::TYPE_MESSAGE) {
      return absl::NotFoundError("no such field");
    }
    target = target->GetReflection()->MutableMessage(target, field);
  }
  const FieldDescriptor* field =
      target->GetDescriptor()->FindFieldByName(std::string(parts.back()));
  if (field == nullptr || field->is_repeated()) {
    return absl::NotFoundError("no such field");
  }
  const google::protobuf::Reflection* r = target->GetReflection();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: {
      int32_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad;
      r->SetInt32(target, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad;
      r->SetInt64(target, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      uint32_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad;
      r->SetUInt32(target, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad;
      r->SetUInt64(target, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_FLOAT: {
      float v;
      if (!absl::SimpleAtof(text, &v)) return bad;
      r->SetFloat(target, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      double v;
      if (!absl::SimpleAtod(text, &v)) return bad;
      r->SetDouble(target, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      bool v;
      if (!absl::SimpleAtob(text, &v)) return bad;
      r->SetBool(target, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      const google::protobuf::EnumValueDescriptor* v =
          field->enum_type()->FindValueByName(absl::AsciiStrToUpper(text));
      if (v == nullptr) return bad;
      r->SetEnum(target, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string v;
      if (!absl::CUnescape(text, &v)) return bad;
      r->SetString(target, field, std::move(v));
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return bad;
  }
  return bad;
}

// The format of a SettingsRecord this engramd writes and reads.
constexpr uint32_t kSettingsRecordFormat = 2;

}  // namespace

absl::StatusOr<StoreSettings> SettingsFromProto(const v1::Store& in,
                                                bool fill_defaults) {
  const StoreSettings d;  // The defaults.
  StoreSettings out;
  out.name = in.name();
  out.dimension = in.dimension();
  if (absl::Status s = FromProtoEnum(kPrecisions, in.precision(), d.precision,
                                     "store.precision", out.precision);
      !s.ok()) {
    return s;
  }
  const v1::RetrievalSettings& r = in.retrieval();
  core::RetrievalParams& retrieval = out.retrieval;
  if (absl::Status s =
          FromProtoEnum(kSimilarities, r.similarity(), d.retrieval.similarity,
                        "store.retrieval.similarity", retrieval.similarity);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          FromProtoEnum(kSeparations, r.separation(), d.retrieval.separation,
                        "store.retrieval.separation", retrieval.separation);
      !s.ok()) {
    return s;
  }
  retrieval.beta = Or(r.beta(), d.retrieval.beta, fill_defaults);
  retrieval.steps = Or(r.steps(), d.retrieval.steps, fill_defaults);
  retrieval.eps = r.eps();
  retrieval.top_k = Or(r.top_k(), d.retrieval.top_k, fill_defaults);

  const v1::FeatureMapSettings& f = in.feature_map();
  FeatureMapSettings& map = out.feature_map;
  for (absl::Status s :
       {FromProtoEnum(kMapKinds, f.kind(), d.feature_map.kind,
                      "store.feature_map.kind", map.kind),
        FromProtoEnum(kLosses, f.loss(), d.feature_map.loss,
                      "store.feature_map.loss", map.loss),
        FromProtoEnum(kOptimizers, f.optimizer(), d.feature_map.optimizer,
                      "store.feature_map.optimizer", map.optimizer)}) {
    if (!s.ok()) return s;
  }
  map.feature_dim = f.feature_dim();
  map.epochs = Or(f.epochs(), d.feature_map.epochs, fill_defaults);
  map.learning_rate = f.learning_rate();
  map.batch_size = Or(f.batch_size(), d.feature_map.batch_size, fill_defaults);
  map.seed = f.seed();
  map.min_new_patterns =
      Or(f.min_new_patterns(), d.feature_map.min_new_patterns, fill_defaults);
  map.debounce_ms =
      Or(f.debounce_ms(), d.feature_map.debounce_ms, fill_defaults);

  out.low_rank.tolerance =
      Or(in.low_rank().tolerance(), d.low_rank.tolerance, fill_defaults);
  out.low_rank.max_degree =
      Or(in.low_rank().max_degree(), d.low_rank.max_degree, fill_defaults);

  const v1::CalibrationSettings& c = in.calibration();
  CalibrationSettings& calibration = out.calibration;
  if (absl::Status s =
          FromProtoEnum(kCorruptions, c.corruption(), d.calibration.corruption,
                        "store.calibration.corruption", calibration.corruption);
      !s.ok()) {
    return s;
  }
  calibration.automatic = c.automatic();
  calibration.apply = c.apply();
  calibration.level = Or(c.level(), d.calibration.level, fill_defaults);
  calibration.search_similarity = c.search_similarity();
  calibration.search_separation = c.search_separation();
  calibration.sample_size =
      Or(c.sample_size(), d.calibration.sample_size, fill_defaults);
  calibration.seed = c.seed();

  if (in.has_calibration_report()) {
    out.calibration_report = in.calibration_report();
  }
  if (in.has_create_time()) out.create_time = TimeFromProto(in.create_time());
  out.expiry.default_ttl = DurationFromProto(in.expiry().default_ttl());
  // -0.0 is read as 0: settings equal in value write the same bytes, which a
  // replica's settings digest hashes (a replica given -0.0 differed from
  // its peers for good, and no repair could make them agree).
  const auto zero_is_zero = [](auto& v) {
    if (v == 0) v = 0;
  };
  zero_is_zero(retrieval.beta);
  zero_is_zero(retrieval.eps);
  zero_is_zero(map.learning_rate);
  zero_is_zero(out.low_rank.tolerance);
  zero_is_zero(calibration.level);
  return out;
}

void SettingsToProto(const StoreSettings& s, v1::Store& out) {
  out.set_name(s.name);
  out.set_dimension(s.dimension);
  out.set_precision(ToProtoEnum(kPrecisions, s.precision));
  v1::RetrievalSettings* r = out.mutable_retrieval();
  r->set_similarity(ToProtoEnum(kSimilarities, s.retrieval.similarity));
  r->set_separation(ToProtoEnum(kSeparations, s.retrieval.separation));
  r->set_beta(s.retrieval.beta);
  r->set_steps(s.retrieval.steps);
  r->set_eps(s.retrieval.eps);
  r->set_top_k(s.retrieval.top_k);
  v1::FeatureMapSettings* f = out.mutable_feature_map();
  f->set_kind(ToProtoEnum(kMapKinds, s.feature_map.kind));
  f->set_feature_dim(s.feature_map.feature_dim);
  f->set_loss(ToProtoEnum(kLosses, s.feature_map.loss));
  f->set_optimizer(ToProtoEnum(kOptimizers, s.feature_map.optimizer));
  f->set_epochs(s.feature_map.epochs);
  f->set_learning_rate(s.feature_map.learning_rate);
  f->set_batch_size(s.feature_map.batch_size);
  f->set_seed(s.feature_map.seed);
  f->set_min_new_patterns(s.feature_map.min_new_patterns);
  f->set_debounce_ms(s.feature_map.debounce_ms);
  out.mutable_low_rank()->set_tolerance(s.low_rank.tolerance);
  out.mutable_low_rank()->set_max_degree(s.low_rank.max_degree);
  v1::CalibrationSettings* c = out.mutable_calibration();
  c->set_automatic(s.calibration.automatic);
  c->set_apply(s.calibration.apply);
  c->set_corruption(ToProtoEnum(kCorruptions, s.calibration.corruption));
  c->set_level(s.calibration.level);
  c->set_search_similarity(s.calibration.search_similarity);
  c->set_search_separation(s.calibration.search_separation);
  c->set_sample_size(s.calibration.sample_size);
  c->set_seed(s.calibration.seed);
  if (s.calibration_report.has_time()) {
    *out.mutable_calibration_report() = s.calibration_report;
  } else {
    out.clear_calibration_report();
  }
  TimeToProto(s.create_time, *out.mutable_create_time());
  if (s.expiry.default_ttl != absl::ZeroDuration()) {
    DurationToProto(s.expiry.default_ttl,
                    *out.mutable_expiry()->mutable_default_ttl());
  } else {
    out.clear_expiry();
  }
}

v1::Similarity SimilarityToProto(core::Similarity similarity) {
  return ToProtoEnum(kSimilarities, similarity);
}
v1::Separation SeparationToProto(core::Separation separation) {
  return ToProtoEnum(kSeparations, separation);
}
v1::Corruption CorruptionToProto(core::Corruption corruption) {
  return ToProtoEnum(kCorruptions, corruption);
}

absl::StatusOr<core::Similarity> SimilarityFromProto(int value,
                                                     absl::string_view field) {
  core::Similarity out = core::Similarity::kDot;
  if (absl::Status s = FromProtoEnum(kSimilarities, value, out, field, out);
      !s.ok()) {
    return s;
  }
  return out;
}
absl::StatusOr<core::Separation> SeparationFromProto(int value,
                                                     absl::string_view field) {
  core::Separation out = core::Separation::kSoftmax;
  if (absl::Status s = FromProtoEnum(kSeparations, value, out, field, out);
      !s.ok()) {
    return s;
  }
  return out;
}

absl::Span<const char* const> UpdatablePaths() {
  static constexpr const char* kPaths[] = {"retrieval.similarity",
                                           "retrieval.separation",
                                           "retrieval.beta",
                                           "retrieval.steps",
                                           "retrieval.eps",
                                           "retrieval.top_k",
                                           "low_rank.tolerance",
                                           "low_rank.max_degree",
                                           "calibration.automatic",
                                           "calibration.apply",
                                           "calibration.corruption",
                                           "calibration.level",
                                           "calibration.search_similarity",
                                           "calibration.search_separation",
                                           "calibration.sample_size",
                                           "calibration.seed",
                                           "expiry.default_ttl",
                                           "retrieval",
                                           "low_rank",
                                           "calibration",
                                           "expiry"};
  return kPaths;
}

absl::Status ApplyUpdateMask(const v1::Store& source,
                             const google::protobuf::FieldMask& mask,
                             StoreSettings& settings) {
  if (mask.paths_size() == 0) {
    return absl::InvalidArgumentError(
        "update_mask must name at least one field");
  }
  const absl::Span<const char* const> paths = UpdatablePaths();
  for (int i = 0; i < mask.paths_size(); ++i) {
    if (mask.paths(i) == "precision") {
      return absl::InvalidArgumentError(absl::StrCat(
          "update_mask.paths[", i,
          "] 'precision': a store's precision is fixed at create; export the "
          "store (engram export) and add it to a new store of the precision "
          "wanted"));
    }
    if (std::find(paths.begin(), paths.end(), mask.paths(i)) == paths.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("update_mask.paths[", i, "] '", Clip(mask.paths(i)),
                       "' is not an updatable field; updatable: ",
                       absl::StrJoin(paths, ", ")));
    }
  }
  // The current settings, every field explicit, with the named ones
  // replaced; then read back without defaults, so a zero given is a zero
  // (and validation refuses it where zero is not allowed).
  v1::Store current;
  SettingsToProto(settings, current);
  google::protobuf::util::FieldMaskUtil::MergeOptions options;
  options.set_replace_message_fields(true);
  options.set_replace_repeated_fields(true);
  google::protobuf::util::FieldMaskUtil::MergeMessageTo(source, mask, options,
                                                        &current);
  absl::StatusOr<StoreSettings> updated =
      SettingsFromProto(current, /*fill_defaults=*/false);
  if (!updated.ok()) return updated.status();
  settings = *std::move(updated);
  return absl::OkStatus();
}

std::string EncodeSettingsRecord(const StoreSettings& settings) {
  storage::v1::SettingsRecord record;
  record.set_format(kSettingsRecordFormat);
  SettingsToProto(settings, *record.mutable_store());
  return record.SerializeAsString();
}

absl::StatusOr<StoreSettings> DecodeSettingsRecord(absl::string_view bytes) {
  storage::v1::SettingsRecord record;
  if (!record.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("settings record: not a SettingsRecord");
  }
  if (record.format() != kSettingsRecordFormat) {
    return absl::DataLossError(
        absl::StrCat("settings record: format ", record.format(),
                     ", this engramd reads ", kSettingsRecordFormat));
  }
  return SettingsFromProto(record.store(), /*fill_defaults=*/false);
}

absl::StatusOr<StoreSettings> DecodeLegacySettings(absl::string_view text) {
  // engram 0.1 wrote "key=value" lines named after the API's fields, with
  // enum names in lower case; a few keys were spelled otherwise.
  static const auto* renamed =
      new absl::flat_hash_map<std::string, std::string>{
          {"similarity", "retrieval.similarity"},
          {"separation", "retrieval.separation"},
          {"beta", "retrieval.beta"},
          {"steps", "retrieval.steps"},
          {"eps", "retrieval.eps"},
          {"top_k", "retrieval.top_k"},
          {"report.patterns", "calibration_report.pattern_count"}};
  v1::Store store;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos) {
      return absl::DataLossError(
          absl::StrCat("settings line '", Clip(line), "' has no '='"));
    }
    std::string key(line.substr(0, eq));
    const absl::string_view value = line.substr(eq + 1);
    if (key == "format") {
      if (value != "1") {
        return absl::DataLossError(
            absl::StrCat("settings record format ", Clip(value)));
      }
      continue;
    }
    if (auto found = renamed->find(key); found != renamed->end()) {
      key = found->second;
    } else if (absl::StartsWith(key, "report.")) {
      key = absl::StrCat("calibration_report.", key.substr(7));
    }
    int64_t nanos = 0;
    if (key == "create_time_unix_ns" ||
        key == "calibration_report.time_unix_ns") {
      if (!absl::SimpleAtoi(value, &nanos)) {
        return absl::DataLossError(
            absl::StrCat("settings line '", Clip(line), "' has a bad value"));
      }
      TimeToProto(absl::FromUnixNanos(nanos),
                  key == "create_time_unix_ns"
                      ? *store.mutable_create_time()
                      : *store.mutable_calibration_report()->mutable_time());
      continue;
    }
    // Keys this engramd does not know are skipped, as 0.1 skipped them.
    if (absl::Status set = SetField(store, key, value);
        !set.ok() && !absl::IsNotFound(set)) {
      return absl::DataLossError(
          absl::StrCat("settings line '", Clip(line), "' has a bad value"));
    }
  }
  // 0.1 wrote every setting, zeros included: a zero is the store's value.
  return SettingsFromProto(store, /*fill_defaults=*/false);
}

}  // namespace engram::store
