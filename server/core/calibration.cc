#include "server/core/calibration.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "server/core/sample.h"

namespace engram::core {

absl::string_view CorruptionName(Corruption corruption) {
  switch (corruption) {
    case Corruption::kDropout:
      return "dropout";
    case Corruption::kGaussian:
      return "gaussian";
    case Corruption::kMask:
      return "mask";
  }
  return "unknown";
}

bool CorruptionLevelValid(Corruption corruption, float level) {
  return corruption == Corruption::kGaussian
             ? (level > 0 && std::isfinite(level))
             : (level > 0 && level < 1);
}

absl::string_view CorruptionLevelRange(Corruption corruption) {
  return corruption == Corruption::kGaussian ? "finite and > 0" : "in (0, 1)";
}

void Corrupt(Corruption corruption, float level, uint64_t seed, float* rows,
             size_t n, size_t dim) {
  std::mt19937_64 rng(seed);
  switch (corruption) {
    case Corruption::kDropout: {
      std::bernoulli_distribution drop(level);
      const float keep_scale = 1.0f / (1.0f - level);
      for (size_t i = 0; i < n * dim; ++i) {
        rows[i] = drop(rng) ? 0.0f : rows[i] * keep_scale;
      }
      return;
    }
    case Corruption::kGaussian: {
      std::normal_distribution<float> noise(0.0f, level);
      for (size_t i = 0; i < n * dim; ++i) rows[i] += noise(rng);
      return;
    }
    case Corruption::kMask: {
      const size_t masked = static_cast<size_t>(
          std::lround(static_cast<double>(level) * static_cast<double>(dim)));
      std::vector<size_t> coords(dim);
      for (size_t r = 0; r < n; ++r) {
        for (size_t k = 0; k < dim; ++k) coords[k] = k;
        // A partial Fisher-Yates shuffle picks `masked` distinct coordinates.
        for (size_t k = 0; k < masked; ++k) {
          std::uniform_int_distribution<size_t> pick(k, dim - 1);
          std::swap(coords[k], coords[pick(rng)]);
          rows[r * dim + coords[k]] = 0.0f;
        }
      }
      return;
    }
  }
}

namespace {

// The coarse grid of betas is 4^k, k in [kCoarseLow, kCoarseHigh].
constexpr int kCoarseLow = -5;
constexpr int kCoarseHigh = 6;
// Grid points past an edge of the coarse grid (so betas 4^-9 .. 4^10).
constexpr size_t kMaxExtensions = 4;
// Candidates one (similarity, separation) pair costs at most: the coarse
// grid, its extensions and four refinements.
constexpr size_t kCandidatesPerPair =
    (kCoarseHigh - kCoarseLow + 1) + kMaxExtensions + 4;
// Fewer corrupted patterns than this would make recall@1 too coarse.
constexpr size_t kMinSample = 64;

// A contiguous copy of some memories of a set (rows, norms and keys).
struct SubsetBuffers {
  std::vector<float> rows, sq_norms, keys, key_sq_norms;
};

bool HasKeys(const MemorySet& memories) {
  return memories.map != nullptr && !memories.blocks.empty() &&
         memories.blocks.front().keys != nullptr;
}

MemorySet CopySubset(const MemorySet& memories,
                     const std::vector<size_t>& indices, SubsetBuffers& buf) {
  const size_t d = memories.dim;
  const bool keyed = HasKeys(memories);
  const size_t kd = keyed ? memories.map->out_dim() : 0;
  buf.rows.resize(indices.size() * d);
  buf.sq_norms.resize(indices.size());
  buf.keys.resize(indices.size() * kd);
  buf.key_sq_norms.resize(keyed ? indices.size() : 0);
  for (size_t i = 0; i < indices.size(); ++i) {
    const auto [block, r] = memories.Locate(indices[i]);
    block->CopyRow(r, d, buf.rows.data() + i * d);
    buf.sq_norms[i] = block->sq_norms[r];
    if (keyed) {
      block->CopyKey(r, kd, buf.keys.data() + i * kd);
      buf.key_sq_norms[i] = block->key_sq_norms[r];
    }
  }
  MemorySet set;
  set.dim = d;
  set.map = memories.map;
  set.blocks.push_back({buf.rows.data(), buf.sq_norms.data(), indices.size(),
                        keyed ? buf.keys.data() : nullptr,
                        keyed ? buf.key_sq_norms.data() : nullptr});
  return set;
}

// Largest squared norm of the memories in the space `similarity` scores in.
double MaxSquaredNorm(const MemorySet& memories, Similarity similarity) {
  if (similarity == Similarity::kCosine) return 1.0;
  double max = 0;
  for (const MemoryBlock& block : memories.blocks) {
    const float* norms =
        IsKernel(similarity) ? block.key_sq_norms : block.sq_norms;
    for (size_t r = 0; r < block.count; ++r) {
      max = std::max(max, static_cast<double>(norms[r]));
    }
  }
  return max;
}

// The smallest beta on the decreasing branch of
// f(beta) = (2 / n + log(2 (n - 1) n beta m2)) / beta with f(beta) <= gap.
double TheoryBeta(double gap, double n, double m2) {
  if (!(gap > 0) || !(m2 > 0)) return std::numeric_limits<double>::infinity();
  const double a = 2.0 / n, b = 2.0 * (n - 1.0) * n * m2;
  const auto f = [&](double beta) { return (a + std::log(b * beta)) / beta; };
  const double peak = std::exp(1.0 - a) / b;  // f rises below, falls above.
  if (f(peak) <= gap) return peak;
  double lo = peak, hi = peak * 2;
  while (f(hi) > gap) {
    lo = hi;
    hi *= 2;
  }
  for (int i = 0; i < 100 && hi > lo * (1 + 1e-9); ++i) {
    const double mid = std::sqrt(lo * hi);
    (f(mid) > gap ? lo : hi) = mid;
  }
  return hi;
}

double Quantile(std::vector<double> values, double q) {
  if (values.empty()) return std::numeric_limits<double>::infinity();
  const size_t k =
      static_cast<size_t>(std::ceil(q * static_cast<double>(values.size()))) -
      1;
  std::nth_element(values.begin(), values.begin() + k, values.end());
  return values[k];
}

class Search {
 public:
  Search(const MemorySet& memories, std::vector<float> queries,
         std::vector<float> targets, std::vector<size_t> target_index,
         const CalibrationOptions& options)
      : memories_(memories),
        queries_(std::move(queries)),
        targets_(std::move(targets)),
        target_index_(std::move(target_index)),
        options_(options) {}

  absl::StatusOr<CalibrationScore> Evaluate(RetrievalParams params) {
    params.top_k = 1;
    const size_t n = target_index_.size(), d = memories_.dim;
    absl::StatusOr<RetrievalOutput> out = RetrieveExact(
        memories_, queries_.data(), n, params, options_.retrieval);
    if (!out.ok()) return out.status();
    CalibrationScore score{params, 0, 0};
    for (size_t i = 0; i < n; ++i) {
      double sq = 0;
      for (size_t k = 0; k < d; ++k) {
        const double e = out->states[i * d + k] - targets_[i * d + k];
        sq += e * e;
      }
      score.error += sq;
      if (!out->matches[i].empty() &&
          out->matches[i].front().index == target_index_[i]) {
        score.recall_at_1 += 1;
      }
    }
    score.error /= static_cast<double>(n);
    score.recall_at_1 /= static_cast<double>(n);
    work_ += WorkPerCandidate(params);
    evaluated_.push_back(score);
    return score;
  }

  double WorkPerCandidate(const RetrievalParams& params) const {
    const double kd = IsKernel(params.similarity) && memories_.map
                          ? static_cast<double>(memories_.map->out_dim())
                          : 0.0;
    return static_cast<double>(target_index_.size()) *
           static_cast<double>(memories_.size()) * params.steps *
           (2.0 * static_cast<double>(memories_.dim) + kd);
  }

  // The best beta for one similarity and separation.
  absl::StatusOr<CalibrationScore> SearchBeta(RetrievalParams params,
                                              const CalibrationScore& floor) {
    // Scores by grid exponent, so an extension past an edge reuses them.
    std::vector<std::pair<int, CalibrationScore>> grid;
    const auto at = [&](int k) -> absl::StatusOr<CalibrationScore> {
      params.beta = std::pow(4.0f, k);
      absl::StatusOr<CalibrationScore> s = Evaluate(params);
      if (s.ok()) grid.emplace_back(k, *s);
      return s;
    };
    for (int k = kCoarseLow; k <= kCoarseHigh; ++k) {
      if (absl::StatusOr<CalibrationScore> s = at(k); !s.ok()) {
        return s.status();
      }
    }
    auto best_of = [&]() {
      size_t best = 0;
      for (size_t i = 1; i < grid.size(); ++i) {
        if (Better(grid[i].second, grid[best].second, floor)) best = i;
      }
      return best;
    };
    // Extend past an edge while the edge stays best, a few steps at most.
    for (size_t extensions = 0; extensions < kMaxExtensions; ++extensions) {
      std::sort(grid.begin(), grid.end(),
                [](const auto& a, const auto& b) { return a.first < b.first; });
      const int k = grid[best_of()].first;
      int next = 0;
      if (k == grid.front().first) {
        next = k - 1;
      } else if (k == grid.back().first) {
        next = k + 1;
      } else {
        break;
      }
      if (absl::StatusOr<CalibrationScore> s = at(next); !s.ok()) {
        return s.status();
      }
    }
    CalibrationScore best = grid[best_of()].second;
    // Refine by factors 2, then sqrt(2).
    for (const float factor : {2.0f, std::sqrt(2.0f)}) {
      const float center = best.params.beta;
      for (const float beta : {center / factor, center * factor}) {
        params.beta = beta;
        absl::StatusOr<CalibrationScore> s = Evaluate(params);
        if (!s.ok()) return s.status();
        if (Better(*s, best, floor)) best = *s;
      }
    }
    return best;
  }

  // Whether `a` is a better choice than `b`: only candidates recalling at
  // least as well as `floor` qualify; among those, the lower error wins.
  static bool Better(const CalibrationScore& a, const CalibrationScore& b,
                     const CalibrationScore& floor) {
    const bool a_ok = a.recall_at_1 >= floor.recall_at_1;
    const bool b_ok = b.recall_at_1 >= floor.recall_at_1;
    if (a_ok != b_ok) return a_ok;
    if (a.error != b.error) return a.error < b.error;
    return a.recall_at_1 > b.recall_at_1;
  }

  double work() const { return work_; }
  std::vector<CalibrationScore>& evaluated() { return evaluated_; }

 private:
  const MemorySet& memories_;
  const std::vector<float> queries_;
  const std::vector<float> targets_;
  const std::vector<size_t> target_index_;
  const CalibrationOptions& options_;
  double work_ = 0;
  std::vector<CalibrationScore> evaluated_;
};

absl::Status CheckCalibration(const MemorySet& memories,
                              const RetrievalParams& current,
                              const CalibrationOptions& options) {
  if (memories.size() < 2) {
    return absl::FailedPreconditionError(
        absl::StrCat("calibration needs at least 2 stored patterns, the "
                     "store holds ",
                     memories.size()));
  }
  if (!CorruptionLevelValid(options.corruption, options.level)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "calibration level for ", CorruptionName(options.corruption),
        " must be ", CorruptionLevelRange(options.corruption), ", got ",
        options.level));
  }
  if (options.sample_size < 1) {
    return absl::InvalidArgumentError(
        "calibration sample_size must be at least 1");
  }
  if (IsKernel(current.similarity) && !HasKeys(memories)) {
    return absl::FailedPreconditionError(
        "a kernel similarity needs the memories' features");
  }
  return absl::OkStatus();
}

// The similarity and separation pairs the search visits.
struct Candidates {
  std::vector<Similarity> similarities;
  std::vector<Separation> separations;
};

Candidates CandidatesFor(const MemorySet& memories,
                         const RetrievalParams& current,
                         const CalibrationOptions& options) {
  Candidates c{{current.similarity}, {current.separation}};
  if (options.search_similarity) {
    c.similarities = {Similarity::kDot, Similarity::kL2, Similarity::kManhattan,
                      Similarity::kCosine};
    if (HasKeys(memories)) {
      c.similarities.push_back(Similarity::kKernelDot);
      c.similarities.push_back(Similarity::kKernelL2);
    }
  }
  if (options.search_separation) {
    c.separations = {Separation::kSoftmax, Separation::kSparsemax,
                     Separation::kEntmax15};
  }
  return c;
}

// The sample's size n and the memories used, within the work budget: first
// fewer corrupted patterns (down to kMinSample), then fewer memories.
std::pair<size_t, size_t> SizesWithinBudget(const MemorySet& memories,
                                            const RetrievalParams& current,
                                            const CalibrationOptions& options,
                                            const Candidates& candidates) {
  const size_t m = memories.size();
  const double kd = HasKeys(memories) ? memories.map->out_dim() : 0.0;
  const double per_pair_row = static_cast<double>(current.steps) *
                              (2.0 * static_cast<double>(memories.dim) + kd);
  // The current setting, every pair's search, and the separation check.
  const double evaluations = static_cast<double>(
      2 + candidates.similarities.size() * candidates.separations.size() *
              kCandidatesPerPair);
  const auto cost = [&](size_t queries, size_t mems) {
    return evaluations * static_cast<double>(queries) *
           static_cast<double>(mems) * per_pair_row;
  };
  size_t n = std::min(options.sample_size, m);
  size_t used = m;
  if (cost(n, used) > options.max_work) {
    const size_t fewer = static_cast<size_t>(options.max_work / cost(1, used));
    n = std::max(std::min(n, kMinSample), std::min(n, fewer));
  }
  if (cost(n, used) > options.max_work) {
    const size_t fewer = static_cast<size_t>(options.max_work / cost(n, 1));
    used = std::max(std::min(m, 2 * n), std::min(m, fewer));
  }
  return {n, used};
}

// What one calibration retrieves from: the memories (all, or a subset that
// starts with the sampled patterns), the clean sampled patterns, their
// corrupted copies, and each one's index in the memories.
struct Sample {
  SubsetBuffers buffers;
  MemorySet subset;
  const MemorySet* memories = nullptr;
  std::vector<float> targets, queries;
  std::vector<size_t> target_index;
};

void DrawSample(const MemorySet& memories, size_t n, size_t used,
                const CalibrationOptions& options, Sample& out) {
  const size_t m = memories.size(), d = memories.dim;
  std::mt19937_64 rng(options.seed);
  const std::vector<size_t> sample = SampleIndices(m, n, {}, rng);
  out.memories = &memories;
  out.target_index = sample;
  if (used < m) {
    absl::flat_hash_set<size_t> taken(sample.begin(), sample.end());
    std::vector<size_t> indices = sample;
    const std::vector<size_t> others = SampleIndices(m, used - n, taken, rng);
    indices.insert(indices.end(), others.begin(), others.end());
    out.subset = CopySubset(memories, indices, out.buffers);
    out.memories = &out.subset;
    for (size_t i = 0; i < n; ++i) out.target_index[i] = i;
  }
  out.targets.resize(n * d);
  for (size_t i = 0; i < n; ++i) {
    memories.CopyRow(sample[i], out.targets.data() + i * d);
  }
  out.queries = out.targets;
  Corrupt(options.corruption, options.level,
          options.seed ^ 0x9e3779b97f4a7c15ULL, out.queries.data(), n, d);
}

// Separation at the chosen setting: each sampled pattern queried with
// itself, one step, its top two scores; fills the result's capacity figures.
absl::Status MeasureSeparation(const Sample& sample,
                               const CalibrationOptions& options,
                               Search& search, CalibrationResult& result) {
  const size_t n = sample.target_index.size();
  RetrievalParams self = result.best.params;
  self.steps = 1;
  self.top_k = 2;
  absl::StatusOr<RetrievalOutput> out = RetrieveExact(
      *sample.memories, sample.targets.data(), n, self, options.retrieval);
  if (!out.ok()) return out.status();
  result.work = search.work() + search.WorkPerCandidate(self);
  const double count = static_cast<double>(sample.memories->size());
  const double margin =
      self.separation == Separation::kSoftmax
          ? std::log(std::max(1.0, count - 1.0))
          : SupportMargin(self.separation);  // In units of beta * s.
  const double m2 = MaxSquaredNorm(*sample.memories, self.similarity);
  std::vector<double> betas;
  size_t separated = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::vector<Match>& top = out->matches[i];
    double gap = -1;  // Another pattern scores at least as high.
    if (!top.empty() && top.front().index == sample.target_index[i]) {
      gap = top.size() > 1 ? (top[0].score - top[1].score) / self.beta
                           : std::numeric_limits<double>::infinity();
    }
    if (gap * self.beta >= margin) ++separated;
    betas.push_back(TheoryBeta(gap, count, m2));
  }
  result.well_separated_fraction =
      static_cast<double>(separated) / static_cast<double>(n);
  result.theory_beta_median = Quantile(betas, 0.5);
  result.theory_beta_p90 = Quantile(betas, 0.9);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CalibrationResult> Calibrate(const MemorySet& memories,
                                            const RetrievalParams& current,
                                            const CalibrationOptions& options) {
  if (absl::Status s = CheckCalibration(memories, current, options); !s.ok()) {
    return s;
  }
  const Candidates candidates = CandidatesFor(memories, current, options);
  const auto [n, used] =
      SizesWithinBudget(memories, current, options, candidates);
  Sample sample;
  DrawSample(memories, n, used, options, sample);

  Search search(*sample.memories, sample.queries, sample.targets,
                sample.target_index, options);
  CalibrationResult result;
  result.sample_size = n;
  result.memories_used = used;
  absl::StatusOr<CalibrationScore> start = search.Evaluate(current);
  if (!start.ok()) return start.status();
  result.current = *start;
  result.current.params.top_k = current.top_k;
  CalibrationScore best = result.current;
  for (Similarity similarity : candidates.similarities) {
    for (Separation separation : candidates.separations) {
      RetrievalParams params = current;
      params.similarity = similarity;
      params.separation = separation;
      absl::StatusOr<CalibrationScore> s =
          search.SearchBeta(params, result.current);
      if (!s.ok()) return s.status();
      if (Search::Better(*s, best, result.current)) best = *s;
    }
  }
  best.params.top_k = current.top_k;
  result.improved = best.error < result.current.error &&
                    best.recall_at_1 >= result.current.recall_at_1;
  result.best = result.improved ? best : result.current;
  result.evaluated = std::move(search.evaluated());
  if (absl::Status s = MeasureSeparation(sample, options, search, result);
      !s.ok()) {
    return s;
  }
  return result;
}

}  // namespace engram::core
