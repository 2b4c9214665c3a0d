// engramd's log lines reach stderr through a thread of their own, so that
// no caller ever waits on whoever reads stderr.
//
// Written at once, a line waited for its reader: a reader that stopped
// reading (a paused pipe, a log collector that hangs) held every thread
// that logged as soon as the pipe's 64 KiB were full — a refused call logs
// a line, so after some 500 of them every call hung, while the health
// check, which logs nothing, still answered SERVING. (A reader that went
// away killed engramd with SIGPIPE; main.cc ignores that signal now, and
// such writes fail with EPIPE.)
//
// Lines wait here, in order, up to `max_queued_bytes`; a line that finds
// the queue full is dropped and counted, and once lines are written again
// the writer says, in a line of its own, how many were dropped. Lines the
// file refuses (EPIPE: no reader) are counted as dropped too.
//
//   LogWriter* writer = LogWriter::ForStderr();   // From then on, every Log.
//   writer->OnDropped([&](size_t n) { metrics.RecordLogLinesDropped(n); });
//
// Thread-safe.
#ifndef ENGRAM_SERVER_APP_LOG_WRITER_H_
#define ENGRAM_SERVER_APP_LOG_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "server/base/mutex.h"

namespace engram::app {

class LogWriter {
 public:
  // Writes to `fd` (not closed) from a thread of its own.
  LogWriter(int fd, size_t max_queued_bytes);
  // Stops after writing what is queued, however long that takes: Flush
  // first where stderr may be stuck.
  ~LogWriter();
  LogWriter(const LogWriter&) = delete;
  LogWriter& operator=(const LogWriter&) = delete;

  // The process's writer to stderr, made the log's sink on the first call
  // (engram::SetLogSink); it lives until the process ends, and at exit
  // what is queued gets up to two seconds to be written.
  static LogWriter* ForStderr();
  // From a failure signal handler (ReportFailuresFirst, signals.h): the
  // lines ForStderr's writer still holds go to stderr (WriteQueuedNow).
  static void WriteQueuedAtFailure();

  // Queues `line` (one whole line, ending in '\n'), or drops it when the
  // queue is full. Never waits for the file.
  void Write(std::string line);
  // Waits until every line queued before the call is written (or refused
  // by the file), at most `timeout`; whether they were.
  bool Flush(absl::Duration timeout);
  // From a failure signal handler: writes the lines still queued to `fd`
  // from the calling thread (with those the writer's thread was writing,
  // when the failure interrupted it), allocating nothing, after a line
  // saying so;
  // when the queue's lock is held (the failing thread may hold it), says
  // that instead. Leaves the lock held: nothing is written twice, and the
  // process is ending. Returns the lines written.
  size_t WriteQueuedNow(int fd);
  // Lines dropped since the start: the queue full, or the file refusing.
  uint64_t dropped() const;
  // `count` is called with each number of lines dropped (first with those
  // dropped before the call, if any), on the thread that dropped them; it
  // must not log.
  void OnDropped(std::function<void(size_t lines)> count);

 private:
  void Run();
  void Dropped(size_t lines) ABSL_LOCKS_EXCLUDED(mu_);

  const int fd_;
  const size_t max_queued_bytes_;
  mutable Mutex mu_;
  CondVar cv_;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // The lines the writer's thread is writing (none: null), and how many.
  const std::string* in_flight_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t in_flight_lines_ ABSL_GUARDED_BY(mu_) = 0;
  // Lines accepted, and of those the ones written or refused (in order).
  uint64_t accepted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  // Dropped for a full queue and not yet said in the file.
  uint64_t unreported_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void(size_t)> on_dropped_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_LOG_WRITER_H_
