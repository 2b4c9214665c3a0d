#include "server/cluster/low_rank_cache.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "server/cluster/map_record.h"
#include "server/cluster/shard_calls.h"
#include "server/store/settings.h"

namespace engram::cluster {

namespace {

bool AllFinite(absl::Span<const double> values) {
  return std::all_of(values.begin(), values.end(),
                     [](double v) { return std::isfinite(v); });
}

// OK if part `g` holds what its shape says, in finite numbers: a shard's
// answer is checked before anything is sized by it.
absl::Status CheckPart(const std::string& store, size_t g,
                       const v1::LowRankSums& p) {
  const auto refuse = [&](auto&&... what) {
    return absl::InternalError(absl::StrCat("shard group ", g,
                                            " sent low-rank sums of store '",
                                            store, "' with ", what...));
  };
  if (p.degree() % 2 != 0 || p.degree() > store::kMaxLowRankDegree) {
    return refuse("degree ", p.degree(), " (an even number in [2, ",
                  store::kMaxLowRankDegree, "])");
  }
  if (p.feature_dim() == 0 || p.dimension() == 0) {
    return refuse("feature_dim ", p.feature_dim(), " and dimension ",
                  p.dimension(), " (both at least 1)");
  }
  const uint64_t rank = core::TaylorRank(p.feature_dim(), p.degree());
  if (static_cast<uint64_t>(p.z_size()) != rank) {
    return refuse(p.z_size(), " values in z (", rank,
                  " monomials of degree <= ", p.degree(), " in ",
                  p.feature_dim(), " variables)");
  }
  if (static_cast<uint64_t>(p.a_size()) != rank * p.dimension()) {
    return refuse(p.a_size(), " values in a (", rank, " x ", p.dimension(),
                  ")");
  }
  if (!AllFinite(p.a()) || !AllFinite(p.z()) ||
      !AllFinite({p.sq_norm_sum(), p.max_norm(), p.max_feature_norm(),
                  p.map_norm()})) {
    return refuse("a value that is not finite");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<MergedLowRank>> MergeParts(
    const std::string& store,
    const std::vector<std::shared_ptr<const v1::LowRankSums>>& parts) {
  auto out = std::make_shared<MergedLowRank>();
  store::LowRankForm& form = out->form;
  form.store = store;
  uint32_t degree = std::numeric_limits<uint32_t>::max();
  for (size_t g = 0; g < parts.size(); ++g) {
    const v1::LowRankSums& p = *parts[g];
    const v1::LowRankSums& first = *parts[0];
    out->versions.push_back(p.store_version());
    form.patterns += p.pattern_count();
    if (!form.detail.empty()) continue;
    if (p.degree() == 0) {
      form.detail = absl::StrCat("shard group ", g, ": ", p.detail());
      continue;
    }
    if (absl::Status s = CheckPart(store, g, p); !s.ok()) return s;
    if (p.feature_dim() != first.feature_dim() ||
        p.dimension() != first.dimension() ||
        p.keys_are_rows() != first.keys_are_rows()) {
      return absl::InternalError(absl::StrCat(
          "the low-rank sums of store '", store, "' in shard groups 0 and ", g,
          " have different shapes (", first.feature_dim(), " x ",
          first.dimension(), " and ", p.feature_dim(), " x ", p.dimension(),
          ")"));
    }
    if (!p.keys_are_rows() && p.map_version() != first.map_version()) {
      form.detail =
          absl::StrCat("shard groups 0 and ", g, " hold feature maps v",
                       first.map_version(), " and v", p.map_version());
      continue;
    }
    degree = std::min(degree, p.degree());
    form.max_norm = std::max(form.max_norm, p.max_norm());
    form.max_feature_norm =
        std::max(form.max_feature_norm, p.max_feature_norm());
    form.map_norm = std::max(form.map_norm, p.map_norm());
  }
  if (!form.detail.empty() || parts.empty()) return out;
  const v1::LowRankSums& first = *parts[0];
  auto sums = std::make_shared<core::LowRankSums>(
      std::make_shared<const core::TaylorBasis>(first.feature_dim(), degree),
      first.dimension(), first.keys_are_rows());
  for (size_t g = 0; g < parts.size(); ++g) {
    const v1::LowRankSums& p = *parts[g];
    if (absl::Status s =
            sums->AddPart(absl::MakeConstSpan(p.a()),
                          absl::MakeConstSpan(p.z()), p.sq_norm_sum());
        !s.ok()) {
      return absl::InternalError(absl::StrCat("shard group ", g, " of store '",
                                              store, "': ", s.message()));
    }
  }
  sums->Finish();
  if (!first.keys_are_rows()) {
    const v1::FeatureMapRecord& m = first.map();
    absl::StatusOr<std::shared_ptr<const core::FeatureMap>> map =
        FeatureMapFromProto(m);
    if (!map.ok() || m.in_dim() != first.dimension() ||
        m.out_dim() != first.feature_dim()) {
      return absl::InternalError(absl::StrCat(
          "shard group 0 sent a ", m.out_dim(), "x", m.in_dim(), " map for ",
          first.feature_dim(), "x", first.dimension(), " sums of store '",
          store, "'", map.ok() ? "" : ": ", map.status().message()));
    }
    out->map = *std::move(map);
  }
  out->sums = std::move(sums);
  form.sums = out->sums.get();
  return out;
}

absl::Status CheckSumsFit(const MergedLowRank& merged, size_t dimension,
                          core::Similarity similarity) {
  const core::LowRankSums* sums = merged.sums.get();
  if (sums == nullptr) return absl::OkStatus();
  const bool dot = similarity == core::Similarity::kDot;
  const size_t keys = dot                     ? dimension
                      : merged.map != nullptr ? merged.map->out_dim()
                                              : 0;
  const bool map_fits =
      dot ? merged.map == nullptr
          : merged.map != nullptr && merged.map->in_dim() == dimension;
  if (sums->dim() == dimension && sums->keys_are_rows() == dot && map_fits &&
      sums->basis().dim() == keys) {
    return absl::OkStatus();
  }
  return absl::AbortedError(
      absl::StrCat("store '", merged.form.store,
                   "' changed in the shard groups during the "
                   "query (its sums are of dimension ",
                   sums->dim(), ", the store's ", dimension, "); retry"));
}

absl::StatusOr<std::shared_ptr<const MergedLowRank>> LowRankCache::Get(
    const std::string& store, absl::Time deadline,
    std::vector<engram::v1::Store>* described) {
  const uint32_t groups = pool_->groups();
  absl::StatusOr<std::vector<const Replica*>> picked = pool_->PickEach();
  if (!picked.ok()) return picked.status();
  const std::vector<const Replica*>& replicas = *picked;
  // What is held from these replicas.
  std::vector<std::shared_ptr<const v1::LowRankSums>> held(groups);
  std::shared_ptr<const MergedLowRank> merged;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(store);
    if (it != entries_.end() && it->second.parts.size() == groups) {
      merged = it->second.merged;
      for (uint32_t g = 0; g < groups; ++g) {
        if (it->second.parts[g].replica == replicas[g]) {
          held[g] = it->second.parts[g].sums;
        }
      }
    }
  }
  std::vector<v1::LowRankSumsRequest> requests(groups);
  for (uint32_t g = 0; g < groups; ++g) {
    requests[g].set_store(store);
    if (held[g]) requests[g].set_known_fingerprint(held[g]->fingerprint());
  }
  std::vector<v1::LowRankSums> answers;
  if (absl::Status s = FirstError(UnaryOnEach<v1::LowRankSumsRequest>(
          *pool_, replicas,
          [&requests](size_t g) -> const auto& { return requests[g]; },
          ShardCall(&v1::Shard::Stub::async::GetLowRankSums), &answers,
          deadline, OnUnavailable::kFailOver));
      !s.ok()) {
    return s;
  }
  if (described != nullptr) described->resize(groups);
  std::vector<std::shared_ptr<const v1::LowRankSums>> parts(groups);
  for (uint32_t g = 0; g < groups; ++g) {
    // Held parts keep the sums, not the description of the moment.
    if (described != nullptr) {
      (*described)[g].Swap(answers[g].mutable_store());
    }
    answers[g].clear_store();
    if (answers[g].unchanged() && held[g]) {
      parts[g] = held[g];
    } else if (answers[g].unchanged()) {
      return absl::InternalError(absl::StrCat(
          "shard group ", g, " answered 'unchanged' for a part not held"));
    } else {
      parts[g] = std::make_shared<v1::LowRankSums>(std::move(answers[g]));
    }
  }
  if (merged != nullptr && parts == held) return merged;
  absl::StatusOr<std::shared_ptr<MergedLowRank>> fresh =
      MergeParts(store, parts);
  if (!fresh.ok()) return fresh.status();
  (*fresh)->replicas = replicas;
  absl::MutexLock lock(&mu_);
  Entry& entry = entries_[store];
  entry.parts.assign(groups, Part{});
  for (uint32_t g = 0; g < groups; ++g)
    entry.parts[g] = {replicas[g], parts[g]};
  entry.merged = *fresh;
  return entry.merged;
}

void LowRankCache::Forget(const std::string& store) {
  absl::MutexLock lock(&mu_);
  entries_.erase(store);
}

}  // namespace engram::cluster
