#include "server/jobs/fit_scheduler.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/base/log.h"
#include "server/core/calibration.h"
#include "server/core/uhop_fit.h"

namespace engram::jobs {

namespace {

core::FitOptions OptionsFor(const store::StoreSettings& settings) {
  const store::FeatureMapSettings& f = settings.feature_map;
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

FitStatus NotConfigured() {
  FitStatus s;
  s.state = FitStatus::State::kNotConfigured;
  return s;
}

}  // namespace

FitScheduler::FitScheduler(store::StoreRegistry* registry,
                           const FitSchedulerOptions& options)
    : registry_(registry), options_(options) {
  threads_.emplace_back([this] { SchedulerLoop(); });
  for (int i = 0; i < std::max(1, options.workers); ++i) {
    threads_.emplace_back([this] { WorkerLoop(); });
  }
}

FitScheduler::~FitScheduler() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [name, entry] : entries_) {
      if (entry.cancel) *entry.cancel = true;
      if (entry.calibration_cancel) *entry.calibration_cancel = true;
    }
    work_.SignalAll();
    stop_.SignalAll();
    changed_.SignalAll();
  }
  for (std::thread& t : threads_) t.join();
}

FitScheduler::Entry* FitScheduler::Find(const std::string& name,
                                        uint64_t serial) {
  auto it = entries_.find(name);
  return it != entries_.end() && it->second.serial == serial ? &it->second
                                                             : nullptr;
}

absl::StatusOr<FitScheduler::Entry*> FitScheduler::EntryFor(
    const std::string& name) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(name);
  if (!found.ok()) return found.status();
  std::shared_ptr<const store::StoreView> view = (*found)->view();
  auto [it, inserted] = entries_.try_emplace(name);
  if (inserted) {
    it->second.serial = ++next_serial_;
    it->second.uhop =
        view->settings().feature_map.kind == store::FeatureMapKind::kUhop;
    it->second.calibration.report = view->settings().calibration_report;
    if (it->second.calibration.report.time != absl::InfinitePast()) {
      it->second.calibration.state = CalibrationStatus::State::kSucceeded;
    }
    const store::FitRecord& r = view->fit();
    FitStatus& s = it->second.status;
    s.state =
        r.version > 0 ? FitStatus::State::kSucceeded : FitStatus::State::kIdle;
    s.epoch = s.total_epochs = r.epochs;
    s.loss_before = r.loss_before;
    s.loss_after = r.loss_after;
    s.duration_seconds = r.duration_seconds;
    s.map_version = r.version;
    s.patterns_fitted = r.patterns_fitted;
  }
  return &it->second;
}

void FitScheduler::Changed(uint64_t& generation) {
  generation = ++generation_;
  changed_.SignalAll();
}

void FitScheduler::Enqueue(const std::string& name, Entry& entry) {
  entry.queued = true;
  entry.status.state = FitStatus::State::kPending;
  entry.status.epoch = 0;
  entry.status.error.clear();
  queue_.emplace_back(name, Job::kFit);
  Changed(entry.status.generation);
  ReportCounts();
  work_.Signal();
}

void FitScheduler::EnqueueCalibration(const std::string& name, Entry& entry) {
  if (entry.calibration_queued) return;
  entry.calibration_queued = true;
  entry.calibration.state = CalibrationStatus::State::kPending;
  entry.calibration.error.clear();
  Changed(entry.calibration.generation);
  queue_.emplace_back(name, Job::kCalibrate);
  work_.Signal();
}

void FitScheduler::ReportCounts() {
  if (!options_.observer) return;
  size_t running = 0, pending = 0;
  for (const auto& [name, entry] : entries_) {
    running += entry.running;
    pending += entry.queued;
  }
  options_.observer->FitCounts(running, pending);
}

void FitScheduler::PatternsAdded(const std::string& store, size_t count) {
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return;
  (*entry)->new_patterns += count;
  (*entry)->last_add = absl::Now();
}

void FitScheduler::ResumeAll() {
  bool more = false;
  absl::StatusOr<std::vector<std::shared_ptr<store::Store>>> stores =
      registry_->List("", ~size_t{0}, more);
  if (!stores.ok()) return;
  for (const auto& s : *stores) {
    std::shared_ptr<const store::StoreView> view = s->view();
    const store::StoreSettings& settings = view->settings();
    if (settings.feature_map.kind == store::FeatureMapKind::kUhop &&
        view->size() != view->fit().patterns_fitted && view->size() >= 2) {
      PatternsAdded(s->name(), view->size());
    } else if (settings.feature_map.kind != store::FeatureMapKind::kUhop &&
               settings.calibration.automatic &&
               view->size() != settings.calibration_report.patterns &&
               view->size() >= 2) {
      PatternsAdded(s->name(), view->size());
    }
    if (options_.observer &&
        settings.calibration_report.time != absl::InfinitePast()) {
      options_.observer->CalibrationReported(s->name(),
                                             settings.calibration_report);
    }
  }
}

absl::StatusOr<FitStatus> FitScheduler::Status(const std::string& store) {
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  if (!(*entry)->uhop) return NotConfigured();
  return (*entry)->status;
}

absl::StatusOr<FitStatus> FitScheduler::Start(const std::string& store) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(store);
  if (!found.ok()) return found.status();
  const size_t patterns = (*found)->view()->size();
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  if (!(*entry)->uhop) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store '", store,
        "' has no U-Hop feature map (store.feature_map.kind is NONE)"));
  }
  if (patterns < 2) {
    return absl::FailedPreconditionError(
        absl::StrCat("store '", store, "' holds ", patterns,
                     " patterns; a fit needs at least 2"));
  }
  if (!(*entry)->queued && !(*entry)->running) Enqueue(store, **entry);
  return (*entry)->status;
}

absl::StatusOr<FitStatus> FitScheduler::Cancel(const std::string& store) {
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  if (!(*entry)->uhop) return NotConfigured();
  Entry& e = **entry;
  if (e.running && e.cancel) *e.cancel = true;
  if (e.queued && !e.running) {
    e.queued = false;
    e.status.state = FitStatus::State::kCancelled;
    Changed(e.status.generation);
    ReportCounts();
  }
  e.new_patterns = 0;  // A cancel also drops the debounced automatic fit.
  return e.status;
}

void FitScheduler::StoreDeleted(const std::string& store) {
  MutexLock lock(&mu_);
  auto found = entries_.find(store);
  if (found == entries_.end()) return;
  Entry& e = found->second;
  if (e.cancel) *e.cancel = true;
  if (e.calibration_cancel) *e.calibration_cancel = true;
  // Running jobs hold their cancel flags and find no entry of their serial
  // when they end: a store created again under the name starts IDLE.
  entries_.erase(found);
  changed_.SignalAll();
  ReportCounts();
}

absl::StatusOr<FitStatus> FitScheduler::WaitForChange(const std::string& store,
                                                      uint64_t after,
                                                      absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  MutexLock lock(&mu_);
  while (true) {
    absl::StatusOr<Entry*> entry = EntryFor(store);
    if (!entry.ok()) return entry.status();
    if (!(*entry)->uhop) return NotConfigured();
    if ((*entry)->status.generation > after || stopping_) {
      return (*entry)->status;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return (*entry)->status;
    changed_.WaitWithTimeout(&mu_, left);
  }
}

void FitScheduler::SchedulerLoop() {
  MutexLock lock(&mu_);
  while (!stopping_) {
    const absl::Time now = absl::Now();
    for (auto& [name, entry] : entries_) {
      if (entry.queued || entry.running || entry.new_patterns == 0) continue;
      absl::StatusOr<std::shared_ptr<store::Store>> found =
          registry_->Get(name);
      if (!found.ok()) continue;
      std::shared_ptr<const store::StoreView> view = (*found)->view();
      const store::FeatureMapSettings& f = view->settings().feature_map;
      if (entry.new_patterns >= std::max<uint32_t>(1, f.min_new_patterns) &&
          now - entry.last_add >= absl::Milliseconds(f.debounce_ms) &&
          view->size() >= 2) {
        if (entry.uhop) {
          Enqueue(name, entry);  // Calibrates after the fit if automatic.
        } else {
          entry.new_patterns = 0;
          if (view->settings().calibration.automatic) {
            EnqueueCalibration(name, entry);
          }
        }
      }
    }
    stop_.WaitWithTimeout(&mu_, options_.tick);
  }
}

void FitScheduler::WorkerLoop() {
  // Fits yield the cores to query threads.
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
  while (true) {
    std::pair<std::string, Job> job;
    {
      MutexLock lock(&mu_);
      while (!stopping_ && queue_.empty()) work_.Wait(&mu_);
      if (stopping_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    if (job.second == Job::kFit) {
      RunFit(job.first);
    } else {
      RunCalibration(job.first);
    }
  }
}

void FitScheduler::RunFit(const std::string& name) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(name);
  std::shared_ptr<std::atomic<bool>> cancel =
      std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<const store::StoreView> view;
  uint64_t serial = 0;
  {
    MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end() || !it->second.queued) return;  // Cancelled.
    Entry& e = it->second;
    e.queued = false;
    if (!found.ok()) {
      entries_.erase(it);
      return;
    }
    serial = e.serial;
    view = (*found)->view();
    e.running = true;
    e.cancel = cancel;
    e.new_patterns = 0;  // Adds from here on count toward the next fit.
    e.status.state = FitStatus::State::kRunning;
    e.status.epoch = 0;
    e.status.total_epochs = view->settings().feature_map.epochs;
    e.status.loss_before = e.status.loss_after = 0;
    e.status.duration_seconds = 0;
    e.status.error.clear();
    Changed(e.status.generation);
    ReportCounts();
  }
  const store::StoreSettings& settings = view->settings();
  const absl::Time start = absl::Now();
  const size_t p = store::FeatureDim(settings);
  // Every fit starts from the same seeded W (the reference's randn init), so
  // the same patterns give the same map.
  const core::FeatureMap initial = core::FeatureMap::RandomNormal(
      settings.dimension, p, settings.feature_map.seed);
  absl::StatusOr<core::FitResult> fit = core::FitFeatureMap(
      view->memories(), initial, OptionsFor(settings),
      [&](const core::FitProgress& progress) -> absl::Status {
        MutexLock lock(&mu_);
        if (*cancel || stopping_) return absl::CancelledError("fit cancelled");
        if (Entry* e = Find(name, serial)) {
          FitStatus& s = e->status;
          s.epoch = progress.epoch;
          if (progress.epoch == 1) s.loss_before = progress.loss;
          s.loss_after = progress.loss;  // The running epoch's batch.
          s.duration_seconds = absl::ToDoubleSeconds(absl::Now() - start);
          Changed(s.generation);
        }
        return absl::OkStatus();
      });
  absl::Status status = fit.status();
  store::FitRecord record;
  if (status.ok()) {
    record.version = (*found)->view()->fit().version + 1;
    record.loss_before = fit->loss_before;
    record.loss_after = fit->loss_after;
    record.epochs = fit->epochs;
    record.duration_seconds = absl::ToDoubleSeconds(absl::Now() - start);
    record.patterns_fitted = view->size();
    status = (*found)->PublishMap(
        std::make_shared<core::FeatureMap>(std::move(fit->map)), record);
  }
  MutexLock lock(&mu_);
  Entry* found_entry = Find(name, serial);
  if (found_entry == nullptr) {  // The store was deleted during the fit.
    ReportCounts();
    return;
  }
  Entry& e = *found_entry;
  e.running = false;
  e.cancel.reset();
  FitStatus& s = e.status;
  s.duration_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (status.ok()) {
    s.state = FitStatus::State::kSucceeded;
    s.map_version = record.version;
    s.patterns_fitted = record.patterns_fitted;
    s.loss_before = record.loss_before;
    s.loss_after = record.loss_after;
    Log(LogLevel::kInfo,
        "fit of store '%s': map v%u from %u patterns, %u epochs, loss %.4f -> "
        "%.4f in %.2fs",
        name, record.version, record.patterns_fitted, record.epochs,
        record.loss_before, record.loss_after, s.duration_seconds);
  } else if (status.code() == absl::StatusCode::kCancelled) {
    s.state = FitStatus::State::kCancelled;
  } else {
    s.state = FitStatus::State::kFailed;
    s.error = std::string(status.message());
    Log(LogLevel::kWarning, "fit of store '%s' failed: %s", name,
        status.ToString());
  }
  Changed(e.status.generation);
  ReportCounts();
  if (options_.observer) options_.observer->FitFinished(name, s);
  if (status.ok() && view->settings().calibration.automatic) {
    EnqueueCalibration(name, e);
  }
}

absl::StatusOr<CalibrationStatus> FitScheduler::StartCalibration(
    const std::string& store, std::optional<bool> apply) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(store);
  if (!found.ok()) return found.status();
  const size_t patterns = (*found)->view()->size();
  if (patterns < 2) {
    return absl::FailedPreconditionError(
        absl::StrCat("store '", store, "' holds ", patterns,
                     " patterns; calibration needs at least 2"));
  }
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  Entry& e = **entry;
  if (!e.calibration_queued) e.calibration_apply = apply;
  EnqueueCalibration(store, e);
  return e.calibration;
}

absl::StatusOr<CalibrationStatus> FitScheduler::Calibration(
    const std::string& store) {
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  return (*entry)->calibration;
}

namespace {

core::CalibrationOptions CalibrationOptionsFor(
    const store::CalibrationSettings& c, const FitSchedulerOptions& options) {
  core::CalibrationOptions o;
  o.corruption = c.corruption;
  o.level = c.level;
  o.search_similarity = c.search_similarity;
  o.search_separation = c.search_separation;
  o.sample_size = c.sample_size;
  o.seed = c.seed;
  o.max_work = options.max_calibration_work;
  o.retrieval.threads = std::max(1, options.calibration_threads);
  return o;
}

bool SameRetrieval(const core::RetrievalParams& a,
                   const core::RetrievalParams& b) {
  return a.similarity == b.similarity && a.separation == b.separation &&
         a.beta == b.beta && a.steps == b.steps && a.eps == b.eps;
}

}  // namespace

void FitScheduler::RunCalibration(const std::string& name) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(name);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  std::optional<bool> apply_override;
  uint64_t serial = 0;
  {
    MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end() || !it->second.calibration_queued) return;
    Entry& e = it->second;
    e.calibration_queued = false;
    if (!found.ok()) {
      if (!e.running) entries_.erase(it);
      return;
    }
    serial = e.serial;
    e.calibration_running = true;
    e.calibration_cancel = cancel;
    apply_override = e.calibration_apply;
    e.calibration_apply.reset();
    e.calibration.state = CalibrationStatus::State::kRunning;
    Changed(e.calibration.generation);
  }
  const std::shared_ptr<const store::StoreView> view = (*found)->view();
  const store::StoreSettings& settings = view->settings();
  const bool apply = apply_override.value_or(settings.calibration.apply);
  core::CalibrationOptions options =
      CalibrationOptionsFor(settings.calibration, options_);
  options.retrieval.check = [cancel]() -> absl::Status {
    if (*cancel) return absl::CancelledError("calibration cancelled");
    return absl::OkStatus();
  };
  const absl::Time start = absl::Now();
  absl::StatusOr<core::CalibrationResult> result =
      core::Calibrate(view->memories(), settings.retrieval, options);
  absl::Status status = result.status();
  store::CalibrationReport report;
  if (status.ok()) {
    const core::CalibrationResult& r = *result;
    report.time = absl::Now();
    report.store_version = view->version();
    report.patterns = view->size();
    report.corruption = options.corruption;
    report.level = options.level;
    report.similarity = r.best.params.similarity;
    report.separation = r.best.params.separation;
    report.beta = r.best.params.beta;
    report.error = r.best.error;
    report.recall_at_1 = r.best.recall_at_1;
    report.previous_error = r.current.error;
    report.previous_recall_at_1 = r.current.recall_at_1;
    report.improved = r.improved;
    report.well_separated_fraction = r.well_separated_fraction;
    report.theory_beta_median = r.theory_beta_median;
    report.theory_beta_p90 = r.theory_beta_p90;
    report.sample_size = static_cast<uint32_t>(r.sample_size);
    report.memories_used = r.memories_used;
    report.candidates = static_cast<uint32_t>(r.evaluated.size());
    report.duration_seconds = absl::ToDoubleSeconds(report.time - start);
    if (!r.improved) {
      report.detail = "no setting beat the current one";
    } else if (!apply) {
      report.detail = "reported only (store.calibration.apply is false)";
    }
    // The report and the setting it applies, in one durable write, unless
    // someone changed the retrieval settings since the snapshot.
    status = (*found)->UpdateSettings([&](store::StoreSettings& s) {
      if (r.improved && apply) {
        if (SameRetrieval(s.retrieval, settings.retrieval)) {
          s.retrieval.similarity = r.best.params.similarity;
          s.retrieval.separation = r.best.params.separation;
          s.retrieval.beta = r.best.params.beta;
          report.applied = true;
        } else {
          report.detail =
              "not applied: the retrieval settings changed during "
              "calibration";
        }
      }
      s.calibration_report = report;
      return absl::OkStatus();
    });
  }
  MutexLock lock(&mu_);
  Entry* found_entry = Find(name, serial);
  if (found_entry == nullptr) return;  // Deleted during the calibration.
  Entry& e = *found_entry;
  e.calibration_running = false;
  e.calibration_cancel.reset();
  CalibrationStatus& c = e.calibration;
  if (status.ok()) {
    c.state = CalibrationStatus::State::kSucceeded;
    c.report = report;
    Log(LogLevel::kInfo,
        "calibration of store '%s': %s %s beta %.4g (error %.4g -> %.4g, "
        "recall@1 %.3f -> %.3f, %u candidates, %.2fs)%s",
        name, core::SimilarityName(report.similarity),
        core::SeparationName(report.separation), report.beta,
        report.previous_error, report.error, report.previous_recall_at_1,
        report.recall_at_1, report.candidates, report.duration_seconds,
        report.applied ? ", applied" : "");
  } else if (status.code() == absl::StatusCode::kCancelled) {
    c.state = CalibrationStatus::State::kCancelled;
  } else {
    c.state = CalibrationStatus::State::kFailed;
    c.error = std::string(status.message());
    Log(LogLevel::kWarning, "calibration of store '%s' failed: %s", name,
        status.ToString());
  }
  Changed(c.generation);
  if (!options_.observer) return;
  options_.observer->CalibrationFinished(name, c);
  if (status.ok()) options_.observer->CalibrationReported(name, report);
}

}  // namespace engram::jobs
