#include "server/rpc/answer_watch.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace engram::rpc {
namespace {

const std::string kLocal("\x7f\x00\x00\x01", 4);

// What the clients at 127.0.0.1:`port`s have taken.
Listener::BytesByPeer Taken(std::vector<std::pair<int, int64_t>> taken) {
  Listener::BytesByPeer bytes;
  for (const auto& [port, n] : taken) bytes[{kLocal, port}] = {0, n};
  return bytes;
}

AnswerWatch::Options Patient() {
  AnswerWatch::Options o;
  o.patience = absl::Seconds(10);
  o.hurry = absl::Seconds(1);
  o.pressure = 100;
  return o;
}

// Two answers that wait while their client takes nothing: cut once they
// have waited `patience` past `settle`, and named by address and port.
TEST(AnswerWatchTest, CutsAConnectionWhoseClientTakesNothing) {
  AnswerWatch watch(Patient());
  int a = 0, b = 0;
  const absl::Time t0 = absl::UnixEpoch();
  watch.Begin(&a, "ipv4:127.0.0.1:5000", t0);
  watch.Begin(&b, "ipv4:127.0.0.1:5000", t0);
  EXPECT_EQ(watch.sending(), 2u);
  const Listener::BytesByPeer bytes = Taken({{5000, 300}});
  // Not yet settled, then watched from the first look that saw them.
  EXPECT_TRUE(watch.Look(t0 + absl::Milliseconds(250), bytes).empty());
  EXPECT_TRUE(watch.Look(t0 + absl::Seconds(1), bytes).empty());
  EXPECT_TRUE(watch.Look(t0 + absl::Seconds(10), bytes).empty());
  // Pings and their answers: a few bytes, nothing.
  const std::vector<AnswerWatch::Stalled> cut =
      watch.Look(t0 + absl::Seconds(11), Taken({{5000, 400}}));
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(cut[0].ip, kLocal);
  EXPECT_EQ(cut[0].port, 5000);
  EXPECT_EQ(cut[0].waiting, 2);
  EXPECT_EQ(cut[0].taken, 100);
  EXPECT_EQ(cut[0].for_, absl::Seconds(10));
  EXPECT_FALSE(cut[0].hurried);
}

// A client that takes its answers, however slowly, keeps its connection;
// so does one with a single answer waiting (a paused stream), and answers
// written are forgotten.
TEST(AnswerWatchTest, SparesClientsThatReadAndSingleAnswers) {
  AnswerWatch watch(Patient());
  int a = 0, b = 0, c = 0;
  const absl::Time t0 = absl::UnixEpoch();
  watch.Begin(&a, "ipv4:127.0.0.1:5000", t0);
  watch.Begin(&b, "ipv4:127.0.0.1:5000", t0);
  watch.Begin(&c, "ipv6:%5B::ffff:127.0.0.1%5D:6000", t0);
  int64_t taken = 0;
  for (int s = 1; s <= 60; ++s) {
    taken += 20 << 10;  // 20 KiB a second.
    EXPECT_TRUE(
        watch.Look(t0 + absl::Seconds(s), Taken({{5000, taken}, {6000, 0}}))
            .empty())
        << s;
  }
  watch.End(&a);
  watch.End(&a);  // Again: the call's end after its answer was written.
  watch.End(&b);
  watch.End(&c);
  EXPECT_EQ(watch.sending(), 0u);
}

// While answers waiting number `pressure`, a connection is cut after
// `hurry`; a Unix socket's (not TCP) or one gone from `bytes` never is.
TEST(AnswerWatchTest, HurriesUnderPressureAndCutsOnlyTcp) {
  AnswerWatch::Options o = Patient();
  o.pressure = 4;
  AnswerWatch watch(o);
  int calls[6] = {};
  const absl::Time t0 = absl::UnixEpoch();
  watch.Begin(&calls[0], "ipv4:127.0.0.1:5000", t0);
  watch.Begin(&calls[1], "ipv4:127.0.0.1:5000", t0);
  watch.Begin(&calls[2], "unix:/run/e.sock", t0);
  watch.Begin(&calls[3], "unix:/run/e.sock", t0);
  watch.Begin(&calls[4], "ipv4:127.0.0.1:7000", t0);
  watch.Begin(&calls[5], "ipv4:127.0.0.1:7000", t0);
  const Listener::BytesByPeer bytes = Taken({{5000, 0}});
  EXPECT_TRUE(watch.Look(t0 + absl::Seconds(1), bytes).empty());
  const std::vector<AnswerWatch::Stalled> cut =
      watch.Look(t0 + absl::Seconds(2), bytes);
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(cut[0].port, 5000);
  EXPECT_TRUE(cut[0].hurried);
  // Below the pressure again (the cut connection's calls not ended yet):
  // patience, counted afresh.
  for (int i = 2; i < 6; ++i) watch.End(&calls[i]);
  EXPECT_TRUE(watch.Look(t0 + absl::Seconds(3), bytes).empty());
  EXPECT_TRUE(watch.Look(t0 + absl::Seconds(12), bytes).empty());
  EXPECT_EQ(watch.Look(t0 + absl::Seconds(13), bytes).size(), 1u);
}

// Many connections with one answer each hold the threads as well as one
// with many: under pressure each is cut after `hurry`, unless its client
// reads; below it, none is.
TEST(AnswerWatchTest, UnderPressureSingleAnswersCountToo) {
  AnswerWatch::Options o = Patient();
  o.pressure = 3;
  AnswerWatch watch(o);
  int calls[3] = {};
  const absl::Time t0 = absl::UnixEpoch();
  for (int i = 0; i < 3; ++i) {
    watch.Begin(&calls[i], absl::StrCat("ipv4:127.0.0.1:", 5000 + i), t0);
  }
  EXPECT_TRUE(
      watch
          .Look(t0 + absl::Seconds(1), Taken({{5000, 0}, {5001, 0}, {5002, 0}}))
          .empty());
  // 5002's client reads.
  const std::vector<AnswerWatch::Stalled> cut = watch.Look(
      t0 + absl::Seconds(2), Taken({{5000, 0}, {5001, 0}, {5002, 20 << 10}}));
  ASSERT_EQ(cut.size(), 2u);
  for (const AnswerWatch::Stalled& s : cut) {
    EXPECT_NE(s.port, 5002);
    EXPECT_EQ(s.waiting, 1);
    EXPECT_TRUE(s.hurried);
  }
  // Two left: below the pressure, a single answer is spared however long.
  watch.End(&calls[0]);
  int another = 0;
  watch.Begin(&another, "ipv4:127.0.0.1:5003", t0 + absl::Seconds(2));
  watch.End(&calls[1]);
  for (int s = 3; s < 60; s += 5) {
    EXPECT_TRUE(
        watch.Look(t0 + absl::Seconds(s), Taken({{5002, 20 << 10}, {5003, 0}}))
            .empty())
        << s;
  }
}

// Streams and writes hold threads of their own bounds; with them held, a
// few answers waiting leave other calls too few (gRPC then refuses every
// call): that is pressure too, however few the answers.
TEST(AnswerWatchTest, FewThreadsLeftIsPressureToo) {
  AnswerWatch::Options o = Patient();
  o.threads = 16;
  int held = 12;
  o.held = [&held] { return held; };
  o.min_free = kFewestThreadsLeft;
  AnswerWatch watch(o);
  int calls[2] = {};
  const absl::Time t0 = absl::UnixEpoch();
  for (int i = 0; i < 2; ++i) {
    watch.Begin(&calls[i], absl::StrCat("ipv4:127.0.0.1:", 5000 + i), t0);
  }
  const Listener::BytesByPeer bytes = Taken({{5000, 0}, {5001, 0}});
  EXPECT_TRUE(watch.Look(t0 + absl::Seconds(1), bytes).empty());
  // 16 - 12 - 2 leaves 2 of the 3 other calls need: both cut in `hurry`.
  const std::vector<AnswerWatch::Stalled> cut =
      watch.Look(t0 + absl::Seconds(2), bytes);
  ASSERT_EQ(cut.size(), 2u);
  for (const AnswerWatch::Stalled& s : cut) {
    EXPECT_EQ(s.waiting, 1);
    EXPECT_TRUE(s.hurried);
  }
  watch.End(&calls[0]);
  watch.End(&calls[1]);
  // With fewer held, one answer waiting leaves enough: spared.
  held = 8;
  int one = 0;
  watch.Begin(&one, "ipv4:127.0.0.1:5002", t0 + absl::Seconds(2));
  for (int s = 3; s < 60; s += 5) {
    EXPECT_TRUE(watch.Look(t0 + absl::Seconds(s), Taken({{5002, 0}})).empty())
        << s;
  }
}

// Patience zero: never cut.
TEST(AnswerWatchTest, ZeroPatienceNeverCuts) {
  AnswerWatch::Options o = Patient();
  o.patience = absl::ZeroDuration();
  AnswerWatch watch(o);
  int a = 0, b = 0;
  watch.Begin(&a, "ipv4:127.0.0.1:5000", absl::UnixEpoch());
  watch.Begin(&b, "ipv4:127.0.0.1:5000", absl::UnixEpoch());
  for (int s = 1; s < 100; s += 10) {
    EXPECT_TRUE(
        watch.Look(absl::UnixEpoch() + absl::Seconds(s), Taken({{5000, 0}}))
            .empty());
  }
}

}  // namespace
}  // namespace engram::rpc
