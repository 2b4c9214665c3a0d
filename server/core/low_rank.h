// The low-rank path of softmax retrieval with a dot-product similarity (raw
// or kernel) and its error bound (docs/low-rank.md).
//
// exp(beta <a, b>) is replaced by its Taylor polynomial of even degree g,
//   T_g(beta <a, b>) = sum_{k <= g} beta^k <a, b>^k / k! = <psi(a),
//   psi_beta(b)>,
// with psi the symmetric monomials of degree <= g (rank r = sum_k
// C(n + k - 1, k) in n variables). The memory side carries no beta, so one
// set of sums serves every beta:
//
//   auto basis = std::make_shared<const TaylorBasis>(d_phi, 4);
//   LowRankSums sums(basis, d, /*keys_are_rows=*/false);
//   sums.Add(keys, rows, n, +1.0);  // A += psi(k) xi^T, z += psi(k)
//   sums.Finish();
//   RetrieveLowRank(sums, memories, queries, L, params, /*degree=*/2);
//
// A query costs O(r (d_phi + d)) whatever the number of memories.
//
// Thread-safe: TaylorBasis is immutable; a LowRankSums is built by one thread
// and then shared read-only; the functions are pure.
#ifndef ENGRAM_SERVER_CORE_LOW_RANK_H_
#define ENGRAM_SERVER_CORE_LOW_RANK_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/core/feature_map.h"
#include "server/core/retrieval.h"

namespace engram::core {

// Number of monomials of degree <= `degree` in `n` variables, saturating at
// UINT64_MAX.
uint64_t TaylorRank(size_t n, uint32_t degree);

// The largest even degree g <= max_degree, g >= 2, whose sums (r x (dim + 1)
// doubles) fit in `max_values`; 0 if there is none.
uint32_t SumsDegree(size_t feature_dim, size_t dim, uint32_t max_degree,
                    size_t max_values);

// T_g(s) = sum_{k <= g} s^k / k!.
double TaylorExp(double s, uint32_t degree);

// The monomials of degree <= degree() in dim() variables, in graded order, so
// the monomials of degree <= g are a prefix of length rank(g).
class TaylorBasis {
 public:
  TaylorBasis(size_t dim, uint32_t degree);

  size_t dim() const { return dim_; }
  uint32_t degree() const { return degree_; }
  // Monomials of degree <= `degree` (<= degree()).
  size_t rank(uint32_t degree) const { return level_end_[degree]; }

  // out[m] = scale^|m| * prod_i v_i^c_i / sqrt(prod_i c_i!) for the first
  // rank(degree) monomials m = (c_1 .. c_n); then
  // <Features(a, 1), Features(b, beta)> = T_g(beta <a, b>).
  void Features(const double* v, double scale, uint32_t degree,
                double* out) const;

 private:
  size_t dim_;
  uint32_t degree_;
  std::vector<size_t> level_end_;
  // The children of monomial p are the contiguous monomials
  // first_child_[p] + j = p * v[first_var_[p] + j] * ratio[...], j < dim -
  // first_var_[p] (only for monomials of degree < degree()).
  std::vector<uint32_t> first_child_;
  std::vector<uint32_t> first_var_;
  std::vector<double> ratio_;
};

// The additive sums of the low-rank path over memories xi_mu with features
// k_mu (Phi xi_mu for kernel_dot, xi_mu itself for dot):
//   A = sum_mu psi(k_mu) xi_mu^T (rank x dim), z = sum_mu psi(k_mu),
// and the moments of the features the error bound needs.
class LowRankSums {
 public:
  // `keys_are_rows`: the features are the memories themselves (dot).
  LowRankSums(std::shared_ptr<const TaylorBasis> basis, size_t dim,
              bool keys_are_rows);

  // Adds (sign = +1) or removes (sign = -1) n memories: keys n x
  // basis().dim() and rows n x dim(), row-major.
  void Add(const float* keys, const float* rows, size_t n, double sign);
  // Adds another part's sums (a router merging its shards): `a` holds
  // z.size() rows of dim() and z at least rank(basis().degree()) entries,
  // of which the first rank(basis().degree()) are added (a higher degree's
  // sums start with a lower one's, graded order). Adding is the whole merge:
  // the sums of a union are the sums of its parts.
  absl::Status AddPart(absl::Span<const double> a, absl::Span<const double> z,
                       double sq_norm_sum);
  // Recomputes the moments from the sums; call after the last Add.
  void Finish();

  // Whether removals have cancelled so much more than the sums now hold
  // that their rounding is no longer that of sums built afresh, which the
  // error bound assumes: the rows added and removed since the sums began
  // weigh more than kDriftRatio times the rows they hold, each row weighed
  // by a bound on its terms, (1 + ||xi||)^2 (1 + ||k||)^degree. One outsized
  // pattern added and removed again is enough; ordinary churn takes about
  // kDriftRatio times the store's size in writes. The owner then sums its
  // rows afresh. Parts merged by AddPart are not weighed.
  static constexpr double kDriftRatio = 1024;
  bool Drifted() const;

  const TaylorBasis& basis() const { return *basis_; }
  size_t dim() const { return dim_; }
  bool keys_are_rows() const { return keys_are_rows_; }
  // Row-major rank x dim, and rank.
  const std::vector<double>& a() const { return a_; }
  const std::vector<double>& z() const { return z_; }
  // The number of memories summed (z's constant monomial).
  double count() const { return z_[0]; }
  // sum_mu ||xi_mu||^2.
  double sq_norm_sum() const { return sq_norm_sum_; }

  // After Finish(): the mean feature m = (1/M) sum k_mu, the feature second
  // moment S = (1/M) sum k_mu k_mu^T (row-major), and upper bounds on the
  // largest eigenvalue of S and of (1/M) sum xi_mu xi_mu^T.
  const std::vector<double>& feature_mean() const { return mean_; }
  const std::vector<double>& feature_moment() const { return moment_; }
  double feature_moment_max_eig() const { return feature_eig_; }
  double value_moment_max_eig() const { return value_eig_; }

 private:
  std::shared_ptr<const TaylorBasis> basis_;
  size_t dim_;
  bool keys_are_rows_;
  std::vector<double> a_;
  std::vector<double> z_;
  double sq_norm_sum_ = 0;    // sum_mu ||xi_mu||^2.
  double held_weight_ = 0;    // Of the rows the sums hold (see Drifted).
  double passed_weight_ = 0;  // Of every row added or removed.
  std::vector<double> mean_;
  std::vector<double> moment_;
  double feature_eig_ = 0;
  double value_eig_ = 0;
};

// An upper bound on the largest eigenvalue of a symmetric positive
// semi-definite n x n matrix (row-major): an estimate (power iterations,
// or LAPACK's where they do not settle) raised until a Cholesky
// factorisation proves c I - s positive definite, at most the trace.
double MaxEigenvalueBound(const double* s, size_t n);

// An upper bound on the spectral norm ||W||_2 of a feature map (1 for the
// identity).
double SpectralNormBound(const FeatureMap& map);

// What the error bound knows of a store.
struct LowRankBoundInputs {
  const LowRankSums* sums = nullptr;
  double max_norm = 0;          // max_mu ||xi_mu||.
  double max_feature_norm = 0;  // max_mu ||k_mu||.
  double map_norm = 1;          // Upper bound on ||Phi||_2.
};

// A proved bound on ||y_hat - y||_2 between the low-rank path at `degree`
// and exact softmax retrieval after `steps` steps, for a query whose
// features are q (size sums->basis().dim()), plus 2^-20 max ||xi|| for the
// float rounding of either path. Infinity where none holds.
double LowRankErrorBound(const LowRankBoundInputs& in, const double* q,
                         double beta, uint32_t degree, uint32_t steps);

// What the low-rank updates leave for the matches: each query's last input
// (its features, num_queries x basis dim, row-major) and the normaliser
// <z, psi(q)> of its last update.
struct LowRankLast {
  std::vector<double> inputs;
  std::vector<double> normalisers;
};

// The updates of the low-rank path at `degree` (even, <=
// sums.basis().degree()) for softmax with params.similarity kDot or
// kKernelDot (then `map`, the map the sums' keys came from, is required):
// states, energies (log <z, psi(q)> for log-sum-exp) and steps, no matches.
// Needs only the sums, so a router answers from its shards' merged sums.
absl::StatusOr<RetrievalOutput> LowRankUpdates(
    const LowRankSums& sums, const FeatureMap* map, const float* queries,
    size_t num_queries, const RetrievalParams& params, uint32_t degree,
    const RetrievalOptions& options, LowRankLast* last);

// The `top_k` memories of each of `count` inputs q (count x key dim,
// row-major) by beta * <q, k_mu> over the memories' keys (Phi xi for
// `kernel`, xi itself otherwise), best first (ties: the smaller index);
// weight left 0. The low-rank path's matches come from this scan.
absl::StatusOr<std::vector<std::vector<Match>>> TopByKeys(
    const MemorySet& memories, const float* q, size_t count, float beta,
    size_t top_k, bool kernel, const RetrievalOptions& options = {});

// A match's low-rank weight: T_g(score) over the update's normaliser.
inline float LowRankWeight(double score, uint32_t degree, double normaliser) {
  return static_cast<float>(TaylorExp(score, degree) / normaliser);
}

// The whole low-rank path over the memories the sums were built from:
// LowRankUpdates, then matches (params.top_k) by TopByKeys at each query's
// last input, weighted by LowRankWeight.
absl::StatusOr<RetrievalOutput> RetrieveLowRank(
    const LowRankSums& sums, const MemorySet& memories, const float* queries,
    size_t num_queries, const RetrievalParams& params, uint32_t degree,
    const RetrievalOptions& options = {});

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_LOW_RANK_H_
