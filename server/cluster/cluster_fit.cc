#include "server/cluster/cluster_fit.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/cluster/shard_calls.h"
#include "server/core/feature_map.h"
#include "server/core/uhop_fit.h"
#include "server/jobs/job_bodies.h"
#include "server/store/settings.h"

namespace engram::cluster {

namespace api = engram::v1;

namespace {

// n split over groups holding counts[g] patterns, in proportion, by the
// largest remainders.
std::vector<uint64_t> Shares(const std::vector<uint64_t>& counts, uint64_t n) {
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  std::vector<uint64_t> shares(counts.size());
  std::vector<std::pair<double, size_t>> remainders;
  uint64_t given = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    const double exact = static_cast<double>(n) * counts[g] / total;
    shares[g] = std::min<uint64_t>(counts[g], static_cast<uint64_t>(exact));
    given += shares[g];
    remainders.push_back({exact - shares[g], g});
  }
  std::sort(
      remainders.begin(), remainders.end(), [](const auto& a, const auto& b) {
        return a.first != b.first ? a.first > b.first : a.second < b.second;
      });
  for (size_t i = 0; given < n && i < remainders.size(); ++i) {
    const size_t g = remainders[i].second;
    if (shares[g] < counts[g]) {
      ++shares[g];
      ++given;
    }
  }
  return shares;
}

}  // namespace

ClusterFits::~ClusterFits() {
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, job] : jobs_) {
      job->cancel = true;
      if (job->thread.joinable()) threads.push_back(std::move(job->thread));
    }
  }
  for (std::thread& t : threads) t.join();
}

absl::StatusOr<api::FitStatus> ClusterFits::Start(const api::Store& merged) {
  const std::string& name = merged.name();
  if (merged.feature_map().kind() != api::UHOP) {
    return absl::FailedPreconditionError(
        absl::StrCat("store '", name,
                     "' has no U-Hop feature map to fit (feature_map.kind)"));
  }
  if (merged.pattern_count() < 2) {
    return absl::FailedPreconditionError(
        absl::StrCat("store '", name, "' has ", merged.pattern_count(),
                     " patterns; a fit needs at least 2"));
  }
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Job>& slot = jobs_[name];
  if (slot != nullptr && !slot->done) return slot->status;
  if (slot != nullptr && slot->thread.joinable()) {
    slot->thread.join();  // Done: it takes the lock no more.
  }
  slot = std::make_unique<Job>();
  Job* job = slot.get();
  job->status.set_store(name);
  job->status.set_state(api::FitStatus::RUNNING);
  job->status.set_total_epochs(merged.feature_map().epochs());
  job->status.set_map_version(merged.fit().map_version());
  job->generation = ++generation_;
  job->thread = std::thread(&ClusterFits::Run, this, merged, job);
  return job->status;
}

absl::StatusOr<api::FitStatus> ClusterFits::Cancel(const std::string& store) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(store);
  if (it == jobs_.end() || it->second->done) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no fit of store '", store, "' is running on this router"));
  }
  it->second->cancel = true;
  return it->second->status;
}

std::optional<api::FitStatus> ClusterFits::Status(const std::string& store,
                                                  uint64_t* generation) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(store);
  if (it == jobs_.end()) return std::nullopt;
  if (generation != nullptr) *generation = it->second->generation;
  return it->second->status;
}

uint64_t ClusterFits::WaitForChange(const std::string& store, uint64_t after,
                                    absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = jobs_.find(store);
    return it == jobs_.end() || it->second->generation != after;
  };
  mu_.AwaitWithTimeout(absl::Condition(&changed), timeout);
  auto it = jobs_.find(store);
  return it == jobs_.end() ? after : it->second->generation;
}

void ClusterFits::Update(Job* job,
                         const std::function<void(api::FitStatus&)>& f) {
  absl::MutexLock lock(&mu_);
  f(job->status);
  job->generation = ++generation_;
}

void ClusterFits::Run(api::Store merged, Job* job) {
  const absl::Status status = Fit(merged, job);
  absl::MutexLock lock(&mu_);
  if (status.ok()) {
    job->status.set_state(api::FitStatus::SUCCEEDED);
  } else {
    job->status.set_state(absl::IsCancelled(status) ? api::FitStatus::CANCELLED
                                                    : api::FitStatus::FAILED);
    job->status.set_error(std::string(status.message()));
  }
  job->generation = ++generation_;
  job->done = true;  // The last time this thread takes the lock.
}

absl::Status ClusterFits::Fit(const api::Store& merged, Job* job) {
  const std::string& name = merged.name();
  absl::StatusOr<store::StoreSettings> settings =
      store::SettingsFromProto(merged, /*fill_defaults=*/false);
  if (!settings.ok()) return settings.status();
  const size_t d = settings->dimension;
  const uint32_t groups = pool_->groups();
  const absl::Time deadline = absl::Now() + absl::Minutes(5);
  const absl::Time start = absl::Now();
  // Each group's patterns now.
  std::vector<uint64_t> counts(groups);
  absl::Status status = FirstError(InParallel(groups, [&](size_t g) {
    absl::StatusOr<const Replica*> r = pool_->Pick(static_cast<uint32_t>(g));
    if (!r.ok()) return r.status();
    api::GetStoreRequest get;
    get.set_name(name);
    api::Store part;
    absl::Status s = Unary(*pool_, **r, *(*r)->engram,
                           &api::Engram::Stub::GetStore, get, &part, deadline);
    counts[g] = part.pattern_count();
    return s;
  }));
  if (!status.ok()) return status;
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  if (total < 2) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store '", name, "' has ", total, " patterns; a fit needs at least 2"));
  }
  // The sample: every pattern up to the batch size, else a seeded share of
  // each group's.
  const std::vector<uint64_t> shares = Shares(
      counts, std::min<uint64_t>(total, settings->feature_map.batch_size));
  std::vector<v1::Sample> samples(groups);
  status = FirstError(InParallel(groups, [&](size_t g) {
    if (shares[g] == 0) return absl::OkStatus();
    absl::StatusOr<const Replica*> r = pool_->Pick(static_cast<uint32_t>(g));
    if (!r.ok()) return r.status();
    v1::SampleRequest request;
    request.set_store(name);
    request.set_count(shares[g]);
    request.set_seed(settings->feature_map.seed * 1000003 + g);
    return Unary(*pool_, **r, *(*r)->shard, &v1::Shard::Stub::GetSample,
                 request, &samples[g], deadline);
  }));
  if (!status.ok()) return status;
  // In id order: the fit depends on the sample, not on how the store is
  // spread (with ids in the order they were added, the order one engramd
  // fits in).
  std::vector<std::pair<uint64_t, const float*>> order;
  for (const v1::Sample& s : samples) {
    if (s.count() > 0 &&
        (s.dimension() != d ||
         static_cast<size_t>(s.values_size()) != s.count() * d ||
         static_cast<size_t>(s.ids_size()) != s.count())) {
      return absl::InternalError(absl::StrCat(
          "a shard sampled ", s.ids_size(), " ids and ", s.values_size(),
          " values of dimension ", s.dimension(), " as ", s.count(),
          " patterns of store '", name, "' of dimension ", d));
    }
    for (size_t i = 0; i < s.count(); ++i) {
      order.push_back({s.ids(static_cast<int>(i)), s.values().data() + i * d});
    }
  }
  std::sort(order.begin(), order.end());
  std::vector<float> rows;
  rows.reserve(order.size() * d);
  for (const auto& [id, values] : order) {
    rows.insert(rows.end(), values, values + d);
  }
  const size_t n = order.size();
  std::vector<float> sq_norms(n);
  for (size_t i = 0; i < n; ++i) {
    double sq = 0;
    for (size_t j = 0; j < d; ++j)
      sq += double{rows[i * d + j]} * rows[i * d + j];
    sq_norms[i] = static_cast<float>(sq);
  }
  core::MemorySet memories;
  memories.dim = d;
  memories.blocks.push_back({rows.data(), sq_norms.data(), n});
  const core::FeatureMap initial = core::FeatureMap::RandomNormal(
      d, store::FeatureDim(*settings), settings->feature_map.seed);
  absl::StatusOr<core::FitResult> fit = core::FitFeatureMap(
      memories, initial, jobs::FitOptionsFor(settings->feature_map),
      [&](const core::FitProgress& p) -> absl::Status {
        if (job->cancel) return absl::CancelledError("fit cancelled");
        Update(job, [&](api::FitStatus& s) {
          s.set_epoch(p.epoch);
          s.set_loss_after(p.loss);
        });
        return absl::OkStatus();
      });
  if (!fit.ok()) return fit.status();
  // One version above any a replica holds.
  uint64_t newest = 0;
  for (const ReplicaStatus& r : pool_->Status()) {
    for (const v1::StoreState& s : r.description.stores()) {
      if (s.name() == name) newest = std::max(newest, s.map_version());
    }
  }
  v1::FeatureMapRecord record;
  record.set_store(name);
  record.set_version(std::max(newest, merged.fit().map_version()) + 1);
  record.set_out_dim(static_cast<uint32_t>(fit->map.out_dim()));
  record.set_in_dim(static_cast<uint32_t>(fit->map.in_dim()));
  record.mutable_weights()->Assign(fit->map.weights().begin(),
                                   fit->map.weights().end());
  record.set_loss_before(fit->loss_before);
  record.set_loss_after(fit->loss_after);
  record.set_epochs(fit->epochs);
  record.set_duration_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  record.set_patterns_fitted(total);
  if (job->cancel) return absl::CancelledError("fit cancelled");
  // Published to every ready replica; one that fails is stale and gets the
  // map when it is repaired. A group none of whose replicas took it fails
  // the fit.
  std::vector<std::string> missed;
  for (uint32_t g = 0; g < groups; ++g) {
    absl::StatusOr<std::vector<const Replica*>> ready = pool_->ReadyReplicas(g);
    if (!ready.ok()) {
      missed.push_back(std::string(ready.status().message()));
      continue;
    }
    std::vector<absl::Status> put = InParallel(ready->size(), [&](size_t i) {
      v1::PutFeatureMapResponse ignored;
      return Unary(*pool_, *(*ready)[i], *(*ready)[i]->shard,
                   &v1::Shard::Stub::PutFeatureMap, record, &ignored, deadline);
    });
    size_t took = 0;
    for (size_t i = 0; i < put.size(); ++i) {
      if (put[i].ok()) {
        ++took;
      } else {
        pool_->MarkStale(*(*ready)[i], put[i].message());
      }
    }
    if (took == 0) missed.push_back(std::string(put[0].message()));
  }
  if (!missed.empty()) {
    return absl::UnavailableError(absl::StrCat(
        "feature map v", record.version(), " of store '", name,
        "' did not reach every shard group (", absl::StrJoin(missed, "; "),
        "); queries of kernel similarities are refused until the fit is "
        "started again with every group ready"));
  }
  Update(job, [&](api::FitStatus& s) {
    s.set_epoch(record.epochs());
    s.set_loss_before(record.loss_before());
    s.set_loss_after(record.loss_after());
    s.set_duration_seconds(record.duration_seconds());
    s.set_map_version(record.version());
    s.set_patterns_fitted(record.patterns_fitted());
  });
  return absl::OkStatus();
}

}  // namespace engram::cluster
