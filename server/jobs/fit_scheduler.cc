#include "server/jobs/fit_scheduler.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/base/log.h"
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
    }
    work_.SignalAll();
    stop_.SignalAll();
    changed_.SignalAll();
  }
  for (std::thread& t : threads_) t.join();
}

absl::StatusOr<FitScheduler::Entry*> FitScheduler::EntryFor(
    const std::string& name) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(name);
  if (!found.ok()) return found.status();
  std::shared_ptr<const store::StoreView> view = (*found)->view();
  if (view->settings().feature_map.kind != store::FeatureMapKind::kUhop) {
    return nullptr;
  }
  auto [it, inserted] = entries_.try_emplace(name);
  if (inserted) {
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

void FitScheduler::Changed(Entry& entry) {
  entry.status.generation = ++generation_;
  changed_.SignalAll();
}

void FitScheduler::Enqueue(const std::string& name, Entry& entry) {
  entry.queued = true;
  entry.status.state = FitStatus::State::kPending;
  entry.status.epoch = 0;
  entry.status.error.clear();
  queue_.push_back(name);
  Changed(entry);
  ReportCounts();
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
  if (!entry.ok() || *entry == nullptr) return;
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
    if (view->settings().feature_map.kind == store::FeatureMapKind::kUhop &&
        view->size() != view->fit().patterns_fitted && view->size() >= 2) {
      PatternsAdded(s->name(), view->size());
    }
  }
}

absl::StatusOr<FitStatus> FitScheduler::Status(const std::string& store) {
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  if (*entry == nullptr) {
    return NotConfigured();
  }
  return (*entry)->status;
}

absl::StatusOr<FitStatus> FitScheduler::Start(const std::string& store) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(store);
  if (!found.ok()) return found.status();
  const size_t patterns = (*found)->view()->size();
  MutexLock lock(&mu_);
  absl::StatusOr<Entry*> entry = EntryFor(store);
  if (!entry.ok()) return entry.status();
  if (*entry == nullptr) {
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
  if (*entry == nullptr) {
    return NotConfigured();
  }
  Entry& e = **entry;
  if (e.running && e.cancel) *e.cancel = true;
  if (e.queued && !e.running) {
    e.queued = false;
    e.status.state = FitStatus::State::kCancelled;
    Changed(e);
    ReportCounts();
  }
  e.new_patterns = 0;  // A cancel also drops the debounced automatic fit.
  return e.status;
}

void FitScheduler::StoreDeleted(const std::string& store) {
  MutexLock lock(&mu_);
  auto found = entries_.find(store);
  if (found == entries_.end()) return;
  if (found->second.cancel) *found->second.cancel = true;
  if (!found->second.running) entries_.erase(found);
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
    if (*entry == nullptr) {
      return NotConfigured();
    }
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
        Enqueue(name, entry);
      }
    }
    stop_.WaitWithTimeout(&mu_, options_.tick);
  }
}

void FitScheduler::WorkerLoop() {
  // Fits yield the cores to query threads.
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
  while (true) {
    std::string name;
    {
      MutexLock lock(&mu_);
      while (!stopping_ && queue_.empty()) work_.Wait(&mu_);
      if (stopping_) return;
      name = std::move(queue_.front());
      queue_.pop_front();
    }
    RunFit(name);
  }
}

void FitScheduler::RunFit(const std::string& name) {
  absl::StatusOr<std::shared_ptr<store::Store>> found = registry_->Get(name);
  std::shared_ptr<std::atomic<bool>> cancel =
      std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<const store::StoreView> view;
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
    Changed(e);
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
        auto it = entries_.find(name);
        if (it != entries_.end()) {
          FitStatus& s = it->second.status;
          s.epoch = progress.epoch;
          if (progress.epoch == 1) s.loss_before = progress.loss;
          s.loss_after = progress.loss;  // The running epoch's batch.
          s.duration_seconds = absl::ToDoubleSeconds(absl::Now() - start);
          Changed(it->second);
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
  auto it = entries_.find(name);
  if (it == entries_.end()) return;
  Entry& e = it->second;
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
  if (*cancel && !registry_->Get(name).ok()) {
    entries_.erase(it);  // The store was deleted during the fit.
    changed_.SignalAll();
    ReportCounts();
    return;
  }
  Changed(e);
  ReportCounts();
  if (options_.observer) options_.observer->FitFinished(name, s);
}

}  // namespace engram::jobs
