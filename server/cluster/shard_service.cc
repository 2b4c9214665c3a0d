#include "server/cluster/shard_service.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/base/log.h"
#include "server/cluster/map_record.h"
#include "server/cluster/topology.h"
#include "server/core/low_rank.h"
#include "server/core/partial.h"
#include "server/core/sample.h"
#include "server/jobs/job_bodies.h"
#include "server/rpc/convert.h"
#include "server/store/gathered.h"
#include "server/store/retrieve.h"
#include "server/store/settings.h"

namespace engram::cluster {

namespace {

// The store's view with its expired patterns reclaimed first: a router's
// steps run over a shard's rows as they are, so they must not hold one
// (docs/expiry.md). If the reclaim fails (a full disk), the sweeper retries.
std::shared_ptr<const store::StoreView> LiveView(store::Store& s) {
  s.ReclaimExpired().IgnoreError();
  return s.view();
}

uint64_t Fnv1a(absl::string_view bytes, uint64_t h) {
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

// A hash of the settings replicas must share (not the calibration report
// or the creation time, which each replica keeps for itself), as they act:
// a feature dimension of 0 is the store's dimension (a replica a repair
// created from its peer's description holds the number).
uint64_t SettingsDigest(const store::StoreSettings& settings) {
  engram::v1::Store p;
  store::SettingsToProto(settings, p);
  p.clear_create_time();
  p.clear_calibration_report();
  p.mutable_feature_map()->set_feature_dim(store::FeatureDim(settings));
  return Fnv1a(p.SerializeAsString(), 0xcbf29ce484222325ULL);
}

// What names a part of the low-rank sums: the same version, content,
// settings and map give the same sums.
uint64_t SumsFingerprint(const store::StoreView& view) {
  std::string key =
      absl::StrCat(view.version(), ":", view.digest(), ":",
                   SettingsDigest(view.settings()), ":", view.fit().version);
  return Fnv1a(key, 0x84222325cbf29ce4ULL) | 1;  // Never 0 ("none held").
}

// PartialStep with top_only: each state's best top_k by the memories' keys.
absl::Status TopOnly(const store::StoreView& view,
                     const v1::PartialStepRequest& request,
                     const core::RetrievalParams& params,
                     const core::RetrievalOptions& options,
                     v1::PartialStepResponse& response) {
  const bool kernel = params.similarity == core::Similarity::kKernelDot;
  if (params.similarity != core::Similarity::kDot && !kernel) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_only scores by dot or kernel_dot, not ",
                     core::SimilarityName(params.similarity)));
  }
  const size_t count = request.count();
  if (kernel && view.map() == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store '", view.settings().name, "' has no feature map fitted"));
  }
  absl::StatusOr<std::vector<std::vector<core::Match>>> top =
      core::TopByKeys(view.memories(), request.states().data(), count,
                      params.beta, params.top_k, kernel, options);
  if (!top.ok()) return top.status();
  for (const std::vector<core::Match>& matches : *top) {
    v1::PartialRow* row = response.add_rows();
    for (const core::Match& m : matches) {
      v1::Scored* scored = row->add_top();
      const store::Chunk::RowInfo& info = view.info(m.index);
      scored->set_score(m.score);
      scored->set_id(info.id);
      scored->set_label(info.label);
    }
  }
  return absl::OkStatus();
}

// An exact step over the view's rows (`matched` only, if `filtered`) into
// `response`.
absl::Status Step(const store::StoreView& view,
                  const v1::PartialStepRequest& request, bool filtered,
                  const std::vector<uint32_t>& matched,
                  const core::RetrievalParams& params,
                  const core::RetrievalOptions& options,
                  v1::PartialStepResponse& response) {
  const size_t count = request.count();
  std::optional<store::Gathered> gathered;
  std::vector<uint64_t> rows_of;  // Memory index -> view row, if filtered.
  if (filtered) {
    gathered.emplace(view, matched);
    rows_of.assign(matched.begin(), matched.end());
  }
  absl::StatusOr<std::vector<core::PartialRow>> rows =
      core::PartialStep(filtered ? gathered->set() : view.memories(), rows_of,
                        request.states().data(), count, params, options);
  if (!rows.ok()) return rows.status();
  // View rows become pattern ids (and labels, for the matches).
  for (const core::PartialRow& row : *rows) {
    v1::PartialRow* out = response.add_rows();
    out->set_max(row.max);
    out->set_sum(row.sum);
    out->mutable_weighted()->Assign(row.weighted.begin(), row.weighted.end());
    for (const core::Scored& s : row.top) {
      v1::Scored* top = out->add_top();
      const store::Chunk::RowInfo& info = view.info(s.id);
      top->set_score(s.score);
      top->set_id(info.id);
      top->set_label(info.label);
    }
    for (const core::Scored& s : row.candidates) {
      v1::Scored* candidate = out->add_candidates();
      candidate->set_score(s.score);
      candidate->set_id(view.info(s.id).id);
    }
    out->mutable_values()->Assign(row.values.begin(), row.values.end());
    out->set_query_sq_norm(row.query_sq_norm);
  }
  return absl::OkStatus();
}

}  // namespace

rpc::AfterWrite StampRecorder() {
  return [](store::Store& written, const grpc::ServerContextBase& context) {
    const auto& metadata = context.client_metadata();
    auto found = metadata.find(kStampHeader);
    uint64_t stamp = 0;
    if (found == metadata.end() ||
        !absl::SimpleAtoi(
            absl::string_view(found->second.data(), found->second.size()),
            &stamp)) {
      return;  // Not from a router.
    }
    // A store deleted since the write refuses the stamp quietly (its data
    // is gone with it); one replaced by a restore refuses it too.
    absl::Status s = written.RaiseStamp(stamp);
    if (!s.ok() && !absl::IsNotFound(s)) {
      Log(LogLevel::kWarning, "store '%s': write stamp not kept: %s",
          written.name(), s.ToString());
    }
  };
}

ShardService::ShardService(store::StoreRegistry* registry,
                           const rpc::CallPolicy* policy, ShardOptions options)
    : registry_(registry), policy_(policy), options_(std::move(options)) {}

grpc::Status ShardService::Describe(grpc::ServerContext* context,
                                    const v1::DescribeRequest* request,
                                    v1::ShardDescription* response) {
  rpc::Call call(policy_, "Describe", "");
  if (!call.Admit(*context, request)) return call.Refused();
  response->set_cluster(options_.cluster);
  response->set_group(options_.placement.group);
  response->set_groups(options_.placement.groups);
  response->set_version(ENGRAM_VERSION);
  bool more = false;
  absl::StatusOr<std::vector<std::shared_ptr<store::Store>>> stores =
      registry_->List("", registry_->limits().max_stores, more);
  if (!stores.ok()) return call.Done(stores.status());
  for (const std::shared_ptr<store::Store>& s : *stores) {
    std::shared_ptr<const store::StoreView> view = s->view();
    v1::StoreState* state = response->add_stores();
    state->set_name(s->name());
    state->set_version(view->version());
    state->set_pattern_count(view->size());
    state->set_map_version(view->fit().version);
    state->set_state(engram::v1::Store::READY);
    state->set_digest(view->digest());
    state->set_settings_digest(SettingsDigest(view->settings()));
    state->set_stamp(s->stamp());
  }
  for (const store::StoreRegistry::DamagedStore& d : registry_->Damaged()) {
    v1::StoreState* state = response->add_stores();
    state->set_name(d.name);
    state->set_state(engram::v1::Store::DAMAGED);
  }
  return call.Done(absl::OkStatus());
}

grpc::Status ShardService::PartialStep(grpc::ServerContext* context,
                                       const v1::PartialStepRequest* request,
                                       v1::PartialStepResponse* response) {
  rpc::Call call(policy_, "PartialStep", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  std::shared_ptr<const store::StoreView> view = LiveView(**found);
  // States are vectors of the store's dimension, or under top_only with
  // kernel_dot, features.
  const bool features = request->top_only() &&
                        request->similarity() == engram::v1::KERNEL_DOT &&
                        view->map() != nullptr;
  const size_t d =
      features ? view->map()->out_dim() : view->settings().dimension;
  const size_t count = request->count();
  if (count == 0 || static_cast<size_t>(request->states_size()) != count * d) {
    return call.Done(absl::InvalidArgumentError(
        absl::StrCat("states has ", request->states_size(), " values; count ",
                     count, " states of dimension ", d, " need ", count * d)));
  }
  core::RetrievalParams params;
  absl::StatusOr<core::Similarity> similarity =
      store::SimilarityFromProto(request->similarity(), "similarity");
  if (!similarity.ok()) return call.Done(similarity.status());
  absl::StatusOr<core::Separation> separation =
      store::SeparationFromProto(request->separation(), "separation");
  if (!separation.ok()) return call.Done(separation.status());
  params.similarity = *similarity;
  params.separation = *separation;
  params.beta = request->beta();
  params.top_k = request->top_k();
  // A filter narrows the step to the matching rows, gathered as a store of
  // only them would hold them; memory i of the step is then row matched[i].
  std::vector<uint32_t> matched;
  bool filtered = false;
  if (request->has_filter()) {
    absl::StatusOr<store::Filter> filter = rpc::FromProto(request->filter());
    if (!filter.ok()) return call.Done(filter.status());
    if (absl::Status s = store::ValidateFilter(*filter, options_.limits);
        !s.ok()) {
      return call.Done(s);
    }
    filtered = !filter->empty();
    if (filtered && request->top_only()) {
      return call.Done(absl::InvalidArgumentError(
          "filter: a top_only step serves the low-rank path, which filtered "
          "retrievals do not take"));
    }
    if (filtered && view->size() > 0) {
      absl::StatusOr<std::vector<uint32_t>> matching =
          view->Matching(*filter, rpc::DeadlineCheck(context));
      if (!matching.ok()) return call.Done(matching.status());
      matched = *std::move(matching);
    }
  }
  const size_t patterns = filtered ? matched.size() : view->size();
  response->set_map_version(view->fit().version);
  response->set_store_version(view->version());
  response->set_patterns(patterns);
  if (patterns == 0) {  // Nothing of this part to step over: an empty row.
    for (size_t i = 0; i < count; ++i) {
      response->add_rows()->set_max(-INFINITY);
    }
    return call.Done(absl::OkStatus());
  }
  // A retrieval's first states are its queries, in their order (later ones
  // are mixtures of patterns, within the store's norms).
  if (absl::Status s = store::CheckScoresFit(
          *view, params, request->states().data(), count, features, "queries");
      !s.ok()) {
    return call.Done(s);
  }
  core::RetrievalOptions options;
  options.threads = options_.retrieval_threads;
  options.check = rpc::DeadlineCheck(context);
  return call.Done(
      RunStep(call,
              static_cast<double>(count) * static_cast<double>(patterns) *
                  static_cast<double>(d + 64),
              request->ByteSizeLong(), [&]() -> absl::Status {
                if (request->top_only()) {
                  return TopOnly(*view, *request, params, options, *response);
                }
                return Step(*view, *request, filtered, matched, params, options,
                            *response);
              }));
}

absl::Status ShardService::RunStep(rpc::Call& call, double work,
                                   size_t request_bytes,
                                   absl::FunctionRef<absl::Status()> step) {
  if (options_.handlers == nullptr || work <= options_.inline_work) {
    return step();
  }
  return call.RunRetrieval(*options_.handlers, request_bytes, step);
}

grpc::Status ShardService::GetValues(grpc::ServerContext* context,
                                     const v1::GetValuesRequest* request,
                                     v1::GetValuesResponse* response) {
  rpc::Call call(policy_, "GetValues", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  for (uint64_t id : request->ids()) {
    absl::StatusOr<store::Pattern> p = (*found)->Get(id);
    if (!p.ok()) return call.Done(p.status());
    response->mutable_values()->Add(p->values.begin(), p->values.end());
  }
  return call.Done(absl::OkStatus());
}

grpc::Status ShardService::ListPatternsAfter(
    grpc::ServerContext* context, const v1::ListPatternsAfterRequest* request,
    v1::ListPatternsAfterResponse* response) {
  rpc::Call call(policy_, "ListPatternsAfter", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  // Made only while memory is left (gRPC holds it until it is read).
  if (absl::Status s = call.TakeAnswerMemory(
          rpc::ListPageBytes(**found, request->page_size(),
                             !request->omit_values(), registry_->limits(),
                             policy_->max_message_bytes),
          "a page of patterns");
      !s.ok()) {
    return call.Done(s);
  }
  store::Store::Page page = rpc::ListPage(
      **found, request->after_id(), request->page_size(),
      !request->omit_values(), registry_->limits(), policy_->max_message_bytes);
  for (const store::Pattern& p : page.patterns) {
    rpc::ToProto(p, *response->add_patterns());
  }
  response->set_more(page.more);
  return call.Done(absl::OkStatus());
}

grpc::Status ShardService::CheckDelete(
    grpc::ServerContext* context,
    const engram::v1::DeletePatternsRequest* request,
    engram::v1::DeletePatternsResponse* response) {
  rpc::Call call(policy_, "CheckDelete", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  if (absl::Status s = (*found)->CheckDelete(
          absl::MakeConstSpan(request->ids().data(), request->ids_size()));
      !s.ok()) {
    return call.Done(s);
  }
  response->set_pattern_count((*found)->view()->size());
  return call.Done(absl::OkStatus());
}

grpc::Status ShardService::GetLowRankSums(grpc::ServerContext* context,
                                          const v1::LowRankSumsRequest* request,
                                          v1::LowRankSums* response) {
  rpc::Call call(policy_, "GetLowRankSums", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  std::shared_ptr<const store::StoreView> view = LiveView(**found);
  response->set_fingerprint(SumsFingerprint(*view));
  response->set_store_version(view->version());
  response->set_map_version(view->fit().version);
  rpc::ToProto(*view, *response->mutable_store());
  if (request->known_fingerprint() == response->fingerprint()) {
    response->set_unchanged(true);
    return call.Done(absl::OkStatus());
  }
  const core::LowRankSums* sums = view->low_rank().get();
  response->set_dimension(static_cast<uint32_t>(view->settings().dimension));
  response->set_pattern_count(view->size());
  if (sums == nullptr) {
    response->set_detail(view->low_rank_state().detail);
    return call.Done(absl::OkStatus());
  }
  response->set_degree(sums->basis().degree());
  response->set_feature_dim(static_cast<uint32_t>(sums->basis().dim()));
  response->set_keys_are_rows(sums->keys_are_rows());
  response->mutable_a()->Assign(sums->a().begin(), sums->a().end());
  response->mutable_z()->Assign(sums->z().begin(), sums->z().end());
  response->set_sq_norm_sum(sums->sq_norm_sum());
  response->set_max_norm(view->norms().max_norm);
  response->set_max_feature_norm(view->norms().max_feature_norm);
  response->set_map_norm(view->map_norm());
  if (!sums->keys_are_rows() && view->map() != nullptr) {
    FeatureMapToProto(request->store(), *view->map(), view->fit(),
                      *response->mutable_map());
  }
  return call.Done(absl::OkStatus());
}

grpc::Status ShardService::GetSample(grpc::ServerContext* context,
                                     const v1::SampleRequest* request,
                                     v1::Sample* response) {
  rpc::Call call(policy_, "GetSample", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  std::shared_ptr<const store::StoreView> view = LiveView(**found);
  const size_t d = view->settings().dimension;
  // Bounded by the answer a call may carry.
  const size_t most = policy_->max_message_bytes / (4 * d + 8);
  if (request->count() > most) {
    return call.Done(rpc::TooLarge(
        absl::StrCat("a sample of ", request->count(), " patterns"),
        request->count() * 4 * d, policy_->max_message_bytes,
        absl::StrCat("ask for at most ", most)));
  }
  const size_t count = std::min<size_t>(request->count(), view->size());
  std::mt19937_64 rng(request->seed());
  std::vector<size_t> chosen =
      core::SampleIndices(view->size(), count, {}, rng);
  std::sort(chosen.begin(), chosen.end(), [&](size_t a, size_t b) {
    return view->info(a).id < view->info(b).id;
  });
  response->set_dimension(static_cast<uint32_t>(d));
  response->set_count(count);
  response->set_store_version(view->version());
  response->mutable_values()->Reserve(static_cast<int>(count * d));
  for (size_t i : chosen) {
    const std::vector<float> row = view->Row(i);
    response->mutable_values()->Add(row.begin(), row.end());
    response->add_ids(view->info(i).id);
  }
  return call.Done(absl::OkStatus());
}

grpc::Status ShardService::PutFeatureMap(grpc::ServerContext* context,
                                         const v1::FeatureMapRecord* request,
                                         v1::PutFeatureMapResponse* response) {
  rpc::Call call(policy_, "PutFeatureMap", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  store::Store& store = **found;
  call.Wrote(*found);  // Stamped only if the call ends well.
  absl::StatusOr<std::shared_ptr<const core::FeatureMap>> map =
      FeatureMapFromProto(*request);
  if (!map.ok()) return call.Done(map.status());
  std::shared_ptr<const store::StoreView> view = store.view();
  if (request->version() == view->fit().version && view->map() != nullptr &&
      view->map()->weights() == (*map)->weights()) {
    response->set_map_version(view->fit().version);  // Sent again: done.
    return call.Done(absl::OkStatus());
  }
  if (absl::Status s = store.PublishMap(*map, FitRecordFromProto(*request));
      !s.ok()) {
    return call.Done(s);
  }
  if (options_.jobs != nullptr) {
    options_.jobs->Published(jobs::JobKind::kFit, request->store());
  }
  response->set_map_version(request->version());
  return call.Done(absl::OkStatus());
}

grpc::Status ShardService::GetFeatureMap(
    grpc::ServerContext* context, const v1::GetFeatureMapRequest* request,
    v1::FeatureMapRecord* response) {
  rpc::Call call(policy_, "GetFeatureMap", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  std::shared_ptr<const store::StoreView> view = LiveView(**found);
  const store::FitRecord& r = view->fit();
  if (r.version == 0 || view->map() == nullptr) {
    return call.Done(absl::NotFoundError(absl::StrCat(
        "store '", request->store(), "' has no fitted feature map")));
  }
  FeatureMapToProto(request->store(), *view->map(), r, *response);
  return call.Done(absl::OkStatus());
}

grpc::Status ShardService::PutCalibration(
    grpc::ServerContext* context, const v1::CalibrationRecord* request,
    engram::v1::CalibrationReport* response) {
  rpc::Call call(policy_, "PutCalibration", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  const engram::v1::RetrievalSettings& r = request->calibrated();
  core::RetrievalParams calibrated;
  absl::StatusOr<core::Similarity> similarity =
      store::SimilarityFromProto(r.similarity(), "calibrated.similarity");
  if (!similarity.ok()) return call.Done(similarity.status());
  absl::StatusOr<core::Separation> separation =
      store::SeparationFromProto(r.separation(), "calibrated.separation");
  if (!separation.ok()) return call.Done(separation.status());
  calibrated.similarity = *similarity;
  calibrated.separation = *separation;
  calibrated.beta = r.beta();
  calibrated.steps = r.steps();
  calibrated.eps = r.eps();
  absl::StatusOr<engram::v1::CalibrationReport> stored = jobs::StoreReport(
      **found, request->report(), request->apply(), calibrated);
  if (!stored.ok()) return call.Done(stored.status());
  if (options_.jobs != nullptr) {
    options_.jobs->Published(jobs::JobKind::kCalibration, request->store());
  }
  *response = *std::move(stored);
  call.Wrote(*found);
  return call.Done(absl::OkStatus());
}

}  // namespace engram::cluster
