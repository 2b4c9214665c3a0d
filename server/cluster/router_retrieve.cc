// A router's retrievals: the store's description (with the shards'
// low-rank sums), the plan, and the exact path's steps through one replica
// of every group, the first of them sent early (docs/scale-out.md).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "server/cluster/router.h"
#include "server/cluster/shard_calls.h"
#include "server/core/partial.h"
#include "server/core/step_loop.h"
#include "server/rpc/convert.h"
#include "server/store/placement.h"
#include "server/store/retrieve.h"

namespace engram::cluster {

namespace {

namespace api = engram::v1;

// Stores whose last retrieval a router remembers at most.
constexpr size_t kMaxRetrievalHints = 4096;

// Whether a request filters (store::RetrieveRequest::filter not empty, as
// rpc::FromProto makes it), before it is converted.
bool Filters(const api::RetrieveRequest& request) {
  return request.has_filter() && (request.filter().labels_size() > 0 ||
                                  request.filter().metadata_size() > 0);
}

// A retrieval request read with a store's settings, as the router runs it.
// Neither copied nor moved: `query` views `queries`.
struct Resolved {
  store::StoreSettings settings;
  std::vector<float> queries;  // num_queries * settings.dimension.
  store::RetrieveRequest query;
  core::RetrievalParams params;
};

// Reads `request` with the settings and pattern count of `described` into
// `out`: the errors Retrieve answers with.
absl::Status Resolve(const api::Store& described,
                     const api::RetrieveRequest& request,
                     const store::Limits& limits, Resolved* out) {
  absl::StatusOr<store::StoreSettings> settings =
      DescribedSettings(described, limits);
  if (!settings.ok()) return settings.status();
  out->settings = *std::move(settings);
  absl::StatusOr<store::RetrieveRequest> query =
      rpc::FromProto(request, out->settings.dimension, out->queries);
  if (!query.ok()) return query.status();
  out->query = *std::move(query);
  absl::StatusOr<core::RetrievalParams> params = store::ResolveParams(
      out->settings, described.pattern_count(), out->query, limits);
  if (!params.ok()) return params.status();
  out->params = *std::move(params);
  return absl::OkStatus();
}

// A step's request but its count and states: what the shards are told of
// a retrieval's params.
v1::PartialStepRequest StepHead(const std::string& store,
                                const core::RetrievalParams& params,
                                const api::Filter* filter) {
  v1::PartialStepRequest step;
  step.set_store(store);
  step.set_similarity(store::SimilarityToProto(params.similarity));
  step.set_separation(store::SeparationToProto(params.separation));
  step.set_beta(params.beta);
  step.set_top_k(params.top_k);
  if (filter != nullptr) *step.mutable_filter() = *filter;
  return step;
}

bool SameStates(const v1::PartialStepRequest& a,
                const v1::PartialStepRequest& b) {
  return a.count() == b.count() && a.states_size() == b.states_size() &&
         std::memcmp(a.states().data(), b.states().data(),
                     sizeof(float) * a.states_size()) == 0;
}

}  // namespace

// One retrieval's, as its ShardedSteps.
struct EarlyStep {
  std::string head;  // StepHead(...), serialized.
  v1::PartialStepRequest step;
  std::optional<StepFanout> calls;  // Of `step`; cancelled if not used.
};

namespace {

// The steps of one exact retrieval through the shards: each step goes to
// one replica of every group at once and is merged exactly per query
// (core::MergeRows). Matches are named by pattern id (Match::index).
class ShardedSteps {
 public:
  // With `filter` (not empty), every step runs over the matching patterns
  // only.
  ShardedSteps(ShardPool& pool, const std::string& store,
               const core::RetrievalParams& params, size_t dim,
               const api::Filter* filter, absl::Time deadline)
      : pool_(pool),
        store_(store),
        params_(params),
        dim_(dim),
        deadline_(deadline) {
    step_ = StepHead(store, params, filter);
    head_ = step_.SerializeAsString();
  }

  // This retrieval's first step, already sent (see Router::StartEarlyStep):
  // its answers serve the first step if that is the same request.
  void Offer(std::unique_ptr<EarlyStep> early) { early_ = std::move(early); }

  // Before a query runs again from its first step.
  void Restart() { map_version_.reset(); }
  // The label of a pattern some step matched.
  const std::string& label(uint64_t id) { return labels_[id]; }
  // The patterns the last step ran over, summed over the groups.
  uint64_t patterns() const { return patterns_; }

  absl::Status operator()(absl::Span<const size_t> ids, const float* states,
                          float* next, double* energies,
                          std::vector<core::Match>* matches) {
    step_.set_count(static_cast<uint32_t>(ids.size()));
    step_.mutable_states()->Assign(states, states + ids.size() * dim_);
    absl::StatusOr<std::vector<v1::PartialStepResponse>> parts =
        absl::UnavailableError("not sent");
    // An early step that went wrong is sent again, as any step would be.
    if (std::unique_ptr<EarlyStep> early = std::move(early_);
        early != nullptr && early->head == head_ &&
        SameStates(early->step, step_)) {
      parts = early->calls->Answers();
    }
    if (!parts.ok()) {
      absl::StatusOr<std::vector<const Replica*>> replicas = pool_.PickEach();
      if (!replicas.ok()) return replicas.status();
      parts = StepOnEach(pool_, *replicas, step_, deadline_);
    }
    if (!parts.ok()) return parts.status();
    if (absl::Status s = CheckMaps(*parts); !s.ok()) return s;
    if (absl::Status s = CountPatterns(*parts); !s.ok()) return s;
    for (size_t a = 0; a < ids.size(); ++a) {
      absl::StatusOr<core::MergedRow> row = Merge(*parts, a);
      if (!row.ok()) return row.status();
      std::copy(row->next.begin(), row->next.end(), next + a * dim_);
      energies[a] = row->energy;
      matches[a].clear();
      for (const core::MergedRow::Match& m : row->matches) {
        matches[a].push_back({static_cast<size_t>(m.id), m.weight, m.score});
      }
    }
    return absl::OkStatus();
  }

 private:
  // Kernel similarities: every shard, every step on the first step's map.
  absl::Status CheckMaps(const std::vector<v1::PartialStepResponse>& parts) {
    if (!core::IsKernel(params_.similarity)) return absl::OkStatus();
    if (!map_version_) map_version_ = parts[0].map_version();
    for (size_t g = 0; g < parts.size(); ++g) {
      if (parts[g].map_version() != *map_version_) {
        return absl::AbortedError(absl::StrCat(
            "store '", store_, "': shard group ", g, " used feature map v",
            parts[g].map_version(), " where the query began on v",
            *map_version_, " (a new map is being published); retry"));
      }
    }
    return absl::OkStatus();
  }

  // Sums the parts' patterns; none is FAILED_PRECONDITION. A part that
  // answered without saying how many it stepped over comes from an engramd
  // that ignores filters: its rows would be over every pattern.
  absl::Status CountPatterns(
      const std::vector<v1::PartialStepResponse>& parts) {
    patterns_ = 0;
    for (size_t g = 0; g < parts.size(); ++g) {
      patterns_ += parts[g].patterns();
      if (step_.has_filter() && parts[g].patterns() == 0 &&
          std::any_of(
              parts[g].rows().begin(), parts[g].rows().end(),
              [](const v1::PartialRow& r) { return r.max() != -INFINITY; })) {
        return absl::FailedPreconditionError(absl::StrCat(
            "store '", store_, "': shard group ", g,
            " runs an engramd that does not filter its steps; upgrade it to "
            "run filtered retrievals"));
      }
    }
    if (patterns_ == 0 && step_.has_filter()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the filter matches no pattern of store '", store_, "'"));
    }
    return absl::OkStatus();
  }

  // Query `a`'s rows from every group, merged.
  absl::StatusOr<core::MergedRow> Merge(
      const std::vector<v1::PartialStepResponse>& parts, size_t a) {
    std::vector<core::PartialRow> rows(parts.size());
    std::vector<const core::PartialRow*> pointers(parts.size());
    for (size_t g = 0; g < parts.size(); ++g) {
      const v1::PartialRow& in = parts[g].rows(static_cast<int>(a));
      core::PartialRow& row = rows[g];
      row.max = in.max();
      row.sum = in.sum();
      row.weighted.assign(in.weighted().begin(), in.weighted().end());
      for (const v1::Scored& s : in.top()) {
        row.top.push_back({s.score(), s.id()});
        labels_[s.id()] = s.label();
      }
      for (const v1::Scored& s : in.candidates()) {
        row.candidates.push_back({s.score(), s.id()});
      }
      row.values.assign(in.values().begin(), in.values().end());
      row.query_sq_norm = in.query_sq_norm();
      pointers[g] = &row;
    }
    return core::MergeRows(params_, pointers, dim_,
                           [this](uint64_t id) { return Values(id); });
  }

  // A support member's values no shard sent with its step.
  absl::StatusOr<std::vector<float>> Values(uint64_t id) {
    v1::GetValuesRequest get;
    get.set_store(store_);
    get.add_ids(id);
    v1::GetValuesResponse got;
    if (absl::Status s = ReadFromGroup(
            pool_, store::GroupOf(id, pool_.groups()),
            [&](const Replica& r) {
              return Unary(pool_, r, *r.shard, &v1::Shard::Stub::GetValues, get,
                           &got, deadline_);
            });
        !s.ok()) {
      return s;
    }
    return std::vector<float>(got.values().begin(), got.values().end());
  }

  ShardPool& pool_;
  const std::string store_;
  const core::RetrievalParams params_;
  const size_t dim_;
  const absl::Time deadline_;
  v1::PartialStepRequest step_;
  std::string head_;  // step_ but its count and states, serialized.
  std::unique_ptr<EarlyStep> early_;
  uint64_t patterns_ = 0;
  std::optional<uint64_t> map_version_;  // Of the query's first step.
  absl::flat_hash_map<uint64_t, std::string> labels_;
};

}  // namespace

// --- Retrieval
// ----------------------------------------------------------------

absl::StatusOr<api::Store> Router::DescribeForRetrieval(
    const api::RetrieveRequest& request, absl::Time deadline,
    std::optional<absl::StatusOr<std::shared_ptr<const MergedLowRank>>>* sums) {
  if (request.path() == api::EXACT || Filters(request)) {
    sums->reset();
    return MergedStore(request.store(), deadline);
  }
  std::vector<api::Store> parts;
  *sums = low_rank_.Get(request.store(), deadline, &parts);
  // The description alone says why (NOT_FOUND, DAMAGED); the planner meets
  // the sums' error only if it needs them. A shard of an older engramd
  // sends its sums without the description: asked for it apart.
  if (!(*sums)->ok() ||
      std::any_of(parts.begin(), parts.end(),
                  [](const api::Store& part) { return part.name().empty(); })) {
    return MergedStore(request.store(), deadline);
  }
  return MergeDescriptions(std::move(parts));
}

grpc::Status Router::Retrieve(Ctx* context, const api::RetrieveRequest* request,
                              api::RetrieveResponse* response) {
  rpc::Call call(policy_, "Retrieve", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  const size_t bytes = request->ByteSizeLong();
  if (options_.handlers == nullptr || bytes < options_.large_retrieval) {
    return RetrieveHere(call, context, request, response);
  }
  grpc::Status answered;  // RetrieveHere ends the call when it runs.
  const absl::Status refused =
      call.RunRetrieval(*options_.handlers, bytes, [&] {
        answered = RetrieveHere(call, context, request, response);
        return absl::OkStatus();
      });
  return refused.ok() ? answered : call.Done(refused);
}

grpc::Status Router::RetrieveHere(rpc::Call& call, Ctx* context,
                                  const api::RetrieveRequest* request,
                                  api::RetrieveResponse* response) {
  const absl::Time deadline = DeadlineOf(context);
  // The first exact step goes out with the settings the store's last
  // retrieval found while its description comes back: one round to the
  // shards for both where the settings held.
  std::unique_ptr<EarlyStep> early = StartEarlyStep(*request, deadline);
  std::optional<absl::StatusOr<std::shared_ptr<const MergedLowRank>>> fetched;
  absl::StatusOr<api::Store> merged =
      DescribeForRetrieval(*request, deadline, &fetched);
  if (!merged.ok()) return call.Done(merged.status());
  if (merged->state() == api::Store::DAMAGED) {
    return call.Done(absl::FailedPreconditionError(
        absl::StrCat("store '", request->store(), "' is DAMAGED (",
                     merged->state_detail(), ")")));
  }
  Resolved r;
  if (absl::Status s = Resolve(*merged, *request, options_.limits, &r);
      !s.ok()) {
    return call.Done(s);
  }
  const size_t d = r.settings.dimension;
  const uint32_t groups = pool_->groups();
  const bool auto_path = request->path() == api::AUTO ||
                         request->path() == api::RETRIEVAL_PATH_UNSPECIFIED;
  // A filtered retrieval takes the exact path, each group stepping over its
  // matching patterns only (the low-rank sums are over all of them).
  const bool filtered = !r.query.filter.empty();
  if (filtered) {
    if (absl::Status s = store::CheckFilteredRequest(request->store(), r.query,
                                                     options_.limits);
        !s.ok()) {
      return call.Done(s);
    }
  }
  // The low-rank path runs on the router from the shards' merged sums; sums
  // that no longer fit the store's description, or a part that changes
  // between the sums and the matches' scan, are ABORTED and the query
  // planned again, once.
  absl::StatusOr<store::PathReport> plan = store::PathReport{};
  for (int attempt = 0; !filtered && attempt < 2; ++attempt) {
    std::shared_ptr<const MergedLowRank> sums;
    // The sums fetched with the description serve the first plan; a query
    // planned again fetches them again.
    plan = PlanThroughRouter(
        request->store(), r.settings, *merged, r.query, r.params, deadline,
        attempt == 0 ? std::move(fetched) : std::nullopt, &sums);
    if (absl::IsAborted(plan.status()) && attempt == 0) continue;
    if (!plan.ok()) return call.Done(plan.status());
    if (plan->path != store::PathChoice::kLowRank) break;
    early.reset();  // Cancelled: the sums answer.
    core::RetrievalOptions options;
    options.check = rpc::DeadlineCheck(context);
    absl::StatusOr<store::RetrieveResult> result =
        RetrieveFromSums(request->store(), *sums, plan->degree, r.query,
                         r.params, options, deadline);
    if (absl::IsAborted(result.status()) && attempt == 0) continue;
    if (!result.ok()) return call.Done(result.status());
    result->path = *plan;
    result->path.reason = absl::StrCat(plan->reason, "; sums merged from ",
                                       groups, " shard groups");
    result->store_version = merged->version();
    rpc::ToProto(*result, d, request->omit_vectors(), *response);
    policy_->metrics->RecordRetrieval("low_rank", r.query.num_queries,
                                      plan->error_bound);
    RememberRetrieval(request->store(), *merged,
                      auto_path ? std::optional<bool>(false) : std::nullopt);
    return call.Done(absl::OkStatus());
  }
  uint64_t patterns = 0;
  absl::StatusOr<store::RetrieveResult> result =
      RetrieveExact(request->store(), r.query, r.params,
                    filtered ? &request->filter() : nullptr, deadline,
                    std::move(early), &patterns);
  if (!result.ok()) return call.Done(result.status());
  result->path = *plan;
  result->path.reason =
      filtered ? absl::StrCat("exact: filtered to ", patterns, " of ",
                              merged->pattern_count(),
                              " patterns (the low-rank sums are over all of "
                              "them); merged from ",
                              groups, " shard groups")
               : absl::StrCat(plan->reason, "; merged from ", groups,
                              " shard groups");
  result->store_version = merged->version();
  rpc::ToProto(*result, d, request->omit_vectors(), *response);
  policy_->metrics->RecordRetrieval("exact", r.query.num_queries, 0);
  RememberRetrieval(
      request->store(), *merged,
      auto_path && !filtered ? std::optional<bool>(true) : std::nullopt);
  return call.Done(absl::OkStatus());
}

std::unique_ptr<EarlyStep> Router::StartEarlyStep(
    const api::RetrieveRequest& request, absl::Time deadline) {
  if (Filters(request) || request.path() == api::LOW_RANK) return nullptr;
  api::Store described;
  {
    MutexLock lock(&hints_mu_);
    auto it = hints_.find(request.store());
    if (it == hints_.end()) return nullptr;
    if (request.path() != api::EXACT && !it->second.exact_under_auto) {
      return nullptr;
    }
    described = it->second.described;
  }
  // As Retrieve resolves them, from the remembered description.
  Resolved r;
  if (!Resolve(described, request, options_.limits, &r).ok()) return nullptr;
  absl::StatusOr<std::vector<const Replica*>> replicas = pool_->PickEach();
  if (!replicas.ok()) return nullptr;
  auto early = std::make_unique<EarlyStep>();
  early->step = StepHead(request.store(), r.params, nullptr);
  early->head = early->step.SerializeAsString();
  early->step.set_count(static_cast<uint32_t>(r.query.num_queries));
  early->step.mutable_states()->Assign(r.queries.begin(), r.queries.end());
  early->calls.emplace(*pool_, *std::move(replicas), early->step, deadline);
  return early;
}

void Router::ForgetRetrieval(const std::string& store) {
  MutexLock lock(&hints_mu_);
  hints_.erase(store);
}

void Router::RememberRetrieval(const std::string& store,
                               const api::Store& described,
                               std::optional<bool> exact_under_auto) {
  // What an early step needs: the settings and the count, not the last
  // calibration's report.
  api::Store kept = described;
  kept.clear_calibration_report();
  kept.clear_fit();
  MutexLock lock(&hints_mu_);
  // One entry per store retrieved through this router; a store deleted
  // through another router leaves its entry behind, so the map is bounded.
  if (hints_.size() >= kMaxRetrievalHints && !hints_.contains(store)) {
    hints_.clear();
  }
  RetrievalHint& hint = hints_[store];
  hint.described = std::move(kept);
  if (exact_under_auto) hint.exact_under_auto = *exact_under_auto;
}

absl::StatusOr<store::RetrieveResult> Router::RetrieveExact(
    const std::string& name, const store::RetrieveRequest& query,
    const core::RetrievalParams& params, const api::Filter* filter,
    absl::Time deadline, std::unique_ptr<EarlyStep> early, uint64_t* patterns) {
  const size_t d = query.queries.size() / query.num_queries;
  ShardedSteps steps(*pool_, name, params, d, filter, deadline);
  steps.Offer(std::move(early));
  // Kernel similarities: every step of a query on one map version; a query
  // that meets a publication under way (shards on different versions) runs
  // again once they agree, until the deadline.
  absl::StatusOr<core::RetrievalOutput> out;
  for (int attempt = 0;; ++attempt) {
    steps.Restart();
    out = core::RunSteps(query.queries.data(), query.num_queries, d,
                         params.steps, params.eps, std::ref(steps));
    if (!core::IsKernel(params.similarity) || !absl::IsAborted(out.status()) ||
        attempt >= 100 || absl::Now() + absl::Milliseconds(20) >= deadline) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (!out.ok()) return out.status();
  *patterns = steps.patterns();
  return store::ResultOf(*std::move(out), [&steps](const core::Match& m) {
    return store::MatchedPattern{m.index, m.weight, m.score,
                                 steps.label(m.index)};
  });
}

absl::StatusOr<store::PathReport> Router::PlanThroughRouter(
    const std::string& name, const store::StoreSettings& settings,
    const api::Store& merged, const store::RetrieveRequest& query,
    const core::RetrievalParams& params, absl::Time deadline,
    std::optional<absl::StatusOr<std::shared_ptr<const MergedLowRank>>> fetched,
    std::shared_ptr<const MergedLowRank>* sums) {
  store::LowRankForm none;
  none.store = name;
  none.patterns = merged.pattern_count();
  const store::LowRankForm* form = &none;
  if (query.path == store::PathChoice::kExact) {
    // PlanPath answers EXACT without a form.
  } else if (params.separation != core::Separation::kSoftmax) {
    none.detail =
        absl::StrCat("separation ", core::SeparationName(params.separation),
                     " has no low-rank form (softmax has)");
  } else if (params.similarity != core::Similarity::kDot &&
             params.similarity != core::Similarity::kKernelDot) {
    none.detail =
        absl::StrCat("similarity ", core::SimilarityName(params.similarity),
                     " has no low-rank form (dot and kernel_dot have)");
  } else {
    absl::StatusOr<std::shared_ptr<const MergedLowRank>> got =
        fetched ? *std::move(fetched) : low_rank_.Get(name, deadline);
    if (!got.ok()) return got.status();
    if (absl::Status s =
            CheckSumsFit(**got, settings.dimension, params.similarity);
        !s.ok()) {
      return s;
    }
    *sums = *std::move(got);
    form = &(*sums)->form;
  }
  std::vector<double> features;
  if (form->sums != nullptr && (*sums)->map != nullptr) {
    const core::FeatureMap& map = *(*sums)->map;
    std::vector<float> keys(query.num_queries * map.out_dim());
    map.Apply(query.queries.data(), query.num_queries, keys.data());
    features.assign(keys.begin(), keys.end());
  } else if (form->sums != nullptr) {
    features.assign(query.queries.begin(), query.queries.end());
  }
  const double tolerance =
      query.tolerance ? *query.tolerance : settings.low_rank.tolerance;
  return store::PlanPath(*form, params, query.path, tolerance, features,
                         query.num_queries);
}

absl::StatusOr<store::RetrieveResult> Router::RetrieveFromSums(
    const std::string& name, const MergedLowRank& sums, uint32_t degree,
    const store::RetrieveRequest& query, const core::RetrievalParams& params,
    const core::RetrievalOptions& options, absl::Time deadline) {
  core::LowRankLast last;
  absl::StatusOr<core::RetrievalOutput> out =
      core::LowRankUpdates(*sums.sums, sums.map.get(), query.queries.data(),
                           query.num_queries, params, degree, options, &last);
  if (!out.ok()) return out.status();
  // No matches yet (the updates make none).
  store::RetrieveResult result =
      store::ResultOf(*std::move(out), [](const core::Match& m) {
        return store::MatchedPattern{m.index, m.weight, m.score, ""};
      });
  if (params.top_k == 0) return result;
  // The matches: every group's best by beta <k, key> at each query's last
  // input's key (x, or Phi x), from the replicas the sums came from, at the
  // same versions.
  v1::PartialStepRequest scan;
  scan.set_store(name);
  scan.set_count(static_cast<uint32_t>(query.num_queries));
  scan.mutable_states()->Assign(last.inputs.begin(), last.inputs.end());
  scan.set_similarity(store::SimilarityToProto(params.similarity));
  scan.set_separation(store::SeparationToProto(params.separation));
  scan.set_beta(params.beta);
  scan.set_top_k(params.top_k);
  scan.set_top_only(true);
  absl::StatusOr<std::vector<v1::PartialStepResponse>> parts =
      StepOnEach(*pool_, sums.replicas, scan, deadline);
  if (!parts.ok()) return parts.status();
  for (size_t g = 0; g < parts->size(); ++g) {
    if ((*parts)[g].store_version() != sums.versions[g]) {
      return absl::AbortedError(absl::StrCat("store '", name,
                                             "' changed in shard group ", g,
                                             " during the query; retry"));
    }
  }
  for (size_t i = 0; i < query.num_queries; ++i) {
    std::vector<const v1::Scored*> best;
    for (const v1::PartialStepResponse& part : *parts) {
      for (const v1::Scored& s : part.rows(static_cast<int>(i)).top()) {
        best.push_back(&s);
      }
    }
    // Best first, ties to the smaller id (as one engramd's top-k).
    std::sort(best.begin(), best.end(),
              [](const v1::Scored* a, const v1::Scored* b) {
                return a->score() != b->score() ? a->score() > b->score()
                                                : a->id() < b->id();
              });
    best.resize(std::min<size_t>(best.size(), params.top_k));
    for (const v1::Scored* s : best) {
      result.matches[i].push_back(
          {s->id(),
           core::LowRankWeight(s->score(), degree, last.normalisers[i]),
           s->score(), s->label()});
    }
  }
  return result;
}

}  // namespace engram::cluster
