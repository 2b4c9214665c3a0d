#include "server/store/retrieve.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/core/finite.h"
#include "server/core/low_rank.h"
#include "server/store/gathered.h"

namespace engram::store {

namespace {

absl::Status ValidateRequest(const StoreSettings& settings,
                             size_t pattern_count,
                             const RetrieveRequest& request,
                             const Limits& limits) {
  const size_t d = settings.dimension;
  const std::string& name = settings.name;
  if (request.num_queries == 0) {
    return absl::InvalidArgumentError("queries must not be empty");
  }
  if (request.num_queries > limits.max_queries) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "queries holds ", request.num_queries,
        " queries; the limit max_queries is ", limits.max_queries));
  }
  if (request.queries.size() != request.num_queries * d) {
    return absl::InvalidArgumentError(absl::StrCat(
        "queries hold ", request.queries.size(), " values for ",
        request.num_queries, " queries; store '", name, "' has dimension ", d));
  }
  if (const size_t i = core::FirstNonFinite(request.queries);
      i < request.queries.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries[", i / d, "].values[", i % d, "] is ",
                     request.queries[i], "; values must be finite"));
  }
  if (request.steps &&
      (*request.steps < 1 || *request.steps > limits.max_steps)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "steps must be in [1, ", limits.max_steps, "], got ", *request.steps));
  }
  if (request.beta && (!(*request.beta > 0) || !std::isfinite(*request.beta))) {
    return absl::InvalidArgumentError(
        absl::StrCat("beta must be finite and > 0, got ", *request.beta));
  }
  if (request.top_k && *request.top_k > limits.max_top_k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_k must be at most ", limits.max_top_k, ", got ", *request.top_k));
  }
  if (request.eps && (!(*request.eps >= 0) || !std::isfinite(*request.eps))) {
    return absl::InvalidArgumentError(
        absl::StrCat("eps must be finite and >= 0, got ", *request.eps));
  }
  if (request.tolerance &&
      (!(*request.tolerance > 0) || !std::isfinite(*request.tolerance))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tolerance must be finite and > 0, got ", *request.tolerance));
  }
  if (pattern_count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("store '", name, "' has no patterns to retrieve from"));
  }
  return absl::OkStatus();
}

// The features the low-rank path scores queries by: Phi x for kernel_dot,
// x for dot.
std::vector<double> QueryFeatures(const StoreView& view, const float* queries,
                                  size_t num_queries) {
  const size_t d = view.settings().dimension;
  if (view.settings().retrieval.similarity != core::Similarity::kKernelDot) {
    return std::vector<double>(queries, queries + num_queries * d);
  }
  const core::FeatureMap& map = *view.map();
  std::vector<float> features(num_queries * map.out_dim());
  map.Apply(queries, num_queries, features.data());
  return std::vector<double>(features.begin(), features.end());
}

std::string Figure(double value) { return absl::StrFormat("%.3g", value); }

}  // namespace

absl::Status CheckScoresFit(const StoreView& view,
                            const core::RetrievalParams& params,
                            const float* states, size_t count,
                            bool states_are_features, absl::string_view field) {
  const bool features =
      core::IsKernel(params.similarity) && view.map() != nullptr;
  const NormStats& norms = view.norms();
  const double key_norm = features ? norms.max_feature_norm : norms.max_norm;
  const size_t dim = view.settings().dimension;
  const size_t space = features ? view.map()->out_dim() : dim;
  const size_t width = states_are_features ? space : dim;
  // ||Phi x|| <= ||W||_F ||x||.
  const double gain =
      features && !states_are_features ? view.map()->frobenius_norm() : 1.0;
  const double beta = params.beta;
  const char* of = features ? "feature norms" : "norms";
  if (const double bound = core::ScoreBound(beta, key_norm, key_norm, space);
      !(bound <= core::kMaxScore)) {
    // Too large for beta: the request's (it overrides the store's) or the
    // store's own, or patterns a store took in before norms were bounded.
    const bool request_beta = beta != view.settings().retrieval.beta;
    const bool patterns_fit =
        core::ScoreBound(1, key_norm, key_norm, space) <= core::kMaxScore;
    const std::string what = absl::StrFormat(
        "store '%s' has patterns of %s up to %.3g: at beta %.3g their scores "
        "could reach %.3g, past the %.3g float scores are kept under; %s",
        view.settings().name, of, key_norm, beta, bound, core::kMaxScore,
        patterns_fit ? "lower beta"
        : features   ? "delete the outsized patterns or fit a new map"
                     : "delete the outsized patterns");
    return patterns_fit && request_beta ? absl::InvalidArgumentError(what)
                                        : absl::FailedPreconditionError(what);
  }
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < count; ++i) {
    const double norm =
        core::Norm(absl::MakeConstSpan(states + i * width, width));
    if (norm > worst) {
      worst = norm;
      at = i;
    }
  }
  const double bound =
      core::ScoreBound(beta, std::max(gain * worst, key_norm), key_norm, space);
  if (!(bound <= core::kMaxScore)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s[%d] has norm %.3g: with beta %.3g and the store's patterns of %s "
        "up to %.3g its scores could reach %.3g, past the %.3g float scores "
        "are kept under; scale it down or lower beta",
        field, at, worst, beta, of, key_norm, bound, core::kMaxScore));
  }
  return absl::OkStatus();
}

LowRankForm LowRankFormOf(const StoreView& view) {
  LowRankForm form;
  form.store = view.settings().name;
  form.sums = view.low_rank().get();
  form.detail = view.low_rank_state().detail;
  form.max_norm = view.norms().max_norm;
  form.max_feature_norm = view.norms().max_feature_norm;
  form.map_norm = view.map_norm();
  form.patterns = view.size();
  return form;
}

absl::StatusOr<PathReport> PlanPath(const LowRankForm& form,
                                    const core::RetrievalParams& params,
                                    PathChoice choice, double tolerance,
                                    absl::Span<const double> query_features,
                                    size_t num_queries) {
  PathReport report;
  const std::string& name = form.store;
  if (choice == PathChoice::kExact) {
    report.reason = "EXACT requested";
    return report;
  }
  const core::LowRankSums* sums = form.sums;
  if (sums == nullptr) {
    const std::string& detail = form.detail;
    if (choice == PathChoice::kLowRank) {
      return absl::FailedPreconditionError(
          absl::StrCat("path LOW_RANK: store '", name,
                       "' keeps no low-rank sums: ", detail));
    }
    report.reason = absl::StrCat("exact: ", detail);
    return report;
  }
  const size_t n = sums->basis().dim();
  const size_t d = sums->dim();
  const core::LowRankBoundInputs inputs{sums, form.max_norm,
                                        form.max_feature_norm, form.map_norm};
  double max_query_norm = 0;
  for (size_t i = 0; i < num_queries; ++i) {
    double sq = 0;
    for (size_t j = 0; j < n; ++j) {
      sq += query_features[i * n + j] * query_features[i * n + j];
    }
    max_query_norm = std::max(max_query_norm, std::sqrt(sq));
  }
  // The bound at degree g over the batch; stops once it passes `limit`.
  auto batch_bound = [&](uint32_t g, double limit) {
    double bound = 0;
    for (size_t i = 0; i < num_queries && bound <= limit; ++i) {
      bound = std::max(
          bound, core::LowRankErrorBound(inputs, query_features.data() + i * n,
                                         params.beta, g, params.steps));
    }
    return bound;
  };
  // The smallest even degree whose bound meets the tolerance on every query.
  const uint32_t kept = sums->basis().degree();
  uint32_t degree = 0;
  double bound = 0;
  for (uint32_t g = 2; g <= kept && degree == 0; g += 2) {
    bound = batch_bound(g, tolerance);
    if (bound <= tolerance) degree = g;
  }
  const std::string radius = absl::StrCat(
      "R = beta * max ||Phi xi|| * max ||Phi x|| = ", Figure(params.beta),
      " * ", Figure(form.max_feature_norm), " * ", Figure(max_query_norm),
      " = ", Figure(params.beta * form.max_feature_norm * max_query_norm));
  if (degree == 0) {
    // Over the whole batch, for the message.
    bound = batch_bound(kept, std::numeric_limits<double>::infinity());
    const std::string why = absl::StrCat(
        "the error bound at the largest kept degree g = ", kept, " is ",
        Figure(bound), " over tolerance ", Figure(tolerance), " (", radius,
        ", steps ", params.steps, ")");
    if (choice == PathChoice::kLowRank) {
      return absl::FailedPreconditionError(absl::StrCat(
          "path LOW_RANK cannot meet the tolerance on store '", name, "': ",
          why, "; lower beta or the norms, raise the tolerance, or use AUTO"));
    }
    report.reason = absl::StrCat("exact: ", why);
    return report;
  }
  // Work per query: exact scores and sums every memory each step; low-rank
  // works on the sums, plus one scan of the features for the top-k.
  const uint64_t rank = sums->basis().rank(degree);
  const double patterns = static_cast<double>(form.patterns);
  const double exact_cost = params.steps * patterns * (n + d);
  const double low_rank_cost =
      params.steps * static_cast<double>(rank) * (n + d) +
      (params.top_k > 0 ? patterns * n : 0.0);
  const std::string costs =
      absl::StrCat("cost per query ", Figure(low_rank_cost), " vs exact ",
                   Figure(exact_cost), " (r = ", rank, ", M = ", form.patterns,
                   params.top_k > 0 ? ", top-k scan" : "", ")");
  if (choice == PathChoice::kAuto && low_rank_cost >= exact_cost) {
    report.reason = absl::StrCat("exact: low-rank at g = ", degree,
                                 " meets the tolerance but ", costs);
    return report;
  }
  report.path = PathChoice::kLowRank;
  report.degree = degree;
  report.rank = rank;
  report.error_bound = bound;
  report.reason = absl::StrCat(
      choice == PathChoice::kLowRank ? "LOW_RANK requested: " : "low-rank: ",
      "bound ", Figure(bound), " <= tolerance ", Figure(tolerance),
      " at g = ", degree, "; ", costs);
  return report;
}

absl::StatusOr<core::RetrievalParams> ResolveParams(
    const StoreSettings& settings, size_t pattern_count,
    const RetrieveRequest& request, const Limits& limits) {
  if (absl::Status status =
          ValidateRequest(settings, pattern_count, request, limits);
      !status.ok()) {
    return status;
  }
  core::RetrievalParams params = settings.retrieval;
  if (request.steps) params.steps = *request.steps;
  if (request.beta) params.beta = *request.beta;
  if (request.top_k) params.top_k = *request.top_k;
  if (request.eps) params.eps = *request.eps;
  return params;
}

RetrieveResult ResultOf(
    core::RetrievalOutput out,
    const std::function<MatchedPattern(const core::Match&)>& name) {
  RetrieveResult result;
  result.states = std::move(out.states);
  result.energies = std::move(out.energies);
  result.steps = std::move(out.steps);
  result.converged = std::move(out.converged);
  result.matches.resize(out.matches.size());
  for (size_t i = 0; i < out.matches.size(); ++i) {
    for (const core::Match& m : out.matches[i]) {
      result.matches[i].push_back(name(m));
    }
  }
  return result;
}

namespace {

// ResolveParams against a store's snapshot retrieving over `pattern_count`
// of its rows, and the queries' scores checked to fit in float.
absl::StatusOr<core::RetrievalParams> ResolveFor(const StoreView& view,
                                                 size_t pattern_count,
                                                 const RetrieveRequest& request,
                                                 const Limits& limits) {
  absl::StatusOr<core::RetrievalParams> params =
      ResolveParams(view.settings(), pattern_count, request, limits);
  if (!params.ok()) return params;
  if (absl::Status s = CheckScoresFit(view, *params, request.queries.data(),
                                      request.num_queries, false, "queries");
      !s.ok()) {
    return s;
  }
  return params;
}

// A retrieval over some rows only: those of the filter, or the patterns
// that have not expired while some that did wait to be reclaimed.
absl::StatusOr<RetrieveResult> RetrieveAmong(
    const StoreView& view, const RetrieveRequest& request, const Limits& limits,
    const core::RetrievalOptions& options, int64_t now_ns) {
  const std::string& name = view.settings().name;
  const bool filtered = !request.filter.empty();
  if (filtered) {
    if (absl::Status status = CheckFilteredRequest(name, request, limits);
        !status.ok()) {
      return status;
    }
  }
  if (request.path == PathChoice::kLowRank) {
    return absl::UnavailableError(absl::StrCat(
        "path LOW_RANK: store '", name,
        "' holds patterns that just expired and are being reclaimed; its "
        "low-rank sums include them until then: retry, or use AUTO"));
  }
  const bool expired = view.HasExpired(now_ns);
  std::vector<uint32_t> rows;
  if (!filtered) {
    rows = view.LiveRows(now_ns);
  } else {
    absl::StatusOr<std::vector<uint32_t>> matching =
        view.Matching(request.filter, options.check);
    if (!matching.ok()) return matching.status();
    rows = expired ? view.Live(*matching, now_ns) : *std::move(matching);
  }
  if (rows.empty()) {
    return absl::FailedPreconditionError(
        filtered ? absl::StrCat("the filter matches no pattern of store '",
                                name, "' (of ", view.LiveCount(now_ns), ")")
                 : absl::StrCat("store '", name,
                                "' is empty: every pattern expired"));
  }
  absl::StatusOr<core::RetrievalParams> params =
      ResolveFor(view, rows.size(), request, limits);
  if (!params.ok()) return params.status();
  const Gathered gathered(view, rows);
  absl::StatusOr<core::RetrievalOutput> out =
      core::RetrieveExact(gathered.set(), request.queries.data(),
                          request.num_queries, *params, options);
  if (!out.ok()) return out.status();
  RetrieveResult result =
      ResultOf(*std::move(out), [&view, &rows](const core::Match& m) {
        const Chunk::RowInfo& info = view.info(rows[m.index]);
        return MatchedPattern{info.id, m.weight, m.score, info.label};
      });
  result.path.path = PathChoice::kExact;
  result.path.reason =
      filtered
          ? absl::StrCat("exact: filtered to ", rows.size(), " of ",
                         view.LiveCount(now_ns),
                         " patterns (the low-rank sums are over all of them)")
          : absl::StrCat("exact: over the ", rows.size(),
                         " patterns that have not expired (",
                         view.size() - rows.size(),
                         " expired and are being reclaimed)");
  result.store_version = view.version();
  return result;
}

}  // namespace

absl::Status CheckFilteredRequest(const std::string& store,
                                  const RetrieveRequest& request,
                                  const Limits& limits) {
  if (absl::Status status = ValidateFilter(request.filter, limits);
      !status.ok()) {
    return status;
  }
  if (request.path == PathChoice::kLowRank) {
    return absl::FailedPreconditionError(absl::StrCat(
        "path LOW_RANK cannot serve a filtered retrieval of store '", store,
        "': the store's low-rank sums are over every pattern; use AUTO or "
        "EXACT"));
  }
  return absl::OkStatus();
}

absl::StatusOr<RetrieveResult> Retrieve(const StoreView& view,
                                        const RetrieveRequest& request,
                                        const Limits& limits,
                                        const core::RetrievalOptions& options) {
  const int64_t now_ns = absl::GetCurrentTimeNanos();
  if (!request.filter.empty() || view.HasExpired(now_ns)) {
    return RetrieveAmong(view, request, limits, options, now_ns);
  }
  absl::StatusOr<core::RetrievalParams> resolved =
      ResolveFor(view, view.size(), request, limits);
  if (!resolved.ok()) return resolved.status();
  const core::RetrievalParams& params = *resolved;

  const double tolerance = request.tolerance
                               ? *request.tolerance
                               : view.settings().low_rank.tolerance;
  std::vector<double> features;
  if (request.path != PathChoice::kExact && view.low_rank() != nullptr) {
    features = QueryFeatures(view, request.queries.data(), request.num_queries);
  }
  absl::StatusOr<PathReport> plan =
      PlanPath(LowRankFormOf(view), params, request.path, tolerance, features,
               request.num_queries);
  if (!plan.ok()) return plan.status();

  absl::StatusOr<core::RetrievalOutput> out =
      plan->path == PathChoice::kLowRank
          ? core::RetrieveLowRank(*view.low_rank(), view.memories(),
                                  request.queries.data(), request.num_queries,
                                  params, plan->degree, options)
          : core::RetrieveExact(view.memories(), request.queries.data(),
                                request.num_queries, params, options);
  if (!out.ok()) return out.status();

  RetrieveResult result =
      ResultOf(*std::move(out), [&view](const core::Match& m) {
        const Chunk::RowInfo& info = view.info(m.index);
        return MatchedPattern{info.id, m.weight, m.score, info.label};
      });
  result.path = *std::move(plan);
  result.store_version = view.version();
  return result;
}

}  // namespace engram::store
