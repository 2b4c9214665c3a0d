#include "server/app/shutdown_signal.h"

#include <fcntl.h>
#include <unistd.h>

#include <csignal>

namespace engram::app {

namespace {

int shutdown_pipe[2] = {-1, -1};

void OnShutdownSignal(int signal) {
  const unsigned char byte = static_cast<unsigned char>(signal);
  [[maybe_unused]] ssize_t written = write(shutdown_pipe[1], &byte, 1);
}

}  // namespace

bool CatchShutdownSignals() {
  if (pipe2(shutdown_pipe, O_CLOEXEC) != 0) return false;
  struct sigaction action = {};
  action.sa_handler = OnShutdownSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  return sigaction(SIGTERM, &action, nullptr) == 0 &&
         sigaction(SIGINT, &action, nullptr) == 0;
}

int WaitForShutdownSignal() {
  unsigned char byte = 0;
  while (read(shutdown_pipe[0], &byte, 1) != 1) {
  }
  return byte;
}

}  // namespace engram::app
