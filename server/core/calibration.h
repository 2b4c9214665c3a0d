// Self-retrieval calibration: corrupt a seeded sample of the stored patterns,
// retrieve them, and search the retrieval setting (beta on a log grid, and
// optionally the similarity and the separation) that recalls them best.
//
//   CalibrationOptions options{.corruption = Corruption::kDropout,
//                              .level = 0.5f, .seed = 7};
//   absl::StatusOr<CalibrationResult> r =
//       Calibrate(memories, current_params, options);
//   if (r.ok() && r->improved) ... r->best.params ...
//
// A candidate is scored by the mean squared L2 error between the retrieved
// state and the clean pattern, and by recall@1 (the top-1 match is the
// corrupted pattern itself). The best candidate is the one with the least
// error among those whose recall@1 is at least the current setting's, so an
// improvement never lowers either figure on the sample. The work is bounded
// by CalibrationOptions::max_work: past it, fewer patterns are corrupted and
// then the search runs on a seeded subset of the memories that holds them.
//
// Thread-safe: pure functions of their arguments.
#ifndef ENGRAM_SERVER_CORE_CALIBRATION_H_
#define ENGRAM_SERVER_CORE_CALIBRATION_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/core/retrieval.h"

namespace engram::core {

// How calibration corrupts a pattern into a query.
enum class Corruption {
  kDropout,   // Each entry zeroed with probability `level`, the rest scaled
              // by 1 / (1 - level).
  kGaussian,  // N(0, level^2) noise added to each entry.
  kMask,      // round(level * d) entries, chosen uniformly, set to zero.
};

absl::string_view CorruptionName(Corruption corruption);

// Whether `level` is valid for `corruption`, and the valid range in words.
bool CorruptionLevelValid(Corruption corruption, float level);
absl::string_view CorruptionLevelRange(Corruption corruption);

// Corrupts n rows of `dim` floats in place, deterministically for `seed`.
void Corrupt(Corruption corruption, float level, uint64_t seed, float* rows,
             size_t n, size_t dim);

// The default work budget of one calibration, in multiply-adds as
// CalibrationOptions::max_work counts them (about 8 s on 2 cores).
inline constexpr double kDefaultCalibrationWork = 1e12;

struct CalibrationOptions {
  Corruption corruption = Corruption::kDropout;
  float level = 0.5f;
  // Also try every similarity the memories allow (the kernel forms need a
  // feature map) and every separation.
  bool search_similarity = false;
  bool search_separation = false;
  // Patterns corrupted and retrieved per candidate (at most the store size).
  size_t sample_size = 256;
  uint64_t seed = 0;
  // Upper bound on the multiply-adds of all candidate retrievals together
  // (estimated as queries * memories * steps * (2 d + d_Phi for kernels)).
  double max_work = kDefaultCalibrationWork;
  // Threads and cancellation for the retrievals.
  RetrievalOptions retrieval;
};

struct CalibrationScore {
  RetrievalParams params;
  double error = 0;        // Mean ||x_hat - xi||_2^2 over the sample.
  double recall_at_1 = 0;  // Fraction whose top-1 match is the pattern.
};

struct CalibrationResult {
  CalibrationScore current;  // The setting calibration started from.
  CalibrationScore best;     // The chosen setting; `current` if none beat it.
  bool improved = false;     // best differs from current and is better.
  size_t sample_size = 0;    // Patterns corrupted and retrieved.
  size_t memories_used = 0;  // Memories retrieved over (all unless sampled).
  double work = 0;           // Multiply-adds spent, as max_work counts them.
  // At the chosen setting, over the sample: the fraction of patterns that,
  // queried with themselves, win at least half the weight against any other
  // patterns: s(xi, xi) - max_{nu != mu} s(xi_nu, xi) >= margin with margin
  // log(M - 1) / beta (softmax), 1 / beta (sparsemax) or 2 / beta (entmax15;
  // the last two make the weight one-hot).
  double well_separated_fraction = 0;
  // The beta from which the separation condition of Ramsauer et al. (2021,
  // Thm. 5), Delta >= 2 / (beta M) + log(2 (M-1) M beta m^2) / beta, holds
  // for half (and for 90%) of the sampled patterns, with Delta the gap above
  // and m the largest norm (in feature space for kernels, 1 for cosine).
  // Infinite when fewer than that many patterns have a positive gap.
  double theory_beta_median = 0;
  double theory_beta_p90 = 0;
  std::vector<CalibrationScore> evaluated;  // Every candidate, in order.
};

// Calibrates retrieval over `memories` (at least 2) from `current`. For each
// similarity and separation tried, beta runs over 4^k for k in [-5, 6],
// extends past an edge that stays best (to 4^-9 .. 4^10), and the best is
// refined by factors of 2 and sqrt(2).
// INVALID_ARGUMENT for a bad level or sample size; the retrieval check's
// status (e.g. CANCELLED) if it aborts.
absl::StatusOr<CalibrationResult> Calibrate(const MemorySet& memories,
                                            const RetrievalParams& current,
                                            const CalibrationOptions& options);

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_CALIBRATION_H_
