// What a fit and a calibration do, apart from how they are scheduled
// (job_runner.h): each runs on a snapshot of one store and writes its result
// back through the store.
//
// Thread-safe: each call works on its own snapshot; the store serialises
// the writes.
#ifndef ENGRAM_SERVER_JOBS_JOB_BODIES_H_
#define ENGRAM_SERVER_JOBS_JOB_BODIES_H_

#include <atomic>
#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "engram/v1/engram.pb.h"
#include "server/core/uhop_fit.h"
#include "server/store/store.h"

namespace engram::jobs {

// The core's fit options from a store's feature-map settings.
core::FitOptions FitOptionsFor(const store::FeatureMapSettings& settings);

// Fits the store's U-Hop map on `view` (from the same seeded initial map
// every time, so the same patterns give the same map) and publishes it.
// `progress(epoch, loss)` runs after every epoch; a non-OK status from it
// stops the fit with that status.
absl::StatusOr<store::FitRecord> RunFit(
    store::Store& store, const store::StoreView& view,
    absl::FunctionRef<absl::Status(uint32_t epoch, double loss)> progress);

struct CalibrationBudget {
  int threads = 1;      // Retrieval threads.
  double max_work = 0;  // Multiply-adds (core::CalibrationOptions::max_work).
};

// Calibrates the store on `view` and stores the report with the settings
// (and, if `apply` and it beat the current setting, the setting too, unless
// the retrieval settings changed meanwhile). Stops when `cancel` is set.
// CalibrateOn then StoreReport.
absl::StatusOr<v1::CalibrationReport> RunCalibration(
    store::Store& store, const store::StoreView& view, bool apply,
    const CalibrationBudget& budget, const std::atomic<bool>& cancel);

// A calibration on `memories` (a store's, or a router's sample of a sharded
// store, with features if the store has a map), whose settings are
// `settings`; `store_version` and `pattern_count` go into the report.
// Stores nothing.
absl::StatusOr<v1::CalibrationReport> CalibrateOn(
    const core::MemorySet& memories, const store::StoreSettings& settings,
    uint64_t store_version, uint64_t pattern_count, bool apply,
    const CalibrationBudget& budget, const std::atomic<bool>& cancel);

// Stores `report` with the store's settings, in one durable write with the
// setting it found when it improved and `apply`, unless the store's
// retrieval settings are no longer `calibrated` (those it started from; the
// report then says "not applied"). Returns the report as stored.
absl::StatusOr<v1::CalibrationReport> StoreReport(
    store::Store& store, v1::CalibrationReport report, bool apply,
    const core::RetrievalParams& calibrated);

}  // namespace engram::jobs

#endif  // ENGRAM_SERVER_JOBS_JOB_BODIES_H_
