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
//
// Abseil's failure report on a fatal signal can fail half way (a stack
// walked from a thread interrupted in libc met a bogus frame pointer, and
// the report's own fault ended the process), so what must reach stderr
// when engramd fails goes first: RunFirstOnFailure.
#ifndef ENGRAM_SERVER_APP_SIGNALS_H_
#define ENGRAM_SERVER_APP_SIGNALS_H_

namespace engram::app {

// Installs the handlers (after absl's failure handler, which takes SIGTERM
// too); false if that failed.
bool CatchSignals();
// Blocks until SIGTERM, SIGINT or SIGHUP; returns the signal.
int WaitForSignal();

// Makes `first` run ahead of the handler in place for each failure signal
// (SIGSEGV, SIGILL, SIGFPE, SIGABRT, SIGBUS, SIGTRAP; in engramd, Abseil's
// failure report), on the first failure only; call after installing that
// handler. `first` runs in a signal handler. False if installing failed.
bool RunFirstOnFailure(void (*first)());

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_SIGNALS_H_
