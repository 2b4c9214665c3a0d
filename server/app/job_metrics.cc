#include "server/app/job_metrics.h"

namespace engram::app {

void JobMetrics::FitCounts(size_t running, size_t pending) {
  metrics_->SetFits(running, pending);
}

void JobMetrics::FitFinished(const v1::FitStatus& status) {
  const char* result = status.state() == v1::FitStatus::SUCCEEDED ? "succeeded"
                       : status.state() == v1::FitStatus::CANCELLED
                           ? "cancelled"
                           : "failed";
  metrics_->RecordFit(status.store(), result, status.duration_seconds(),
                      status.loss_after());
}

void JobMetrics::CalibrationFinished(const v1::CalibrationStatus& status) {
  const v1::CalibrationReport& r = status.report();
  const char* result =
      status.state() == v1::CalibrationStatus::CANCELLED   ? "cancelled"
      : status.state() != v1::CalibrationStatus::SUCCEEDED ? "failed"
      : r.applied()                                        ? "applied"
      : r.improved()                                       ? "reported"
                                                           : "kept";
  metrics_->RecordCalibration(result, r.duration_seconds());
}

void JobMetrics::CalibrationReported(const std::string& store,
                                     const v1::CalibrationReport& r) {
  metrics_->SetCapacity(
      store, {r.recall_at_1(), r.error(), r.well_separated_fraction(),
              r.theory_beta_median(), r.beta()});
}

}  // namespace engram::app
