// WriteBudget: a write reserves five times its request, waits in order of
// arrival while earlier writes hold the rest, is refused past its deadline,
// and one larger than the whole budget is refused at once. Requests not yet
// read wait for a turn to be read; a large write's end gives freed memory
// back.
#include "server/rpc/write_budget.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace engram::rpc {
namespace {

constexpr size_t kMiB = 1 << 20;
constexpr const char* kFlag = "--max_write_memory_mb";

absl::Time Later() { return absl::Now() + absl::Seconds(30); }

// Waits until `budget` has `count` writes waiting (they block in Reserve).
void AwaitWaiting(const WriteBudget& budget, size_t count) {
  while (budget.waiting() < count) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

TEST(WriteBudgetTest, ASmallRequestReservesNothing) {
  WriteBudget budget(10 * kMiB, kFlag);
  absl::StatusOr<WriteBudget::Reservation> held =
      budget.Reserve(WriteBudget::kSmallRequest - 1, Later());
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(budget.reserved(), 0u);
}

TEST(WriteBudgetTest, ReservesFiveTimesTheRequestUntilTheReservationEnds) {
  WriteBudget budget(100 * kMiB, kFlag);
  {
    absl::StatusOr<WriteBudget::Reservation> held =
        budget.Reserve(4 * kMiB, Later());
    ASSERT_TRUE(held.ok()) << held.status();
    EXPECT_EQ(budget.reserved(), 20 * kMiB);
    WriteBudget::Reservation moved = *std::move(held);
    EXPECT_EQ(budget.reserved(), 20 * kMiB);
    moved = WriteBudget::Reservation();
    EXPECT_EQ(budget.reserved(), 0u);
    absl::StatusOr<WriteBudget::Reservation> again =
        budget.Reserve(2 * kMiB, Later());
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(budget.reserved(), 10 * kMiB);
  }
  EXPECT_EQ(budget.reserved(), 0u);
}

TEST(WriteBudgetTest, MoreThanTheWholeBudgetIsRefusedAtOnce) {
  WriteBudget budget(10 * kMiB, kFlag);
  const absl::Time start = absl::Now();
  absl::StatusOr<WriteBudget::Reservation> held =
      budget.Reserve(4 * kMiB, Later());  // 20 MiB of 10.
  ASSERT_EQ(held.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_NE(held.status().message().find("the request is 4 MiB"),
            std::string::npos)
      << held.status();
  EXPECT_NE(held.status().message().find("--max_write_memory_mb=10"),
            std::string::npos);
  EXPECT_NE(held.status().message().find("split it"), std::string::npos);
  EXPECT_EQ(budget.reserved(), 0u);
}

TEST(WriteBudgetTest, AWriteWaitsForEarlierOnesThenRuns) {
  WriteBudget budget(30 * kMiB, kFlag);
  absl::StatusOr<WriteBudget::Reservation> first =
      budget.Reserve(4 * kMiB, Later());
  ASSERT_TRUE(first.ok());
  std::atomic<bool> done{false};
  absl::Status second_status;
  std::thread second([&] {
    absl::StatusOr<WriteBudget::Reservation> held =
        budget.Reserve(4 * kMiB, Later());
    second_status = held.status();
    done = true;
  });
  AwaitWaiting(budget, 1);
  EXPECT_FALSE(done);
  *first = WriteBudget::Reservation();  // The first write ends.
  second.join();
  EXPECT_TRUE(second_status.ok()) << second_status;
  EXPECT_EQ(budget.reserved(), 0u);  // The second's ended with its thread.
  EXPECT_EQ(budget.waiting(), 0u);
}

TEST(WriteBudgetTest, AWriteIsRefusedPastItsDeadline) {
  WriteBudget budget(30 * kMiB, kFlag);
  absl::StatusOr<WriteBudget::Reservation> first =
      budget.Reserve(4 * kMiB, Later());
  ASSERT_TRUE(first.ok());
  absl::StatusOr<WriteBudget::Reservation> late =
      budget.Reserve(4 * kMiB, absl::Now() + absl::Milliseconds(20));
  ASSERT_EQ(late.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(late.status().message().find(
                "writes in flight hold 20 MiB of the 30 MiB"),
            std::string::npos)
      << late.status();
  EXPECT_NE(late.status().message().find("waited"), std::string::npos);
  EXPECT_NE(late.status().message().find("retry later"), std::string::npos);
  EXPECT_EQ(budget.reserved(), 20 * kMiB);
  EXPECT_EQ(budget.waiting(), 0u);
}

// A small write that would fit waits behind a larger one that came first,
// so that a stream of small writes cannot starve a large one.
TEST(WriteBudgetTest, WritesTakeTheirShareInOrderOfArrival) {
  WriteBudget budget(30 * kMiB, kFlag);
  absl::StatusOr<WriteBudget::Reservation> first =
      budget.Reserve(4 * kMiB, Later());  // 20 of 30.
  ASSERT_TRUE(first.ok());
  std::atomic<bool> large_done{false}, small_done{false};
  WriteBudget::Reservation large_held, small_held;
  std::thread large([&] {
    large_held = *budget.Reserve(4 * kMiB, Later());  // 20: waits.
    large_done = true;
  });
  AwaitWaiting(budget, 1);
  std::thread small([&] {
    small_held = *budget.Reserve(2 * kMiB, Later());  // 10 would fit.
    small_done = true;
  });
  AwaitWaiting(budget, 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(small_done);
  EXPECT_FALSE(large_done);
  *first = WriteBudget::Reservation();
  large.join();
  small.join();
  EXPECT_EQ(budget.reserved(), 30 * kMiB);  // Both hold their share now.
}

// A restore's messages: each small, all held until the stream ends.
TEST(WriteBudgetTest, AStreamGrowsItsShareMessageByMessage) {
  WriteBudget budget(100 * kMiB, kFlag);
  {
    WriteBudget::Reservation held;
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(budget.Grow(held, kMiB / 2, "advice").ok());
    }
    EXPECT_EQ(budget.reserved(), 10 * kMiB);  // 5 x 2 MiB, small or not.
    WriteBudget::Reservation moved = std::move(held);
    ASSERT_TRUE(budget.Grow(moved, kMiB, "advice").ok());
    EXPECT_EQ(budget.reserved(), 15 * kMiB);
  }
  EXPECT_EQ(budget.reserved(), 0u);
}

TEST(WriteBudgetTest, AStreamPastTheWholeBudgetIsRefusedWithTheAdvice) {
  WriteBudget budget(10 * kMiB, kFlag);
  WriteBudget::Reservation held;
  ASSERT_TRUE(budget.Grow(held, kMiB, "restore offline").ok());
  const absl::Status refused = budget.Grow(held, 2 * kMiB, "restore offline");
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("the stream has sent 3 MiB"),
            std::string::npos)
      << refused;
  EXPECT_NE(refused.message().find("--max_write_memory_mb=10"),
            std::string::npos);
  EXPECT_NE(refused.message().find("restore offline"), std::string::npos);
  EXPECT_EQ(budget.reserved(), 5 * kMiB);  // What it held before.
}

TEST(WriteBudgetTest, AStreamDoesNotWaitForWhatOthersHold) {
  WriteBudget budget(20 * kMiB, kFlag);
  absl::StatusOr<WriteBudget::Reservation> add =
      budget.Reserve(3 * kMiB, Later());  // 15 of 20.
  ASSERT_TRUE(add.ok());
  WriteBudget::Reservation held;
  ASSERT_TRUE(budget.Grow(held, kMiB, "advice").ok());  // 20 of 20.
  const absl::Time start = absl::Now();
  const absl::Status refused = budget.Grow(held, kMiB / 4, "advice");
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("cannot wait"), std::string::npos)
      << refused;
  EXPECT_NE(refused.message().find("retry later"), std::string::npos);
  EXPECT_EQ(budget.reserved(), 20 * kMiB);
  *add = WriteBudget::Reservation();
  EXPECT_TRUE(budget.Grow(held, kMiB / 4, "advice").ok());
}

TEST(WriteBudgetTest, TheDefaultLargestMessageIsWhatTheBudgetCanAdmit) {
  EXPECT_EQ(DefaultMaxMessageBytes(0), 256 * kMiB);  // No budget.
  EXPECT_EQ(DefaultMaxMessageBytes(size_t{6026} * kMiB), 256 * kMiB);
  EXPECT_EQ(DefaultMaxMessageBytes(192 * kMiB), 38 * kMiB);  // 768 MiB cgroup.
  EXPECT_EQ(DefaultMaxMessageBytes(1280 * kMiB), 256 * kMiB);
  EXPECT_EQ(DefaultMaxMessageBytes(8 * kMiB), 4 * kMiB);
}

TEST(WriteBudgetTest, NoMoreWaitThanTheBudgetCanHoldWhileTheyWait) {
  WriteBudget budget(20 * kMiB, kFlag);
  absl::StatusOr<WriteBudget::Reservation> running =
      budget.Reserve(4 * kMiB, Later());  // 20 of 20.
  ASSERT_TRUE(running.ok());
  // Each waiting write of 2 MiB holds 4: five fill what waiting may hold.
  std::atomic<int> done{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < 5; ++i) {
    waiters.emplace_back([&] {
      if (budget.Reserve(2 * kMiB, Later()).ok()) ++done;
    });
  }
  AwaitWaiting(budget, 5);
  const absl::Time start = absl::Now();
  absl::StatusOr<WriteBudget::Reservation> sixth =
      budget.Reserve(2 * kMiB, Later());
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  ASSERT_EQ(sixth.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(sixth.status().message().find("5 more wait for it, holding 20 MiB"),
            std::string::npos)
      << sixth.status();
  EXPECT_NE(sixth.status().message().find("no more may wait"),
            std::string::npos);
  *running = WriteBudget::Reservation();
  for (std::thread& t : waiters) t.join();
  EXPECT_EQ(done.load(), 5);
  EXPECT_EQ(budget.reserved(), 0u);
  EXPECT_EQ(budget.waiting(), 0u);
}

TEST(WriteBudgetTest, RequestsAreReadOnlyWhileTwiceTheLargestFits) {
  WriteBudget budget(100 * kMiB, kFlag);
  // A request of up to 20 MiB counts as 40 while it is read: two fit.
  absl::StatusOr<WriteBudget::Reading> first =
      budget.AwaitRead(20 * kMiB, Later());
  absl::StatusOr<WriteBudget::Reading> second =
      budget.AwaitRead(20 * kMiB, Later());
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(budget.reading(), 2u);
  std::atomic<bool> third_read{false};
  std::thread third([&] {
    absl::StatusOr<WriteBudget::Reading> turn =
        budget.AwaitRead(20 * kMiB, Later());
    third_read = turn.ok();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(third_read.load());
  *first = WriteBudget::Reading();  // Read and refused, say.
  third.join();
  EXPECT_TRUE(third_read.load());
  // Reserve ends the turn the request was read in: it counts as itself.
  absl::StatusOr<WriteBudget::Reservation> held =
      budget.Reserve(4 * kMiB, Later(), &*second);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(budget.reading(), 0u);
  EXPECT_EQ(budget.reserved(), 20 * kMiB);
}

TEST(WriteBudgetTest, ATurnToReadIsRefusedPastItsDeadlineSayingWhy) {
  WriteBudget budget(100 * kMiB, kFlag);
  absl::StatusOr<WriteBudget::Reading> reading =
      budget.AwaitRead(30 * kMiB, Later());
  ASSERT_TRUE(reading.ok());
  absl::StatusOr<WriteBudget::Reading> late =
      budget.AwaitRead(30 * kMiB, absl::Now() + absl::Milliseconds(50));
  ASSERT_EQ(late.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(late.status().message().find("1 requests are being read"),
            std::string::npos)
      << late.status();
  EXPECT_NE(late.status().message().find("a request of up to 30 MiB"),
            std::string::npos)
      << late.status();
  EXPECT_EQ(budget.reading(), 1u);
}

TEST(WriteBudgetTest, OneIsReadAtATimeWhereEvenOneDoesNotFit) {
  WriteBudget budget(10 * kMiB, kFlag);
  absl::StatusOr<WriteBudget::Reading> first =
      budget.AwaitRead(8 * kMiB, Later());
  ASSERT_TRUE(first.ok()) << first.status();
  std::atomic<bool> second_read{false};
  std::thread second(
      [&] { second_read = budget.AwaitRead(8 * kMiB, Later()).ok(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(second_read.load());
  *first = WriteBudget::Reading();
  second.join();
  EXPECT_TRUE(second_read.load());
}

TEST(WriteBudgetTest, RequestsWaitToBeReadWhileWaitingWritesHoldTheBudget) {
  WriteBudget budget(20 * kMiB, kFlag);
  absl::StatusOr<WriteBudget::Reservation> running =
      budget.Reserve(4 * kMiB, Later());  // 20 of 20.
  ASSERT_TRUE(running.ok());
  std::vector<std::thread> waiters;
  for (int i = 0; i < 2; ++i) {  // Each holds 4 MiB while it waits.
    waiters.emplace_back(
        [&] { EXPECT_TRUE(budget.Reserve(2 * kMiB, Later()).ok()); });
  }
  AwaitWaiting(budget, 2);
  absl::StatusOr<WriteBudget::Reading> first =
      budget.AwaitRead(4 * kMiB, Later());  // 8 + 8 of 20.
  ASSERT_TRUE(first.ok());
  std::atomic<bool> second_read{false};
  std::thread second([&] {
    second_read = budget.AwaitRead(4 * kMiB, Later()).ok();  // 24 of 20.
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(second_read.load());
  *running = WriteBudget::Reservation();  // The waiting writes run.
  for (std::thread& t : waiters) t.join();
  second.join();
  EXPECT_TRUE(second_read.load());
}

TEST(WriteBudgetTest, ALargeWritesEndGivesFreedMemoryBack) {
  int returned = 0;
  WriteBudget budget(80 * kMiB, kFlag, [&] { ++returned; });
  budget.Ended(1 * kMiB);  // 5 MiB: under an eighth of 80.
  EXPECT_EQ(returned, 0);
  budget.Ended(2 * kMiB);  // 10 MiB: an eighth.
  EXPECT_EQ(returned, 1);
  WriteBudget quiet(80 * kMiB, kFlag);
  quiet.Ended(64 * kMiB);  // Nothing to call.
}

}  // namespace
}  // namespace engram::rpc
