// SIGTERM and SIGINT, whichever thread they reach (libraries start threads
// before main), are written to a pipe that WaitForShutdownSignal reads.
//
//   if (!CatchShutdownSignals()) return 1;
//   ... serve ...
//   const int signal = WaitForShutdownSignal();
//
// Thread-safe: the handler only writes to the pipe.
#ifndef ENGRAM_SERVER_APP_SHUTDOWN_SIGNAL_H_
#define ENGRAM_SERVER_APP_SHUTDOWN_SIGNAL_H_

namespace engram::app {

// Installs the handlers (after absl's failure handler, which takes SIGTERM
// too); false if that failed.
bool CatchShutdownSignals();
// Blocks until SIGTERM or SIGINT; returns the signal.
int WaitForShutdownSignal();

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_SHUTDOWN_SIGNAL_H_
