#include "server/cluster/cluster_jobs.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/base/clip.h"
#include "server/base/steady_clock.h"
#include "server/cluster/map_record.h"
#include "server/cluster/shard_calls.h"
#include "server/core/feature_map.h"
#include "server/core/uhop_fit.h"
#include "server/jobs/job_bodies.h"
#include "server/jobs/job_runner.h"
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

// A store with rows (n x dim, row-major) as one block, with their features
// under `map` if given.
struct Memories {
  std::vector<float> rows, sq_norms, keys, key_sq_norms;
  core::MemorySet set;
};

std::vector<float> SquaredNorms(const std::vector<float>& rows, size_t dim) {
  std::vector<float> out(rows.size() / dim);
  for (size_t i = 0; i < out.size(); ++i) {
    double sq = 0;
    for (size_t j = 0; j < dim; ++j) {
      sq += double{rows[i * dim + j]} * rows[i * dim + j];
    }
    out[i] = static_cast<float>(sq);
  }
  return out;
}

void Build(std::vector<float> rows, size_t dim, const core::FeatureMap* map,
           Memories& m) {
  m.rows = std::move(rows);
  m.sq_norms = SquaredNorms(m.rows, dim);
  const size_t n = m.sq_norms.size();
  m.set.dim = dim;
  m.set.map = map;
  core::MemoryBlock block{m.rows.data(), m.sq_norms.data(), n};
  if (map != nullptr) {
    m.keys.resize(n * map->out_dim());
    map->Apply(m.rows.data(), n, m.keys.data());
    m.key_sq_norms = SquaredNorms(m.keys, map->out_dim());
    block.keys = m.keys.data();
    block.key_sq_norms = m.key_sq_norms.data();
  }
  m.set.blocks = {block};
}

// Sends `request` to every ready replica of every group, all at once. A
// replica that fails where another of its group took it is stale: its
// repair brings what it missed from that one. Returns why, for each group
// none of whose replicas took it (nothing to repair from: the caller says
// to start again); the first answer goes to `first` if given.
template <typename Request, typename Response>
std::vector<std::string> ToEveryReplica(
    ShardPool& pool, ShardMethod<Request, Response> method,
    const Request& request, absl::Time deadline,
    std::optional<Response>* first = nullptr) {
  absl::ReaderMutexLock writing(&pool.write_gate());
  const uint32_t groups = pool.groups();
  std::vector<std::string> why(groups);  // Why g missed it, if it did.
  std::vector<const Replica*> replicas;
  for (uint32_t g = 0; g < groups; ++g) {
    absl::StatusOr<std::vector<const Replica*>> ready = pool.ReadyReplicas(g);
    if (!ready.ok()) {
      why[g] = std::string(ready.status().message());
      continue;
    }
    replicas.insert(replicas.end(), ready->begin(), ready->end());
  }
  std::vector<Response> answers;
  const std::vector<absl::Status> sent = UnaryOnEach<Request>(
      pool, replicas, [&request](size_t) -> const Request& { return request; },
      ShardCall(method), &answers, deadline);
  std::vector<bool> took(groups);
  for (size_t i = 0; i < sent.size(); ++i) {
    const uint32_t g = replicas[i]->group;
    if (!sent[i].ok()) {
      why[g] = std::string(sent[i].message());
      continue;
    }
    if (first != nullptr && !*first) *first = answers[i];
    took[g] = true;
  }
  for (size_t i = 0; i < sent.size(); ++i) {
    if (!sent[i].ok() && took[replicas[i]->group]) {
      pool.MarkStale(*replicas[i], sent[i].message());
    }
  }
  std::vector<std::string> missed;
  for (uint32_t g = 0; g < groups; ++g) {
    if (!took[g]) missed.push_back(why[g]);
  }
  return missed;
}

}  // namespace

absl::StatusOr<store::StoreSettings> DescribedSettings(
    const api::Store& described, const store::Limits& limits) {
  absl::StatusOr<store::StoreSettings> settings =
      store::SettingsFromProto(described, /*fill_defaults=*/false);
  absl::Status valid = settings.status();
  if (valid.ok()) {
    // Checked with the defaults where a field is unset: a shard of an older
    // engramd leaves out the settings it does not know.
    absl::StatusOr<store::StoreSettings> checked =
        store::SettingsFromProto(described, /*fill_defaults=*/true);
    valid = checked.ok() ? store::ValidateSettings(*checked, limits)
                         : checked.status();
  }
  if (!valid.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the shards describe store '", Clip(described.name()),
                     "' out of this router's range: ", valid.message()));
  }
  return settings;
}

absl::StatusOr<std::vector<float>> ClusterJobs::Sample(const std::string& name,
                                                       size_t d, uint64_t most,
                                                       uint64_t seed,
                                                       uint64_t* total) {
  const uint32_t groups = pool_->groups();
  const absl::Time deadline = absl::Now() + absl::Minutes(5);
  // Each group's patterns now.
  absl::StatusOr<std::vector<api::Store>> parts =
      GroupStores(*pool_, name, deadline);
  if (!parts.ok()) return parts.status();
  std::vector<uint64_t> counts(groups);
  *total = 0;
  for (uint32_t g = 0; g < groups; ++g) {
    counts[g] = (*parts)[g].pattern_count();
    *total += counts[g];
  }
  if (*total < 2) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store '", name, "' has ", *total, " patterns; at least 2 are needed"));
  }
  const std::vector<uint64_t> shares =
      Shares(counts, std::min<uint64_t>(*total, most));
  // Each group's share of the sample, from the groups that have one.
  std::vector<v1::SampleRequest> requests;
  std::vector<const Replica*> sampled;
  for (uint32_t g = 0; g < groups; ++g) {
    if (shares[g] == 0) continue;
    v1::SampleRequest& request = requests.emplace_back();
    request.set_store(name);
    request.set_count(shares[g]);
    request.set_seed(seed * 1000003 + g);
    absl::StatusOr<const Replica*> replica = pool_->Pick(g);
    if (!replica.ok()) return replica.status();
    sampled.push_back(*replica);
  }
  std::vector<v1::Sample> samples;
  if (absl::Status s = FirstError(UnaryOnEach<v1::SampleRequest>(
          *pool_,
          sampled, [&requests](size_t i) -> const auto& { return requests[i]; },
          ShardCall(&v1::Shard::Stub::async::GetSample), &samples, deadline,
          OnUnavailable::kFailOver));
      !s.ok()) {
    return s;
  }
  // In id order: what is computed depends on the sample, not on how the
  // store is spread (with ids in the order they were added, the order one
  // engramd holds them in).
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
  return rows;
}

absl::StatusOr<api::FitStatus> ClusterJobs::StartFit(const api::Store& merged) {
  const std::string& name = merged.name();
  if (absl::Status can = jobs::CheckCanStart(
          jobs::JobKind::kFit, name, merged.feature_map().kind() == api::UHOP,
          merged.pattern_count());
      !can.ok()) {
    return can;
  }
  api::FitStatus initial;
  initial.set_store(name);
  initial.set_total_epochs(merged.feature_map().epochs());
  initial.set_map_version(merged.fit().map_version());
  return fits_.Start(name, initial,
                     [this, merged](auto* job) { return Fit(merged, job); });
}

absl::StatusOr<api::CalibrationStatus> ClusterJobs::StartCalibration(
    const api::Store& merged, std::optional<bool> apply) {
  const std::string& name = merged.name();
  if (absl::Status can =
          jobs::CheckCanStart(jobs::JobKind::kCalibration, name,
                              /*uhop=*/true, merged.pattern_count());
      !can.ok()) {
    return can;
  }
  api::CalibrationStatus initial;
  initial.set_store(name);
  if (merged.has_calibration_report()) {
    *initial.mutable_report() = merged.calibration_report();
  }
  const bool applies = apply.value_or(merged.calibration().apply());
  return calibrations_.Start(name, initial, [this, merged, applies](auto* job) {
    return Calibrate(merged, applies, job);
  });
}

absl::Status ClusterJobs::Fit(const api::Store& merged,
                              JobTable<api::FitStatus>::Job* job) {
  const std::string& name = merged.name();
  absl::StatusOr<store::StoreSettings> settings =
      DescribedSettings(merged, options_.limits);
  if (!settings.ok()) return settings.status();
  const size_t d = settings->dimension;
  const absl::Time start = SteadyNow();
  const absl::Time deadline = absl::Now() + absl::Minutes(5);
  uint64_t total = 0;
  absl::StatusOr<std::vector<float>> rows =
      Sample(name, d, settings->feature_map.batch_size,
             settings->feature_map.seed, &total);
  if (!rows.ok()) return rows.status();
  Memories memories;
  Build(*std::move(rows), d, nullptr, memories);
  const core::FeatureMap initial = core::FeatureMap::RandomNormal(
      d, store::FeatureDim(*settings), settings->feature_map.seed);
  absl::StatusOr<core::FitResult> fit = core::FitFeatureMap(
      memories.set, initial, jobs::FitOptionsFor(settings->feature_map),
      [&](const core::FitProgress& p) -> absl::Status {
        if (job->cancel) return absl::CancelledError("fit cancelled");
        fits_.Update(job, [&](api::FitStatus& s) {
          s.set_epoch(p.epoch);
          s.set_loss_after(p.loss);
        });
        return absl::OkStatus();
      });
  if (!fit.ok()) return fit.status();
  // One version above any a replica holds.
  uint64_t newest = merged.fit().map_version();
  for (const ReplicaStatus& r : pool_->Status()) {
    for (const v1::StoreState& s : r.description.stores()) {
      if (s.name() == name) newest = std::max(newest, s.map_version());
    }
  }
  v1::FeatureMapRecord record;
  record.set_store(name);
  record.set_version(newest + 1);
  record.set_out_dim(static_cast<uint32_t>(fit->map.out_dim()));
  record.set_in_dim(static_cast<uint32_t>(fit->map.in_dim()));
  record.mutable_weights()->Assign(fit->map.weights().begin(),
                                   fit->map.weights().end());
  record.set_loss_before(fit->loss_before);
  record.set_loss_after(fit->loss_after);
  record.set_epochs(fit->epochs);
  record.set_duration_seconds(SecondsSince(start));
  record.set_patterns_fitted(total);
  if (job->cancel) return absl::CancelledError("fit cancelled");
  // A group none of whose replicas took it fails the fit.
  const std::vector<std::string> missed = ToEveryReplica(
      *pool_, &v1::Shard::Stub::async::PutFeatureMap, record, deadline);
  if (!missed.empty()) {
    return absl::UnavailableError(absl::StrCat(
        "feature map v", record.version(), " of store '", name,
        "' did not reach every shard group (", absl::StrJoin(missed, "; "),
        "); queries of kernel similarities are refused until the fit is "
        "started again with every group ready"));
  }
  fits_.Update(job, [&](api::FitStatus& s) {
    s.set_epoch(record.epochs());
    s.set_loss_before(record.loss_before());
    s.set_loss_after(record.loss_after());
    s.set_duration_seconds(record.duration_seconds());
    s.set_map_version(record.version());
    s.set_patterns_fitted(record.patterns_fitted());
  });
  return absl::OkStatus();
}

absl::Status ClusterJobs::Calibrate(
    const api::Store& merged, bool apply,
    JobTable<api::CalibrationStatus>::Job* job) {
  const std::string& name = merged.name();
  absl::StatusOr<store::StoreSettings> settings =
      DescribedSettings(merged, options_.limits);
  if (!settings.ok()) return settings.status();
  const size_t d = settings->dimension;
  const absl::Time deadline = absl::Now() + absl::Minutes(5);
  // The store's map, for the kernel similarities: one version everywhere.
  std::shared_ptr<const core::FeatureMap> map;
  if (merged.fit().map_version() > 0) {
    v1::GetFeatureMapRequest get;
    get.set_store(name);
    v1::FeatureMapRecord record;
    if (absl::Status s = ReadFromGroup(
            *pool_, 0,
            [&](const Replica& r) {
              return Unary(*pool_, r, *r.shard, &v1::Shard::Stub::GetFeatureMap,
                           get, &record, deadline);
            });
        !s.ok()) {
      return s;
    }
    absl::StatusOr<std::shared_ptr<const core::FeatureMap>> got =
        FeatureMapFromProto(record);
    if (!got.ok()) return got.status();
    map = *std::move(got);
  }
  uint64_t total = 0;
  absl::StatusOr<std::vector<float>> rows =
      Sample(name, d, kCalibrationSample, settings->calibration.seed, &total);
  if (!rows.ok()) return rows.status();
  Memories memories;
  Build(*std::move(rows), d, map.get(), memories);
  absl::StatusOr<api::CalibrationReport> report = jobs::CalibrateOn(
      memories.set, *settings, merged.version(), total, apply,
      {options_.calibration_threads, options_.limits.max_calibration_work},
      job->cancel);
  if (!report.ok()) return report.status();
  // Stored on every ready replica, each applying the setting only if its
  // retrieval settings are still those calibrated; the router reports the
  // first replica's answer.
  v1::CalibrationRecord record;
  record.set_store(name);
  *record.mutable_report() = *report;
  record.set_apply(apply);
  *record.mutable_calibrated() = merged.retrieval();
  std::optional<api::CalibrationReport> stored;
  const std::vector<std::string> missed =
      ToEveryReplica(*pool_, &v1::Shard::Stub::async::PutCalibration, record,
                     deadline, &stored);
  if (!missed.empty()) {
    return absl::UnavailableError(absl::StrCat(
        "the calibration of store '", name,
        "' did not reach every shard group (", absl::StrJoin(missed, "; "),
        "); start it again with every group ready"));
  }
  calibrations_.Update(job, [&](api::CalibrationStatus& s) {
    *s.mutable_report() = stored ? *stored : *report;
  });
  return absl::OkStatus();
}

}  // namespace engram::cluster
