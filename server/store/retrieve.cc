#include "server/store/retrieve.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace engram::store {

namespace {

absl::Status ValidateRequest(const StoreView& view,
                             const RetrieveRequest& request,
                             const Limits& limits) {
  const size_t d = view.settings().dimension;
  const std::string& name = view.settings().name;
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
  for (size_t i = 0; i < request.queries.size(); ++i) {
    if (!std::isfinite(request.queries[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("queries[", i / d, "].values[", i % d, "] is ",
                       request.queries[i], "; values must be finite"));
    }
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
  if (request.path == PathChoice::kLowRank) {
    return absl::UnimplementedError(
        "path LOW_RANK is not available in this server version; use AUTO or "
        "EXACT");
  }
  if (view.size() == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("store '", name, "' has no patterns to retrieve from"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RetrieveResult> Retrieve(const StoreView& view,
                                        const RetrieveRequest& request,
                                        const Limits& limits,
                                        const core::RetrievalOptions& options) {
  if (absl::Status status = ValidateRequest(view, request, limits);
      !status.ok()) {
    return status;
  }
  core::RetrievalParams params = view.settings().retrieval;
  if (request.steps) params.steps = *request.steps;
  if (request.beta) params.beta = *request.beta;
  if (request.top_k) params.top_k = *request.top_k;
  if (request.eps) params.eps = *request.eps;

  absl::StatusOr<core::RetrievalOutput> out =
      core::RetrieveExact(view.memories(), request.queries.data(),
                          request.num_queries, params, options);
  if (!out.ok()) return out.status();

  RetrieveResult result;
  result.states = std::move(out->states);
  result.energies = std::move(out->energies);
  result.steps = std::move(out->steps);
  result.converged = std::move(out->converged);
  result.matches.resize(request.num_queries);
  for (size_t i = 0; i < request.num_queries; ++i) {
    for (const core::Match& m : out->matches[i]) {
      const Chunk::RowInfo& info = view.info(m.index);
      result.matches[i].push_back({info.id, m.weight, m.score, info.label});
    }
  }
  result.path.path = PathChoice::kExact;
  result.path.reason = request.path == PathChoice::kExact
                           ? "EXACT requested"
                           : "exact: this server version has no low-rank path";
  result.store_version = view.version();
  return result;
}

}  // namespace engram::store
