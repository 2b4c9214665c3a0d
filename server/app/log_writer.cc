#include "server/app/log_writer.h"

#include <limits.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "server/base/log.h"
#include "server/base/write_all.h"

namespace engram::app {

namespace {

LogWriter* stderr_writer = nullptr;

void ToStderrWriter(std::string line) { stderr_writer->Write(std::move(line)); }

}  // namespace

LogWriter::LogWriter(int fd, size_t max_queued_bytes)
    : fd_(fd), max_queued_bytes_(max_queued_bytes) {
  thread_ = std::thread(&LogWriter::Run, this);
}

LogWriter::~LogWriter() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.SignalAll();
  thread_.join();
}

LogWriter* LogWriter::ForStderr() {
  static LogWriter* const writer = [] {
    // 1 MiB: some 5,000 lines; never destroyed (threads may log until the
    // process is gone).
    auto* made = new LogWriter(STDERR_FILENO, 1 << 20);
    stderr_writer = made;
    SetLogSink(&ToStderrWriter);
    std::atexit([] { stderr_writer->Flush(absl::Seconds(2)); });
    return made;
  }();
  return writer;
}

void LogWriter::Write(std::string line) {
  {
    MutexLock lock(&mu_);
    // A line longer than the whole queue still goes when nothing waits.
    if (queued_bytes_ + line.size() <= max_queued_bytes_ || queue_.empty()) {
      queued_bytes_ += line.size();
      queue_.push_back(std::move(line));
      ++accepted_;
      cv_.SignalAll();
      return;
    }
    ++unreported_;
  }
  Dropped(1);
}

void LogWriter::Dropped(size_t lines) {
  std::function<void(size_t)> count;
  {
    MutexLock lock(&mu_);
    dropped_ += lines;
    count = on_dropped_;
  }
  if (count) count(lines);
}

void LogWriter::WriteQueuedAtFailure() {
  if (stderr_writer != nullptr) stderr_writer->WriteQueuedNow(STDERR_FILENO);
}

size_t LogWriter::WriteQueuedNow(int fd) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  // Only tries, for up to a tenth of a second: the writer's thread holds
  // the lock for moments only, but the failing thread may be the one
  // holding it (a failure inside Write), and a signal handler must not
  // wait for that.
  bool locked = mu_.TryLock();
  for (int i = 0; !locked && i < 100; ++i) {
    const timespec millisecond{0, 1000000};
    nanosleep(&millisecond, nullptr);
    locked = mu_.TryLock();
  }
  if (!locked) {
    WriteAll(fd,
             "*** engramd failed while its log queue was locked: the lines "
             "still queued are lost ***\n");
    return 0;
  }
  // The lines the writer's thread is writing go with it when the failure
  // interrupted that thread (its write never finishes); else that write
  // goes on as the reader reads, and this lock, never released, keeps the
  // thread from writing any more.
  const bool own =
      std::this_thread::get_id() == thread_.get_id() && in_flight_ != nullptr;
  if (queue_.empty() && !own) return 0;
  // Fixed text only: formatting would allocate.
  WriteAll(fd, "*** engramd's log lines not written before the failure: ***\n");
  if (own) WriteAll(fd, *in_flight_);
  for (const std::string& line : queue_) WriteAll(fd, line);
  return queue_.size() + (own ? in_flight_lines_ : 0);
}

bool LogWriter::Flush(absl::Duration timeout) {
  MutexLock lock(&mu_);
  const uint64_t target = accepted_;
  return cv_.AwaitWithTimeout(
      &mu_,
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ >= target; },
      timeout);
}

uint64_t LogWriter::dropped() const {
  MutexLock lock(&mu_);
  return dropped_;
}

void LogWriter::OnDropped(std::function<void(size_t lines)> count) {
  uint64_t before;
  {
    MutexLock lock(&mu_);
    on_dropped_ = count;
    before = dropped_;
  }
  if (before > 0 && count) count(before);
}

void LogWriter::Run() {
  std::string chunk;
  for (;;) {
    size_t lines = 0;
    uint64_t unreported;
    {
      MutexLock lock(&mu_);
      in_flight_ = nullptr;
      while (queue_.empty() && !stopping_) cv_.Wait(&mu_);
      if (queue_.empty()) return;  // Stopping, and all written.
      // Whole lines, at most PIPE_BUF bytes of them (a longer line alone):
      // a pipe takes such a write whole, so another writer's bytes (a
      // failure report) fall between lines; and what is not written yet
      // stays in the queue, where a failure finds it (WriteQueuedNow).
      chunk.clear();
      while (
          !queue_.empty() &&
          (chunk.empty() || chunk.size() + queue_.front().size() <= PIPE_BUF)) {
        chunk += queue_.front();
        queued_bytes_ -= queue_.front().size();
        queue_.pop_front();
        ++lines;
      }
      in_flight_ = &chunk;
      in_flight_lines_ = lines;
      unreported = unreported_;
      unreported_ = 0;
    }
    const bool written = WriteAll(fd_, chunk);
    if (!written) {
      Dropped(lines);
    } else if (unreported > 0) {
      WriteAll(fd_, LogLine(LogLevel::kWarning,
                            absl::StrCat(unreported,
                                         " log lines dropped before this one: "
                                         "stderr was not read fast enough "
                                         "(lines wait in a queue of ",
                                         max_queued_bytes_ >> 10, " KiB)"),
                            absl::Now()));
    }
    {
      MutexLock lock(&mu_);
      done_ += lines;
      // Said once lines are written again.
      if (!written) unreported_ += unreported;
    }
    cv_.SignalAll();
  }
}

}  // namespace engram::app
