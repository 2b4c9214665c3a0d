#include "server/app/signals.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <thread>

#include "gtest/gtest.h"

namespace engram::app {
namespace {

void SayFirst() {
  const char text[] = "the first step ran\n";
  [[maybe_unused]] ssize_t n = write(STDERR_FILENO, text, sizeof(text) - 1);
}

void Hang() {
  for (;;) pause();
}

// A first step during which a second thread fails: it writes a line once
// the second thread is on its way into the handler, waits, then writes
// another.
std::atomic<bool> first_step_started{false};
void LetASecondThreadFail() {
  first_step_started.store(true);
  const struct timespec wait = {0, 500 * 1000 * 1000};
  nanosleep(&wait, nullptr);
  const char text[] = "the first step ended\n";
  [[maybe_unused]] ssize_t n = write(STDERR_FILENO, text, sizeof(text) - 1);
}

// A failure in a function of its own, for the stack to name (a signal
// raised, not a store through a null pointer, which the sanitizers catch
// first).
__attribute__((noinline)) void FailInThisFunction() {
  raise(SIGSEGV);
  std::abort();  // Not reached.
}

// The first step, then the failing thread's stack, symbolized and unwound
// across the signal frame to the function that failed (a walk by frame
// pointers, as Abseil's report makes, stopped a frame or two in).
TEST(SignalsDeathTest, AFailureRunsTheFirstStepThenWritesTheStack) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        ASSERT_TRUE(ReportFailuresFirst(&SayFirst));
        FailInThisFunction();
      },
      "the first step ran\n\\*\\*\\* engramd failed \\(signal 11\\); the "
      "failing thread's stack: \\*\\*\\*\n.*FailInThisFunction");
}

// A second thread failing while the first one's report is written waits
// for it: before, it went on to the next handler (Abseil's, or the default
// action), which ended the process in the middle of the first report.
TEST(SignalsDeathTest, ASecondFailureWaitsForTheFirstReport) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        ASSERT_TRUE(ReportFailuresFirst(&LetASecondThreadFail));
        std::thread second([] {
          while (!first_step_started.load()) {
          }
          const char text[] = "the second thread fails\n";
          [[maybe_unused]] ssize_t n =
              write(STDERR_FILENO, text, sizeof(text) - 1);
          raise(SIGSEGV);
        });
        FailInThisFunction();
        second.join();
      },
      "the second thread fails\n.*the first step ended\n\\*\\*\\* "
      "engramd failed \\(signal 11\\); the failing thread's stack: "
      "\\*\\*\\*\n.*FailInThisFunction");
}

// A first step that never ends (a stderr reader that stopped) keeps a
// failed process alive no longer than the time given.
TEST(SignalsDeathTest, AFirstStepThatHangsEndsWithTheProcess) {
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer holds back signals that arrive while a handler runs
  // until it returns, and this one never does: the alarm never comes.
  GTEST_SKIP() << "signals are deferred inside handlers under TSan";
#endif
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        ASSERT_TRUE(ReportFailuresFirst(&Hang, 1));
        FailInThisFunction();
      },
      "");
}

}  // namespace
}  // namespace engram::app
