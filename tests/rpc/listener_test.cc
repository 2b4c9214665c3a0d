#include "server/rpc/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace engram::rpc {
namespace {

using ::testing::HasSubstr;

// Stands in for gRPC: answers each connection with one byte and closes it.
class Answering : public grpc::experimental::ExternalConnectionAcceptor {
 public:
  void HandleNewConnection(NewConnectionParameters* p) override {
    EXPECT_GE(p->listener_fd, 0);
    const char byte = 'x';
    EXPECT_EQ(write(p->fd, &byte, 1), 1);
    close(p->fd);
    handed.fetch_add(1);
  }
  std::atomic<int> handed{0};
};

// A connected socket to 127.0.0.1:port (or `address`), or -1.
int Connect(const sockaddr* address, socklen_t length) {
  const int fd = socket(address->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, address, length) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

int ConnectTcp(int port, const char* host = "127.0.0.1") {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, host, &address.sin_addr);
  return Connect(reinterpret_cast<const sockaddr*>(&address), sizeof(address));
}

// The port `fd` is bound to; 0 if it cannot be told.
int LocalPort(int fd) {
  sockaddr_in mine{};
  socklen_t length = sizeof(mine);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&mine), &length) != 0) {
    return 0;
  }
  return ntohs(mine.sin_port);
}

// What the server sent before closing: "x" if gRPC's stand-in answered, ""
// if the connection was shed; within 10 s. Leaves `fd` open.
std::string Peek(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 10000) != 1) return "(no answer in 10 s)";
  char byte;
  const ssize_t n = read(fd, &byte, 1);
  return n == 1 ? std::string(1, byte) : "";
}

// The same, and closes `fd`.
std::string Answer(int fd) {
  std::string answer = Peek(fd);
  close(fd);
  return answer;
}

// Until `count` connections were handed over (and closed) by `grpc`.
template <typename Acceptor>
void AwaitHanded(Acceptor& grpc, int count) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (grpc.handed.load() < count && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(grpc.handed.load(), count);
}

TEST(ListenerTest, RefusesAddressesItCannotTake) {
  for (const char* bad :
       {"127.0.0.1", "::1:5000", "[::1]5000", "[::1", "127.0.0.1:65536",
        "127.0.0.1:-1", "127.0.0.1:+5", "127.0.0.1:", "127.0.0.1:http",
        "unix:", "unix-abstract:"}) {
    absl::StatusOr<std::unique_ptr<Listener>> l = Listener::Bind(bad);
    ASSERT_FALSE(l.ok()) << bad;
    EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(l.status().message(),
                HasSubstr(absl::StrCat("--listen=", bad)));
  }
  absl::StatusOr<std::unique_ptr<Listener>> unresolved =
      Listener::Bind("no-such-host.invalid:0");
  ASSERT_FALSE(unresolved.ok());
  EXPECT_EQ(unresolved.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(unresolved.status().message(),
              HasSubstr("cannot resolve no-such-host.invalid"));
  absl::StatusOr<std::unique_ptr<Listener>> foreign =
      Listener::Bind("192.0.2.1:0");  // TEST-NET-1: no machine's address.
  ASSERT_FALSE(foreign.ok());
  EXPECT_THAT(foreign.status().message(),
              HasSubstr("not an address of this machine"));
}

TEST(ListenerTest, OneServerPerPort) {
  absl::StatusOr<std::unique_ptr<Listener>> first =
      Listener::Bind("127.0.0.1:0");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_GT((*first)->port(), 0);
  const std::string again = absl::StrCat("127.0.0.1:", (*first)->port());
  absl::StatusOr<std::unique_ptr<Listener>> second = Listener::Bind(again);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("--listen=" + again +
                                                   ": cannot listen there: the "
                                                   "port is in use"));
  // The wildcard of the same port too.
  EXPECT_FALSE(Listener::Bind(absl::StrCat("0.0.0.0:", (*first)->port())).ok());
}

TEST(ListenerTest, HandsEachConnectionOver) {
  for (const char* listen :
       {"127.0.0.1:0", "0.0.0.0:0", "[::]:0", "localhost:0", ":0"}) {
    SCOPED_TRACE(listen);
    absl::StatusOr<std::unique_ptr<Listener>> l = Listener::Bind(listen);
    if (!l.ok() && absl::string_view(listen) == "[::]:0") {
      GTEST_SKIP() << "no IPv6 here: " << l.status();
    }
    ASSERT_TRUE(l.ok()) << l.status();
    Answering grpc;
    (*l)->Start(&grpc, -1, nullptr);
    for (int i = 0; i < 3; ++i) {
      const int fd = ConnectTcp((*l)->port());
      ASSERT_GE(fd, 0) << std::strerror(errno);
      EXPECT_EQ(Answer(fd), "x");
    }
    (*l)->Stop();
    EXPECT_EQ(grpc.handed.load(), 3);
    EXPECT_LT(ConnectTcp((*l)->port()), 0) << "still listening after Stop";
  }
}

TEST(ListenerTest, UnixSocketsAndTheirFile) {
  char dir[] = "/tmp/listener_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = absl::StrCat(dir, "/s.sock");
  for (const std::string& listen :
       {absl::StrCat("unix:", path), absl::StrCat("unix://", path)}) {
    SCOPED_TRACE(listen);
    absl::StatusOr<std::unique_ptr<Listener>> l = Listener::Bind(listen);
    ASSERT_TRUE(l.ok()) << l.status();
    EXPECT_EQ((*l)->port(), 0);
    Answering grpc;
    (*l)->Start(&grpc, -1, nullptr);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path.data(), path.size());
    const int fd =
        Connect(reinterpret_cast<const sockaddr*>(&address), sizeof(address));
    ASSERT_GE(fd, 0) << std::strerror(errno);
    EXPECT_EQ(Answer(fd), "x");
    (*l)->Stop();
    EXPECT_NE(access(path.c_str(), F_OK), 0) << "the socket file stays";
  }
  rmdir(dir);
  const std::string name = absl::StrCat("engram-listener-test-", getpid());
  absl::StatusOr<std::unique_ptr<Listener>> abstract =
      Listener::Bind("unix-abstract:" + name);
  ASSERT_TRUE(abstract.ok()) << abstract.status();
  Answering grpc;
  (*abstract)->Start(&grpc, -1, nullptr);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  const int fd =
      Connect(reinterpret_cast<const sockaddr*>(&address),
              static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 +
                                     name.size()));
  ASSERT_GE(fd, 0) << std::strerror(errno);
  EXPECT_EQ(Answer(fd), "x");
}

TEST(ListenerTest, ReserveIsAnEighthWithinBounds) {
  EXPECT_EQ(Listener::ReserveFor(64), 32u);
  EXPECT_EQ(Listener::ReserveFor(128), 64u);
  EXPECT_EQ(Listener::ReserveFor(1024), 128u);
  EXPECT_EQ(Listener::ReserveFor(1 << 20), (1u << 20) / 8);
}

// The process's open-file limit lowered for a test, and descriptors held
// up to a number; both given back when destroyed.
class FewDescriptors {
 public:
  explicit FewDescriptors(rlim_t limit) {
    EXPECT_EQ(getrlimit(RLIMIT_NOFILE, &was_), 0);
    rlimit lowered = was_;
    lowered.rlim_cur = limit;
    EXPECT_EQ(setrlimit(RLIMIT_NOFILE, &lowered), 0);
  }
  ~FewDescriptors() {
    Release();
    setrlimit(RLIMIT_NOFILE, &was_);
  }
  // Opens descriptors until the next one would be `next` (or none is left).
  void HoldUpTo(int next) {
    while (true) {
      const int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (fd < 0) return;
      held_.push_back(fd);
      if (fd + 1 >= next) return;
    }
  }
  void Release() {
    for (int fd : held_) close(fd);
    held_.clear();
  }

 private:
  rlimit was_{};
  std::vector<int> held_;
};

// Connections never take the descriptors kept for the process's files,
// under the limit as it is when they come: one that would is closed at
// once, and counted, and the next after descriptors are freed is served.
TEST(ListenerTest, ShedsConnectionsThatWouldTakeTheReserve) {
  absl::StatusOr<std::unique_ptr<Listener>> l = Listener::Bind("127.0.0.1:0");
  ASSERT_TRUE(l.ok()) << l.status();
  Answering grpc;
  absl::Mutex mu;
  std::vector<std::string> reasons;
  (*l)->Start(&grpc, -1, [&](absl::string_view reason) {
    absl::MutexLock lock(&mu);
    reasons.emplace_back(reason);
  });
  // The limit lowered once it runs (as prlimit does): a reserve of 64,
  // connections up to descriptor 191.
  FewDescriptors few(256);
  const int served = ConnectTcp((*l)->port());
  EXPECT_EQ(Answer(served), "x");
  AwaitHanded(grpc, 1);  // Its server side closed too: no gap below.
  EXPECT_EQ((*l)->reserve(), 64u);
  // The client's own socket takes one below the reserve; the server's end
  // of it lands at 192, the first in the reserve.
  few.HoldUpTo(191);
  const int shed = ConnectTcp((*l)->port());
  ASSERT_GE(shed, 0);
  EXPECT_EQ(Answer(shed), "");
  few.Release();
  EXPECT_EQ(Answer(ConnectTcp((*l)->port())), "x");
  (*l)->Stop();
  EXPECT_EQ(grpc.handed.load(), 2);
  EXPECT_EQ((*l)->shed(), 1u);
  absl::MutexLock lock(&mu);
  EXPECT_THAT(reasons, ::testing::ElementsAre(Listener::kReserve));
}

// With no descriptor left at all (something other than connections took
// them), accept() fails; the listener sheds the waiting connection (its
// client learns at once, instead of waiting in the queue) and goes on
// accepting once descriptors are free again — where gRPC's own listener
// stopped for good.
TEST(ListenerTest, KeepsAcceptingAfterRunningOutOfDescriptors) {
  FewDescriptors few(256);
  absl::StatusOr<std::unique_ptr<Listener>> l = Listener::Bind("127.0.0.1:0");
  ASSERT_TRUE(l.ok()) << l.status();
  Answering grpc;
  std::atomic<int> no_descriptors{0};
  (*l)->Start(&grpc, 0, [&](absl::string_view reason) {
    if (reason == Listener::kNoDescriptors) no_descriptors.fetch_add(1);
  });
  // Client sockets made before the descriptors run out.
  std::vector<int> waiting;
  for (int i = 0; i < 3; ++i) {
    waiting.push_back(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_GE(waiting.back(), 0);
  }
  const int second = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(second, 0);
  few.HoldUpTo(1 << 20);  // Every descriptor.
  ASSERT_LT(open("/dev/null", O_RDONLY), 0);
  ASSERT_EQ(errno, EMFILE);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>((*l)->port()));
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  for (int fd : waiting) {
    ASSERT_EQ(connect(fd, reinterpret_cast<const sockaddr*>(&address),
                      sizeof(address)),
              0);
  }
  // Each is closed, not left waiting in the queue (read before any is
  // closed here: that would free a descriptor for the next).
  for (int fd : waiting) EXPECT_EQ(Peek(fd), "");
  for (int fd : waiting) close(fd);
  few.Release();
  ASSERT_EQ(connect(second, reinterpret_cast<const sockaddr*>(&address),
                    sizeof(address)),
            0);
  EXPECT_EQ(Answer(second), "x");
  (*l)->Stop();
  EXPECT_EQ(no_descriptors.load(), 3);
  EXPECT_EQ(grpc.handed.load(), 1);
}

// Stands in for gRPC: holds each connection open, answering nothing.
class Holding : public grpc::experimental::ExternalConnectionAcceptor {
 public:
  ~Holding() override {
    for (int fd : fds) close(fd);
  }
  void HandleNewConnection(NewConnectionParameters* p) override {
    absl::MutexLock lock(&mu);
    fds.push_back(p->fd);
  }
  size_t held() {
    absl::MutexLock lock(&mu);
    return fds.size();
  }
  // Whether `count` connections are held within 10 s.
  bool AwaitHeld(size_t count) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (held() < count && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    return held() >= count;
  }
  absl::Mutex mu;
  std::vector<int> fds;
};

// A connection cut is shut down under gRPC (which then closes it), and its
// address is kept out for the ban: shed as it comes, then served again.
TEST(ListenerTest, CutsAConnectionAndKeepsItsAddressOutForAWhile) {
  absl::StatusOr<std::unique_ptr<Listener>> l = Listener::Bind("0.0.0.0:0");
  ASSERT_TRUE(l.ok()) << l.status();
  Holding grpc;
  std::atomic<int> banned{0};
  (*l)->Start(&grpc, -1, [&](absl::string_view reason) {
    if (reason == Listener::kBanned) banned.fetch_add(1);
  });
  const int kept = ConnectTcp((*l)->port());
  const int flooding = ConnectTcp((*l)->port());
  ASSERT_GE(kept, 0);
  ASSERT_GE(flooding, 0);
  ASSERT_TRUE(grpc.AwaitHeld(2));
  const int flooding_port = LocalPort(flooding);
  ASSERT_GT(flooding_port, 0);
  const std::string loopback("\x7f\x00\x00\x01", 4);
  // No connection from that port: nothing cut, and the address is not
  // kept out.
  EXPECT_FALSE((*l)->Cut(loopback, 1, absl::Seconds(60)));
  const int after_miss = ConnectTcp((*l)->port());
  ASSERT_GE(after_miss, 0);
  ASSERT_TRUE(grpc.AwaitHeld(3));
  // The address arrives as IPv4 mapped into IPv6 (a dual-stack socket) or
  // as IPv4: both are the one address.
  std::string mapped(10, '\0');
  mapped += "\xff\xff";
  mapped += loopback;
  ASSERT_TRUE((*l)->Cut(mapped, flooding_port, absl::Milliseconds(300)));
  EXPECT_EQ(Answer(flooding), "");  // Shut down under gRPC.
  // The other connection from that address stays.
  pollfd p{kept, POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 100), 0);
  // Kept out while the ban lasts, served after.
  EXPECT_EQ(Answer(ConnectTcp((*l)->port())), "");
  absl::SleepFor(absl::Milliseconds(400));
  const int later = ConnectTcp((*l)->port());
  ASSERT_GE(later, 0);
  EXPECT_TRUE(grpc.AwaitHeld(4));
  close(later);
  close(after_miss);
  close(kept);
  (*l)->Stop();
  EXPECT_EQ(banned.load(), 1);
}

// A peer as a call's peer() names it (escaped as in a URI) and as
// channelz's names do.
TEST(ListenerTest, ParsesPeersAsGrpcNamesThem) {
  std::string ip;
  int port = 0;
  ASSERT_TRUE(ParsePeer("ipv4:127.0.0.1:34148", &ip, &port));
  EXPECT_EQ(ip, std::string("\x7f\x00\x00\x01", 4));
  EXPECT_EQ(port, 34148);
  ASSERT_TRUE(ParsePeer("ipv6:%5B::1%5D:38030", &ip, &port));
  EXPECT_EQ(ip, std::string(15, '\0') + '\x01');
  EXPECT_EQ(port, 38030);
  ASSERT_TRUE(ParsePeer("chttp2 ipv6:[::ffff:10.0.0.2]:7", &ip, &port));
  EXPECT_EQ(Unmapped(ip), std::string("\x0a\x00\x00\x02", 4));
  ASSERT_TRUE(ParsePeer("ipv6:%5Bfe80::1%25eth0%5D:9", &ip, &port));
  EXPECT_EQ(ip.size(), 16u);
  EXPECT_EQ(port, 9);
  for (const char* bad :
       {"unix:/run/engram.sock", "ipv4:127.0.0.1", "ipv4:127.0.0.1:x",
        "ipv4:127.0.0.1:70000", "ipv4:1.2.3:80", "ipv6:::1:80", "", "ipv4:"}) {
    EXPECT_FALSE(ParsePeer(bad, &ip, &port)) << bad;
  }
}

// What gRPC has read of each connection (the bytes that arrived less those
// still waiting in the socket) and what its client has taken, by the peer's
// address and port.
TEST(ListenerTest, TellsWhatWasReadAndTakenOfEachConnection) {
  absl::StatusOr<std::unique_ptr<Listener>> l = Listener::Bind("127.0.0.1:0");
  ASSERT_TRUE(l.ok()) << l.status();
  Holding grpc;
  (*l)->Start(&grpc, -1, nullptr);
  const int client = ConnectTcp((*l)->port());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(grpc.AwaitHeld(1));
  const std::pair<std::string, int> peer{std::string("\x7f\x00\x00\x01", 4),
                                         LocalPort(client)};
  auto bytes_of = [&] {
    const Listener::BytesByPeer bytes = (*l)->Bytes();
    auto it = bytes.find(peer);
    return it == bytes.end() ? Listener::PeerBytes{-1, -1} : it->second;
  };
  auto read_of = [&] { return bytes_of().read; };
  EXPECT_EQ(read_of(), 0);
  const std::string sent(1000, 'x');
  ASSERT_EQ(write(client, sent.data(), sent.size()), 1000);
  // Arrived, not read: still 0 read.
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(read_of(), 0);
  char buffer[600];
  int server_fd;
  {
    absl::MutexLock lock(&grpc.mu);
    server_fd = grpc.fds[0];
  }
  ASSERT_EQ(read(server_fd, buffer, sizeof(buffer)), 600);
  EXPECT_EQ(read_of(), 600);
  // Taken once the client's end acknowledges it, read by its program or not.
  EXPECT_EQ(bytes_of().taken, 0);
  ASSERT_EQ(write(server_fd, buffer, 500), 500);
  for (int i = 0; i < 200 && bytes_of().taken < 500; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(bytes_of().taken, 500);
  close(client);
  (*l)->Stop();
}

}  // namespace
}  // namespace engram::rpc
