#include "client/cli/text.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/cli/fields.h"
#include "google/protobuf/util/json_util.h"

namespace engram::client {

std::string ReportText(const v1::CalibrationReport& r) {
  std::string text = absl::StrFormat(
      "calibrated:    %s %s beta %.4g (%s; was error %.4g, recall@1 %.3f)\n",
      EnumText(r.similarity()), EnumText(r.separation()), r.beta(),
      r.applied()    ? "applied"
      : r.improved() ? "found, not applied"
                     : "kept the current setting",
      r.previous_error(), r.previous_recall_at_1());
  absl::StrAppendFormat(
      &text,
      "capacity:      recall@1 %.3f, error %.4g, well separated %.1f%%, "
      "theory's beta %.4g (p90 %.4g)\n",
      r.recall_at_1(), r.error(), 100 * r.well_separated_fraction(),
      r.theory_beta_median(), r.theory_beta_p90());
  absl::StrAppendFormat(
      &text,
      "               on %u of %u patterns (%s %g), %u memories, %u "
      "settings in %.2fs\n",
      r.sample_size(), r.pattern_count(), EnumText(r.corruption()), r.level(),
      r.memories_used(), r.candidates(), r.duration_seconds());
  if (!r.detail().empty()) {
    absl::StrAppendFormat(&text, "               %s\n", r.detail());
  }
  return text;
}

std::string StoreText(const v1::Store& s) {
  const v1::RetrievalSettings& r = s.retrieval();
  std::string text = absl::StrFormat(
      "name:          %s\ndimension:     %u\npatterns:      %u\n"
      "similarity:    %s\nseparation:    %s\nbeta:          %g\n"
      "steps:         %u\neps:           %g\ntop_k:         %u\n"
      "feature map:   %s\nfit:           %s",
      s.name(), s.dimension(), s.pattern_count(), EnumText(r.similarity()),
      EnumText(r.separation()), r.beta(), r.steps(), r.eps(), r.top_k(),
      EnumText(s.feature_map().kind()), EnumText(s.fit().state()));
  const v1::FitStatus& fit = s.fit();
  if (fit.map_version() > 0 || fit.state() == v1::FitStatus::RUNNING) {
    absl::StrAppendFormat(
        &text,
        " (map v%u from %u patterns; epoch %u/%u; loss %.4f -> %.4f; %.2fs)",
        fit.map_version(), fit.patterns_fitted(), fit.epoch(),
        fit.total_epochs(), fit.loss_before(), fit.loss_after(),
        fit.duration_seconds());
  }
  absl::StrAppend(&text, "\n");
  if (s.feature_map().kind() == v1::UHOP) {
    absl::StrAppendFormat(
        &text, "feature norms: max %.4g, mean %.4g (d_Phi %u)\n",
        s.norms().max_feature_norm(), s.norms().mean_feature_norm(),
        s.feature_map().feature_dim());
  }
  absl::StrAppendFormat(
      &text, "norms:         max %.4g, mean %.4g, max |entry| %.4g\n",
      s.norms().max_norm(), s.norms().mean_norm(), s.norms().max_abs_entry());
  absl::StrAppendFormat(&text, "low-rank:      tolerance %g, max degree %u; ",
                        s.low_rank().tolerance(), s.low_rank().max_degree());
  if (s.low_rank_state().degree() > 0) {
    absl::StrAppendFormat(&text, "sums kept to degree %u (rank %u)\n",
                          s.low_rank_state().degree(),
                          s.low_rank_state().rank());
  } else {
    absl::StrAppendFormat(&text, "no sums: %s\n", s.low_rank_state().detail());
  }
  const v1::CalibrationSettings& c = s.calibration();
  absl::StrAppendFormat(
      &text,
      "calibration:   %s, %s; %s %g; search beta%s%s; sample %u, seed %u\n",
      c.automatic() ? "automatic" : "on request",
      c.apply() ? "applies" : "reports only", EnumText(c.corruption()),
      c.level(), c.search_similarity() ? ", similarity" : "",
      c.search_separation() ? ", separation" : "", c.sample_size(), c.seed());
  if (s.has_calibration_report()) {
    absl::StrAppend(&text, ReportText(s.calibration_report()));
  }
  const google::protobuf::Duration& ttl = s.expiry().default_ttl();
  absl::StrAppendFormat(
      &text, "expiry:        %s; %u expired and reclaimed since start\n",
      ttl.seconds() == 0 && ttl.nanos() == 0
          ? std::string("patterns never expire unless given a ttl")
          : absl::StrCat("default ttl ",
                         absl::FormatDuration(absl::Seconds(ttl.seconds()) +
                                              absl::Nanoseconds(ttl.nanos()))),
      s.expired_count());
  absl::StrAppendFormat(&text, "precision:     %s; %.1f MiB in memory\n",
                        s.precision() == v1::PRECISION_UNSPECIFIED
                            ? "float32"
                            : EnumText(s.precision()),
                        static_cast<double>(s.memory_bytes()) / (1 << 20));
  absl::StrAppendFormat(&text, "state:         %s\nversion:       %u\n",
                        EnumText(s.state()), s.version());
  return text;
}

std::string ProgressBar(size_t done, size_t total, const char* what) {
  constexpr int kWidth = 30;
  const int filled = total ? static_cast<int>(kWidth * done / total) : kWidth;
  return absl::StrFormat("[%s%s] %zu/%zu %s %3d%%", std::string(filled, '#'),
                         std::string(kWidth - filled, '.'), done, total, what,
                         total ? static_cast<int>(100 * done / total) : 100);
}

std::string FitLine(const v1::FitStatus& s) {
  constexpr int kWidth = 30;
  const int filled =
      s.total_epochs() ? static_cast<int>(kWidth * s.epoch() / s.total_epochs())
                       : 0;
  std::string line = absl::StrFormat(
      "%-10s [%s%s] epoch %u/%u  loss %.4f -> %.4f  %.1fs", EnumText(s.state()),
      std::string(filled, '#'), std::string(kWidth - filled, '.'), s.epoch(),
      s.total_epochs(), s.loss_before(), s.loss_after(), s.duration_seconds());
  if (s.map_version() > 0) {
    absl::StrAppendFormat(&line, "  map v%u (%u patterns)", s.map_version(),
                          s.patterns_fitted());
  }
  if (!s.error().empty()) absl::StrAppend(&line, "  error: ", s.error());
  return line;
}

std::string CalibrationLine(const v1::CalibrationStatus& s) {
  std::string line = absl::StrCat("calibration ", EnumText(s.state()));
  if (!s.error().empty()) absl::StrAppend(&line, "  error: ", s.error());
  return line;
}

std::string PatternText(const v1::Pattern& p, bool values) {
  std::string text = absl::StrCat(p.id());
  if (!p.label().empty()) absl::StrAppend(&text, " [", p.label(), "]");
  if (!p.metadata().empty()) {
    std::vector<std::string> entries;
    for (const auto& [key, value] : p.metadata()) {
      entries.push_back(absl::StrCat(key, "=", value));
    }
    std::sort(entries.begin(), entries.end());  // Maps have no order.
    absl::StrAppend(&text, " {", absl::StrJoin(entries, ", "), "}");
  }
  if (values) {
    absl::StrAppend(
        &text, " ",
        absl::StrJoin(p.values(), " ", [](std::string* out, float v) {
          absl::StrAppendFormat(out, "%.9g", v);
        }));
  }
  return text;
}

std::string Json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options)
           .ok()) {
    return "{}\n";
  }
  return out;
}

}  // namespace engram::client
