#include "server/cluster/router.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "server/base/clip.h"
#include "server/cluster/shard_calls.h"
#include "server/rpc/client_stream.h"
#include "server/rpc/convert.h"
#include "server/rpc/import_stream.h"
#include "server/store/placement.h"
#include "server/store/retrieve.h"
#include "server/store/store.h"

namespace engram::cluster {

namespace {

namespace api = engram::v1;

// Ends a call with `result`'s value as the response, or its error.
template <typename T>
grpc::Status Answer(rpc::Call& call, absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return call.Done(result.status());
  *response = *std::move(result);
  return call.Done(absl::OkStatus());
}

// A store's pattern count: `known` counts per group, and the groups whose
// count is not known (max) asked of one replica each at once (GetStore)
// when constructed; Total() waits for them.
//
// Thread-compatible: one call's.
class GroupCounts {
 public:
  GroupCounts(ShardPool& pool, const std::string& store,
              std::vector<uint64_t> known, absl::Time deadline)
      : counts_(std::move(known)) {
    request_.set_name(store);
    std::vector<const Replica*> replicas;
    for (uint32_t g = 0; g < counts_.size(); ++g) {
      if (counts_[g] != kUnknown) continue;
      absl::StatusOr<const Replica*> r = pool.Pick(g);
      if (!r.ok()) {
        picked_ = r.status();
        return;
      }
      replicas.push_back(*r);
      asked_.push_back(g);
    }
    calls_.emplace(
        pool, replicas,
        [this](size_t) -> const api::GetStoreRequest& { return request_; },
        EngramCall(&api::Engram::Stub::async::GetStore), deadline,
        OnUnavailable::kFailOver);
  }

  // A group's count that is not known yet.
  static constexpr uint64_t kUnknown = std::numeric_limits<uint64_t>::max();

  // The store's pattern count.
  absl::StatusOr<uint64_t> Total() {
    if (!picked_.ok()) return picked_;
    if (absl::Status s = FirstError(calls_->Wait()); !s.ok()) return s;
    for (size_t i = 0; i < asked_.size(); ++i) {
      counts_[asked_[i]] = calls_->responses()[i].pattern_count();
    }
    uint64_t total = 0;
    for (uint64_t count : counts_) total += count;
    return total;
  }

 private:
  std::vector<uint64_t> counts_;
  api::GetStoreRequest request_;
  absl::Status picked_;
  std::vector<uint32_t> asked_;
  std::optional<Fanout<api::GetStoreRequest, api::Store>> calls_;
};

}  // namespace

Router::Router(ShardPool* pool, const rpc::CallPolicy* policy,
               RouterOptions options)
    : pool_(pool),
      policy_(policy),
      options_(std::move(options)),
      // Shared by the cluster's routers: a listing goes on through any.
      tokens_(absl::StrCat("router of cluster ", pool->cluster())),
      low_rank_(pool),
      jobs_(pool, {options_.limits, options_.calibration_threads}) {}

api::Store Router::MergeDescriptions(std::vector<api::Store> parts) {
  api::Store out = parts[0];
  uint64_t count = 0, version = 0, memory = 0, expired = 0;
  double mean = 0, mean_features = 0;
  api::NormStats norms;
  bool damaged = false;
  for (size_t g = 0; g < parts.size(); ++g) {
    const api::Store& p = parts[g];
    count += p.pattern_count();
    version += p.version();
    memory += p.memory_bytes();
    expired += p.expired_count();
    const double n = static_cast<double>(p.pattern_count());
    mean += n * p.norms().mean_norm();
    mean_features += n * p.norms().mean_feature_norm();
    norms.set_max_norm(std::max(norms.max_norm(), p.norms().max_norm()));
    norms.set_max_abs_entry(
        std::max(norms.max_abs_entry(), p.norms().max_abs_entry()));
    norms.set_max_feature_norm(
        std::max(norms.max_feature_norm(), p.norms().max_feature_norm()));
    // The first damaged part names its group (group 0's too, whose state
    // `out` copied).
    if (p.state() == api::Store::DAMAGED && !damaged) {
      damaged = true;
      out.set_state(api::Store::DAMAGED);
      out.set_state_detail(
          absl::StrCat("shard group ", g, ": ", p.state_detail()));
    }
  }
  if (count > 0) {
    norms.set_mean_norm(mean / static_cast<double>(count));
    norms.set_mean_feature_norm(mean_features / static_cast<double>(count));
  }
  out.set_pattern_count(count);
  out.set_version(version);
  out.set_memory_bytes(memory);  // One replica of each group.
  out.set_expired_count(expired);
  *out.mutable_norms() = norms;
  return out;
}

// --- Stores
// -------------------------------------------------------------------

absl::StatusOr<api::Store> Router::MergedStore(const std::string& name,
                                               absl::Time deadline) {
  absl::StatusOr<std::vector<api::Store>> parts =
      GroupStores(*pool_, name, deadline);
  if (!parts.ok()) return parts.status();
  return MergeDescriptions(*std::move(parts));
}

grpc::Status Router::CreateStore(Ctx* context,
                                 const api::CreateStoreRequest* request,
                                 api::Store* response) {
  rpc::Call call(policy_, "CreateStore", request->store().name());
  if (!call.Admit(*context, request)) return call.Refused();
  // Checked here, so that a bad request reaches no shard.
  if (absl::Status s = store::ValidateStoreName(request->store().name());
      !s.ok()) {
    return call.Done(s);
  }
  absl::StatusOr<store::StoreSettings> settings =
      store::SettingsFromProto(request->store(), /*fill_defaults=*/true);
  if (!settings.ok()) return call.Done(settings.status());
  if (absl::Status s = store::ValidateSettings(*settings, options_.limits);
      !s.ok()) {
    return call.Done(s);
  }
  const absl::Time deadline = DeadlineOf(context);
  absl::ReaderMutexLock writing(&pool_->write_gate());
  absl::StatusOr<std::vector<const Replica*>> every =
      pool_->EveryReadyReplica();
  if (!every.ok()) return call.Done(every.status());
  const std::vector<const Replica*>& replicas = *every;
  std::vector<api::Store> created;
  const std::vector<absl::Status> status =
      EngramOnEach(*pool_, replicas, &api::Engram::Stub::async::CreateStore,
                   *request, &created, deadline);
  if (absl::Status failed = FirstError(status); !failed.ok()) {
    // All or nothing: the shards that created it delete it again.
    api::DeleteStoreRequest undo;
    undo.set_name(request->store().name());
    for (size_t i = 0; i < replicas.size(); ++i) {
      if (!status[i].ok()) continue;
      api::DeleteStoreResponse ignored;
      Unary(*pool_, *replicas[i], *replicas[i]->engram,
            &api::Engram::Stub::DeleteStore, undo, &ignored, deadline)
          .IgnoreError();
    }
    return call.Done(failed);
  }
  *response = created[0];
  return call.Done(absl::OkStatus());
}

grpc::Status Router::GetStore(Ctx* context, const api::GetStoreRequest* request,
                              api::Store* response) {
  rpc::Call call(policy_, "GetStore", request->name());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<api::Store> merged =
      MergedStore(request->name(), DeadlineOf(context));
  return Answer(call, std::move(merged), response);
}

grpc::Status Router::ListStores(Ctx* context,
                                const api::ListStoresRequest* request,
                                api::ListStoresResponse* response) {
  rpc::Call call(policy_, "ListStores", "");
  if (!call.Admit(*context, request)) return call.Refused();
  std::string after;
  if (!request->page_token().empty()) {
    absl::StatusOr<std::string> cursor =
        tokens_.Open(rpc::PageTokens::Stores(), request->page_token());
    if (!cursor.ok()) return call.Done(cursor.status());
    after = *cursor;
  }
  const absl::Time deadline = DeadlineOf(context);
  absl::StatusOr<std::vector<std::string>> all = StoreNames(deadline);
  if (!all.ok()) return call.Done(all.status());
  std::vector<std::string> names(
      std::upper_bound(all->begin(), all->end(), after), all->end());
  const size_t size = request->page_size() == 0
                          ? 100
                          : std::min<size_t>(request->page_size(), 1000);
  for (size_t i = 0; i < names.size() && i < size; ++i) {
    absl::StatusOr<api::Store> merged = MergedStore(names[i], deadline);
    if (!merged.ok()) return call.Done(merged.status());
    *response->add_stores() = *std::move(merged);
  }
  if (names.size() > size) {
    response->set_next_page_token(
        tokens_.Issue(rpc::PageTokens::Stores(), names[size - 1]));
  }
  return call.Done(absl::OkStatus());
}

absl::StatusOr<std::vector<std::string>> Router::StoreNames(
    absl::Time deadline) {
  // Every group holds every store: group 0 names them (one replica a
  // whole listing: page tokens are its own).
  std::vector<std::string> names;
  const auto list = [&](const Replica& r) -> absl::Status {
    names.clear();
    api::ListStoresRequest page;
    page.set_page_size(1000);
    do {
      api::ListStoresResponse listed;
      if (absl::Status failed =
              Unary(*pool_, r, *r.engram, &api::Engram::Stub::ListStores, page,
                    &listed, deadline);
          !failed.ok()) {
        return failed;
      }
      for (const api::Store& store : listed.stores()) {
        names.push_back(store.name());
      }
      page.set_page_token(listed.next_page_token());
    } while (!page.page_token().empty());
    return absl::OkStatus();
  };
  if (absl::Status s = ReadFromGroup(*pool_, 0, list); !s.ok()) return s;
  std::sort(names.begin(), names.end());
  return names;
}

grpc::Status Router::UpdateStore(Ctx* context,
                                 const api::UpdateStoreRequest* request,
                                 api::Store* response) {
  rpc::Call call(policy_, "UpdateStore", request->store().name());
  if (!call.Admit(*context, request)) return call.Refused();
  ForgetRetrieval(request->store().name());  // Its settings change.
  const absl::Time deadline = DeadlineOf(context);
  absl::ReaderMutexLock writing(&pool_->write_gate());
  absl::StatusOr<std::vector<const Replica*>> every =
      pool_->EveryReadyReplica();
  if (!every.ok()) return call.Done(every.status());
  const std::vector<const Replica*>& replicas = *every;
  // The first replica checks the update; the rest follow only if it took it.
  api::Store first;
  if (absl::Status s =
          Unary(*pool_, *replicas[0], *replicas[0]->engram,
                &api::Engram::Stub::UpdateStore, *request, &first, deadline);
      !s.ok()) {
    return call.Done(s);
  }
  std::vector<api::Store> ignored;
  const std::vector<absl::Status> status = EngramOnEach(
      *pool_, std::vector<const Replica*>(replicas.begin() + 1, replicas.end()),
      &api::Engram::Stub::async::UpdateStore, *request, &ignored, deadline);
  // A replica that missed it goes stale if a peer of its group took it (the
  // repair copies the settings); a group where none did is an error.
  std::vector<bool> took(pool_->groups(), false);
  for (size_t i = 0; i < replicas.size(); ++i) {
    if (i == 0 || status[i - 1].ok()) took[replicas[i]->group] = true;
  }
  for (size_t i = 1; i < replicas.size(); ++i) {
    if (status[i - 1].ok()) continue;
    if (!took[replicas[i]->group]) {
      return call.Done(absl::Status(
          status[i - 1].code(),
          absl::StrCat("the update reached some shard groups but not "
                       "group ",
                       replicas[i]->group, ": ", status[i - 1].message(),
                       "; send it again")));
    }
    pool_->MarkStale(*replicas[i], status[i - 1].message());
  }
  absl::StatusOr<api::Store> merged =
      MergedStore(request->store().name(), deadline);
  return Answer(call, std::move(merged), response);
}

grpc::Status Router::DeleteStore(Ctx* context,
                                 const api::DeleteStoreRequest* request,
                                 api::DeleteStoreResponse* response) {
  rpc::Call call(policy_, "DeleteStore", request->name());
  if (!call.Admit(*context, request)) return call.Refused();
  const absl::Time deadline = DeadlineOf(context);
  absl::ReaderMutexLock writing(&pool_->write_gate());
  absl::StatusOr<std::vector<const Replica*>> every =
      pool_->EveryReadyReplica();
  if (!every.ok()) return call.Done(every.status());
  const std::vector<const Replica*>& replicas = *every;
  std::vector<api::DeleteStoreResponse> ignored;
  const std::vector<absl::Status> status =
      EngramOnEach(*pool_, replicas, &api::Engram::Stub::async::DeleteStore,
                   *request, &ignored, deadline);
  size_t missing = 0;
  for (const absl::Status& s : status) missing += absl::IsNotFound(s);
  if (missing == status.size()) return call.Done(status[0]);  // NOT_FOUND.
  for (const absl::Status& s : status) {
    if (!s.ok() && !absl::IsNotFound(s)) return call.Done(s);
  }
  low_rank_.Forget(request->name());
  ForgetRetrieval(request->name());
  return call.Done(absl::OkStatus());
}

// --- Patterns
// -----------------------------------------------------------------

namespace {

// How the answer to a write that failed in some group ends: the groups
// whose share stands (`did`: "added", "deleted"), else that nothing was
// written — where every group that failed refused before writing
// (`outcome_known`); else that no other group's share was.
std::string SharesThatStand(absl::string_view did,
                            const std::vector<std::string>& groups,
                            bool outcome_known) {
  if (!groups.empty()) {
    return absl::StrCat(did, " by groups ", absl::StrJoin(groups, ", "),
                        " (each group writes its share atomically)");
  }
  return outcome_known ? absl::StrCat("nothing was ", did)
                       : absl::StrCat("no other group's share was ", did);
}

// The error one engramd would give for a whole request that went to the
// groups in shares: where an answer names an element of its group's share
// (`field`: "ids[3] …", "patterns[3].id …"), that element is named by its
// place in the request (places[g][3]); a store's refusal that names no
// element comes first, as one engramd checks the store before the
// elements, then the answer naming the element earliest in the request.
// OK if every group's status is.
absl::Status FirstInRequest(const std::vector<absl::Status>& status,
                            absl::string_view field,
                            const std::vector<std::vector<int>>& places) {
  absl::Status first;
  size_t first_place = std::numeric_limits<size_t>::max();
  for (size_t g = 0; g < status.size(); ++g) {
    if (status[g].ok()) continue;
    absl::string_view rest = status[g].message();
    size_t j = 0;
    if (!absl::ConsumePrefix(&rest, field) ||
        !absl::ConsumePrefix(&rest, "[")) {
      return status[g];  // Names no element: the store's own refusal.
    }
    const size_t close = rest.find(']');
    if (close == absl::string_view::npos ||
        !absl::SimpleAtoi(rest.substr(0, close), &j) || j >= places[g].size()) {
      return status[g];
    }
    const size_t place = static_cast<size_t>(places[g][j]);
    if (place < first_place) {
      first_place = place;
      first = absl::Status(
          status[g].code(),
          absl::StrCat(field, "[", place, "]", rest.substr(close + 1)));
    }
  }
  return first;
}

}  // namespace

std::vector<std::vector<int>> Router::Place(
    const google::protobuf::RepeatedPtrField<api::Pattern>& patterns) {
  const uint32_t groups = pool_->groups();
  std::vector<std::vector<int>> members(groups);
  size_t automatic = 0;
  for (const api::Pattern& p : patterns) automatic += p.id() == 0;
  const uint64_t start = next_group_.fetch_add(1, std::memory_order_relaxed);
  size_t k = 0;
  for (int i = 0; i < patterns.size(); ++i) {
    const uint64_t id = patterns[i].id();
    const uint32_t g = id != 0
                           ? store::GroupOf(id, groups)
                           : static_cast<uint32_t>(
                                 (start + k++ * groups / automatic) % groups);
    members[g].push_back(i);
  }
  return members;
}

absl::StatusOr<std::vector<uint64_t>> Router::AddBatch(
    const std::string& store,
    const google::protobuf::RepeatedPtrField<api::Pattern>& patterns,
    const std::vector<std::vector<int>>& members, absl::Time deadline,
    std::vector<uint64_t>* group_counts,
    const std::function<void()>& alongside) {
  // What every group would refuse alike is refused here, before any group
  // writes: a batch one group refuses for its values, labels, metadata,
  // lifetimes or an id given twice reaches none (a store of another
  // dimension refuses every share alike).
  std::vector<store::Pattern> parsed;
  if (absl::Status s = rpc::FromProto(patterns, parsed); !s.ok()) return s;
  if (!parsed.empty()) {
    const size_t dim = parsed[0].values.size();
    if (absl::Status s =
            store::CheckBatch(parsed, dim,
                              absl::StrCat("patterns[0].values has ", dim,
                                           " (one batch, one "
                                           "dimension)"),
                              options_.limits);
        !s.ok()) {
      return s;
    }
  }
  const uint32_t groups = pool_->groups();
  std::vector<uint64_t> ids(patterns.size());
  group_counts->assign(groups, GroupCounts::kUnknown);
  const absl::Time now = absl::Now();
  std::vector<bool> writes(groups);
  std::vector<api::AddPatternsRequest> shares(groups);
  for (uint32_t g = 0; g < groups; ++g) {
    writes[g] = !members[g].empty();
    shares[g].set_store(store);
    for (int i : members[g]) *shares[g].add_patterns() = patterns[i];
    rpc::FixTtls(*shares[g].mutable_patterns(), now);
  }
  // The replica that decides assigns the ids; its followers take them.
  const std::vector<absl::Status> status =
      WriteToGroups<api::AddPatternsRequest, api::AddPatternsResponse>(
          *pool_, writes, &api::Engram::Stub::async::AddPatterns, &shares,
          [&](size_t g, const api::AddPatternsResponse& added,
              api::AddPatternsRequest* share) {
            if (static_cast<size_t>(added.ids_size()) != members[g].size()) {
              return absl::InternalError(absl::StrCat(
                  "shard group ", g, " answered ", added.ids_size(),
                  " ids for ", members[g].size(), " patterns"));
            }
            for (size_t j = 0; j < members[g].size(); ++j) {
              const uint64_t id = added.ids(static_cast<int>(j));
              ids[members[g][j]] = id;
              share->mutable_patterns(static_cast<int>(j))->set_id(id);
            }
            (*group_counts)[g] = added.pattern_count();
            return absl::OkStatus();
          },
          deadline, alongside);
  absl::Status failed = FirstInRequest(status, "patterns", members);
  if (failed.ok()) return ids;
  // A group refused its share before writing it (an id it holds, its
  // pattern limit): the groups that added theirs delete them again, so that
  // the batch is all or nothing through a router as on one engramd. Where a
  // group's outcome is unknown (it did not answer in time) nothing is taken
  // back: its share may stand, and taking the others' back could leave
  // only it.
  const bool refused = FailuresAllRefused(status);
  std::vector<bool> undo(groups);
  for (uint32_t g = 0; g < groups; ++g) {
    undo[g] = !members[g].empty() && status[g].ok();
  }
  std::vector<absl::Status> undone(groups);
  if (refused) {
    std::vector<api::DeletePatternsRequest> added(groups);
    for (uint32_t g = 0; g < groups; ++g) {
      added[g].set_store(store);
      for (int i : members[g]) added[g].add_ids(ids[i]);
    }
    // The undo gets time of its own if the call's is nearly gone.
    undone =
        WriteToGroups<api::DeletePatternsRequest, api::DeletePatternsResponse>(
            *pool_, undo, &api::Engram::Stub::async::DeletePatterns, &added,
            [](size_t, const api::DeletePatternsResponse&,
               api::DeletePatternsRequest*) { return absl::OkStatus(); },
            std::max(deadline, absl::Now() + absl::Seconds(10)));
  }
  std::vector<std::string> kept;
  for (uint32_t g = 0; g < groups; ++g) {
    if (!undo[g]) continue;
    if (!refused) {
      kept.push_back(absl::StrCat(g, " (", members[g].size(), " patterns)"));
    } else if (!undone[g].ok()) {
      kept.push_back(absl::StrCat(
          g, " (", members[g].size(),
          " patterns, not taken back: ", undone[g].message(), ")"));
    }
  }
  return absl::Status(failed.code(),
                      absl::StrCat(failed.message(), "; ",
                                   SharesThatStand("added", kept, refused)));
}

grpc::Status Router::StreamedAddPatterns(
    Ctx* context,
    grpc::ServerUnaryStreamer<api::AddPatternsRequest,
                              api::AddPatternsResponse>* streamer) {
  rpc::Call call(policy_, "AddPatterns", "");
  return rpc::ServeUnaryWrite(call, *context, *streamer,
                              [&](const api::AddPatternsRequest& request,
                                  api::AddPatternsResponse& response) {
                                return Add(call, *context, request, response);
                              });
}

grpc::Status Router::Add(rpc::Call& call, Ctx& context,
                         const api::AddPatternsRequest& request,
                         api::AddPatternsResponse& response) {
  if (request.patterns_size() == 0) {
    return call.Done(absl::InvalidArgumentError("patterns must not be empty"));
  }
  if (static_cast<size_t>(request.patterns_size()) >
      options_.limits.max_batch) {
    return call.Done(absl::ResourceExhaustedError(absl::StrCat(
        "patterns holds ", request.patterns_size(),
        " patterns; the limit max_batch is ", options_.limits.max_batch)));
  }
  const absl::Time deadline = DeadlineOf(&context);
  const std::vector<std::vector<int>> members = Place(request.patterns());
  std::vector<uint64_t> counts;
  // The groups the batch left alone are counted once the written ones have
  // decided, while their followers write (a count that fails over: a
  // replica gone meanwhile does not fail a write that held).
  std::optional<GroupCounts> total_count;
  absl::StatusOr<std::vector<uint64_t>> ids = AddBatch(
      request.store(), request.patterns(), members, deadline, &counts,
      [&] { total_count.emplace(*pool_, request.store(), counts, deadline); });
  if (!ids.ok()) return call.Done(ids.status());
  response.mutable_ids()->Assign(ids->begin(), ids->end());
  absl::StatusOr<uint64_t> total = total_count->Total();
  if (!total.ok()) return call.Done(total.status());
  response.set_pattern_count(*total);
  return call.Done(absl::OkStatus());
}

grpc::Status Router::ImportPatterns(
    Ctx* context, grpc::ServerReader<api::ImportPatternsRequest>* reader,
    api::ImportPatternsResponse* response) {
  rpc::Call call(policy_, "ImportPatterns", "");
  if (!call.Admit(*context, nullptr)) return call.Refused();
  const absl::Time deadline = DeadlineOf(context);
  api::ImportPatternsRequest message;
  rpc::ImportStream stream(policy_->max_message_bytes, &call);
  std::vector<uint64_t> counts;
  while (stream.Read(*reader, message)) {
    if (absl::Status s = stream.Next(message); !s.ok()) return call.Done(s);
    if (message.patterns_size() == 0) continue;
    absl::StatusOr<std::vector<uint64_t>> ids =
        AddBatch(stream.store(), message.patterns(), Place(message.patterns()),
                 deadline, &counts);
    if (!ids.ok()) return call.Done(stream.Failed(ids.status()));
    if (stream.added() == 0) response->set_first_id(ids->front());
    response->set_last_id(ids->back());
    stream.Committed(ids->size());
    response->set_patterns_added(stream.added());
  }
  if (absl::Status s = stream.End(); !s.ok()) return call.Done(s);
  response->set_batches(stream.messages());
  absl::StatusOr<uint64_t> total =
      GroupCounts(*pool_, stream.store(),
                  std::vector<uint64_t>(pool_->groups(), GroupCounts::kUnknown),
                  deadline)
          .Total();
  if (!total.ok()) return call.Done(total.status());
  response->set_pattern_count(*total);
  return call.Done(absl::OkStatus());
}

grpc::Status Router::GetPattern(Ctx* context,
                                const api::GetPatternRequest* request,
                                api::Pattern* response) {
  rpc::Call call(policy_, "GetPattern", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  const absl::Time deadline = DeadlineOf(context);
  return call.Done(ReadFromGroup(
      *pool_, store::GroupOf(request->id(), pool_->groups()),
      [&](const Replica& r) {
        return Unary(*pool_, r, *r.engram, &api::Engram::Stub::GetPattern,
                     *request, response, deadline);
      }));
}

grpc::Status Router::DeletePatterns(Ctx* context,
                                    const api::DeletePatternsRequest* request,
                                    api::DeletePatternsResponse* response) {
  rpc::Call call(policy_, "DeletePatterns", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  if (request->ids_size() == 0) {
    return call.Done(absl::InvalidArgumentError("ids must not be empty"));
  }
  // As one engramd checks them, before any group deletes its share.
  if (static_cast<size_t>(request->ids_size()) > options_.limits.max_batch) {
    return call.Done(absl::ResourceExhaustedError(absl::StrCat(
        "ids holds ", request->ids_size(), " ids; the limit max_batch is ",
        options_.limits.max_batch)));
  }
  absl::flat_hash_set<uint64_t> seen;
  for (int i = 0; i < request->ids_size(); ++i) {
    if (!seen.insert(request->ids(i)).second) {
      return call.Done(absl::InvalidArgumentError(
          absl::StrCat("ids[", i, "] ", request->ids(i), " appears twice")));
    }
  }
  const uint32_t groups = pool_->groups();
  std::vector<api::DeletePatternsRequest> shares(groups);
  std::vector<std::vector<int>> places(groups);  // Of each share's ids.
  for (int i = 0; i < request->ids_size(); ++i) {
    const uint32_t g = store::GroupOf(request->ids(i), groups);
    shares[g].add_ids(request->ids(i));
    places[g].push_back(i);
  }
  const absl::Time deadline = DeadlineOf(context);
  std::vector<uint64_t> counts(groups, GroupCounts::kUnknown);
  std::optional<GroupCounts> total_count;  // As AddPatterns'.
  std::vector<bool> writes(groups);
  std::vector<uint32_t> involved;
  for (uint32_t g = 0; g < groups; ++g) {
    writes[g] = shares[g].ids_size() > 0;
    shares[g].set_store(request->store());
    if (writes[g]) involved.push_back(g);
  }
  // A delete over several groups is checked by each of them first: an id
  // one group lacks deletes nothing anywhere, as on one engramd. Check and
  // delete are two calls: a delete of the same id by another client between
  // them still fails that group's share alone (the answer names the shares
  // that stand). A shard too old to have the check answers UNIMPLEMENTED:
  // its share goes unchecked, as before the check.
  if (involved.size() > 1) {
    std::vector<const Replica*> replicas;
    for (uint32_t g : involved) {
      absl::StatusOr<const Replica*> r = pool_->Pick(g);
      if (!r.ok()) return call.Done(r.status());
      replicas.push_back(*r);
    }
    std::vector<api::DeletePatternsResponse> checked;
    const std::vector<absl::Status> got =
        UnaryOnEach<api::DeletePatternsRequest>(
            *pool_, replicas,
            [&](size_t i) -> const api::DeletePatternsRequest& {
              return shares[involved[i]];
            },
            ShardCall(&v1::Shard::Stub::async::CheckDelete), &checked, deadline,
            OnUnavailable::kFailOver);
    std::vector<absl::Status> status(groups);
    for (size_t i = 0; i < involved.size(); ++i) {
      if (!absl::IsUnimplemented(got[i])) status[involved[i]] = got[i];
    }
    if (absl::Status s = FirstInRequest(status, "ids", places); !s.ok()) {
      return call.Done(s);
    }
  }
  const std::vector<absl::Status> status =
      WriteToGroups<api::DeletePatternsRequest, api::DeletePatternsResponse>(
          *pool_, writes, &api::Engram::Stub::async::DeletePatterns, &shares,
          [&counts](size_t g, const api::DeletePatternsResponse& deleted,
                    api::DeletePatternsRequest*) {
            counts[g] = deleted.pattern_count();
            return absl::OkStatus();
          },
          deadline,
          [&] {
            total_count.emplace(*pool_, request->store(), counts, deadline);
          });
  if (absl::Status failed = FirstInRequest(status, "ids", places);
      !failed.ok()) {
    std::vector<std::string> done;
    for (uint32_t g = 0; g < groups; ++g) {
      if (shares[g].ids_size() > 0 && status[g].ok()) {
        done.push_back(absl::StrCat(g, " (", shares[g].ids_size(), " ids)"));
      }
    }
    return call.Done(absl::Status(
        failed.code(),
        absl::StrCat(
            failed.message(), "; ",
            SharesThatStand("deleted", done, FailuresAllRefused(status)))));
  }
  absl::StatusOr<uint64_t> total = total_count->Total();
  if (!total.ok()) return call.Done(total.status());
  response->set_pattern_count(*total);
  return call.Done(absl::OkStatus());
}

// --- Jobs
// -----------------------------------------------------------------------

namespace {

template <typename Status>
JobTable<Status>& TableOf(ClusterJobs& jobs);
template <>
JobTable<api::FitStatus>& TableOf(ClusterJobs& jobs) {
  return jobs.fits();
}
template <>
JobTable<api::CalibrationStatus>& TableOf(ClusterJobs& jobs) {
  return jobs.calibrations();
}

// A shard's status of a store's job (group 0 speaks for all: every group
// stores the same map and report).
template <typename Status>
absl::Status ShardJobStatus(ShardPool& pool, const std::string& store,
                            absl::Time deadline, Status* response);
template <>
absl::Status ShardJobStatus(ShardPool& pool, const std::string& store,
                            absl::Time deadline, api::FitStatus* response) {
  api::GetFitStatusRequest get;
  get.set_store(store);
  return ReadFromGroup(pool, 0, [&](const Replica& r) {
    return Unary(pool, r, *r.engram, &api::Engram::Stub::GetFitStatus, get,
                 response, deadline);
  });
}
template <>
absl::Status ShardJobStatus(ShardPool& pool, const std::string& store,
                            absl::Time deadline,
                            api::CalibrationStatus* response) {
  api::GetCalibrationStatusRequest get;
  get.set_store(store);
  return ReadFromGroup(pool, 0, [&](const Replica& r) {
    return Unary(pool, r, *r.engram, &api::Engram::Stub::GetCalibrationStatus,
                 get, response, deadline);
  });
}

}  // namespace

template <typename Status>
absl::Status Router::JobStatusOf(const std::string& store, absl::Time deadline,
                                 Status* response) {
  if (std::optional<Status> mine = TableOf<Status>(jobs_).Get(store)) {
    *response = *std::move(mine);
    return absl::OkStatus();
  }
  // None ran here since this router started: what the shards published.
  return ShardJobStatus(*pool_, store, deadline, response);
}

template <typename Status>
absl::Status Router::CancelJob(const std::string& store, absl::Time deadline,
                               Status* response) {
  if (std::optional<Status> cancelled = TableOf<Status>(jobs_).Cancel(store)) {
    *response = *std::move(cancelled);
    return absl::OkStatus();
  }
  // Nothing runs here: as one engramd, the job's status as it stands (and
  // NOT_FOUND for a store that does not exist).
  return JobStatusOf(store, deadline, response);
}

template <typename Status>
absl::Status Router::WatchJob(grpc::ServerContext* context,
                              const std::string& store,
                              grpc::ServerWriter<Status>* writer) {
  JobTable<Status>& table = TableOf<Status>(jobs_);
  while (true) {
    uint64_t seen = 0;
    std::optional<Status> status = table.Get(store, &seen);
    if (!status) {
      Status published;
      if (absl::Status s =
              ShardJobStatus(*pool_, store, DeadlineOf(context), &published);
          !s.ok()) {
        return s;
      }
      writer->Write(published);
      return absl::OkStatus();
    }
    if (!writer->Write(*status)) return absl::OkStatus();
    if (status->state() != Status::PENDING &&
        status->state() != Status::RUNNING) {
      return absl::OkStatus();
    }
    // Wake at least once a second to notice a client that went away.
    while (table.WaitForChange(store, seen, absl::Seconds(1)) == seen) {
      if (context->IsCancelled()) {
        return absl::CancelledError("the client cancelled the watch");
      }
    }
  }
}

grpc::Status Router::GetFitStatus(Ctx* context,
                                  const api::GetFitStatusRequest* request,
                                  api::FitStatus* response) {
  rpc::Call call(policy_, "GetFitStatus", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(
      JobStatusOf(request->store(), DeadlineOf(context), response));
}

grpc::Status Router::GetCalibrationStatus(
    Ctx* context, const api::GetCalibrationStatusRequest* request,
    api::CalibrationStatus* response) {
  rpc::Call call(policy_, "GetCalibrationStatus", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(
      JobStatusOf(request->store(), DeadlineOf(context), response));
}

grpc::Status Router::WatchFit(Ctx* context, const api::WatchFitRequest* request,
                              grpc::ServerWriter<api::FitStatus>* writer) {
  rpc::Call call(policy_, "WatchFit", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(WatchJob(context, request->store(), writer));
}

grpc::Status Router::WatchCalibration(
    Ctx* context, const api::WatchCalibrationRequest* request,
    grpc::ServerWriter<api::CalibrationStatus>* writer) {
  rpc::Call call(policy_, "WatchCalibration", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(WatchJob(context, request->store(), writer));
}

grpc::Status Router::StartFit(Ctx* context, const api::StartFitRequest* request,
                              api::FitStatus* response) {
  rpc::Call call(policy_, "StartFit", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<api::Store> merged =
      MergedStore(request->store(), DeadlineOf(context));
  if (!merged.ok()) return call.Done(merged.status());
  absl::StatusOr<api::FitStatus> started = jobs_.StartFit(*merged);
  return Answer(call, std::move(started), response);
}

grpc::Status Router::StartCalibration(
    Ctx* context, const api::StartCalibrationRequest* request,
    api::CalibrationStatus* response) {
  rpc::Call call(policy_, "StartCalibration", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<api::Store> merged =
      MergedStore(request->store(), DeadlineOf(context));
  if (!merged.ok()) return call.Done(merged.status());
  std::optional<bool> apply;
  if (request->has_apply()) apply = request->apply();
  absl::StatusOr<api::CalibrationStatus> started =
      jobs_.StartCalibration(*merged, apply);
  return Answer(call, std::move(started), response);
}

grpc::Status Router::CancelFit(Ctx* context,
                               const api::CancelFitRequest* request,
                               api::FitStatus* response) {
  rpc::Call call(policy_, "CancelFit", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(CancelJob(request->store(), DeadlineOf(context), response));
}

grpc::Status Router::CancelCalibration(
    Ctx* context, const api::CancelCalibrationRequest* request,
    api::CalibrationStatus* response) {
  rpc::Call call(policy_, "CancelCalibration", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(CancelJob(request->store(), DeadlineOf(context), response));
}

// --- Cluster status
// -----------------------------------------------------------

grpc::Status RouterAdmin::ClusterStatus(grpc::ServerContext* context,
                                        const v1::ClusterStatusRequest* request,
                                        v1::ClusterState* response) {
  rpc::Call call(policy_, "ClusterStatus", "");
  if (!call.Admit(*context, request)) return call.Refused();
  response->set_cluster(cluster_);
  response->set_groups(pool_->groups());
  const std::vector<ReplicaStatus> all = pool_->Status();
  response->set_replicas(static_cast<uint32_t>(
      all.size() / std::max<uint32_t>(1, pool_->groups())));
  for (const ReplicaStatus& s : all) {
    v1::ReplicaState* r = response->add_shards();
    r->set_group(s.group);
    r->set_address(s.address);
    r->set_ready(s.ready);
    r->set_detail(s.detail);
    *r->mutable_stores() = s.description.stores();
  }
  return call.Done(absl::OkStatus());
}

}  // namespace engram::cluster
