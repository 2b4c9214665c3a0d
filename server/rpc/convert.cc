#include "server/rpc/convert.h"

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "server/base/clip.h"

namespace engram::rpc {

namespace {

absl::StatusOr<core::Similarity> SimilarityFromProto(int value) {
  switch (value) {
    case v1::SIMILARITY_UNSPECIFIED:
    case v1::DOT:
      return core::Similarity::kDot;
    case v1::L2:
      return core::Similarity::kL2;
    case v1::MANHATTAN:
      return core::Similarity::kManhattan;
    case v1::COSINE:
      return core::Similarity::kCosine;
    case v1::KERNEL_DOT:
      return core::Similarity::kKernelDot;
    case v1::KERNEL_L2:
      return core::Similarity::kKernelL2;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("store.retrieval.similarity has unknown value ", value));
}

v1::Similarity SimilarityToProto(core::Similarity similarity) {
  switch (similarity) {
    case core::Similarity::kDot:
      return v1::DOT;
    case core::Similarity::kL2:
      return v1::L2;
    case core::Similarity::kManhattan:
      return v1::MANHATTAN;
    case core::Similarity::kCosine:
      return v1::COSINE;
    case core::Similarity::kKernelDot:
      return v1::KERNEL_DOT;
    case core::Similarity::kKernelL2:
      return v1::KERNEL_L2;
  }
  return v1::SIMILARITY_UNSPECIFIED;
}

absl::StatusOr<core::Separation> SeparationFromProto(int value) {
  switch (value) {
    case v1::SEPARATION_UNSPECIFIED:
    case v1::SOFTMAX:
      return core::Separation::kSoftmax;
    case v1::SPARSEMAX:
      return core::Separation::kSparsemax;
    case v1::ENTMAX15:
      return core::Separation::kEntmax15;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("store.retrieval.separation has unknown value ", value));
}

v1::Separation SeparationToProto(core::Separation separation) {
  switch (separation) {
    case core::Separation::kSoftmax:
      return v1::SOFTMAX;
    case core::Separation::kSparsemax:
      return v1::SPARSEMAX;
    case core::Separation::kEntmax15:
      return v1::ENTMAX15;
  }
  return v1::SEPARATION_UNSPECIFIED;
}

absl::Status FeatureMapFromProto(const v1::FeatureMapSettings& in,
                                 store::FeatureMapSettings& out) {
  switch (in.kind()) {
    case v1::FEATURE_MAP_KIND_UNSPECIFIED:
    case v1::NONE:
      out.kind = store::FeatureMapKind::kNone;
      break;
    case v1::UHOP:
      out.kind = store::FeatureMapKind::kUhop;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("store.feature_map.kind has unknown value ", in.kind()));
  }
  switch (in.loss()) {
    case v1::FIT_LOSS_UNSPECIFIED:
    case v1::MAX:
      out.loss = store::FitLoss::kMax;
      break;
    case v1::MEAN:
      out.loss = store::FitLoss::kMean;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("store.feature_map.loss has unknown value ", in.loss()));
  }
  switch (in.optimizer()) {
    case v1::FIT_OPTIMIZER_UNSPECIFIED:
    case v1::SGD:
      out.optimizer = store::FitOptimizer::kSgd;
      break;
    case v1::ADAM:
      out.optimizer = store::FitOptimizer::kAdam;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "store.feature_map.optimizer has unknown value ", in.optimizer()));
  }
  out.feature_dim = in.feature_dim();
  out.epochs = in.epochs() ? in.epochs() : 100;
  out.learning_rate = in.learning_rate();
  out.batch_size = in.batch_size() ? in.batch_size() : 1024;
  out.seed = in.seed();
  out.min_new_patterns = in.min_new_patterns() ? in.min_new_patterns() : 1;
  out.debounce_ms = in.debounce_ms() ? in.debounce_ms() : 2000;
  return absl::OkStatus();
}

absl::Status CalibrationFromProto(const v1::CalibrationSettings& in,
                                  store::CalibrationSettings& out) {
  switch (in.corruption()) {
    case v1::CORRUPTION_UNSPECIFIED:
    case v1::DROPOUT:
      out.corruption = core::Corruption::kDropout;
      break;
    case v1::GAUSSIAN:
      out.corruption = core::Corruption::kGaussian;
      break;
    case v1::MASK:
      out.corruption = core::Corruption::kMask;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "store.calibration.corruption has unknown value ", in.corruption()));
  }
  out.automatic = in.automatic();
  out.apply = in.apply();
  out.level = in.level() != 0 ? in.level() : 0.5f;
  out.search_similarity = in.search_similarity();
  out.search_separation = in.search_separation();
  out.sample_size = in.sample_size() ? in.sample_size() : 256;
  out.seed = in.seed();
  return absl::OkStatus();
}

v1::Corruption CorruptionToProto(core::Corruption corruption) {
  switch (corruption) {
    case core::Corruption::kDropout:
      return v1::DROPOUT;
    case core::Corruption::kGaussian:
      return v1::GAUSSIAN;
    case core::Corruption::kMask:
      return v1::MASK;
  }
  return v1::CORRUPTION_UNSPECIFIED;
}

void ToProto(absl::Time time, google::protobuf::Timestamp& out) {
  const int64_t nanos = absl::ToUnixNanos(time);
  out.set_seconds(nanos / 1000000000);
  out.set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

void ToProto(const store::CalibrationReport& r, v1::CalibrationReport& out) {
  ToProto(r.time, *out.mutable_time());
  out.set_store_version(r.store_version);
  out.set_pattern_count(r.patterns);
  out.set_corruption(CorruptionToProto(r.corruption));
  out.set_level(r.level);
  out.set_similarity(SimilarityToProto(r.similarity));
  out.set_separation(SeparationToProto(r.separation));
  out.set_beta(r.beta);
  out.set_error(r.error);
  out.set_recall_at_1(r.recall_at_1);
  out.set_previous_error(r.previous_error);
  out.set_previous_recall_at_1(r.previous_recall_at_1);
  out.set_improved(r.improved);
  out.set_applied(r.applied);
  out.set_well_separated_fraction(r.well_separated_fraction);
  out.set_theory_beta_median(r.theory_beta_median);
  out.set_theory_beta_p90(r.theory_beta_p90);
  out.set_sample_size(r.sample_size);
  out.set_memories_used(r.memories_used);
  out.set_candidates(r.candidates);
  out.set_duration_seconds(r.duration_seconds);
  out.set_detail(r.detail);
}

// An update path of one calibration field: the whole message converted
// (with its defaults), then that field copied.
template <typename T>
absl::Status CopyCalibrationField(const v1::Store& s,
                                  T store::CalibrationSettings::*field,
                                  store::StoreSettings& out) {
  store::CalibrationSettings c;
  if (absl::Status status = CalibrationFromProto(s.calibration(), c);
      !status.ok()) {
    return status;
  }
  out.calibration.*field = c.*field;
  return absl::OkStatus();
}

// Paths UpdateStore accepts, and how each copies its value.
struct UpdatablePath {
  const char* path;
  absl::Status (*apply)(const v1::Store&, store::StoreSettings&);
};

const UpdatablePath kUpdatable[] = {
    {"retrieval.similarity",
     [](const v1::Store& s, store::StoreSettings& out) -> absl::Status {
       absl::StatusOr<core::Similarity> v =
           SimilarityFromProto(s.retrieval().similarity());
       if (!v.ok()) return v.status();
       out.retrieval.similarity = *v;
       return absl::OkStatus();
     }},
    {"retrieval.separation",
     [](const v1::Store& s, store::StoreSettings& out) -> absl::Status {
       absl::StatusOr<core::Separation> v =
           SeparationFromProto(s.retrieval().separation());
       if (!v.ok()) return v.status();
       out.retrieval.separation = *v;
       return absl::OkStatus();
     }},
    {"retrieval.beta",
     [](const v1::Store& s, store::StoreSettings& out) {
       out.retrieval.beta = s.retrieval().beta();
       return absl::OkStatus();
     }},
    {"retrieval.steps",
     [](const v1::Store& s, store::StoreSettings& out) {
       out.retrieval.steps = s.retrieval().steps();
       return absl::OkStatus();
     }},
    {"retrieval.eps",
     [](const v1::Store& s, store::StoreSettings& out) {
       out.retrieval.eps = s.retrieval().eps();
       return absl::OkStatus();
     }},
    {"retrieval.top_k",
     [](const v1::Store& s, store::StoreSettings& out) {
       out.retrieval.top_k = s.retrieval().top_k();
       return absl::OkStatus();
     }},
    {"low_rank.tolerance",
     [](const v1::Store& s, store::StoreSettings& out) {
       out.low_rank.tolerance = s.low_rank().tolerance();
       return absl::OkStatus();
     }},
    {"low_rank.max_degree",
     [](const v1::Store& s, store::StoreSettings& out) {
       out.low_rank.max_degree = s.low_rank().max_degree();
       return absl::OkStatus();
     }},
    {"calibration.automatic",
     [](const v1::Store& s, store::StoreSettings& out) {
       return CopyCalibrationField(s, &store::CalibrationSettings::automatic,
                                   out);
     }},
    {"calibration.apply",
     [](const v1::Store& s, store::StoreSettings& out) {
       return CopyCalibrationField(s, &store::CalibrationSettings::apply, out);
     }},
    {"calibration.corruption",
     [](const v1::Store& s, store::StoreSettings& out) {
       return CopyCalibrationField(s, &store::CalibrationSettings::corruption,
                                   out);
     }},
    {"calibration.level",
     [](const v1::Store& s, store::StoreSettings& out) {
       return CopyCalibrationField(s, &store::CalibrationSettings::level, out);
     }},
    {"calibration.search_similarity",
     [](const v1::Store& s, store::StoreSettings& out) {
       return CopyCalibrationField(
           s, &store::CalibrationSettings::search_similarity, out);
     }},
    {"calibration.search_separation",
     [](const v1::Store& s, store::StoreSettings& out) {
       return CopyCalibrationField(
           s, &store::CalibrationSettings::search_separation, out);
     }},
    {"calibration.sample_size",
     [](const v1::Store& s, store::StoreSettings& out) {
       return CopyCalibrationField(s, &store::CalibrationSettings::sample_size,
                                   out);
     }},
    {"calibration.seed",
     [](const v1::Store& s, store::StoreSettings& out) {
       return CopyCalibrationField(s, &store::CalibrationSettings::seed, out);
     }},
};

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::StatusOr<store::StoreSettings> SettingsFromProto(const v1::Store& in) {
  store::StoreSettings out;
  out.name = in.name();
  out.dimension = in.dimension();
  const v1::RetrievalSettings& r = in.retrieval();
  absl::StatusOr<core::Similarity> similarity =
      SimilarityFromProto(r.similarity());
  if (!similarity.ok()) return similarity.status();
  absl::StatusOr<core::Separation> separation =
      SeparationFromProto(r.separation());
  if (!separation.ok()) return separation.status();
  out.retrieval.similarity = *similarity;
  out.retrieval.separation = *separation;
  out.retrieval.beta = r.beta() != 0 ? r.beta() : 1.0f;
  out.retrieval.steps = r.steps() ? r.steps() : 1;
  out.retrieval.eps = r.eps();
  out.retrieval.top_k = r.top_k() ? r.top_k() : 5;
  if (absl::Status status =
          FeatureMapFromProto(in.feature_map(), out.feature_map);
      !status.ok()) {
    return status;
  }
  out.low_rank.tolerance =
      in.low_rank().tolerance() != 0 ? in.low_rank().tolerance() : 1e-3;
  out.low_rank.max_degree =
      in.low_rank().max_degree() ? in.low_rank().max_degree() : 4;
  if (absl::Status status =
          CalibrationFromProto(in.calibration(), out.calibration);
      !status.ok()) {
    return status;
  }
  out.create_time = absl::Now();
  return out;
}

absl::Status ApplyUpdateMask(const v1::Store& source,
                             const google::protobuf::FieldMask& mask,
                             store::StoreSettings& settings) {
  if (mask.paths_size() == 0) {
    return absl::InvalidArgumentError(
        "update_mask must name at least one field");
  }
  for (int i = 0; i < mask.paths_size(); ++i) {
    const std::string& path = mask.paths(i);
    bool matched = false;
    for (const UpdatablePath& u : kUpdatable) {
      // "retrieval" names every retrieval.* field at once.
      if (path == u.path || (absl::StartsWith(u.path, path + ".") &&
                             path.find('.') == std::string::npos)) {
        if (absl::Status status = u.apply(source, settings); !status.ok()) {
          return status;
        }
        matched = true;
      }
    }
    if (!matched) {
      std::vector<std::string> names;
      for (const UpdatablePath& u : kUpdatable) names.push_back(u.path);
      return absl::InvalidArgumentError(
          absl::StrCat("update_mask.paths[", i, "] '", Clip(path),
                       "' is not an updatable field; updatable: ",
                       absl::StrJoin(names, ", ")));
    }
  }
  return absl::OkStatus();
}

void ToProto(const store::StoreView& view, v1::Store& out) {
  const store::StoreSettings& s = view.settings();
  out.set_name(s.name);
  out.set_dimension(s.dimension);
  v1::RetrievalSettings* r = out.mutable_retrieval();
  r->set_similarity(SimilarityToProto(s.retrieval.similarity));
  r->set_separation(SeparationToProto(s.retrieval.separation));
  r->set_beta(s.retrieval.beta);
  r->set_steps(s.retrieval.steps);
  r->set_eps(s.retrieval.eps);
  r->set_top_k(s.retrieval.top_k);
  v1::FeatureMapSettings* f = out.mutable_feature_map();
  f->set_kind(s.feature_map.kind == store::FeatureMapKind::kUhop ? v1::UHOP
                                                                 : v1::NONE);
  f->set_feature_dim(store::FeatureDim(s));
  f->set_loss(s.feature_map.loss == store::FitLoss::kMean ? v1::MEAN : v1::MAX);
  f->set_optimizer(s.feature_map.optimizer == store::FitOptimizer::kAdam
                       ? v1::ADAM
                       : v1::SGD);
  f->set_epochs(s.feature_map.epochs);
  f->set_learning_rate(s.feature_map.learning_rate);
  f->set_batch_size(s.feature_map.batch_size);
  f->set_seed(s.feature_map.seed);
  f->set_min_new_patterns(s.feature_map.min_new_patterns);
  f->set_debounce_ms(s.feature_map.debounce_ms);
  out.mutable_low_rank()->set_tolerance(s.low_rank.tolerance);
  out.mutable_low_rank()->set_max_degree(s.low_rank.max_degree);
  out.set_pattern_count(view.size());
  v1::NormStats* norms = out.mutable_norms();
  norms->set_max_norm(view.norms().max_norm);
  norms->set_mean_norm(view.norms().mean_norm);
  norms->set_max_abs_entry(view.norms().max_abs_entry);
  norms->set_max_feature_norm(view.norms().max_feature_norm);
  norms->set_mean_feature_norm(view.norms().mean_feature_norm);
  v1::LowRankState* low_rank = out.mutable_low_rank_state();
  low_rank->set_degree(view.low_rank_state().degree);
  low_rank->set_rank(view.low_rank_state().rank);
  low_rank->set_detail(view.low_rank_state().detail);
  v1::CalibrationSettings* c = out.mutable_calibration();
  c->set_automatic(s.calibration.automatic);
  c->set_apply(s.calibration.apply);
  c->set_corruption(CorruptionToProto(s.calibration.corruption));
  c->set_level(s.calibration.level);
  c->set_search_similarity(s.calibration.search_similarity);
  c->set_search_separation(s.calibration.search_separation);
  c->set_sample_size(s.calibration.sample_size);
  c->set_seed(s.calibration.seed);
  if (s.calibration_report.time != absl::InfinitePast()) {
    ToProto(s.calibration_report, *out.mutable_calibration_report());
  }
  ToProto(s.create_time, *out.mutable_create_time());
  out.set_version(view.version());
  out.set_state(v1::Store::READY);
}

void ToProto(const store::Pattern& pattern, v1::Pattern& out) {
  out.set_id(pattern.id);
  out.mutable_values()->Assign(pattern.values.begin(), pattern.values.end());
  out.set_label(pattern.label);
  for (const auto& [key, value] : pattern.metadata) {
    (*out.mutable_metadata())[key] = value;
  }
}

store::Pattern FromProto(const v1::Pattern& pattern) {
  store::Pattern out;
  out.id = pattern.id();
  out.values.assign(pattern.values().begin(), pattern.values().end());
  out.label = pattern.label();
  out.metadata.assign(pattern.metadata().begin(), pattern.metadata().end());
  std::sort(out.metadata.begin(), out.metadata.end());
  return out;
}

void ToProto(const std::string& store, const jobs::FitStatus& in,
             v1::FitStatus& out) {
  using State = jobs::FitStatus::State;
  out.set_store(store);
  switch (in.state) {
    case State::kNotConfigured:
      out.set_state(v1::FitStatus::NOT_CONFIGURED);
      break;
    case State::kIdle:
      out.set_state(v1::FitStatus::IDLE);
      break;
    case State::kPending:
      out.set_state(v1::FitStatus::PENDING);
      break;
    case State::kRunning:
      out.set_state(v1::FitStatus::RUNNING);
      break;
    case State::kSucceeded:
      out.set_state(v1::FitStatus::SUCCEEDED);
      break;
    case State::kCancelled:
      out.set_state(v1::FitStatus::CANCELLED);
      break;
    case State::kFailed:
      out.set_state(v1::FitStatus::FAILED);
      break;
  }
  out.set_epoch(in.epoch);
  out.set_total_epochs(in.total_epochs);
  out.set_loss_before(in.loss_before);
  out.set_loss_after(in.loss_after);
  out.set_duration_seconds(in.duration_seconds);
  out.set_map_version(in.map_version);
  out.set_patterns_fitted(in.patterns_fitted);
  out.set_error(in.error);
}

void ToProto(const std::string& store, const jobs::CalibrationStatus& in,
             v1::CalibrationStatus& out) {
  using State = jobs::CalibrationStatus::State;
  out.set_store(store);
  switch (in.state) {
    case State::kIdle:
      out.set_state(v1::CalibrationStatus::IDLE);
      break;
    case State::kPending:
      out.set_state(v1::CalibrationStatus::PENDING);
      break;
    case State::kRunning:
      out.set_state(v1::CalibrationStatus::RUNNING);
      break;
    case State::kSucceeded:
      out.set_state(v1::CalibrationStatus::SUCCEEDED);
      break;
    case State::kCancelled:
      out.set_state(v1::CalibrationStatus::CANCELLED);
      break;
    case State::kFailed:
      out.set_state(v1::CalibrationStatus::FAILED);
      break;
  }
  if (in.report.time != absl::InfinitePast()) {
    ToProto(in.report, *out.mutable_report());
  }
  out.set_error(in.error);
}

absl::StatusOr<store::PathChoice> PathFromProto(v1::RetrievalPath path) {
  switch (path) {
    case v1::RETRIEVAL_PATH_UNSPECIFIED:
    case v1::AUTO:
      return store::PathChoice::kAuto;
    case v1::EXACT:
      return store::PathChoice::kExact;
    case v1::LOW_RANK:
      return store::PathChoice::kLowRank;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("path has unknown value ", static_cast<int>(path)));
  }
}

v1::RetrievalPath PathToProto(store::PathChoice path) {
  switch (path) {
    case store::PathChoice::kAuto:
      return v1::AUTO;
    case store::PathChoice::kExact:
      return v1::EXACT;
    case store::PathChoice::kLowRank:
      return v1::LOW_RANK;
  }
  return v1::RETRIEVAL_PATH_UNSPECIFIED;
}

size_t PageSize(uint32_t requested) {
  if (requested == 0) return 100;
  return std::min<size_t>(requested, 1000);
}

}  // namespace engram::rpc
