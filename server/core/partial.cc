#include "server/core/partial.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "server/core/blas.h"
#include "server/core/separation.h"

namespace engram::core {

namespace {

bool Better(const Scored& a, const Scored& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

// A support member: its score and where its values are.
struct Member {
  float score;
  uint64_t id;
  const float* values;  // Null: to be looked up.
};

}  // namespace

absl::StatusOr<MergedRow> MergeRows(const RetrievalParams& params,
                                    absl::Span<const PartialRow* const> rows,
                                    size_t dim, const ValuesLookup& lookup) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  double max = kNegInf, query_sq_norm = 0;
  for (const PartialRow* r : rows) {
    // A part is another process's answer: numbers it cannot have computed
    // are refused, not merged.
    if (r->max != kNegInf &&
        (!std::isfinite(r->max) || !(r->sum > 0) || !std::isfinite(r->sum))) {
      return absl::InternalError(
          absl::StrCat("a part's maximum ", r->max, " and sum ", r->sum,
                       " are not a row's (finite, the sum above 0)"));
    }
    if (r->max > max) {
      max = r->max;
      query_sq_norm = r->query_sq_norm;
    }
  }
  if (max == kNegInf) {
    return absl::FailedPreconditionError("no memories to retrieve from");
  }
  // The parts' sums of exp(z - max_j), rescaled to the global maximum.
  double sum = 0;
  for (const PartialRow* r : rows) {
    if (r->max != kNegInf) sum += std::exp(r->max - max) * r->sum;
  }
  const double lse = max + std::log(sum);
  MergedRow out;
  out.next.assign(dim, 0.0f);
  out.energy = -lse / params.beta +
               0.5 * SelfSimilarity(params.similarity, query_sq_norm);
  double threshold = lse, total = 1.0;
  if (params.separation == Separation::kSoftmax) {
    for (const PartialRow* r : rows) {
      if (r->max == kNegInf) continue;
      if (r->weighted.size() != dim) {
        return absl::InternalError(absl::StrCat("a part's weighted sum has ",
                                                r->weighted.size(),
                                                " values, not ", dim));
      }
      blas::Axpy(dim, static_cast<float>(std::exp(r->max - max) / sum),
                 r->weighted.data(), out.next.data());
    }
  } else {
    // Every support member scores above max - margin; each part sent all of
    // its memories above its own max - margin, a lower floor.
    const double floor = max - SupportMargin(params.separation);
    std::vector<Member> support;
    for (const PartialRow* r : rows) {
      const size_t with_values = dim ? r->values.size() / dim : 0;
      for (size_t c = 0; c < r->candidates.size(); ++c) {
        const Scored& s = r->candidates[c];
        if (s.score <= floor) continue;
        support.push_back(
            {s.score, s.id,
             c < with_values ? r->values.data() + c * dim : nullptr});
      }
    }
    if (support.empty()) {
      // The part with the maximum holds at least its own best.
      return absl::InternalError(absl::StrCat(
          "no part sent a candidate within the margin of the maximum ", max));
    }
    std::vector<double> scores;
    for (const Member& m : support) scores.push_back(m.score);
    threshold = SeparationThreshold(params.separation, scores);
    total = 0;
    for (double z : scores) {
      total += SeparationWeight(params.separation, z, threshold);
    }
    for (const Member& m : support) {
      const double w = SeparationWeight(params.separation, m.score, threshold);
      if (!(w > 0)) continue;
      const float* values = m.values;
      absl::StatusOr<std::vector<float>> fetched;
      if (values == nullptr) {
        fetched = lookup(m.id);
        if (!fetched.ok()) return fetched.status();
        if (fetched->size() != dim) {
          return absl::InternalError(absl::StrCat("pattern ", m.id, " has ",
                                                  fetched->size(),
                                                  " values, not ", dim));
        }
        values = fetched->data();
      }
      blas::Axpy(dim, static_cast<float>(w / total), values, out.next.data());
    }
  }
  std::vector<Scored> top;
  for (const PartialRow* r : rows) {
    top.insert(top.end(), r->top.begin(), r->top.end());
  }
  std::sort(top.begin(), top.end(), Better);
  if (top.size() > params.top_k) top.resize(params.top_k);
  for (const Scored& s : top) {
    const double w = SeparationWeight(params.separation, s.score, threshold);
    out.matches.push_back({s.id, static_cast<float>(w / total), s.score});
  }
  return out;
}

}  // namespace engram::core
