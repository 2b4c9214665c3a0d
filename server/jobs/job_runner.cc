#include "server/jobs/job_runner.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/base/log.h"
#include "server/base/steady_clock.h"
#include "server/jobs/job_bodies.h"

namespace engram::jobs {

namespace {

using FitState = v1::FitStatus;
using CalibrationState = v1::CalibrationStatus;

const char* KindName(JobKind kind) {
  return kind == JobKind::kFit ? "fit" : "calibration";
}

}  // namespace

absl::Status CheckCanStart(JobKind kind, absl::string_view store, bool uhop,
                           uint64_t patterns) {
  if (kind == JobKind::kFit && !uhop) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store '", store,
        "' has no U-Hop feature map to fit (store.feature_map.kind is NONE)"));
  }
  if (patterns < 2) {
    return absl::FailedPreconditionError(
        absl::StrCat("store '", store, "' holds ", patterns,
                     patterns == 1 ? " pattern" : " patterns", "; a ",
                     KindName(kind), " needs at least 2"));
  }
  return absl::OkStatus();
}

namespace {

// A job's end, as a status state and error.
template <typename Status>
void Ended(const absl::Status& status, Status& out) {
  if (status.ok()) {
    out.set_state(Status::SUCCEEDED);
  } else if (status.code() == absl::StatusCode::kCancelled) {
    out.set_state(Status::CANCELLED);
  } else {
    out.set_state(Status::FAILED);
    out.set_error(std::string(status.message()));
  }
}

}  // namespace

JobRunner::JobRunner(store::StoreRegistry* registry,
                     const JobRunnerOptions& options)
    : registry_(registry), options_(options) {
  threads_.emplace_back([this] { SchedulerLoop(); });
  for (int i = 0; i < std::max(1, options.workers); ++i) {
    threads_.emplace_back([this] { WorkerLoop(); });
  }
}

JobRunner::~JobRunner() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [name, entry] : entries_) {
      for (Slot* slot : {&entry.fit_slot, &entry.calibration_slot}) {
        if (slot->cancel) *slot->cancel = true;
      }
    }
    work_.SignalAll();
    schedule_.SignalAll();
    changed_.SignalAll();
  }
  for (std::thread& t : threads_) t.join();
}

// --- Entries and statuses ---------------------------------------------------

namespace {

// A fit status that says what the store has published.
void SetPublished(const store::FitRecord& r, bool uhop, v1::FitStatus& fit) {
  fit.set_state(!uhop           ? FitState::NOT_CONFIGURED
                : r.version > 0 ? FitState::SUCCEEDED
                                : FitState::IDLE);
  fit.set_epoch(r.epochs);
  fit.set_total_epochs(r.epochs);
  fit.set_loss_before(r.loss_before);
  fit.set_loss_after(r.loss_after);
  fit.set_duration_seconds(r.duration_seconds);
  fit.set_map_version(r.version);
  fit.set_patterns_fitted(r.patterns_fitted);
}

}  // namespace

JobRunner::Entry* JobRunner::Find(const std::string& name, uint64_t serial) {
  auto it = entries_.find(name);
  return it != entries_.end() && it->second.serial == serial ? &it->second
                                                             : nullptr;
}

absl::StatusOr<JobRunner::Entry*> JobRunner::EntryFor(const std::string& name) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(name);
  if (!found.ok()) return found.status();
  auto [it, inserted] = entries_.try_emplace(name);
  if (!inserted) return &it->second;
  // A new entry starts from what the store has published.
  Entry& e = it->second;
  e.serial = ++next_serial_;
  std::shared_ptr<const store::StoreView> view = (*found)->view();
  e.uhop = view->settings().feature_map.kind == store::FeatureMapKind::kUhop;
  e.fit.set_store(name);
  SetPublished(view->fit(), e.uhop, e.fit);
  e.calibration.set_store(name);
  const v1::CalibrationReport& report = view->settings().calibration_report;
  if (report.has_time()) {
    *e.calibration.mutable_report() = report;
    e.calibration.set_state(CalibrationState::SUCCEEDED);
  } else {
    e.calibration.set_state(CalibrationState::IDLE);
  }
  return &e;
}

void JobRunner::Published(JobKind kind, const std::string& store) {
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return;
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(store);
  if (!found.ok()) return;
  std::shared_ptr<const store::StoreView> view = (*found)->view();
  Entry& e = **entry;
  if (kind == JobKind::kFit) {
    SetPublished(view->fit(), e.uhop, e.fit);
  } else {
    *e.calibration.mutable_report() = view->settings().calibration_report;
    e.calibration.set_state(CalibrationState::SUCCEEDED);
    if (options_.observer) {
      options_.observer->CalibrationReported(store, e.calibration.report());
    }
  }
  Changed(e.slot(kind));
}

void JobRunner::Changed(Slot& slot) {
  slot.generation = ++generation_;
  changed_.SignalAll();
  // A store skipped while its fit was queued or running may be due now.
  if (!slot.queued && !slot.running) schedule_.Signal();
}

void JobRunner::ReportCounts() {
  if (!options_.observer) return;
  size_t running = 0, pending = 0;
  for (const auto& [name, entry] : entries_) {
    running += entry.fit_slot.running;
    pending += entry.fit_slot.queued;
  }
  options_.observer->FitCounts(running, pending);
}

absl::StatusOr<v1::FitStatus> JobRunner::FitStatus(const std::string& store) {
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  return (*entry)->fit;
}

absl::StatusOr<v1::CalibrationStatus> JobRunner::CalibrationStatus(
    const std::string& store) {
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  return (*entry)->calibration;
}

absl::StatusOr<uint64_t> JobRunner::Generation(JobKind kind,
                                               const std::string& store) {
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  return (*entry)->slot(kind).generation;
}

absl::StatusOr<uint64_t> JobRunner::WaitForChange(JobKind kind,
                                                  const std::string& store,
                                                  uint64_t after,
                                                  absl::Duration timeout) {
  MutexLock lock(&mu_);
  // The store's generation of `kind`, or why there is none (the store gone).
  absl::StatusOr<uint64_t> generation;
  changed_.AwaitWithTimeout(
      &mu_,
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        absl::StatusOr<Entry*> entry = EntryFor(store);
        if (!entry.ok()) {
          generation = entry.status();
          return true;
        }
        generation = (*entry)->slot(kind).generation;
        return *generation > after || stopping_;
      },
      timeout);
  return generation;
}

// --- What starts and stops jobs ---------------------------------------------

void JobRunner::Enqueue(JobKind kind, const std::string& name, Entry& entry) {
  Slot& slot = entry.slot(kind);
  if (slot.queued) return;
  slot.queued = true;
  if (kind == JobKind::kFit) {
    entry.fit.set_state(FitState::PENDING);
    entry.fit.set_epoch(0);
    entry.fit.clear_error();
    ReportCounts();
  } else {
    entry.calibration.set_state(CalibrationState::PENDING);
    entry.calibration.clear_error();
  }
  Changed(slot);
  queue_.push_back({kind, name, entry.serial});
  work_.Signal();
}

void JobRunner::PatternsAdded(const std::string& store, size_t count) {
  if (!options_.automatic) return;
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return;
  (*entry)->new_patterns += count;
  (*entry)->last_add = SteadyNow();
  // Else the scheduler wakes at the debounce it knows of, and finds it
  // moved by this add.
  if (!(*entry)->awaited) schedule_.Signal();
}

void JobRunner::ResumeAll() {
  bool more = false;
  absl::StatusOr<std::vector<std::shared_ptr<store::Store>>> stores =
      registry_->List("", ~size_t{0}, more);
  if (!stores.ok()) return;
  for (const auto& s : *stores) {
    std::shared_ptr<const store::StoreView> view = s->view();
    const store::StoreSettings& settings = view->settings();
    const bool uhop = settings.feature_map.kind == store::FeatureMapKind::kUhop;
    const uint64_t seen = uhop ? view->fit().patterns_fitted
                               : settings.calibration_report.pattern_count();
    if (view->size() >= 2 && view->size() != seen &&
        (uhop || settings.calibration.automatic)) {
      PatternsAdded(s->name(), view->size());
    }
    if (options_.observer && settings.calibration_report.has_time()) {
      options_.observer->CalibrationReported(s->name(),
                                             settings.calibration_report);
    }
  }
}

absl::Status JobRunner::Start(JobKind kind, const std::string& store,
                              std::optional<bool> apply) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(store);
  if (!found.ok()) return found.status();
  const size_t patterns = (*found)->view()->size();
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  if (absl::Status can = CheckCanStart(kind, store, (*entry)->uhop, patterns);
      !can.ok()) {
    return can;
  }
  Slot& slot = (*entry)->slot(kind);
  if (kind == JobKind::kCalibration) slot.apply = apply;
  if (!slot.running) {
    Enqueue(kind, store, **entry);
  } else if (slot.cancel && *slot.cancel) {
    slot.restart = true;  // The cancelled one ends first (Restart).
  }
  return absl::OkStatus();
}

absl::Status JobRunner::Cancel(JobKind kind, const std::string& store) {
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  Entry& e = **entry;
  Slot& slot = e.slot(kind);
  if (slot.running && slot.cancel) *slot.cancel = true;
  if (slot.queued && !slot.running) {
    slot.queued = false;
    if (kind == JobKind::kFit) {
      e.fit.set_state(FitState::CANCELLED);
      ReportCounts();
    } else {
      e.calibration.set_state(CalibrationState::CANCELLED);
    }
    Changed(slot);
  }
  e.new_patterns = 0;  // A cancel also drops the debounced automatic start.
  return absl::OkStatus();
}

void JobRunner::StoreDeleted(const std::string& store) {
  MutexLock lock(&mu_);
  auto found = entries_.find(store);
  if (found == entries_.end()) return;
  for (Slot* slot :
       {&found->second.fit_slot, &found->second.calibration_slot}) {
    if (slot->cancel) *slot->cancel = true;
  }
  // Running jobs hold their cancel flags and find no entry of their serial
  // when they end: a store created again under the name starts IDLE.
  entries_.erase(found);
  changed_.SignalAll();
  ReportCounts();
}

void JobRunner::SchedulerLoop() {
  MutexLock lock(&mu_);
  while (!stopping_) {
    const absl::Time now = SteadyNow();
    absl::Time wake = absl::InfiniteFuture();  // Nothing due: adds wake it.
    for (auto& [name, entry] : entries_) {
      entry.awaited = false;
      if (entry.new_patterns == 0 || entry.fit_slot.queued ||
          entry.fit_slot.running) {
        continue;  // An add or the fit's end (Changed) wakes the loop.
      }
      absl::StatusOr<std::shared_ptr<store::Store>> found =
          registry_->Get(name);
      if (!found.ok()) continue;
      std::shared_ptr<const store::StoreView> view = (*found)->view();
      const store::StoreSettings& settings = view->settings();
      const store::FeatureMapSettings& f = settings.feature_map;
      if (entry.new_patterns < std::max<uint32_t>(1, f.min_new_patterns) ||
          view->size() < 2) {
        wake = std::min(wake, now + options_.recheck);
        continue;
      }
      const absl::Time due = entry.last_add + absl::Milliseconds(f.debounce_ms);
      if (now < due) {
        entry.awaited = true;
        wake = std::min(wake, due);
        continue;
      }
      if (entry.uhop) {
        Enqueue(JobKind::kFit, name, entry);  // Calibrates after, if automatic.
      } else {
        entry.new_patterns = 0;
        if (settings.calibration.automatic) {
          Enqueue(JobKind::kCalibration, name, entry);
        }
      }
    }
    if (wake == absl::InfiniteFuture()) {
      schedule_.Wait(&mu_);
    } else {
      schedule_.WaitWithTimeout(&mu_, wake - SteadyNow());
    }
  }
}

// --- Running jobs -----------------------------------------------------------

void JobRunner::WorkerLoop() {
  // Jobs yield the cores to query threads.
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
  while (true) {
    Queued job;
    {
      MutexLock lock(&mu_);
      while (!stopping_ && queue_.empty()) work_.Wait(&mu_);
      if (stopping_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    if (job.kind == JobKind::kFit) {
      RunFit(job);
    } else {
      RunCalibration(job);
    }
  }
}

void JobRunner::ReclaimExpired(const std::string& name) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(name);
  if (found.ok()) (*found)->ReclaimExpired().IgnoreError();
}

std::shared_ptr<const store::StoreView> JobRunner::Claim(
    const Queued& job, std::shared_ptr<std::atomic<bool>>& cancel,
    std::shared_ptr<store::Store>& store) {
  Entry* e = Find(job.store, job.serial);
  if (e == nullptr || !e->slot(job.kind).queued) return nullptr;  // Cancelled.
  Slot& slot = e->slot(job.kind);
  slot.queued = false;
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(job.store);
  if (!found.ok()) return nullptr;
  slot.running = true;
  cancel = std::make_shared<std::atomic<bool>>(false);
  slot.cancel = cancel;
  store = *found;
  std::shared_ptr<const store::StoreView> view = store->view();
  if (job.kind == JobKind::kFit) {
    e->new_patterns = 0;  // Adds from here on count toward the next fit.
    e->fit.set_state(FitState::RUNNING);
    e->fit.set_epoch(0);
    e->fit.set_total_epochs(view->settings().feature_map.epochs);
    e->fit.set_loss_before(0);
    e->fit.set_loss_after(0);
    e->fit.set_duration_seconds(0);
    e->fit.clear_error();
    ReportCounts();
  } else {
    e->calibration.set_state(CalibrationState::RUNNING);
  }
  Changed(slot);
  return view;
}

void JobRunner::RunFit(const Queued& job) {
  std::shared_ptr<std::atomic<bool>> cancel;
  std::shared_ptr<const store::StoreView> view;
  std::shared_ptr<store::Store> store;
  ReclaimExpired(job.store);
  {
    MutexLock lock(&mu_);
    view = Claim(job, cancel, store);
    if (view == nullptr) return;
  }
  const absl::Time start = SteadyNow();
  absl::StatusOr<store::FitRecord> record =
      jobs::RunFit(*store, *view, [&](uint32_t epoch, double loss) {
        MutexLock lock(&mu_);
        if (*cancel || stopping_) return absl::CancelledError("fit cancelled");
        if (Entry* e = Find(job.store, job.serial)) {
          if (epoch == 1) e->fit.set_loss_before(loss);
          e->fit.set_epoch(epoch);
          e->fit.set_loss_after(loss);  // The running epoch's batch.
          e->fit.set_duration_seconds(SecondsSince(start));
          Changed(e->fit_slot);
        }
        return absl::OkStatus();
      });
  MutexLock lock(&mu_);
  Entry* e = Find(job.store, job.serial);
  if (e == nullptr) {  // The store was deleted during the fit.
    ReportCounts();
    return;
  }
  e->fit_slot.running = false;
  e->fit_slot.cancel.reset();
  v1::FitStatus& s = e->fit;
  s.set_duration_seconds(SecondsSince(start));
  Ended(record.status(), s);
  if (record.ok()) {
    s.set_map_version(record->version);
    s.set_patterns_fitted(record->patterns_fitted);
    s.set_loss_before(record->loss_before);
    s.set_loss_after(record->loss_after);
    Log(LogLevel::kInfo,
        "fit of store '%s': map v%u from %u patterns, %u epochs, loss %.4f -> "
        "%.4f in %.2fs",
        job.store, record->version, record->patterns_fitted, record->epochs,
        record->loss_before, record->loss_after, s.duration_seconds());
  } else if (s.state() == FitState::FAILED) {
    Log(LogLevel::kWarning, "fit of store '%s' failed: %s", job.store,
        record.status().ToString());
  }
  Changed(e->fit_slot);
  ReportCounts();
  if (options_.observer) options_.observer->FitFinished(s);
  if (record.ok() && view->settings().calibration.automatic) {
    Enqueue(JobKind::kCalibration, job.store, *e);
  }
  Restart(JobKind::kFit, job.store, *e);
}

void JobRunner::Restart(JobKind kind, const std::string& store, Entry& entry) {
  Slot& slot = entry.slot(kind);
  if (!slot.restart) return;
  slot.restart = false;
  Enqueue(kind, store, entry);
}

void JobRunner::RunCalibration(const Queued& job) {
  std::shared_ptr<std::atomic<bool>> cancel;
  std::shared_ptr<const store::StoreView> view;
  std::shared_ptr<store::Store> store;
  bool apply = false;
  ReclaimExpired(job.store);
  {
    MutexLock lock(&mu_);
    view = Claim(job, cancel, store);
    if (view == nullptr) return;
    Slot& slot = Find(job.store, job.serial)->calibration_slot;
    apply = slot.apply.value_or(view->settings().calibration.apply);
    slot.apply.reset();
  }
  const CalibrationBudget budget{options_.calibration_threads,
                                 options_.max_calibration_work};
  absl::StatusOr<v1::CalibrationReport> report =
      jobs::RunCalibration(*store, *view, apply, budget, *cancel);
  MutexLock lock(&mu_);
  Entry* e = Find(job.store, job.serial);
  if (e == nullptr) return;  // The store was deleted during the calibration.
  e->calibration_slot.running = false;
  e->calibration_slot.cancel.reset();
  v1::CalibrationStatus& c = e->calibration;
  Ended(report.status(), c);
  if (report.ok()) {
    *c.mutable_report() = *report;
    Log(LogLevel::kInfo,
        "calibration of store '%s': %s %s beta %.4g (error %.4g -> %.4g, "
        "recall@1 %.3f -> %.3f, %u candidates, %.2fs)%s",
        job.store, v1::Similarity_Name(report->similarity()),
        v1::Separation_Name(report->separation()), report->beta(),
        report->previous_error(), report->error(),
        report->previous_recall_at_1(), report->recall_at_1(),
        report->candidates(), report->duration_seconds(),
        report->applied() ? ", applied" : "");
  } else if (c.state() == CalibrationState::FAILED) {
    Log(LogLevel::kWarning, "calibration of store '%s' failed: %s", job.store,
        report.status().ToString());
  }
  Changed(e->calibration_slot);
  if (options_.observer) {
    options_.observer->CalibrationFinished(c);
    if (report.ok()) options_.observer->CalibrationReported(job.store, *report);
  }
  Restart(JobKind::kCalibration, job.store, *e);
}

}  // namespace engram::jobs
