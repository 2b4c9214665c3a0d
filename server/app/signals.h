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
// Abseil's failure report walks the stack by frame pointers, which
// engramd's optimised code and the system's libraries do not keep: its
// trace ends after a frame or two at a bogus address. glibc's backtrace()
// unwinds by the unwind tables every object carries, across the signal
// frame; ReportFailuresFirst writes that trace, and what else must reach
// stderr, ahead of Abseil's report.
#ifndef ENGRAM_SERVER_APP_SIGNALS_H_
#define ENGRAM_SERVER_APP_SIGNALS_H_

namespace engram::app {

// Installs the handlers (after absl's failure handler, which takes SIGTERM
// too); false if that failed.
bool CatchSignals();
// Blocks until SIGTERM, SIGINT or SIGHUP; returns the signal.
int WaitForSignal();

// Ahead of the handler in place for each failure signal (SIGSEGV, SIGILL,
// SIGFPE, SIGABRT, SIGBUS, SIGTRAP; in engramd, Abseil's failure report),
// on the first failure: `first` (engramd: the log lines still queued),
// then the failing thread's stack, unwound from the unwind tables and
// symbolized. Both within `seconds`: past that (a stalled stderr reader,
// a lock the failure left held) the process ends by that signal, as a
// failed process must. Another thread failing meanwhile waits for that
// end rather than going on to the next handler. Call after installing that
// handler; false if installing failed. `first` runs in a signal handler.
bool ReportFailuresFirst(void (*first)(), int seconds = 5);

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_SIGNALS_H_
