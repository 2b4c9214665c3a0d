#include "server/core/uhop_fit.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/core/blas.h"

namespace engram::core {

double SeparationLossAndGradient(const float* x, size_t n, size_t d,
                                 const std::vector<float>& weights,
                                 size_t out_dim, SeparationLoss loss,
                                 double temperature,
                                 std::vector<float>* gradient) {
  const size_t p = out_dim;
  const double t = temperature;
  // Features and their unit-normalised form.
  std::vector<float> unit(n * p);
  blas::GemmNT(n, p, d, 1.0f, x, d, weights.data(), d, 0.0f, unit.data(), p);
  std::vector<float> norms(n);
  for (size_t i = 0; i < n; ++i) {
    float* row = unit.data() + i * p;
    double sq = 0;
    for (size_t k = 0; k < p; ++k) sq += double{row[k]} * row[k];
    norms[i] = static_cast<float>(std::max(std::sqrt(sq), 1e-12));
    const float inverse = 1.0f / norms[i];
    for (size_t k = 0; k < p; ++k) row[k] *= inverse;
  }
  // Gram matrix, upper triangle: G_ij = <u_i, u_j>; ||u_i - u_j||^2 = 2 - 2
  // G_ij.
  std::vector<float> gram(n * n, 0.0f);
  blas::SyrkUpper(n, p, 1.0f, unit.data(), p, 0.0f, gram.data(), n);

  // Pair weights C (symmetric, zero diagonal): dL/du_i = sum_j C_ij u_j.
  std::vector<float> pair_weights;
  double value;
  if (loss == SeparationLoss::kMean) {
    double max = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = i + 1; j < n; ++j) {
        max = std::max(max, -t * (2.0 - 2.0 * gram[i * n + j]));
      }
    }
    double sum = 0;
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = i + 1; j < n; ++j) {
        sum += std::exp(-t * (2.0 - 2.0 * gram[i * n + j]) - max);
      }
    }
    const double pairs = 0.5 * double(n) * double(n - 1);
    value = max + std::log(sum) - std::log(pairs);
    if (gradient) {
      pair_weights.assign(n * n, 0.0f);
      for (size_t i = 0; i < n; ++i) {
        for (size_t j = i + 1; j < n; ++j) {
          const double w = 2.0 * t *
                           std::exp(-t * (2.0 - 2.0 * gram[i * n + j]) - max) /
                           sum;
          pair_weights[i * n + j] = pair_weights[j * n + i] =
              static_cast<float>(w);
        }
      }
    }
  } else {
    size_t a = 0, b = 1;
    float best = -std::numeric_limits<float>::infinity();
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = i + 1; j < n; ++j) {
        if (gram[i * n + j] > best) {
          best = gram[i * n + j];
          a = i;
          b = j;
        }
      }
    }
    value = -t * (2.0 - 2.0 * best);
    if (gradient) {
      pair_weights.assign(n * n, 0.0f);
      pair_weights[a * n + b] = pair_weights[b * n + a] =
          static_cast<float>(2.0 * t);
    }
  }
  if (!gradient) return value;

  // dL/du = C u, then through u = y / ||y||: dL/dy = (g - <g, u> u) / ||y||.
  std::vector<float> grad_unit(n * p);
  blas::GemmNN(n, p, n, 1.0f, pair_weights.data(), n, unit.data(), p, 0.0f,
               grad_unit.data(), p);
  for (size_t i = 0; i < n; ++i) {
    float* g = grad_unit.data() + i * p;
    const float* u = unit.data() + i * p;
    double along = 0;
    for (size_t k = 0; k < p; ++k) along += double{g[k]} * u[k];
    const float inverse = 1.0f / norms[i];
    for (size_t k = 0; k < p; ++k) {
      g[k] = (g[k] - static_cast<float>(along) * u[k]) * inverse;
    }
  }
  // dL/dW = (dL/dy)^T x.
  gradient->assign(p * d, 0.0f);
  blas::GemmTN(p, d, n, 1.0f, grad_unit.data(), p, x, d, 0.0f, gradient->data(),
               d);
  return value;
}

absl::StatusOr<FitResult> FitFeatureMap(
    const MemorySet& patterns, const FeatureMap& initial,
    const FitOptions& options,
    const std::function<absl::Status(const FitProgress&)>& on_epoch) {
  const size_t m = patterns.size(), d = patterns.dim;
  if (m < 2) {
    return absl::FailedPreconditionError(
        absl::StrCat("a fit needs at least 2 patterns, the store has ", m));
  }
  if (initial.in_dim() != d) {
    return absl::InvalidArgumentError(absl::StrCat(
        "feature map input dimension ", initial.in_dim(), " != ", d));
  }
  const size_t p = initial.out_dim();
  std::vector<float> weights = initial.weights();
  if (initial.identity()) {
    weights.assign(p * d, 0.0f);
    for (size_t k = 0; k < d; ++k) weights[k * d + k] = 1.0f;
  }
  const bool adam = options.optimizer == FitOptimizer::kAdam;
  double rate = options.learning_rate;
  if (rate <= 0) {
    rate = adam ? 0.01 : options.loss == SeparationLoss::kMax ? 10.0 : 1.0;
  }

  // The batch: every pattern, or a seeded sample when there are too many.
  const size_t batch = std::min(m, std::max<size_t>(2, options.batch_size));
  std::vector<size_t> order(m);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(options.seed ^ 0x9e3779b97f4a7c15ULL);
  std::vector<float> x(batch * d);
  auto gather = [&]() {
    if (batch < m) {
      for (size_t i = 0; i < batch; ++i) {
        std::uniform_int_distribution<size_t> pick(i, m - 1);
        std::swap(order[i], order[pick(rng)]);
      }
    }
    for (size_t i = 0; i < batch; ++i) {
      patterns.CopyRow(order[i], x.data() + i * d);
    }
  };
  gather();
  // Loss before and after are measured on this same first batch (all
  // patterns, or a seeded sample), so they compare.
  const std::vector<float> evaluation = x;

  std::vector<float> gradient, first_moment, second_moment;
  if (adam) {
    first_moment.assign(p * d, 0.0f);
    second_moment.assign(p * d, 0.0f);
  }
  FitResult result{FeatureMap::Identity(d), 0, 0, 0};
  for (uint32_t epoch = 0; epoch < options.epochs; ++epoch) {
    if (batch < m && epoch > 0) gather();
    const double value =
        SeparationLossAndGradient(x.data(), batch, d, weights, p, options.loss,
                                  options.temperature, &gradient);
    if (!std::isfinite(value)) {
      return absl::InternalError(absl::StrCat("the fit diverged at epoch ",
                                              epoch, " (loss ", value,
                                              "); lower the learning rate"));
    }
    if (epoch == 0) result.loss_before = value;
    if (adam) {
      constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
      const double c1 = 1 - std::pow(kBeta1, epoch + 1);
      const double c2 = 1 - std::pow(kBeta2, epoch + 1);
      for (size_t i = 0; i < weights.size(); ++i) {
        first_moment[i] = kBeta1 * first_moment[i] + (1 - kBeta1) * gradient[i];
        second_moment[i] = kBeta2 * second_moment[i] +
                           (1 - kBeta2) * gradient[i] * gradient[i];
        weights[i] -=
            static_cast<float>(rate * (first_moment[i] / c1) /
                               (std::sqrt(second_moment[i] / c2) + kEps));
      }
    } else {
      blas::Axpy(weights.size(), static_cast<float>(-rate), gradient.data(),
                 weights.data());
      if (options.loss == SeparationLoss::kMean) rate /= std::sqrt(epoch + 1.0);
    }
    result.epochs = epoch + 1;
    if (on_epoch) {
      if (absl::Status status = on_epoch({epoch + 1, value}); !status.ok()) {
        return status;
      }
    }
  }
  result.loss_after =
      SeparationLossAndGradient(evaluation.data(), batch, d, weights, p,
                                options.loss, options.temperature, nullptr);
  result.map = FeatureMap(d, p, std::move(weights));
  return result;
}

}  // namespace engram::core
