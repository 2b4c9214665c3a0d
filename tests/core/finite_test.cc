// FirstNonFinite: the first NaN or infinity wherever it sits (in a block of
// 16, in the tail, first, last), and nothing for finite extremes.
#include "server/core/finite.h"

#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace engram::core {
namespace {

TEST(FiniteTest, FindsTheFirstBadValueWhereverItSits) {
  constexpr float kBad[] = {std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()};
  for (size_t n : {0, 1, 15, 16, 17, 33, 784}) {
    std::vector<float> values(n, 1.5f);
    EXPECT_EQ(FirstNonFinite(values), n);
    for (size_t at = 0; at < n; ++at) {
      for (float bad : kBad) {
        values[at] = bad;
        ASSERT_EQ(FirstNonFinite(values), at) << "n=" << n << " value=" << bad;
        if (at + 5 < n) {  // A later bad value does not hide this one.
          values[at + 5] = kBad[2];
          ASSERT_EQ(FirstNonFinite(values), at);
          values[at + 5] = 1.5f;
        }
        values[at] = 1.5f;
      }
    }
  }
}

TEST(FiniteTest, FiniteExtremesAreFinite) {
  const std::vector<float> values = {std::numeric_limits<float>::max(),
                                     -std::numeric_limits<float>::max(),
                                     std::numeric_limits<float>::min(),
                                     std::numeric_limits<float>::denorm_min(),
                                     -std::numeric_limits<float>::denorm_min(),
                                     0.0f,
                                     -0.0f,
                                     1e38f,
                                     -3.0f,
                                     7.0f,
                                     2.0f,
                                     1.0f,
                                     0.5f,
                                     0.25f,
                                     -1e-38f,
                                     9.0f,
                                     std::numeric_limits<float>::max()};
  EXPECT_EQ(FirstNonFinite(values), values.size());
}

}  // namespace
}  // namespace engram::core
