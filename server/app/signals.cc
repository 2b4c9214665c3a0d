#include "server/app/signals.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>

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
std::atomic<bool> failed{false};

void OnFailure(int signal, siginfo_t* info, void* context) {
  if (!failed.exchange(true)) run_first();
  const struct sigaction& previous = previous_failure_handlers[signal];
  if ((previous.sa_flags & SA_SIGINFO) != 0) {
    previous.sa_sigaction(signal, info, context);
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(signal);
  } else {
    // The default action, as if this handler were not here.
    std::signal(signal, SIG_DFL);
    raise(signal);
  }
}

}  // namespace

bool RunFirstOnFailure(void (*first)()) {
  run_first = first;
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
