#include "server/core/low_rank.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/core/blas.h"
#include "server/core/internal/top_k.h"
#include "server/core/step_loop.h"

namespace engram::core {

namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();
constexpr double kRounding = 1.0 / (1 << 20);

double Dot(const double* a, const double* b, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Dot in four interleaved partial sums: four chains of additions instead
// of one, which the compiler may also put in a vector (a factorisation
// below is n^3 / 6 of them).
double DotInFourChains(const double* a, const double* b, size_t n) {
  double part[4] = {0, 0, 0, 0};
  size_t k = 0;
  for (; k + 4 <= n; k += 4) {
    for (size_t lane = 0; lane < 4; ++lane) {
      part[lane] += a[k + lane] * b[k + lane];
    }
  }
  for (; k < n; ++k) part[0] += a[k] * b[k];
  return (part[0] + part[1]) + (part[2] + part[3]);
}

// Whether c I - s is positive definite, by a Cholesky factorisation.
bool ShiftedPositiveDefinite(const double* s, size_t n, double c) {
  std::vector<double> l(n * n);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j <= i; ++j) {
      const double sum = (i == j ? c : 0.0) - s[i * n + j] -
                         DotInFourChains(l.data() + i * n, l.data() + j * n, j);
      if (i == j) {
        if (!(sum > 0)) return false;
        l[i * n + i] = std::sqrt(sum);
      } else {
        l[i * n + j] = sum / l[j * n + j];
      }
    }
  }
  return true;
}

}  // namespace

uint64_t TaylorRank(size_t n, uint32_t degree) {
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  unsigned __int128 term = 1;  // C(n + k - 1, k)
  unsigned __int128 total = 1;
  for (uint32_t k = 1; k <= degree; ++k) {
    term = term * (n + k - 1) / k;
    total += term;
    if (total > kMax) return kMax;
  }
  return static_cast<uint64_t>(total);
}

uint32_t SumsDegree(size_t feature_dim, size_t dim, uint32_t max_degree,
                    size_t max_values) {
  for (uint32_t g = max_degree & ~1u; g >= 2; g -= 2) {
    const uint64_t rank = TaylorRank(feature_dim, g);
    if (rank <= max_values / (dim + 1)) return g;
  }
  return 0;
}

double TaylorExp(double s, uint32_t degree) {
  double term = 1;
  double sum = 1;
  for (uint32_t k = 1; k <= degree; ++k) {
    term *= s / k;
    sum += term;
  }
  return sum;
}

TaylorBasis::TaylorBasis(size_t dim, uint32_t degree)
    : dim_(dim), degree_(degree) {
  const uint64_t rank = TaylorRank(dim, degree);
  ratio_.reserve(rank);
  // Monomials of degree k are non-decreasing variable sequences: each
  // extends a degree k - 1 monomial by a variable >= its last one. `run`
  // counts the trailing repeats, so c_i! grows by the factor run.
  std::vector<uint32_t> last{0};
  std::vector<uint32_t> run{0};
  ratio_.push_back(1.0);
  level_end_.push_back(1);
  size_t begin = 0;
  for (uint32_t k = 1; k <= degree; ++k) {
    const size_t end = ratio_.size();
    for (size_t p = begin; p < end; ++p) {
      const uint32_t first = k == 1 ? 0 : last[p];
      first_child_.push_back(static_cast<uint32_t>(ratio_.size()));
      first_var_.push_back(first);
      for (uint32_t i = first; i < dim; ++i) {
        const uint32_t repeats = k > 1 && i == last[p] ? run[p] + 1 : 1;
        ratio_.push_back(1.0 / std::sqrt(static_cast<double>(repeats)));
        last.push_back(i);
        run.push_back(repeats);
      }
    }
    begin = end;
    level_end_.push_back(ratio_.size());
  }
}

void TaylorBasis::Features(const double* v, double scale, uint32_t degree,
                           double* out) const {
  out[0] = 1.0;
  // Parents in order: each writes its contiguous children.
  const size_t parents = level_end_[degree - (degree > 0 ? 1 : 0)];
  for (size_t p = 0; p < parents && degree > 0; ++p) {
    const double base = out[p] * scale;
    const size_t child = first_child_[p];
    const size_t first = first_var_[p];
    const double* ratio = ratio_.data() + child;
    double* to = out + child;
    for (size_t j = 0; j + first < dim_; ++j) {
      to[j] = base * v[first + j] * ratio[j];
    }
  }
}

LowRankSums::LowRankSums(std::shared_ptr<const TaylorBasis> basis, size_t dim,
                         bool keys_are_rows)
    : basis_(std::move(basis)),
      dim_(dim),
      keys_are_rows_(keys_are_rows),
      a_(basis_->rank(basis_->degree()) * dim, 0.0),
      z_(basis_->rank(basis_->degree()), 0.0) {}

void LowRankSums::Add(const float* keys, const float* rows, size_t n,
                      double sign) {
  constexpr size_t kBlock = 256;
  const size_t n_phi = basis_->dim();
  const uint32_t degree = basis_->degree();
  const size_t rank = basis_->rank(degree);
  std::vector<double> psi(std::min(n, kBlock) * rank);
  std::vector<double> x(std::min(n, kBlock) * dim_);
  std::vector<double> key(n_phi);
  for (size_t begin = 0; begin < n; begin += kBlock) {
    const size_t count = std::min(kBlock, n - begin);
    for (size_t i = 0; i < count; ++i) {
      const float* k = keys + (begin + i) * n_phi;
      std::copy(k, k + n_phi, key.begin());
      basis_->Features(key.data(), 1.0, degree, psi.data() + i * rank);
      const float* row = rows + (begin + i) * dim_;
      std::copy(row, row + dim_, x.data() + i * dim_);
      const double sq_norm =
          Dot(x.data() + i * dim_, x.data() + i * dim_, dim_);
      sq_norm_sum_ += sign * sq_norm;
      const double norm = std::sqrt(sq_norm);
      const double key_norm =
          keys_are_rows_ ? norm : std::sqrt(Dot(key.data(), key.data(), n_phi));
      const double weight = (1 + norm) * (1 + norm) *
                            std::pow(1 + key_norm, static_cast<double>(degree));
      held_weight_ += sign * weight;
      passed_weight_ += weight;
      for (size_t m = 0; m < rank; ++m) z_[m] += sign * psi[i * rank + m];
    }
    blas::GemmTN(rank, dim_, count, sign, psi.data(), rank, x.data(), dim_, 1.0,
                 a_.data(), dim_);
  }
}

absl::Status LowRankSums::AddPart(absl::Span<const double> a,
                                  absl::Span<const double> z,
                                  double sq_norm_sum) {
  const size_t rank = z_.size();
  if (z.size() < rank || a.size() != z.size() * dim_) {
    return absl::InvalidArgumentError(
        absl::StrCat("a part's sums hold ", z.size(), " monomials and ",
                     a.size(), " values; merging needs at least ", rank,
                     " monomials of dimension ", dim_));
  }
  for (size_t m = 0; m < rank; ++m) z_[m] += z[m];
  for (size_t i = 0; i < rank * dim_; ++i) a_[i] += a[i];
  sq_norm_sum_ += sq_norm_sum;
  return absl::OkStatus();
}

bool LowRankSums::Drifted() const {
  return passed_weight_ > kDriftRatio * std::max(held_weight_, 0.0);
}

void LowRankSums::Finish() {
  const size_t n = basis_->dim();
  mean_.assign(n, 0.0);
  moment_.assign(n * n, 0.0);
  feature_eig_ = value_eig_ = 0;
  const double count = z_[0];
  if (!(count >= 0.5)) return;
  for (size_t i = 0; i < n; ++i) mean_[i] = z_[1 + i] / count;
  // Degree-2 monomials follow in the order (i, j), j >= i; the square ones
  // carry 1/sqrt(2!).
  size_t m = 1 + n;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i; j < n; ++j, ++m) {
      const double value = z_[m] / count * (i == j ? std::sqrt(2.0) : 1.0);
      moment_[i * n + j] = moment_[j * n + i] = value;
    }
  }
  feature_eig_ = MaxEigenvalueBound(moment_.data(), n);
  value_eig_ =
      keys_are_rows_ ? feature_eig_ : std::max(0.0, sq_norm_sum_ / count);
}

double MaxEigenvalueBound(const double* s, size_t n) {
  double trace = 0;
  for (size_t i = 0; i < n; ++i) trace += std::max(0.0, s[i * n + i]);
  if (!(trace > 0)) return 0;
  // An estimate first: a few power iterations, which settle at once where
  // one eigenvalue stands out or all are alike (a part in 1e9 gained: as
  // close as the smallest margin below needs); where they do not, LAPACK's
  // largest eigenvalue, to 1e-8 of it (a fixed cost: about 0.1 ms at
  // n = 64, against 0.15 ms for 100 more iterations, still short of it).
  const double mean = trace / static_cast<double>(n);
  double estimate = mean;  // lambda_max >= the mean eigenvalue.
  std::vector<double> v(n), w(n);
  for (size_t i = 0; i < n; ++i) v[i] = 1.0 + 0.01 * i / n;
  bool settled = false;
  double previous = 0;
  for (int iteration = 0; iteration < 16 && !settled; ++iteration) {
    const double norm = std::sqrt(Dot(v.data(), v.data(), n));
    if (!(norm > 0)) break;
    for (size_t i = 0; i < n; ++i) v[i] /= norm;
    blas::Gemv(n, n, 1.0, s, n, v.data(), 0.0, w.data());
    const double rayleigh = Dot(v.data(), w.data(), n);
    estimate = std::max(estimate, rayleigh);
    std::swap(v, w);
    // The Rayleigh quotients of the iterates never fall for a positive
    // semi-definite s.
    settled = iteration > 0 && rayleigh - previous <= 1e-9 * rayleigh;
    previous = rayleigh;
  }
  if (!settled) {
    estimate = std::max(estimate,
                        blas::LargestEigenvalue(n, s, 1e-8 * mean).value_or(0));
  }
  // Raised by a margin until a Cholesky factorisation proves it (c I - s
  // positive definite: every eigenvalue below c), the smallest margin
  // first; the factorisation's rounding is far below it.
  for (double margin = 1e-6; margin < 1.0; margin *= 4) {
    const double c = estimate * (1 + margin);
    if (c >= trace) break;
    if (ShiftedPositiveDefinite(s, n, c)) return c;
  }
  return trace;
}

double SpectralNormBound(const FeatureMap& map) {
  if (map.identity()) return 1.0;
  const size_t out = map.out_dim();
  const size_t in = map.in_dim();
  const std::vector<float>& w = map.weights();
  // ||W||_2^2 = lambda_max of the smaller Gram matrix.
  const bool rows = out <= in;
  const size_t n = rows ? out : in;
  std::vector<double> gram(n * n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i; j < n; ++j) {
      double sum = 0;
      if (rows) {
        for (size_t k = 0; k < in; ++k) {
          sum += double{w[i * in + k]} * w[j * in + k];
        }
      } else {
        for (size_t k = 0; k < out; ++k) {
          sum += double{w[k * in + i]} * w[k * in + j];
        }
      }
      gram[i * n + j] = gram[j * n + i] = sum;
    }
  }
  return std::sqrt(MaxEigenvalueBound(gram.data(), n));
}

double LowRankErrorBound(const LowRankBoundInputs& in, const double* q,
                         double beta, uint32_t degree, uint32_t steps) {
  const LowRankSums& sums = *in.sums;
  const size_t n = sums.basis().dim();
  if (!(sums.count() >= 0.5)) return kInfinity;
  const double x_max = in.max_norm;
  const double f_max = in.max_feature_norm;
  double factorial = 1;
  for (uint32_t k = 2; k <= degree + 1; ++k) factorial *= k;
  // One step from a state with |beta s_mu| <= r, max_mu M p_mu <= rho and
  // (1/M) sum_mu (beta s_mu)^2 = sigma2 (docs/low-rank.md):
  //   e = e^r r^g sqrt(min(r^2, rho sigma2)) / (g+1)!,
  //   ||y_hat - y|| <= e / (1 - e) * sqrt(min(X^2, rho lambda_xi)).
  auto step = [&](double r, double rho, double sigma2) {
    if (!(r < 300)) return kInfinity;
    const double e = std::exp(r) * std::pow(r, degree) *
                     std::sqrt(std::min(r * r, rho * sigma2)) / factorial;
    if (!(e < 1)) return kInfinity;
    return e / (1 - e) *
           std::sqrt(
               std::min(x_max * x_max, rho * sums.value_moment_max_eig()));
  };
  const double q_norm = std::sqrt(Dot(q, q, n));
  const double r1 = beta * f_max * q_norm;
  const double mean_score = beta * Dot(q, sums.feature_mean().data(), n);
  const double rho1 = std::exp(std::min(2 * r1, r1 - mean_score));
  double quadratic = 0;
  for (size_t i = 0; i < n; ++i) {
    quadratic += q[i] * Dot(sums.feature_moment().data() + i * n, q, n);
  }
  double bound = step(r1, rho1, beta * beta * std::max(0.0, quadratic));
  if (steps > 1 && std::isfinite(bound)) {
    // Later states are convex combinations of the memories (the weights stay
    // positive), so ||k(x_t)|| <= f_max; errors carried over grow by at most
    // the update's Lipschitz constant beta ||Cov_p(xi, k)|| ||Phi||.
    const std::vector<double>& mean = sums.feature_mean();
    const double mean_norm = std::sqrt(Dot(mean.data(), mean.data(), n));
    const double r = beta * f_max * f_max;
    const double rho = std::exp(std::min(2 * r, r + beta * f_max * mean_norm));
    const double later = step(
        r, rho, beta * beta * f_max * f_max * sums.feature_moment_max_eig());
    const double lipschitz =
        beta *
        std::sqrt(std::min(x_max * x_max, rho * sums.value_moment_max_eig())) *
        std::sqrt(
            std::min(f_max * f_max, rho * sums.feature_moment_max_eig())) *
        in.map_norm;
    for (uint32_t t = 2; t <= steps && std::isfinite(bound); ++t) {
      bound = later + lipschitz * bound;
    }
  }
  // Both paths round to float at the edges (exact sums M float products):
  // an allowance of 2^-20 max ||xi|| for it, far above what is measured.
  return std::isfinite(bound) ? bound + kRounding * x_max : kInfinity;
}

namespace {

absl::Status CheckLowRank(const LowRankSums& sums, const FeatureMap* map,
                          const RetrievalParams& params, uint32_t degree) {
  const bool kernel = params.similarity == Similarity::kKernelDot;
  if ((params.similarity != Similarity::kDot && !kernel) ||
      params.separation != Separation::kSoftmax) {
    return absl::InvalidArgumentError(
        "the low-rank path needs softmax with dot or kernel_dot");
  }
  const TaylorBasis& basis = sums.basis();
  if (degree % 2 != 0 || degree < 2 || degree > basis.degree()) {
    return absl::InvalidArgumentError(absl::StrCat("low-rank degree ", degree,
                                                   " must be even, in [2, ",
                                                   basis.degree(), "]"));
  }
  if (kernel && map == nullptr) {
    return absl::InvalidArgumentError("kernel_dot needs the feature map");
  }
  if (!(sums.count() >= 0.5)) {
    return absl::FailedPreconditionError("no memories to retrieve from");
  }
  return absl::OkStatus();
}

// One update of a batch of states through the sums:
// next = A^T psi(q) / <z, psi(q)>, with q the state (or its features).
// Keeps each query's last q and normaliser for its matches.
class LowRankStep {
 public:
  LowRankStep(const LowRankSums& sums, const FeatureMap* map,
              const RetrievalParams& params, uint32_t degree, size_t count,
              const RetrievalOptions& options)
      : sums_(sums),
        map_(map),
        params_(params),
        degree_(degree),
        options_(options),
        n_(sums.basis().dim()),
        rank_(sums.basis().rank(degree)),
        q_(count * n_),
        norm_(count) {}

  absl::Status operator()(absl::Span<const size_t> ids, const float* x,
                          float* next, double* energies, std::vector<Match>*) {
    if (options_.check) {
      if (absl::Status status = options_.check(); !status.ok()) return status;
    }
    const size_t batch = ids.size(), d = sums_.dim();
    const double beta = params_.beta;
    const float* keys = x;
    if (params_.similarity == Similarity::kKernelDot) {
      features_.resize(batch * n_);
      map_->Apply(x, batch, features_.data());
      keys = features_.data();
    }
    psi_.resize(batch * rank_);
    for (size_t b = 0; b < batch; ++b) {
      double* qi = q_.data() + ids[b] * n_;
      std::copy_n(keys + b * n_, n_, qi);
      sums_.basis().Features(qi, beta, degree_, psi_.data() + b * rank_);
    }
    numerator_.resize(batch * d);
    blas::GemmNN(batch, d, rank_, 1.0, psi_.data(), rank_, sums_.a().data(), d,
                 0.0, numerator_.data(), d);
    for (size_t b = 0; b < batch; ++b) {
      const size_t i = ids[b];
      const double z = Dot(psi_.data() + b * rank_, sums_.z().data(), rank_);
      if (!(z > 0) || !std::isfinite(z)) {
        return absl::InternalError(absl::StrCat(
            "low-rank normaliser of query ", i, " is ", z, "; expected > 0"));
      }
      norm_[i] = z;
      const double* qi = q_.data() + i * n_;
      energies[b] = -std::log(z) / beta +
                    0.5 * SelfSimilarity(params_.similarity, Dot(qi, qi, n_));
      for (size_t j = 0; j < d; ++j) {
        next[b * d + j] = static_cast<float>(numerator_[b * d + j] / z);
      }
    }
    return absl::OkStatus();
  }

  // Each query's last input (features) and its normaliser <z, psi(q)>.
  LowRankLast TakeLast() { return {std::move(q_), std::move(norm_)}; }

 private:
  const LowRankSums& sums_;
  const FeatureMap* const map_;
  const RetrievalParams& params_;
  const uint32_t degree_;
  const RetrievalOptions& options_;
  const size_t n_, rank_;
  std::vector<double> q_, norm_;
  std::vector<float> features_;
  std::vector<double> psi_, numerator_;
};

}  // namespace

absl::StatusOr<std::vector<std::vector<Match>>> TopByKeys(
    const MemorySet& memories, const float* q, size_t count, float beta,
    size_t top_k, bool kernel, const RetrievalOptions& options) {
  if (kernel && memories.map == nullptr) {
    return absl::InvalidArgumentError("kernel_dot needs the feature map");
  }
  const size_t n = kernel ? memories.map->out_dim() : memories.dim;
  const size_t k = std::min(top_k, memories.size());
  std::vector<internal::TopK> top(count, internal::TopK(k));
  const size_t tile = std::max<size_t>(
      1, std::min<size_t>(
             4096, options.max_score_floats / std::max<size_t>(1, count)));
  std::vector<float> scores(count * tile);
  std::vector<float> wide;    // A tile of bfloat16 / float16 keys as float32.
  std::vector<float> listed;  // A tile of a listed block's keys, as stored.
  size_t base = 0;
  for (const MemoryBlock& block : memories.blocks) {
    for (size_t begin = 0; begin < block.count; begin += tile) {
      if (options.check) {
        if (absl::Status status = options.check(); !status.ok()) return status;
      }
      const size_t rows = std::min(tile, block.count - begin);
      const float* keys = AsFloats(
          block.precision, block.Consecutive(kernel, begin, rows, n, listed),
          rows * n, wide);
      blas::GemmNT(count, rows, n, beta, q, n, keys, n, 0.0f, scores.data(),
                   rows);
      for (size_t i = 0; i < count; ++i) {
        for (size_t r = 0; r < rows; ++r) {
          const float score = scores[i * rows + r];
          if (score >= top[i].threshold()) {
            top[i].Push(score, base + begin + r);
          }
        }
      }
    }
    base += block.count;
  }
  std::vector<std::vector<Match>> out(count);
  for (size_t i = 0; i < count; ++i) {
    for (const internal::TopK::Entry& s : top[i].Sorted()) {
      out[i].push_back({s.index, 0.0f, s.score});
    }
  }
  return out;
}

absl::StatusOr<RetrievalOutput> LowRankUpdates(
    const LowRankSums& sums, const FeatureMap* map, const float* queries,
    size_t num_queries, const RetrievalParams& params, uint32_t degree,
    const RetrievalOptions& options, LowRankLast* last) {
  if (absl::Status s = CheckLowRank(sums, map, params, degree); !s.ok()) {
    return s;
  }
  LowRankStep step(sums, map, params, degree, num_queries, options);
  absl::StatusOr<RetrievalOutput> out =
      RunSteps(queries, num_queries, sums.dim(), params.steps, params.eps,
               [&](absl::Span<const size_t> ids, const float* x, float* next,
                   double* energies, std::vector<Match>* matches) {
                 return step(ids, x, next, energies, matches);
               });
  if (out.ok() && last != nullptr) *last = step.TakeLast();
  return out;
}

absl::StatusOr<RetrievalOutput> RetrieveLowRank(
    const LowRankSums& sums, const MemorySet& memories, const float* queries,
    size_t num_queries, const RetrievalParams& params, uint32_t degree,
    const RetrievalOptions& options) {
  if (memories.size() == 0) {
    return absl::FailedPreconditionError("no memories to retrieve from");
  }
  LowRankLast last;
  absl::StatusOr<RetrievalOutput> out = LowRankUpdates(
      sums, memories.map, queries, num_queries, params, degree, options, &last);
  if (!out.ok() || params.top_k == 0) return out;
  const std::vector<float> q(last.inputs.begin(), last.inputs.end());
  absl::StatusOr<std::vector<std::vector<Match>>> top = TopByKeys(
      memories, q.data(), num_queries, static_cast<float>(params.beta),
      params.top_k, params.similarity == Similarity::kKernelDot, options);
  if (!top.ok()) return top.status();
  for (size_t i = 0; i < num_queries; ++i) {
    for (Match& m : (*top)[i]) {
      m.weight = LowRankWeight(m.score, degree, last.normalisers[i]);
    }
    out->matches[i] = std::move((*top)[i]);
  }
  return out;
}

}  // namespace engram::core
