#include "server/app/log_writer.h"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/base/log.h"

namespace engram::app {

namespace {

// All of `bytes` to `fd`, or false when the file refuses them.
bool WriteAll(int fd, const std::string& bytes) {
  size_t at = 0;
  while (at < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + at, bytes.size() - at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Another process made the file non-blocking: wait as a blocking
      // write would.
      pollfd writable{fd, POLLOUT, 0};
      poll(&writable, 1, -1);
      continue;
    }
    if (n <= 0) return false;
    at += static_cast<size_t>(n);
  }
  return true;
}

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
  std::deque<std::string> batch;
  std::string bytes;
  for (;;) {
    uint64_t taken;
    uint64_t unreported;
    {
      MutexLock lock(&mu_);
      while (queue_.empty() && !stopping_) cv_.Wait(&mu_);
      if (queue_.empty()) return;  // Stopping, and all written.
      batch.swap(queue_);
      queued_bytes_ = 0;
      taken = accepted_;
      unreported = unreported_;
      unreported_ = 0;
    }
    bytes.clear();
    for (const std::string& line : batch) bytes += line;
    const bool written = WriteAll(fd_, bytes);
    if (!written) {
      Dropped(batch.size());
    } else if (unreported > 0) {
      WriteAll(fd_, LogLine(LogLevel::kWarning,
                            absl::StrCat(unreported,
                                         " log lines dropped before this one: "
                                         "stderr was not read fast enough "
                                         "(lines wait in a queue of ",
                                         max_queued_bytes_ >> 10, " KiB)"),
                            absl::Now()));
    }
    batch.clear();
    {
      MutexLock lock(&mu_);
      done_ = taken;
      // Said once lines are written again.
      if (!written) unreported_ += unreported;
    }
    cv_.SignalAll();
  }
}

}  // namespace engram::app
