#include "server/app/signals.h"

#include <execinfo.h>
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>

#include "absl/debugging/symbolize.h"
#include "absl/strings/string_view.h"
#include "server/base/write_all.h"

namespace engram::app {

namespace {

int signal_pipe[2] = {-1, -1};

void OnSignal(int signal) {
  const int saved = errno;  // Of the thread the signal interrupted.
  const unsigned char byte = static_cast<unsigned char>(signal);
  [[maybe_unused]] ssize_t written = write(signal_pipe[1], &byte, 1);
  errno = saved;
}

}  // namespace

bool CatchSignals() {
  if (pipe2(signal_pipe, O_CLOEXEC) != 0) return false;
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  return sigaction(SIGTERM, &action, nullptr) == 0 &&
         sigaction(SIGINT, &action, nullptr) == 0 &&
         sigaction(SIGHUP, &action, nullptr) == 0;
}

namespace {

constexpr int kFailureSignals[] = {SIGSEGV, SIGILL, SIGFPE,
                                   SIGABRT, SIGBUS, SIGTRAP};
struct sigaction previous_failure_handlers[NSIG];
void (*run_first)() = nullptr;
int failure_seconds = 5;
// The signal of the first failure and the thread it came to; 0 before it.
std::atomic<int> failed_signal{0};
std::atomic<pid_t> failed_thread{0};

// The failing thread's stack, from this handler's frame down, each frame
// by its function's name where the symbol tables know it.
void WriteStack(int signal) {
  char line[640];
  int n = std::snprintf(line, sizeof(line),
                        "*** engramd failed (signal %d); the failing "
                        "thread's stack: ***\n",
                        signal);
  WriteAll(STDERR_FILENO, absl::string_view(line, static_cast<size_t>(n)));
  void* frames[64];
  const int depth = backtrace(frames, 64);
  for (int i = 0; i < depth; ++i) {
    char name[512] = "(unknown)";
    absl::Symbolize(frames[i], name, sizeof(name));
    n = std::snprintf(line, sizeof(line), "    @ %p  %s\n", frames[i], name);
    WriteAll(STDERR_FILENO,
             absl::string_view(
                 line, std::min(static_cast<size_t>(n), sizeof(line) - 1)));
  }
}

// Ends the process by `signal`'s default action, unblocked here (a thread
// inside that signal's handler blocks it).
void EndBy(int signal) {
  std::signal(signal, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signal);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  raise(signal);
}

// Past the failure's time: the process ends by its signal.
void OnFailureTimeout(int) { EndBy(failed_signal.load()); }

// A second thread failing while the first writes its report waits for
// the first to end the process: the handler after this one (Abseil's)
// would take the second thread for the first, write its report and end
// the process in the middle of the first one's lines. Past the first's
// time it goes on itself.
void AwaitTheFirstFailure() {
  const struct timespec step = {0, 100 * 1000 * 1000};
  for (int waited = 0; waited < 10 * (failure_seconds + 1); ++waited) {
    nanosleep(&step, nullptr);
  }
}

void OnFailure(int signal, siginfo_t* info, void* context) {
  const pid_t thread = gettid();
  int none = 0;
  if (failed_signal.compare_exchange_strong(none, signal)) {
    failed_thread.store(thread);
    std::signal(SIGALRM, OnFailureTimeout);
    alarm(static_cast<unsigned>(failure_seconds));
    run_first();
    WriteStack(signal);
  } else if (failed_thread.load() != thread) {
    AwaitTheFirstFailure();
  }
  const struct sigaction& previous = previous_failure_handlers[signal];
  if ((previous.sa_flags & SA_SIGINFO) != 0) {
    previous.sa_sigaction(signal, info, context);
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(signal);
  } else {
    EndBy(signal);  // The default action, as if this handler were not here.
  }
}

}  // namespace

bool ReportFailuresFirst(void (*first)(), int seconds) {
  run_first = first;
  failure_seconds = seconds;
  // The first backtrace() loads the unwinder (libgcc_s): not in a handler.
  void* warm[2];
  backtrace(warm, 2);
  for (int signal : kFailureSignals) {
    struct sigaction action = {};
    if (sigaction(signal, nullptr, &previous_failure_handlers[signal]) != 0) {
      return false;
    }
    // The flags of the handler it runs ahead of (Abseil's: its own
    // stack), with the details that handler may want.
    action.sa_sigaction = OnFailure;
    action.sa_mask = previous_failure_handlers[signal].sa_mask;
    action.sa_flags = previous_failure_handlers[signal].sa_flags | SA_SIGINFO;
    if (sigaction(signal, &action, nullptr) != 0) return false;
  }
  return true;
}

int WaitForSignal() {
  unsigned char byte = 0;
  while (read(signal_pipe[0], &byte, 1) != 1) {
  }
  return byte;
}

}  // namespace engram::app
