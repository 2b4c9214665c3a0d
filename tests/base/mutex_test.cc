// engram's CondVar: waits end when signalled or when their time is up by
// the steady clock, whatever the wall clock does; AwaitWithTimeout returns
// as soon as its condition holds. SteadyDeadline moves a wall-clock deadline
// onto the steady clock.
//
// What this cannot show without setting the machine's clock back (which
// would disturb every test running beside it): that a wall clock stepped
// back does not lengthen a wait. Abseil 20220623's CondVar waited on
// CLOCK_REALTIME; this one waits on std::condition_variable_any, whose
// timed waits libstdc++ makes on CLOCK_MONOTONIC.
#include "server/base/mutex.h"

#include <chrono>
#include <thread>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/base/steady_clock.h"

namespace engram {
namespace {

// Sets `flag` under `mu` and signals `cv`, 20 ms from now, on a thread of
// its own.
std::thread SetSoon(Mutex& mu, CondVar& cv, bool& flag) {
  return std::thread([&mu, &cv, &flag] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    MutexLock lock(&mu);
    flag = true;
    cv.Signal();
  });
}

TEST(CondVarTest, AwaitReturnsOnceTheConditionHoldsNotAtTheTimeout) {
  Mutex mu;
  CondVar cv;
  bool done = false;
  std::thread setter = SetSoon(mu, cv, done);
  const absl::Time start = SteadyNow();
  {
    MutexLock lock(&mu);
    EXPECT_TRUE(cv.AwaitWithTimeout(
        &mu, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done; },
        absl::Hours(1)));
  }
  EXPECT_LT(SteadyNow() - start, absl::Minutes(1));
  setter.join();
}

TEST(CondVarTest, AwaitGivesUpWhenItsTimeIsUp) {
  Mutex mu;
  CondVar cv;
  MutexLock lock(&mu);
  const absl::Time start = SteadyNow();
  EXPECT_FALSE(cv.AwaitWithTimeout(
      &mu, [] { return false; }, absl::Milliseconds(30)));
  EXPECT_GE(SteadyNow() - start, absl::Milliseconds(30));
  // No time left: the condition is still asked once.
  EXPECT_TRUE(cv.AwaitWithTimeout(
      &mu, [] { return true; }, absl::ZeroDuration()));
  EXPECT_FALSE(cv.AwaitWithTimeout(
      &mu, [] { return false; }, -absl::Seconds(1)));
}

TEST(CondVarTest, TimedWaitsTimeOutAndInfiniteOnesWakeWhenSignalled) {
  Mutex mu;
  CondVar cv;
  {
    MutexLock lock(&mu);
    const absl::Time start = SteadyNow();
    EXPECT_TRUE(cv.WaitWithTimeout(&mu, absl::Milliseconds(20)));
    EXPECT_GE(SteadyNow() - start, absl::Milliseconds(20));
    EXPECT_TRUE(cv.WaitWithTimeout(&mu, absl::ZeroDuration()));
    EXPECT_TRUE(cv.WaitWithTimeout(&mu, -absl::Seconds(5)));
  }
  bool signalled = false;
  std::thread signaller = SetSoon(mu, cv, signalled);
  {
    MutexLock lock(&mu);
    while (!signalled) {
      EXPECT_FALSE(cv.WaitWithTimeout(&mu, absl::InfiniteDuration()));
    }
  }
  signaller.join();
}

TEST(SteadyClockTest, AWallClockDeadlineKeepsItsDistance) {
  EXPECT_EQ(SteadyDeadline(absl::InfiniteFuture()), absl::InfiniteFuture());
  const absl::Duration left =
      SteadyDeadline(absl::Now() + absl::Seconds(5)) - SteadyNow();
  // (Abseil's Now() interpolates between the kernel's readings: a few
  // microseconds either way.)
  EXPECT_GT(left, absl::Seconds(4));
  EXPECT_LE(left, absl::Seconds(5) + absl::Milliseconds(1));
  EXPECT_LT(SteadyDeadline(absl::Now() - absl::Seconds(1)), SteadyNow());
  // Forward only.
  const absl::Time a = SteadyNow();
  EXPECT_LE(a, SteadyNow());
}

TEST(SteadyClockTest, SecondsSinceCountsFromTheStart) {
  const double since = SecondsSince(SteadyNow() - absl::Seconds(2));
  EXPECT_GE(since, 2.0);
  EXPECT_LT(since, 62.0);  // However loaded the machine.
  EXPECT_GE(SecondsSince(SteadyNow()), 0.0);
}

}  // namespace
}  // namespace engram
