#include "server/cluster/map_record.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "server/core/finite.h"

namespace engram::cluster {

void FeatureMapToProto(const std::string& store, const core::FeatureMap& map,
                       const store::FitRecord& fit, v1::FeatureMapRecord& out) {
  out.set_store(store);
  out.set_version(fit.version);
  out.set_out_dim(static_cast<uint32_t>(map.out_dim()));
  out.set_in_dim(static_cast<uint32_t>(map.in_dim()));
  if (map.identity()) {
    out.mutable_weights()->Resize(
        static_cast<int>(map.out_dim() * map.in_dim()), 0.0f);
    for (size_t i = 0; i < map.in_dim(); ++i) {
      out.set_weights(static_cast<int>(i * map.in_dim() + i), 1.0f);
    }
  } else {
    out.mutable_weights()->Assign(map.weights().begin(), map.weights().end());
  }
  out.set_loss_before(fit.loss_before);
  out.set_loss_after(fit.loss_after);
  out.set_epochs(fit.epochs);
  out.set_duration_seconds(fit.duration_seconds);
  out.set_patterns_fitted(fit.patterns_fitted);
}

absl::StatusOr<std::shared_ptr<const core::FeatureMap>> FeatureMapFromProto(
    const v1::FeatureMapRecord& record) {
  const size_t out = record.out_dim(), in = record.in_dim();
  if (out == 0 || in == 0 ||
      static_cast<size_t>(record.weights_size()) != out * in) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights has ", record.weights_size(), " values for a ",
                     out, "x", in, " map"));
  }
  if (core::FirstNonFinite(record.weights()) <
      static_cast<size_t>(record.weights_size())) {
    return absl::InvalidArgumentError("weights must be finite");
  }
  return std::make_shared<const core::FeatureMap>(
      in, out,
      std::vector<float>(record.weights().begin(), record.weights().end()));
}

store::FitRecord FitRecordFromProto(const v1::FeatureMapRecord& record) {
  store::FitRecord fit;
  fit.version = record.version();
  fit.loss_before = record.loss_before();
  fit.loss_after = record.loss_after();
  fit.epochs = record.epochs();
  fit.duration_seconds = record.duration_seconds();
  fit.patterns_fitted = record.patterns_fitted();
  return fit;
}

}  // namespace engram::cluster
