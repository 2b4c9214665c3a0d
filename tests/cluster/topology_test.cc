#include "server/cluster/topology.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace engram::cluster {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(TopologyTest, GroupsBySemicolonOrLineAndReplicasByCommaOrSpace) {
  absl::StatusOr<Topology> t = ParseTopology(
      "a:1,b:2;c:3 d:4\n"
      "# a comment line\n"
      "\te:5 ,\tf:6\r\n"
      "g:7, h:8  # the last group\n",
      "--shards");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->groups.size(), 4u);
  EXPECT_EQ(t->replicas(), 2u);
  EXPECT_THAT(t->groups[0], ElementsAre("a:1", "b:2"));
  EXPECT_THAT(t->groups[1], ElementsAre("c:3", "d:4"));
  EXPECT_THAT(t->groups[2], ElementsAre("e:5", "f:6"));
  EXPECT_THAT(t->groups[3], ElementsAre("g:7", "h:8"));
}

TEST(TopologyTest, TakesBracketedIpv6AndEmptyGroups) {
  absl::StatusOr<Topology> t =
      ParseTopology(";;[::1]:50051;\n\n127.0.0.1:65535;", "topology.txt");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->groups.size(), 2u);
  EXPECT_THAT(t->groups[0], ElementsAre("[::1]:50051"));
  EXPECT_THAT(t->groups[1], ElementsAre("127.0.0.1:65535"));
  EXPECT_EQ(t->replicas(), 1u);
}

TEST(TopologyTest, TakesUnixSocketsBesideHostsAndPorts) {
  absl::StatusOr<Topology> t = ParseTopology(
      "unix:/run/engram/s0.sock,unix:///run/engram/s1.sock;"
      "unix:relative.sock,h:1;unix:" +
          std::string(107, 'p') + ",unix:80",
      "--shards");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->groups.size(), 3u);
  EXPECT_THAT(t->groups[0], ElementsAre("unix:/run/engram/s0.sock",
                                        "unix:///run/engram/s1.sock"));
  EXPECT_THAT(t->groups[1], ElementsAre("unix:relative.sock", "h:1"));
  // "unix:80" is the socket 80 of the working directory, as gRPC dials it,
  // not port 80 of a host named unix.
  EXPECT_EQ(t->groups[2][1], "unix:80");
}

// Each refused text, and what its message must name.
TEST(TopologyTest, RefusesWhatIsNoTopologyNamingSourceAndAddress) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "no shards"},
      {"# only a comment\n ; ,", "no shards"},
      {"host", "'host' is not an address host:port or unix:PATH (group 0)"},
      {":50051", "':50051' is not an address"},
      {"a:1;host:",
       "'host:' is not an address host:port or unix:PATH (group 1)"},
      {"host:0", "'host:0'"},
      {"host:65536", "'host:65536'"},
      {"host:123456", "'host:123456'"},
      {"host:+1", "'host:+1'"},
      {"host:-1", "'host:-1'"},
      {"host:1x", "'host:1x'"},
      {"host:0x10", "'host:0x10'"},
      {"unix:", "'unix:' is not a Unix socket unix:PATH or unix:///ABSOLUTE"},
      {"unix://", "'unix://' is not a Unix socket"},
      {"unix://host/s.sock", "'unix://host/s.sock' is not a Unix socket"},
      {"unix-abstract:engram", "'unix-abstract:engram' is not an address"},
      {"unix:/" + std::string(107, 's'),
       "names a socket path of 108 bytes; a Unix socket's path holds at most "
       "107"},
      {"unix:/run/a.sock;unix:///run/a.sock",
       "shard unix:///run/a.sock is named twice (group 0 and group 1)"},
      {"a:1;a:1", "shard a:1 is named twice (group 0 and group 1)"},
      {"a:1,a:1", "shard a:1 is named twice (group 0 and group 0)"},
      {"a:1,b:1;c:1", "group 1 (c:1, ...) has 1 replicas; group 0 has 2"},
  };
  for (const auto& [text, message] : cases) {
    absl::StatusOr<Topology> t = ParseTopology(text, "--shards");
    ASSERT_FALSE(t.ok()) << "'" << text << "' was taken";
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr("--shards: "));
    EXPECT_THAT(t.status().message(), HasSubstr(message)) << text;
  }
}

TEST(TopologyTest, ClipsALongAddressInItsMessage) {
  const std::string host(100000, 'h');
  for (const std::string& text :
       {host, absl::StrCat(host, ":1;", host, ":1")}) {
    absl::StatusOr<Topology> t = ParseTopology(text, "--shards");
    ASSERT_FALSE(t.ok());
    EXPECT_LT(t.status().message().size(), 300u) << t.status().message();
    EXPECT_THAT(t.status().message(), HasSubstr("bytes)"));
  }
}

TEST(TopologyTest, HoldsAtMostTheGroupsPlacementKnows) {
  std::string text;
  for (int g = 0; g < 65536; ++g) absl::StrAppend(&text, "h", g, ":1;");
  absl::StatusOr<Topology> t = ParseTopology(text, "t");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("65536 groups; at most 65535"));
  text.resize(text.rfind("h65535"));
  t = ParseTopology(text, "t");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->groups.size(), 65535u);
}

TEST(TopologyTest, SurvivesArbitraryBytes) {
  // No crash and a status either way; a taken text's addresses hold a port.
  uint64_t state = 88172645463325252ull;
  const std::string alphabet = "abunix:/1;,\n #\t\r09[]\xff";
  for (int round = 0; round < 5000; ++round) {
    std::string text;
    const int length = round % 64;
    for (int i = 0; i < length; ++i) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      text.push_back(alphabet[state % alphabet.size()]);
    }
    absl::StatusOr<Topology> t = ParseTopology(text, "t");
    if (!t.ok()) continue;
    for (const std::vector<std::string>& group : t->groups) {
      ASSERT_EQ(group.size(), t->replicas()) << text;
      for (const std::string& address : group) {
        EXPECT_TRUE(absl::StrContains(address, ":")) << address;
      }
    }
  }
}

}  // namespace
}  // namespace engram::cluster
