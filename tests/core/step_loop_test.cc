#include "server/core/step_loop.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace engram::core {
namespace {

// Every step halves a state; a query stops once it moved by at most eps. The
// queries' sizes differ, so they stop at different steps and later steps see
// fewer, non-contiguous rows.
TEST(StepLoopTest, EachQueryStepsUntilItMovesLessThanEps) {
  const size_t d = 3;
  const std::vector<float> queries = {8, 0, 0, 1, 1, 0, 64, 64, 64, 0, 0, 0.5f};
  const std::vector<float> before = queries;
  std::vector<std::vector<size_t>> seen;
  absl::StatusOr<RetrievalOutput> out =
      RunSteps(queries.data(), 4, d, /*steps=*/20, /*eps=*/0.5f,
               [&](absl::Span<const size_t> ids, const float* states,
                   float* next, double* energies, std::vector<Match>* matches) {
                 seen.emplace_back(ids.begin(), ids.end());
                 for (size_t a = 0; a < ids.size(); ++a) {
                   for (size_t k = 0; k < d; ++k) {
                     // The rows given are the current states of the queries
                     // named.
                     next[a * d + k] = states[a * d + k] / 2;
                   }
                   energies[a] = static_cast<double>(ids[a]);
                   matches[a] = {{ids[a], 1.0f, 0.0f}};
                 }
                 return absl::OkStatus();
               });
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(queries, before);  // Read, never written.
  // Moves of 8 / 2^s: 4, 2, 1, 0.5 (<= 0.5): 4 steps; |(1, 1)| / 2^s:
  // 0.71, 0.35: 2 steps; 64 sqrt(3) / 2^s <= 0.5 from s = 8; 0.5 moves 0.25
  // at once: 1 step.
  EXPECT_EQ(out->steps, (std::vector<uint32_t>{4, 2, 8, 1}));
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_TRUE(out->converged[i]) << i;
    EXPECT_EQ(out->energies[i], static_cast<double>(i));
    ASSERT_EQ(out->matches[i].size(), 1u);
    EXPECT_EQ(out->matches[i][0].index, i);
    for (size_t k = 0; k < d; ++k) {
      EXPECT_EQ(out->states[i * d + k],
                queries[i * d + k] / std::pow(2.0f, out->steps[i]))
          << i << "," << k;
    }
  }
  ASSERT_EQ(seen.size(), 8u);
  EXPECT_EQ(seen[0], (std::vector<size_t>{0, 1, 2, 3}));
  EXPECT_EQ(seen[1], (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(seen[2], (std::vector<size_t>{0, 2}));
  EXPECT_EQ(seen[3], (std::vector<size_t>{0, 2}));
  EXPECT_EQ(seen[4], (std::vector<size_t>{2}));
}

TEST(StepLoopTest, WithoutEpsEveryQueryTakesEveryStep) {
  const std::vector<float> queries = {1, 2, 3, 4};
  absl::StatusOr<RetrievalOutput> out =
      RunSteps(queries.data(), 2, 2, /*steps=*/3, /*eps=*/0,
               [&](absl::Span<const size_t> ids, const float* states,
                   float* next, double*, std::vector<Match>*) {
                 for (size_t k = 0; k < ids.size() * 2; ++k)
                   next[k] = states[k] + 1;
                 return absl::OkStatus();
               });
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->states, (std::vector<float>{4, 5, 6, 7}));
  EXPECT_EQ(out->steps, (std::vector<uint32_t>{3, 3}));
  EXPECT_EQ(out->converged, (std::vector<uint8_t>{0, 0}));
}

TEST(StepLoopTest, AFailedStepIsTheAnswer) {
  const std::vector<float> queries = {1, 2};
  int calls = 0;
  absl::StatusOr<RetrievalOutput> out =
      RunSteps(queries.data(), 1, 2, /*steps=*/5, /*eps=*/0,
               [&](absl::Span<const size_t>, const float* states, float* next,
                   double*, std::vector<Match>*) {
                 if (++calls == 2) return absl::DeadlineExceededError("step 2");
                 next[0] = states[0];
                 next[1] = states[1];
                 return absl::OkStatus();
               });
  EXPECT_EQ(out.status(), absl::DeadlineExceededError("step 2"));
  EXPECT_EQ(calls, 2);
}

}  // namespace
}  // namespace engram::core
