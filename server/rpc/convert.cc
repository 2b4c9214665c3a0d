#include "server/rpc/convert.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/base/clip.h"

namespace engram::rpc {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

void ToProto(const store::StoreView& view, v1::Store& out) {
  const store::StoreSettings& s = view.settings();
  store::SettingsToProto(s, out);
  // The output-only fields: what the store holds and is.
  out.mutable_feature_map()->set_feature_dim(store::FeatureDim(s));
  // Expired patterns not yet reclaimed count nowhere.
  const int64_t now = absl::GetCurrentTimeNanos();
  out.set_pattern_count(view.LiveCount(now));
  out.set_expired_count(view.expired_count());
  out.set_memory_bytes(view.memory_bytes());
  const store::NormStats stats = view.LiveNorms(now);
  v1::NormStats* norms = out.mutable_norms();
  norms->set_max_norm(stats.max_norm);
  norms->set_mean_norm(stats.mean_norm);
  norms->set_max_abs_entry(stats.max_abs_entry);
  norms->set_max_feature_norm(stats.max_feature_norm);
  norms->set_mean_feature_norm(stats.mean_feature_norm);
  v1::LowRankState* low_rank = out.mutable_low_rank_state();
  low_rank->set_degree(view.low_rank_state().degree);
  low_rank->set_rank(view.low_rank_state().rank);
  low_rank->set_detail(view.low_rank_state().detail);
  out.set_version(view.version());
  out.set_state(v1::Store::READY);
}

void ToProto(const store::Pattern& pattern, v1::Pattern& out) {
  out.set_id(pattern.id);
  out.mutable_values()->Assign(pattern.values.begin(), pattern.values.end());
  out.set_label(pattern.label);
  for (const auto& [key, value] : pattern.metadata) {
    (*out.mutable_metadata())[key] = value;
  }
  if (pattern.expire_ns != 0) {
    store::TimeToProto(absl::FromUnixNanos(pattern.expire_ns),
                       *out.mutable_expire_time());
  }
}

absl::StatusOr<store::Pattern> FromProto(const v1::Pattern& pattern,
                                         absl::Time now, size_t index) {
  store::Pattern out;
  out.id = pattern.id();
  out.values.assign(pattern.values().begin(), pattern.values().end());
  out.label = pattern.label();
  out.metadata.assign(pattern.metadata().begin(), pattern.metadata().end());
  std::sort(out.metadata.begin(), out.metadata.end());
  if (pattern.has_ttl() && pattern.has_expire_time()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "patterns[", index, "]: give expire_time or ttl, not both"));
  }
  if (pattern.has_ttl()) {
    const absl::Duration ttl = store::DurationFromProto(pattern.ttl());
    if (absl::Status status =
            store::ValidateTtl(ttl, absl::StrCat("patterns[", index, "].ttl"));
        !status.ok()) {
      return status;
    }
    out.expire_ns = absl::ToUnixNanos(now + ttl);
  } else if (pattern.has_expire_time()) {
    const google::protobuf::Timestamp& t = pattern.expire_time();
    if (t.seconds() <= 0 || t.nanos() < 0 || t.nanos() > 999999999 ||
        store::TimeFromProto(t) > now + store::kMaxTtl) {
      return absl::InvalidArgumentError(absl::StrCat(
          "patterns[", index,
          "].expire_time must be a valid time at most 100 years ahead"));
    }
    out.expire_ns = absl::ToUnixNanos(store::TimeFromProto(t));
  }
  return out;
}

absl::Status FromProto(
    const google::protobuf::RepeatedPtrField<v1::Pattern>& patterns,
    std::vector<store::Pattern>& out) {
  const absl::Time now = absl::Now();
  out.clear();
  out.reserve(patterns.size());
  for (int i = 0; i < patterns.size(); ++i) {
    absl::StatusOr<store::Pattern> p = FromProto(patterns[i], now, i);
    if (!p.ok()) return p.status();
    out.push_back(*std::move(p));
  }
  return absl::OkStatus();
}

void FixTtls(google::protobuf::RepeatedPtrField<v1::Pattern>& patterns,
             absl::Time now) {
  for (v1::Pattern& p : patterns) {
    if (!p.has_ttl() || p.has_expire_time()) continue;
    const absl::Duration ttl = store::DurationFromProto(p.ttl());
    if (!store::ValidateTtl(ttl, "ttl").ok()) continue;  // The shard says so.
    store::TimeToProto(now + ttl, *p.mutable_expire_time());
    p.clear_ttl();
  }
}

absl::StatusOr<store::PathChoice> PathFromProto(v1::RetrievalPath path) {
  switch (path) {
    case v1::RETRIEVAL_PATH_UNSPECIFIED:
    case v1::AUTO:
      return store::PathChoice::kAuto;
    case v1::EXACT:
      return store::PathChoice::kExact;
    case v1::LOW_RANK:
      return store::PathChoice::kLowRank;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("path has unknown value ", static_cast<int>(path)));
  }
}

v1::RetrievalPath PathToProto(store::PathChoice path) {
  switch (path) {
    case store::PathChoice::kAuto:
      return v1::AUTO;
    case store::PathChoice::kExact:
      return v1::EXACT;
    case store::PathChoice::kLowRank:
      return v1::LOW_RANK;
  }
  return v1::RETRIEVAL_PATH_UNSPECIFIED;
}

size_t PageSize(uint32_t requested) {
  if (requested == 0) return 100;
  return std::min<size_t>(requested, 1000);
}

namespace {

// How many patterns one page holds at most, and the bytes each may take in
// an answer without its metadata.
struct PageBound {
  size_t patterns;
  size_t row_bytes;
};

PageBound BoundPage(const store::StoreView& view, uint32_t page_size,
                    bool with_values, const store::Limits& limits,
                    size_t max_message_bytes) {
  const size_t row_bytes =
      (with_values ? 4 * view.settings().dimension + 6 : 0) + 24 +
      view.max_label_bytes();
  const size_t per_pattern =
      row_bytes +
      limits.max_metadata_entries * (2 * limits.max_metadata_bytes + 8);
  const size_t fits =
      std::max<size_t>(1, (max_message_bytes - 64) / per_pattern);
  return {std::min(PageSize(page_size), fits), row_bytes};
}

}  // namespace

store::Store::Page ListPage(const store::Store& store, uint64_t after,
                            uint32_t page_size, bool with_values,
                            const store::Limits& limits,
                            size_t max_message_bytes) {
  const PageBound bound = BoundPage(*store.view(), page_size, with_values,
                                    limits, max_message_bytes);
  return store.List(after, bound.patterns, with_values);
}

size_t ListPageBytes(const store::Store& store, uint32_t page_size,
                     bool with_values, const store::Limits& limits,
                     size_t max_message_bytes) {
  std::shared_ptr<const store::StoreView> view = store.view();
  const PageBound bound =
      BoundPage(*view, page_size, with_values, limits, max_message_bytes);
  return std::min(bound.patterns, view->size()) * bound.row_bytes;
}

absl::StatusOr<store::RetrieveRequest> FromProto(
    const v1::RetrieveRequest& request, size_t dim,
    std::vector<float>& queries) {
  queries.clear();
  queries.reserve(request.queries_size() * dim);
  for (int i = 0; i < request.queries_size(); ++i) {
    const auto& values = request.queries(i).values();
    if (static_cast<size_t>(values.size()) != dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "queries[", i, "].values has ", values.size(), " values; store '",
          Clip(request.store()), "' has dimension ", dim));
    }
    // Through pointers: RepeatedField's iterators copy a value at a time.
    queries.insert(queries.end(), values.data(), values.data() + dim);
  }
  store::RetrieveRequest query;
  query.queries = queries;
  query.num_queries = request.queries_size();
  if (request.has_steps()) query.steps = request.steps();
  if (request.has_beta()) query.beta = request.beta();
  if (request.has_top_k()) query.top_k = request.top_k();
  if (request.has_eps()) query.eps = request.eps();
  if (request.has_tolerance()) query.tolerance = request.tolerance();
  absl::StatusOr<store::PathChoice> path = PathFromProto(request.path());
  if (!path.ok()) return path.status();
  query.path = *path;
  if (request.has_filter()) {
    absl::StatusOr<store::Filter> filter = FromProto(request.filter());
    if (!filter.ok()) return filter.status();
    query.filter = *std::move(filter);
  }
  return query;
}

absl::StatusOr<store::Filter> FromProto(const v1::Filter& filter) {
  if (!v1::Filter::Combine_IsValid(filter.combine())) {
    return absl::InvalidArgumentError(
        absl::StrCat("filter.combine has unknown value ", filter.combine()));
  }
  store::Filter out;
  out.labels.assign(filter.labels().begin(), filter.labels().end());
  for (const v1::MetadataCondition& c : filter.metadata()) {
    out.conditions.emplace_back(c.key(), c.value());
  }
  out.any = filter.combine() == v1::Filter::ANY;
  return out;
}

void ToProto(const store::RetrieveResult& result, size_t dim, bool omit_vectors,
             v1::RetrieveResponse& out) {
  const size_t count = result.energies.size();
  out.mutable_results()->Reserve(static_cast<int>(count));
  for (size_t i = 0; i < count; ++i) {
    v1::QueryResult* r = out.add_results();
    if (!omit_vectors) {
      r->mutable_values()->Assign(result.states.begin() + i * dim,
                                  result.states.begin() + (i + 1) * dim);
    }
    for (const store::MatchedPattern& m : result.matches[i]) {
      v1::Match* match = r->add_matches();
      match->set_id(m.id);
      match->set_weight(m.weight);
      match->set_score(m.score);
      match->set_label(m.label);
    }
    r->set_energy(result.energies[i]);
    r->set_steps(result.steps[i]);
    r->set_converged(result.converged[i] != 0);
  }
  v1::PathReport* report = out.mutable_path();
  report->set_path(PathToProto(result.path.path));
  report->set_degree(result.path.degree);
  report->set_rank(result.path.rank);
  report->set_error_bound(result.path.error_bound);
  report->set_reason(result.path.reason);
  out.set_store_version(result.store_version);
}

}  // namespace engram::rpc
