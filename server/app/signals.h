// SIGTERM, SIGINT and SIGHUP, whichever thread they reach (libraries start
// threads before main), are written to a pipe that WaitForSignal reads.
//
//   if (!CatchSignals()) return 1;
//   ... serve ...
//   int signal;
//   while ((signal = WaitForSignal()) == SIGHUP) { ... read files again ... }
//   ... shut down ...
//
// SIGHUP, which ended the process before, asks for the credential files to
// be read again at once, as many servers do.
//
// Thread-safe: the handler only writes to the pipe.
#ifndef ENGRAM_SERVER_APP_SIGNALS_H_
#define ENGRAM_SERVER_APP_SIGNALS_H_

namespace engram::app {

// Installs the handlers (after absl's failure handler, which takes SIGTERM
// too); false if that failed.
bool CatchSignals();
// Blocks until SIGTERM, SIGINT or SIGHUP; returns the signal.
int WaitForSignal();

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_SIGNALS_H_
