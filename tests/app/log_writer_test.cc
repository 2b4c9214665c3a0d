#include "server/app/log_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace engram::app {
namespace {

// A pipe whose ends the test holds.
struct Pipe {
  Pipe() {
    int fds[2];
    EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0);
    read_end = fds[0];
    write_end = fds[1];
  }
  ~Pipe() {
    if (read_end >= 0) close(read_end);
    close(write_end);
  }
  // What can be read now, without waiting.
  std::string ReadAll() {
    std::string out;
    char buffer[1 << 16];
    fcntl(read_end, F_SETFL, O_NONBLOCK);
    for (;;) {
      const ssize_t n = read(read_end, buffer, sizeof(buffer));
      if (n <= 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }
  // Fills the pipe to the last byte with "fill" lines, as a reader that
  // stopped long ago leaves it.
  void Fill() {
    const std::string chunk = absl::StrCat(std::string(4090, 'f'), "fill\n");
    fcntl(write_end, F_SETFL, O_NONBLOCK);
    // At most PIPE_BUF bytes: each write whole or not at all.
    while (write(write_end, chunk.data(), chunk.size()) > 0) {
    }
    std::string line = "fill\n";
    while (write(write_end, line.data(), line.size()) > 0) {
    }
    fcntl(write_end, F_SETFL, 0);
  }
  int read_end;
  int write_end;
};

std::string Line(int i) { return absl::StrCat("line ", i, "\n"); }

TEST(LogWriterTest, WritesEveryLineInOrder) {
  Pipe pipe;
  LogWriter writer(pipe.write_end, 1 << 20);
  std::string expected;
  for (int i = 0; i < 1000; ++i) {
    writer.Write(Line(i));
    expected += Line(i);
  }
  ASSERT_TRUE(writer.Flush(absl::Seconds(60)));
  EXPECT_EQ(pipe.ReadAll(), expected);
  EXPECT_EQ(writer.dropped(), 0u);
}

// The pipe is not read: a caller never waits (the test would hang), the
// lines past the queue are dropped and counted, and once the reader reads
// again the lines kept come in order, then one line says how many were
// dropped.
TEST(LogWriterTest, NeverWaitsForAReaderThatStopped) {
  Pipe pipe;
  // Full before the first line: else a writer thread slow to start (a
  // loaded machine) found the queue's few lines room in the pipe, and all
  // was written.
  pipe.Fill();
  constexpr size_t kQueue = 4096;
  LogWriter writer(pipe.write_end, kQueue);
  size_t counted = 0;
  writer.OnDropped([&counted](size_t lines) { counted += lines; });
  constexpr int kLines = 100000;  // 1 MB: far more than the pipe holds.
  for (int i = 0; i < kLines; ++i) writer.Write(Line(i));
  EXPECT_FALSE(writer.Flush(absl::Milliseconds(100)));
  const uint64_t dropped = writer.dropped();
  EXPECT_GT(dropped, 0u);
  EXPECT_EQ(counted, dropped);

  // Read until the writer has said it.
  std::string read;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (read.find("dropped before this one") == std::string::npos &&
         absl::Now() < deadline) {
    read += pipe.ReadAll();
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_TRUE(writer.Flush(absl::Seconds(60)));
  read += pipe.ReadAll();
  // Each line whole; the lines kept in order; notes of how many were
  // dropped (one after each stretch of drops), the last line one of them.
  std::vector<std::string> lines =
      absl::StrSplit(read, '\n', absl::SkipEmpty());
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines.back().find("dropped before this one"), std::string::npos);
  uint64_t noted = 0;
  int kept = 0;
  int last = -1;
  for (const std::string& line : lines) {
    if (absl::EndsWith(line, "fill")) continue;  // Pipe::Fill's.
    int i;
    if (absl::SimpleAtoi(absl::StripPrefix(line, "line "), &i)) {
      ASSERT_GT(i, last) << line;
      last = i;
      ++kept;
      continue;
    }
    const size_t at = line.find(" WARN ");
    ASSERT_NE(at, std::string::npos) << line;
    uint64_t n = 0;
    ASSERT_TRUE(absl::SimpleAtoi(
        line.substr(at + 6, line.find(' ', at + 6) - at - 6), &n))
        << line;
    EXPECT_NE(line.find("log lines dropped before this one: stderr was not "
                        "read fast enough (lines wait in a queue of 4 KiB)"),
              std::string::npos)
        << line;
    noted += n;
  }
  EXPECT_EQ(noted, dropped);
  EXPECT_EQ(kept + dropped, static_cast<uint64_t>(kLines));
}

// Nobody will ever read (EPIPE; SIGPIPE ignored as engramd does): the
// lines are counted as dropped, and writing goes on.
TEST(LogWriterTest, CountsTheLinesAFileRefuses) {
  std::signal(SIGPIPE, SIG_IGN);
  Pipe pipe;
  close(pipe.read_end);
  pipe.read_end = -1;
  LogWriter writer(pipe.write_end, 1 << 20);
  for (int i = 0; i < 10; ++i) writer.Write(Line(i));
  ASSERT_TRUE(writer.Flush(absl::Seconds(60)));
  EXPECT_EQ(writer.dropped(), 10u);
  size_t counted = 0;
  writer.OnDropped([&counted](size_t lines) { counted += lines; });
  EXPECT_EQ(counted, 10u) << "those dropped before are reported first";
  writer.Write(Line(10));
  ASSERT_TRUE(writer.Flush(absl::Seconds(60)));
  EXPECT_EQ(writer.dropped(), 11u);
  EXPECT_EQ(counted, 11u);
}

// A line longer than the whole queue still goes when nothing waits.
TEST(LogWriterTest, TakesALongLineWhenTheQueueIsEmpty) {
  Pipe pipe;
  LogWriter writer(pipe.write_end, 16);
  const std::string line = std::string(100, 'x') + "\n";
  writer.Write(line);
  ASSERT_TRUE(writer.Flush(absl::Seconds(60)));
  EXPECT_EQ(pipe.ReadAll(), line);
  EXPECT_EQ(writer.dropped(), 0u);
}

// A failing process (a fatal signal) writes the lines still queued from its
// signal handler: with the writer's thread stuck on a reader that stopped,
// the lines it holds reach the file once the reader reads again, the ones
// queued behind them come from WriteQueuedNow, and together they are every
// line, each once, in order.
TEST(LogWriterDeathTest, AFailureWritesTheLinesStillQueued) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Pipe pipe;
        pipe.Fill();
        Pipe failure;
        // Never destroyed: WriteQueuedNow leaves its lock held.
        auto* writer = new LogWriter(pipe.write_end, 1 << 20);
        constexpr int kLines = 100;
        writer->Write(Line(0));
        // The writer's thread takes line 0 and waits on the full pipe;
        // later lines stay queued (were it slower, it would take more).
        absl::SleepFor(absl::Milliseconds(100));
        for (int i = 1; i < kLines; ++i) writer->Write(Line(i));
        const size_t queued = writer->WriteQueuedNow(failure.write_end);
        const std::string at_failure = failure.ReadAll();
        // The reader reads again: what the writer's thread held follows.
        std::string held;
        const absl::Time deadline = absl::Now() + absl::Seconds(30);
        auto lines_in = [](const std::string& text) {
          std::vector<std::string> out;
          for (absl::string_view line :
               absl::StrSplit(text, '\n', absl::SkipEmpty())) {
            if (absl::StartsWith(line, "line ")) out.emplace_back(line);
          }
          return out;
        };
        while (lines_in(held).size() + queued < kLines &&
               absl::Now() < deadline) {
          held += pipe.ReadAll();
          absl::SleepFor(absl::Milliseconds(1));
        }
        std::vector<std::string> all = lines_in(held);
        const std::vector<std::string> written = lines_in(at_failure);
        all.insert(all.end(), written.begin(), written.end());
        std::vector<std::string> expected;
        for (int i = 0; i < kLines; ++i) {
          expected.push_back(std::string(absl::StripSuffix(Line(i), "\n")));
        }
        const bool headed =
            queued == 0 ||
            absl::StartsWith(at_failure,
                             "*** engramd's log lines not written before "
                             "the failure: ***\n");
        std::fprintf(stderr, "%zu queued; %s\n", queued,
                     all == expected && headed && queued > 0
                         ? "every line once, in order"
                         : "lines lost, repeated or out of order");
        std::abort();
      },
      "[1-9][0-9]* queued; every line once, in order");
}

}  // namespace
}  // namespace engram::app
