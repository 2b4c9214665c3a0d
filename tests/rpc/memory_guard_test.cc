// MemoryGuard: shares are given while what is resident, what shares hold
// and the new one fit in the limit; beyond it the allocator's freed pages go
// back first, then a refusal says what is resident, what is shared out, the
// limit and what was asked; a share gives its bytes back when it goes.
#include "server/rpc/memory_guard.h"

#include <utility>

#include "gtest/gtest.h"

namespace engram::rpc {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

TEST(MemoryGuardTest, SharesFitWithWhatIsResidentThenAreRefused) {
  size_t resident = 40 * kMiB;
  MemoryGuard guard(100 * kMiB, "9/10 of 111 MiB", [&] { return resident; });
  absl::StatusOr<MemoryGuard::Share> a = guard.Take(30 * kMiB, "the write");
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<MemoryGuard::Share> b =
      guard.Take(30 * kMiB, "the retrieval");  // 40 + 30 + 30 = 100.
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(guard.taken(), 60 * kMiB);
  absl::StatusOr<MemoryGuard::Share> c = guard.Take(1, "the retrieval");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(c.status().message(),
            "memory: engramd has 40 MiB resident and the work under way may "
            "take 60 MiB more, of the 100 MiB it may use (9/10 of 111 MiB); "
            "the retrieval needs about 1 MiB; retry later");
  *b = MemoryGuard::Share();  // Given back: room for the next.
  EXPECT_EQ(guard.taken(), 30 * kMiB);
  EXPECT_TRUE(guard.Take(30 * kMiB, "the retrieval").ok());
  EXPECT_EQ(guard.taken(), 30 * kMiB);  // That one went at once.
  resident = 80 * kMiB;                 // The process grew.
  EXPECT_FALSE(guard.Take(kMiB, "the write").ok());
}

TEST(MemoryGuardTest, FreedPagesGoBackBeforeARefusal) {
  size_t resident = 90 * kMiB;
  int returned = 0;
  MemoryGuard guard(
      100 * kMiB, "a test", [&] { return resident; },
      [&] {
        ++returned;
        resident = 50 * kMiB;  // The allocator kept 40 MiB of freed pages.
      });
  EXPECT_TRUE(guard.Take(5 * kMiB, "the write").ok());  // Fits: no purge.
  EXPECT_EQ(returned, 0);
  absl::StatusOr<MemoryGuard::Share> big = guard.Take(40 * kMiB, "the write");
  EXPECT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(returned, 1);
  EXPECT_FALSE(guard.Take(20 * kMiB, "the write").ok());  // 50 + 40 + 20.
  EXPECT_EQ(returned, 2);
}

// Past the limit only if still past it once freed pages went back.
TEST(MemoryGuardTest, ExceededOnlyIfFreedPagesDoNotBringItBack) {
  size_t resident = 90 * kMiB;
  size_t freed = 0;
  int returned = 0;
  MemoryGuard guard(
      100 * kMiB, "a test", [&] { return resident - freed; },
      [&] {
        ++returned;
        freed = 20 * kMiB;
      });
  EXPECT_FALSE(guard.Exceeded());
  EXPECT_EQ(returned, 0);  // Under the limit: nothing asked of the allocator.
  resident = 110 * kMiB;
  EXPECT_FALSE(guard.Exceeded());  // 110 - 20 freed.
  EXPECT_EQ(returned, 1);
  resident = 130 * kMiB;
  EXPECT_TRUE(guard.Exceeded());  // 130 - 20.
  EXPECT_EQ(returned, 2);
  MemoryGuard without(100 * kMiB, "a test", [] { return 101 * kMiB; });
  EXPECT_TRUE(without.Exceeded());
}

TEST(MemoryGuardTest, ASharePassedOnGivesBackOnce) {
  MemoryGuard guard(100 * kMiB, "a test", [] { return size_t{0}; });
  absl::StatusOr<MemoryGuard::Share> a = guard.Take(60 * kMiB, "the write");
  ASSERT_TRUE(a.ok());
  MemoryGuard::Share moved = *std::move(a);
  MemoryGuard::Share again = std::move(moved);
  EXPECT_EQ(guard.taken(), 60 * kMiB);
  again = MemoryGuard::Share();
  EXPECT_EQ(guard.taken(), 0u);
}

TEST(MemoryGuardTest, ResidentBytesReadsThisProcess) {
  const size_t resident = ResidentBytes();
  EXPECT_GT(resident, kMiB);             // A test binary is more than that.
  EXPECT_LT(resident, size_t{1} << 40);  // And not a terabyte.
}

}  // namespace
}  // namespace engram::rpc
