// Reports what the job runner does as metrics: fits running and pending,
// every finished fit and calibration, and each store's capacity figures.
//
// Thread-safe: metrics::Metrics is.
#ifndef ENGRAM_SERVER_APP_JOB_METRICS_H_
#define ENGRAM_SERVER_APP_JOB_METRICS_H_

#include <string>

#include "server/jobs/job_runner.h"
#include "server/metrics/metrics.h"

namespace engram::app {

class JobMetrics : public jobs::JobObserver {
 public:
  // Borrowed; must outlive this.
  explicit JobMetrics(metrics::Metrics* metrics) : metrics_(metrics) {}

  void FitCounts(size_t running, size_t pending) override;
  void FitFinished(const v1::FitStatus& status) override;
  void CalibrationFinished(const v1::CalibrationStatus& status) override;
  void CalibrationReported(const std::string& store,
                           const v1::CalibrationReport& report) override;

 private:
  metrics::Metrics* const metrics_;
};

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_JOB_METRICS_H_
