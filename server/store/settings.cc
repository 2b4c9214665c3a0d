#include "server/store/settings.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace engram::store {

absl::Status ValidateStoreName(absl::string_view name) {
  if (name.empty() || name.size() > 63) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store name must be 1 to 63 characters, got ", name.size()));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = absl::ascii_islower(c) || absl::ascii_isdigit(c);
    if (!alnum && (i == 0 || (c != '_' && c != '-' && c != '.'))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "store name '", name,
          "' must be lowercase letters, digits, '_', '-' or '.', starting "
          "with a letter or digit"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateSettings(const StoreSettings& settings,
                              const Limits& limits) {
  if (absl::Status status = ValidateStoreName(settings.name); !status.ok()) {
    return status;
  }
  if (settings.dimension < 1 || settings.dimension > limits.max_dimension) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.dimension must be in [1, ", limits.max_dimension,
                     "], got ", settings.dimension));
  }
  const core::RetrievalParams& r = settings.retrieval;
  if (!(r.beta > 0) || !std::isfinite(r.beta)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.retrieval.beta must be finite and > 0, got ", r.beta));
  }
  if (r.steps < 1 || r.steps > limits.max_steps) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.retrieval.steps must be in [1, ", limits.max_steps,
                     "], got ", r.steps));
  }
  if (!(r.eps >= 0) || !std::isfinite(r.eps)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.retrieval.eps must be finite and >= 0, got ", r.eps));
  }
  if (r.top_k > limits.max_top_k) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.retrieval.top_k must be at most ", limits.max_top_k,
                     ", got ", r.top_k));
  }
  const LowRankSettings& low_rank = settings.low_rank;
  if (!(low_rank.tolerance > 0) || !std::isfinite(low_rank.tolerance)) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.low_rank.tolerance must be finite and > 0, got ",
                     low_rank.tolerance));
  }
  if (low_rank.max_degree % 2 != 0 || low_rank.max_degree < 2 ||
      low_rank.max_degree > 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.low_rank.max_degree must be an even number in [2, 8], got ",
        low_rank.max_degree));
  }
  const FeatureMapSettings& map = settings.feature_map;
  if (map.feature_dim > limits.max_dimension) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.feature_map.feature_dim must be at most ",
                     limits.max_dimension, ", got ", map.feature_dim));
  }
  if (map.epochs < 1 || map.epochs > 100000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.feature_map.epochs must be in [1, 100000], got ", map.epochs));
  }
  if (!(map.learning_rate >= 0) || !std::isfinite(map.learning_rate)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.feature_map.learning_rate must be finite and >= 0, got ",
        map.learning_rate));
  }
  if (map.batch_size < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.feature_map.batch_size must be at least 2, got ",
                     map.batch_size));
  }
  return absl::OkStatus();
}

}  // namespace engram::store
