// Stage II retrieval against a store snapshot: merges per-request overrides
// with the store's settings, validates the queries, runs the chosen path and
// maps memory indices back to pattern ids.
//
// Thread-safe: pure functions of their arguments.
#ifndef ENGRAM_SERVER_STORE_RETRIEVE_H_
#define ENGRAM_SERVER_STORE_RETRIEVE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/core/retrieval.h"
#include "server/store/filter_index.h"
#include "server/store/settings.h"
#include "server/store/store.h"

namespace engram::store {

enum class PathChoice { kAuto, kExact, kLowRank };

struct RetrieveRequest {
  // Row-major queries, size num_queries * dimension.
  absl::Span<const float> queries;
  size_t num_queries = 0;
  std::optional<uint32_t> steps;
  std::optional<float> beta;
  std::optional<uint32_t> top_k;
  std::optional<float> eps;
  std::optional<double> tolerance;
  PathChoice path = PathChoice::kAuto;
  // Recall among the matching patterns only (empty: all of them).
  Filter filter;
};

struct PathReport {
  PathChoice path = PathChoice::kExact;  // kExact or kLowRank.
  uint32_t degree = 0;
  uint64_t rank = 0;
  double error_bound = 0;
  std::string reason;
};

struct MatchedPattern {
  uint64_t id = 0;
  float weight = 0;
  float score = 0;
  std::string label;
};

struct RetrieveResult {
  std::vector<float> states;  // num_queries * dimension.
  std::vector<std::vector<MatchedPattern>> matches;
  std::vector<double> energies;
  std::vector<uint32_t> steps;
  std::vector<uint8_t> converged;
  PathReport path;
  uint64_t store_version = 0;
};

// What the planner knows of a store's low-rank form: a store's own, or a
// router's merge of its shards' (server/cluster/low_rank_cache.h).
struct LowRankForm {
  std::string store;                        // For messages.
  const core::LowRankSums* sums = nullptr;  // Null: none kept.
  std::string detail;                       // Why none, when none.
  double max_norm = 0;                      // max ||xi||.
  double max_feature_norm = 0;              // max ||Phi xi|| (or ||xi||).
  double map_norm = 1;                      // Bound on ||Phi||_2.
  uint64_t patterns = 0;
};

// The form of a store's snapshot (borrows the view's sums).
LowRankForm LowRankFormOf(const StoreView& view);

// The planner (docs/low-rank.md): EXACT runs exact; LOW_RANK and AUTO take
// the smallest even degree whose proved error bound, over this batch's query
// features (num_queries x d_Phi, row-major), meets `tolerance`; AUTO takes it
// only if it also costs less than exact. LOW_RANK that cannot run is
// FAILED_PRECONDITION, naming the bound.
absl::StatusOr<PathReport> PlanPath(const LowRankForm& form,
                                    const core::RetrievalParams& params,
                                    PathChoice choice, double tolerance,
                                    absl::Span<const double> query_features,
                                    size_t num_queries);

// Refuses `count` states (row-major; features when `states_are_features`)
// whose scores against `view`'s patterns could overflow float at `beta`
// (core::ScoreBound over kMaxScore): FAILED_PRECONDITION when the store's
// own patterns are already too large for beta, else INVALID_ARGUMENT naming
// `field`[i], the worst state. Later steps' states are mixtures of the
// patterns, so the first step's check covers them.
absl::Status CheckScoresFit(const StoreView& view,
                            const core::RetrievalParams& params,
                            const float* states, size_t count,
                            bool states_are_features, absl::string_view field);

// The request checked against the store and the limits (messages name the
// field and the limit), and the store's settings with its overrides.
absl::StatusOr<core::RetrievalParams> ResolveParams(
    const StoreSettings& settings, size_t pattern_count,
    const RetrieveRequest& request, const Limits& limits);

// The core's output as a result, each match named by `name` (a store's
// view maps memory indices to ids and labels; a router's matches carry ids
// already). Path and version are left to the caller.
RetrieveResult ResultOf(
    core::RetrievalOutput out,
    const std::function<MatchedPattern(const core::Match&)>& name);

// A filter within the limits, on a path that can serve it: LOW_RANK
// cannot (the store's low-rank sums are over every pattern of `store`).
absl::Status CheckFilteredRequest(const std::string& store,
                                  const RetrieveRequest& request,
                                  const Limits& limits);

// With a filter, the exact update runs over the matching rows (in row
// order, in place or listed: gathered.h) exactly as over a store that held
// only them; LOW_RANK is FAILED_PRECONDITION, as is a filter that matches
// nothing.
absl::StatusOr<RetrieveResult> Retrieve(const StoreView& view,
                                        const RetrieveRequest& request,
                                        const Limits& limits,
                                        const core::RetrievalOptions& options);

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_RETRIEVE_H_
