#include "server/rpc/stream_flood.h"

#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace engram::rpc {
namespace {

// As gRPC 1.51's grpc_channelz_get_socket wrote it for a connection that
// reset most of its streams.
constexpr char kFlooding[] =
    R"({"socket":{"data":{"lastRemoteStreamCreatedTimestamp":)"
    R"("2026-12-06T04:01:02.954764322Z","streamsFailed":"30766",)"
    R"("streamsStarted":"31095"},"local":{"tcpip_address":{"ip_address":)"
    R"("fwAAAQ==","port":41779}},"ref":{"name":"chttp2 ipv4:127.0.0.1:34148",)"
    R"("socketId":"3"},"remote":{"tcpip_address":{"ip_address":"fwAAAQ==",)"
    R"("port":34148}}}})";

TEST(StreamFloodTest, ReadsASocketAsChannelzWritesIt) {
  SocketStreams s;
  ASSERT_TRUE(ParseChannelzSocket(kFlooding, &s));
  EXPECT_EQ(s.socket_id, 3);
  EXPECT_EQ(s.started, 31095);
  EXPECT_EQ(s.succeeded, 0);  // Absent: zero.
  EXPECT_EQ(s.failed, 30766);
  EXPECT_EQ(s.remote_ip, std::string("\x7f\x00\x00\x01", 4));
  EXPECT_EQ(s.remote_port, 34148);  // The remote's, not the local one.
  EXPECT_EQ(s.messages_received, 0);
  ASSERT_TRUE(ParseChannelzSocket(
      R"({"socket":{"data":{"messagesReceived":"3","messagesSent":"3",)"
      R"("streamsStarted":"3","streamsSucceeded":"3"},"ref":{"name":)"
      R"("chttp2 ipv4:127.0.0.1:60970","socketId":"5"}}})",
      &s));
  EXPECT_EQ(s.messages_received, 3);
  EXPECT_EQ(s.succeeded, 3);
  EXPECT_FALSE(ParseChannelzSocket("{}", &s));
  EXPECT_FALSE(ParseChannelzSocket("", &s));
  // A Unix socket's connection has no TCP peer.
  ASSERT_TRUE(ParseChannelzSocket(
      R"({"socket":{"data":{"streamsStarted":"2"},"ref":{"socketId":"9"},)"
      R"("remote":{"uds_address":{"filename":"/run/s.sock"}}}})",
      &s));
  EXPECT_EQ(s.socket_id, 9);
  EXPECT_TRUE(s.remote_ip.empty());
}

SocketStreams Socket(int64_t id, int64_t started, int64_t succeeded,
                     int64_t failed) {
  SocketStreams s;
  s.socket_id = id;
  s.started = started;
  s.succeeded = succeeded;
  s.failed = failed;
  return s;
}

TEST(StreamFloodTest, CutsConnectionsWithTooManyStreamsNotEnded) {
  StreamFloodGuard guard({/*max_open=*/100, /*failed_per_second=*/0});
  const absl::Time t = absl::UnixEpoch();
  // 200 open is what a client may have, twice over; 201 is a flood.
  std::vector<SocketStreams> cut =
      guard.Observe(t, {Socket(1, 10000, 9800, 0), Socket(2, 5000, 4000, 799),
                        Socket(3, 150, 0, 0)});
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(cut[0].socket_id, 2);
}

TEST(StreamFloodTest, CutsConnectionsThatFailStreamsFasterThanTheLimit) {
  StreamFloodGuard guard({/*max_open=*/0, /*failed_per_second=*/1000});
  const absl::Time t = absl::UnixEpoch();
  // First seen: more than a second's worth already is a flood.
  std::vector<SocketStreams> cut = guard.Observe(
      t,
      {Socket(1, 900, 0, 900), Socket(2, 1001, 0, 1001), Socket(3, 0, 0, 0)});
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(cut[0].socket_id, 2);
  // 100 ms on: too soon for a rate, nothing cut whatever the count.
  EXPECT_TRUE(guard
                  .Observe(t + absl::Milliseconds(100),
                           {Socket(1, 1100, 0, 1100), Socket(3, 0, 0, 0)})
                  .empty());
  // 250 ms after the first look: socket 1 failed 260 more (1,040 a second),
  // socket 3 none.
  cut = guard.Observe(t + absl::Milliseconds(250),
                      {Socket(1, 1160, 0, 1160), Socket(3, 50, 0, 50)});
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(cut[0].socket_id, 1);
  // A socket gone and its id back is new again.
  EXPECT_TRUE(
      guard.Observe(t + absl::Seconds(1), {Socket(1, 10, 0, 10)}).empty());
}

TEST(StreamFloodTest, ReadsTheConnectionsAsChannelzListsThem) {
  const std::vector<SocketRef> refs = ParseChannelzSocketRefs(
      R"({"end":true,"socketRef":[)"
      R"({"name":"chttp2 ipv4:127.0.0.1:37356","socketId":"5"},)"
      R"({"name":"chttp2 ipv6:[::1]:41000","socketId":"6"},)"
      R"({"socketId":"7","name":"chttp2 ipv6:[fe80::1%eth0]:8"},)"
      R"({"name":"chttp2 unix:/run/s.sock","socketId":"8"},)"
      R"({"name":"chttp2 ipv4:127.0.0.1:x","socketId":"9"}]})");
  ASSERT_EQ(refs.size(), 5u);
  EXPECT_EQ(refs[0].socket_id, 5);
  EXPECT_EQ(refs[0].remote_ip, std::string("\x7f\x00\x00\x01", 4));
  EXPECT_EQ(refs[0].remote_port, 37356);
  EXPECT_EQ(refs[1].socket_id, 6);
  EXPECT_EQ(refs[1].remote_ip, std::string(15, '\0') + '\x01');
  EXPECT_EQ(refs[1].remote_port, 41000);
  EXPECT_EQ(refs[2].socket_id, 7);  // The name after the id; a scope.
  EXPECT_EQ(refs[2].remote_ip.size(), 16u);
  EXPECT_EQ(refs[2].remote_port, 8);
  EXPECT_TRUE(refs[3].remote_ip.empty());  // Not TCP.
  EXPECT_TRUE(refs[4].remote_ip.empty());  // No port: not understood.
  EXPECT_TRUE(ParseChannelzSocketRefs(R"({"end":true})").empty());
  EXPECT_TRUE(ParseChannelzSocketRefs("").empty());
}

SocketStreams Read(int64_t id, int64_t started, int64_t bytes_read) {
  SocketStreams s = Socket(id, started, 0, 0);
  s.bytes_read = bytes_read;
  return s;
}

// A connection's counts are read while gRPC reads from it, until two looks
// in a row saw nothing more read, and every `recheck` after that.
TEST(StreamFloodTest, ReadsAConnectionOnlyWhereItsCountsMayHaveMoved) {
  StreamFloodGuard guard({/*max_open=*/100, /*failed_per_second=*/0,
                          absl::Milliseconds(200), absl::Seconds(5)});
  absl::Time t = absl::UnixEpoch();
  const absl::Duration tick = absl::Milliseconds(250);
  EXPECT_TRUE(guard.NeedsLook(t, 1, 0));  // Not seen yet.
  EXPECT_TRUE(guard.Observe(t, {Read(1, 2, 500)}).empty());
  // Nothing more read, but what was read just before the look may have
  // started streams since: looked at once more.
  t += tick;
  EXPECT_TRUE(guard.NeedsLook(t, 1, 500));
  EXPECT_TRUE(guard.Observe(t, {Read(1, 3, 500)}).empty());
  // Two looks saw the same: quiet until more is read, or the recheck.
  t += tick;
  EXPECT_FALSE(guard.NeedsLook(t, 1, 500));
  EXPECT_TRUE(guard.NeedsLook(t, 1, 501));
  EXPECT_TRUE(guard.NeedsLook(t, 1, -1));          // Not known: looked at.
  EXPECT_TRUE(guard.Observe(t, {}, {1}).empty());  // Open, not read.
  EXPECT_FALSE(guard.NeedsLook(t + absl::Milliseconds(4700), 1, 500));
  EXPECT_TRUE(guard.NeedsLook(t + absl::Seconds(5), 1, 500));
  // Then it floods: read, and cut.
  t += tick;
  ASSERT_TRUE(guard.NeedsLook(t, 1, 9000));
  std::vector<SocketStreams> cut = guard.Observe(t, {Read(1, 300, 9000)});
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(cut[0].socket_id, 1);
  // A socket neither read nor said open is gone: new if its id returns.
  EXPECT_TRUE(guard.Observe(t, {Read(2, 0, 0)}).empty());
  t += tick;
  EXPECT_TRUE(guard.Observe(t, {Read(2, 0, 0)}).empty());
  t += tick;
  EXPECT_FALSE(guard.NeedsLook(t, 2, 0));
  EXPECT_TRUE(guard.Observe(t, {}).empty());
  EXPECT_TRUE(guard.NeedsLook(t, 2, 0));
}

TEST(StreamFloodTest, WithALimitOnFailuresEveryConnectionIsReadEveryTime) {
  StreamFloodGuard guard({/*max_open=*/100, /*failed_per_second=*/1000});
  absl::Time t = absl::UnixEpoch();
  for (int i = 0; i < 3; ++i, t += absl::Milliseconds(250)) {
    EXPECT_TRUE(guard.NeedsLook(t, 1, 500));
    EXPECT_TRUE(guard.Observe(t, {Read(1, 0, 500)}).empty());
  }
}

// What each connection sent that came to nothing yet: the bytes read since
// its last message received or stream ended. Every connection past the
// bound is named, the heaviest first.
TEST(StreamFloodTest, HeaviestAreWhatSentMostWithNoProgress) {
  StreamFloodGuard guard({/*max_open=*/100, /*failed_per_second=*/0});
  absl::Time t = absl::UnixEpoch();
  auto look = [&](int64_t id, int64_t messages, int64_t ended,
                  int64_t bytes_read) {
    SocketStreams s = Read(id, ended + 1, bytes_read);
    s.succeeded = ended;
    s.messages_received = messages;
    s.remote_ip = std::string("\x7f\x00\x00\x01", 4);
    s.remote_port = 1000 + static_cast<int>(id);
    return s;
  };
  // 1: a client that made progress, 40 MiB read in all; 2: a header block
  // that never ends, 30 MiB so far and no progress since its first byte.
  guard.Observe(t, {look(1, 5, 5, 40 << 20), look(2, 0, 0, 30 << 20)});
  std::vector<StreamFloodGuard::Heavy> heavy = guard.Heaviest(16 << 20);
  ASSERT_EQ(heavy.size(), 1u);
  EXPECT_EQ(heavy[0].socket.socket_id, 2);
  EXPECT_EQ(heavy[0].socket.remote_port, 1002);
  EXPECT_EQ(heavy[0].bytes, 30 << 20);
  EXPECT_TRUE(guard.Heaviest(31 << 20).empty());
  EXPECT_TRUE(guard.AnyHeavier(30 << 20));
  EXPECT_FALSE(guard.AnyHeavier(31 << 20));
  // 1 sends 100 MiB more with no message received: now the heaviest; 2,
  // quiet and not read, keeps what it had; 3 has sent 20 MiB of headers.
  t += absl::Milliseconds(250);
  guard.Observe(t, {look(1, 5, 5, 140 << 20), look(3, 0, 0, 20 << 20)}, {2});
  heavy = guard.Heaviest(16 << 20);
  ASSERT_EQ(heavy.size(), 3u);
  EXPECT_EQ(heavy[0].socket.socket_id, 1);
  EXPECT_EQ(heavy[0].bytes, 100 << 20);
  EXPECT_EQ(heavy[1].socket.socket_id, 2);
  EXPECT_EQ(heavy[2].socket.socket_id, 3);
  EXPECT_EQ(guard.Heaviest(25 << 20).size(), 2u);
  // A message arrives on 1: what it sent made progress.
  t += absl::Milliseconds(250);
  guard.Observe(t, {look(1, 6, 6, 141 << 20)}, {2, 3});
  heavy = guard.Heaviest(16 << 20);
  ASSERT_EQ(heavy.size(), 2u);
  EXPECT_EQ(heavy[0].socket.socket_id, 2);
  EXPECT_EQ(heavy[1].socket.socket_id, 3);
  // Gone: forgotten.
  guard.Observe(t, {look(1, 6, 6, 141 << 20)});
  EXPECT_TRUE(guard.Heaviest(16 << 20).empty());
  EXPECT_FALSE(guard.AnyHeavier(1));
}

TEST(StreamFloodTest, NoLimitsCutNothing) {
  StreamFloodGuard guard({/*max_open=*/0, /*failed_per_second=*/0});
  EXPECT_TRUE(guard.Observe(absl::UnixEpoch(), {Socket(1, 1 << 30, 0, 1 << 29)})
                  .empty());
}

}  // namespace
}  // namespace engram::rpc
