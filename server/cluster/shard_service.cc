#include "server/cluster/shard_service.h"

#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/core/partial.h"
#include "server/store/settings.h"

namespace engram::cluster {

namespace {

// A hash of the settings replicas must share (not the calibration report
// or the creation time, which each replica keeps for itself).
uint64_t SettingsDigest(const store::StoreSettings& settings) {
  engram::v1::Store p;
  store::SettingsToProto(settings, p);
  p.clear_create_time();
  p.clear_calibration_report();
  const std::string bytes = p.SerializeAsString();
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

}  // namespace

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
  std::shared_ptr<const store::StoreView> view = (*found)->view();
  const size_t d = view->settings().dimension;
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
  response->set_map_version(view->fit().version);
  response->set_store_version(view->version());
  if (view->size() == 0) {  // This shard's part is empty: an empty row each.
    for (size_t i = 0; i < count; ++i) {
      response->add_rows()->set_max(-INFINITY);
    }
    return call.Done(absl::OkStatus());
  }
  core::RetrievalOptions options;
  options.threads = options_.retrieval_threads;
  options.check = rpc::DeadlineCheck(context);
  absl::StatusOr<std::vector<core::PartialRow>> rows = core::PartialStep(
      view->memories(), {}, request->states().data(), count, params, options);
  if (!rows.ok()) return call.Done(rows.status());
  // Memory indices become pattern ids (and labels, for the matches).
  for (const core::PartialRow& row : *rows) {
    v1::PartialRow* out = response->add_rows();
    out->set_max(row.max);
    out->set_sum(row.sum);
    out->mutable_weighted()->Assign(row.weighted.begin(), row.weighted.end());
    for (const core::Scored& s : row.top) {
      v1::Scored* top = out->add_top();
      const store::Chunk::RowInfo& info = view->info(s.id);
      top->set_score(s.score);
      top->set_id(info.id);
      top->set_label(info.label);
    }
    for (const core::Scored& s : row.candidates) {
      v1::Scored* candidate = out->add_candidates();
      candidate->set_score(s.score);
      candidate->set_id(view->info(s.id).id);
    }
    out->mutable_values()->Assign(row.values.begin(), row.values.end());
    out->set_query_sq_norm(row.query_sq_norm);
  }
  return call.Done(absl::OkStatus());
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

}  // namespace engram::cluster
