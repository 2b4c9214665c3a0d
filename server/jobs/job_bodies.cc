#include "server/jobs/job_bodies.h"

#include <utility>

#include "absl/time/clock.h"
#include "server/base/steady_clock.h"
#include "server/core/calibration.h"
#include "server/core/uhop_fit.h"

namespace engram::jobs {

namespace {

core::CalibrationOptions CalibrationOptionsFor(
    const store::CalibrationSettings& c, const CalibrationBudget& budget) {
  core::CalibrationOptions o;
  o.corruption = c.corruption;
  o.level = c.level;
  o.search_similarity = c.search_similarity;
  o.search_separation = c.search_separation;
  o.sample_size = c.sample_size;
  o.seed = c.seed;
  o.max_work = budget.max_work;
  o.retrieval.threads = std::max(1, budget.threads);
  return o;
}

bool SameRetrieval(const core::RetrievalParams& a,
                   const core::RetrievalParams& b) {
  return a.similarity == b.similarity && a.separation == b.separation &&
         a.beta == b.beta && a.steps == b.steps && a.eps == b.eps;
}

void SetTime(absl::Time time, google::protobuf::Timestamp& out) {
  const int64_t nanos = absl::ToUnixNanos(time);
  out.set_seconds(nanos / 1000000000);
  out.set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

// The report of a calibration, in the API's terms (the only place the
// core's result becomes a report); `start` is SteadyNow() when it began.
v1::CalibrationReport ReportOf(const core::CalibrationResult& r,
                               const core::CalibrationOptions& options,
                               uint64_t store_version, uint64_t pattern_count,
                               absl::Time start) {
  v1::CalibrationReport report;
  SetTime(absl::Now(), *report.mutable_time());
  report.set_store_version(store_version);
  report.set_pattern_count(pattern_count);
  report.set_corruption(store::CorruptionToProto(options.corruption));
  report.set_level(options.level);
  report.set_similarity(store::SimilarityToProto(r.best.params.similarity));
  report.set_separation(store::SeparationToProto(r.best.params.separation));
  report.set_beta(r.best.params.beta);
  report.set_error(r.best.error);
  report.set_recall_at_1(r.best.recall_at_1);
  report.set_previous_error(r.current.error);
  report.set_previous_recall_at_1(r.current.recall_at_1);
  report.set_improved(r.improved);
  report.set_well_separated_fraction(r.well_separated_fraction);
  report.set_theory_beta_median(r.theory_beta_median);
  report.set_theory_beta_p90(r.theory_beta_p90);
  report.set_sample_size(static_cast<uint32_t>(r.sample_size));
  report.set_memories_used(r.memories_used);
  report.set_candidates(static_cast<uint32_t>(r.evaluated.size()));
  report.set_duration_seconds(SecondsSince(start));
  return report;
}

}  // namespace

core::FitOptions FitOptionsFor(const store::FeatureMapSettings& f) {
  core::FitOptions options;
  options.loss = f.loss == store::FitLoss::kMean ? core::SeparationLoss::kMean
                                                 : core::SeparationLoss::kMax;
  options.optimizer = f.optimizer == store::FitOptimizer::kAdam
                          ? core::FitOptimizer::kAdam
                          : core::FitOptimizer::kSgd;
  options.epochs = f.epochs;
  options.learning_rate = f.learning_rate;
  options.batch_size = f.batch_size;
  options.seed = f.seed;
  return options;
}

absl::StatusOr<store::FitRecord> RunFit(
    store::Store& store, const store::StoreView& view,
    absl::FunctionRef<absl::Status(uint32_t epoch, double loss)> progress) {
  const store::StoreSettings& settings = view.settings();
  const absl::Time start = SteadyNow();
  const core::FeatureMap initial = core::FeatureMap::RandomNormal(
      settings.dimension, store::FeatureDim(settings),
      settings.feature_map.seed);
  absl::StatusOr<core::FitResult> fit = core::FitFeatureMap(
      view.memories(), initial, FitOptionsFor(settings.feature_map),
      [&](const core::FitProgress& p) { return progress(p.epoch, p.loss); });
  if (!fit.ok()) return fit.status();
  store::FitRecord record;
  record.version = store.view()->fit().version + 1;
  record.loss_before = fit->loss_before;
  record.loss_after = fit->loss_after;
  record.epochs = fit->epochs;
  record.duration_seconds = SecondsSince(start);
  record.patterns_fitted = view.size();
  if (absl::Status status = store.PublishMap(
          std::make_shared<core::FeatureMap>(std::move(fit->map)), record);
      !status.ok()) {
    return status;
  }
  return record;
}

absl::StatusOr<v1::CalibrationReport> CalibrateOn(
    const core::MemorySet& memories, const store::StoreSettings& settings,
    uint64_t store_version, uint64_t pattern_count, bool apply,
    const CalibrationBudget& budget, const std::atomic<bool>& cancel) {
  core::CalibrationOptions options =
      CalibrationOptionsFor(settings.calibration, budget);
  options.retrieval.check = [&cancel]() -> absl::Status {
    if (cancel) return absl::CancelledError("calibration cancelled");
    return absl::OkStatus();
  };
  const absl::Time start = SteadyNow();
  absl::StatusOr<core::CalibrationResult> result =
      core::Calibrate(memories, settings.retrieval, options);
  if (!result.ok()) return result.status();
  const core::CalibrationResult& r = *result;
  v1::CalibrationReport report =
      ReportOf(r, options, store_version, pattern_count, start);
  if (!r.improved) {
    report.set_detail("no setting beat the current one");
  } else if (!apply) {
    report.set_detail("reported only (store.calibration.apply is false)");
  }
  return report;
}

absl::StatusOr<v1::CalibrationReport> StoreReport(
    store::Store& store, v1::CalibrationReport report, bool apply,
    const core::RetrievalParams& calibrated) {
  // The report and the setting it applies, in one durable write, unless
  // someone changed the retrieval settings since the calibration began.
  absl::Status stored = store.UpdateSettings([&](store::StoreSettings& s) {
    if (report.improved() && apply) {
      if (SameRetrieval(s.retrieval, calibrated)) {
        absl::StatusOr<core::Similarity> similarity =
            store::SimilarityFromProto(report.similarity(), "similarity");
        absl::StatusOr<core::Separation> separation =
            store::SeparationFromProto(report.separation(), "separation");
        if (!similarity.ok()) return similarity.status();
        if (!separation.ok()) return separation.status();
        s.retrieval.similarity = *similarity;
        s.retrieval.separation = *separation;
        s.retrieval.beta = report.beta();
        report.set_applied(true);
      } else {
        report.set_detail(
            "not applied: the retrieval settings changed during calibration");
      }
    }
    s.calibration_report = report;
    return absl::OkStatus();
  });
  if (!stored.ok()) return stored;
  return report;
}

absl::StatusOr<v1::CalibrationReport> RunCalibration(
    store::Store& store, const store::StoreView& view, bool apply,
    const CalibrationBudget& budget, const std::atomic<bool>& cancel) {
  absl::StatusOr<v1::CalibrationReport> report =
      CalibrateOn(view.memories(), view.settings(), view.version(), view.size(),
                  apply, budget, cancel);
  if (!report.ok()) return report.status();
  return StoreReport(store, *std::move(report), apply,
                     view.settings().retrieval);
}

}  // namespace engram::jobs
