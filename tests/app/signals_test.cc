#include "server/app/signals.h"

#include <unistd.h>

#include <csignal>
#include <cstdlib>

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
