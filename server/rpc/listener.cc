#include "server/rpc/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "server/base/host_port.h"
#include "server/base/log.h"
#include "server/base/steady_clock.h"
#include "server/rpc/unix_socket.h"

namespace engram::rpc {

namespace {

// Why binding failed, for an operator.
std::string Why(int error) {
  switch (error) {
    case EADDRINUSE:
      return "the port is in use (another engramd, or another program)";
    case EADDRNOTAVAIL:
      return "the host is not an address of this machine";
    case EACCES:
      return "permission denied (ports below 1024 need privileges; a Unix "
             "socket needs a directory engramd may write)";
    default:
      return std::strerror(error);
  }
}

// A socket of `address`'s family bound to it and listening, or -1 with
// *error set. `dual_stack`: an IPv6 socket that takes IPv4 too.
int ListenOn(const sockaddr* address, socklen_t length, bool dual_stack,
             int* error) {
  const int fd =
      socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = errno;
    return -1;
  }
  const int one = 1;
  if (address->sa_family != AF_UNIX) {
    // A restarted engramd binds while its predecessor's connections are
    // still in TIME_WAIT. (Not SO_REUSEPORT: one server per port.)
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  }
  if (address->sa_family == AF_INET6) {
    const int v6_only = dual_stack ? 0 : 1;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6_only, sizeof(v6_only));
  }
  if (bind(fd, address, length) != 0 || listen(fd, SOMAXCONN) != 0) {
    *error = errno;
    close(fd);
    return -1;
  }
  return fd;
}

// The peer of a TCP socket address: its bytes (an IPv4-mapped IPv6
// address as IPv4) and port; an empty ip for any other family.
std::pair<std::string, int> PeerOf(const sockaddr_storage& address) {
  if (address.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
    return {std::string(reinterpret_cast<const char*>(&v4->sin_addr), 4),
            ntohs(v4->sin_port)};
  }
  if (address.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address);
    return {Unmapped(
                std::string(reinterpret_cast<const char*>(&v6->sin6_addr), 16)),
            ntohs(v6->sin6_port)};
  }
  return {"", 0};
}

int BoundPort(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return 0;
  }
  if (address.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
  }
  if (address.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
  }
  return 0;
}

void SetPort(sockaddr* address, int port) {
  if (address->sa_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(address)->sin_port =
        htons(static_cast<uint16_t>(port));
  } else if (address->sa_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(address)->sin6_port =
        htons(static_cast<uint16_t>(port));
  }
}

// Errors of one waiting connection (its client gone, a firewall's refusal):
// the next may be fine.
bool OneConnectionFailed(int error) {
  switch (error) {
    case ECONNABORTED:
    case EPROTO:
    case EPERM:
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
      return true;
    default:
      return false;
  }
}

}  // namespace

std::string Unmapped(const std::string& ip) {
  static const char kMapped[12] = {0, 0, 0, 0, 0,      0,
                                   0, 0, 0, 0, '\xff', '\xff'};
  if (ip.size() == 16 && std::memcmp(ip.data(), kMapped, 12) == 0) {
    return ip.substr(12);
  }
  return ip;
}

bool ParsePeer(absl::string_view name, std::string* ip, int* port) {
  for (const auto& [scheme, family] :
       {std::pair<absl::string_view, int>{"ipv4:", AF_INET},
        std::pair<absl::string_view, int>{"ipv6:", AF_INET6}}) {
    const size_t from = name.find(scheme);
    if (from == absl::string_view::npos) continue;
    // gRPC's peer() escapes as in a URI: ipv6:%5B::1%5D:41000.
    const std::string unescaped = absl::StrReplaceAll(
        name.substr(from + scheme.size()),
        {{"%5B", "["}, {"%5b", "["}, {"%5D", "]"}, {"%5d", "]"}, {"%25", "%"}});
    absl::string_view address = unescaped;
    address = address.substr(0, address.find(' '));
    const size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos ||
        !absl::SimpleAtoi(address.substr(colon + 1), port) || *port < 0 ||
        *port > 65535) {
      return false;
    }
    address = address.substr(0, colon);
    if (family == AF_INET6) {
      if (!absl::ConsumePrefix(&address, "[") ||
          !absl::ConsumeSuffix(&address, "]")) {
        return false;
      }
      address = address.substr(0, address.find('%'));  // A scope.
    }
    unsigned char bytes[16];
    if (inet_pton(family, std::string(address).c_str(), bytes) != 1) {
      return false;
    }
    ip->assign(reinterpret_cast<const char*>(bytes),
               family == AF_INET ? 4 : 16);
    return true;
  }
  return false;
}

absl::StatusOr<std::unique_ptr<Listener>> Listener::Bind(
    absl::string_view listen) {
  const std::string where = absl::StrCat("--listen=", listen);
  std::vector<Socket> sockets;
  int error = 0;
  int bound = 0;
  std::string socket_path;

  const std::optional<std::string> path = UnixSocketPath(listen);
  absl::string_view name = listen;
  if (path.has_value() || absl::ConsumePrefix(&name, "unix-abstract:")) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    socklen_t length = sizeof(address);
    if (path.has_value()) {
      if (path->empty() || path->size() >= sizeof(address.sun_path)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": not a path a Unix socket can have"));
      }
      std::memcpy(address.sun_path, path->data(), path->size());
      // The caller holds the path's lock: a socket there is a dead engramd's.
      unlink(path->c_str());
      socket_path = *path;
    } else {
      if (name.empty() || name.size() >= sizeof(address.sun_path)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": an abstract socket's name is 1 to ",
                         sizeof(address.sun_path) - 1, " bytes"));
      }
      // The name after a zero byte, as long as it is (not zero-terminated).
      std::memcpy(address.sun_path + 1, name.data(), name.size());
      length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 +
                                      name.size());
    }
    const int fd = ListenOn(reinterpret_cast<const sockaddr*>(&address), length,
                            false, &error);
    if (fd >= 0) sockets.push_back({fd, false});
  } else {
    absl::StatusOr<HostPort> split = SplitHostPort(name, "--listen");
    if (!split.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          split.status().message(), " (or unix:PATH, unix-abstract:NAME)"));
    }
    const std::string& host = split->host;
    if (host.empty() || host == "0.0.0.0" || host == "::") {
      // Every address: IPv6 and IPv4 on one socket, or IPv4 alone on a
      // machine without IPv6.
      sockaddr_in6 any6{};
      any6.sin6_family = AF_INET6;
      any6.sin6_addr = in6addr_any;
      SetPort(reinterpret_cast<sockaddr*>(&any6), split->port);
      int fd = ListenOn(reinterpret_cast<const sockaddr*>(&any6), sizeof(any6),
                        true, &error);
      if (fd < 0 && (error == EAFNOSUPPORT || error == EADDRNOTAVAIL) &&
          host != "::") {
        sockaddr_in any4{};
        any4.sin_family = AF_INET;
        any4.sin_addr.s_addr = htonl(INADDR_ANY);
        SetPort(reinterpret_cast<sockaddr*>(&any4), split->port);
        fd = ListenOn(reinterpret_cast<const sockaddr*>(&any4), sizeof(any4),
                      false, &error);
      }
      if (fd >= 0) {
        sockets.push_back({fd, true});
        bound = BoundPort(fd);
      }
    } else {
      absl::StatusOr<std::vector<SocketAddress>> addresses =
          Resolve(*split, where);
      if (!addresses.ok()) return addresses.status();
      // Each address the name has (localhost: 127.0.0.1 and ::1), once, on
      // one port: the first one's when port 0 picks.
      bound = split->port;
      int first_error = 0;
      for (SocketAddress& address : *addresses) {
        SetPort(reinterpret_cast<sockaddr*>(&address.address), bound);
        const int fd = ListenOn(address.get(), address.length, false, &error);
        if (fd < 0) {
          // An address family this machine does not have (::1 without
          // IPv6) is left out; anything else (a port in use) refuses.
          if (error == EAFNOSUPPORT || error == EADDRNOTAVAIL) {
            if (first_error == 0) first_error = error;
            continue;
          }
          first_error = error;
          for (const Socket& s : sockets) close(s.fd);
          sockets.clear();
          break;
        }
        sockets.push_back({fd, true});
        if (bound == 0) bound = BoundPort(fd);
      }
      error = first_error;
    }
  }

  if (sockets.empty()) {
    return absl::UnavailableError(absl::StrCat(
        where,
        ": cannot listen there: ", Why(error == 0 ? EADDRNOTAVAIL : error)));
  }
  return std::unique_ptr<Listener>(new Listener(
      std::string(listen), std::move(sockets), bound, socket_path));
}

size_t Listener::ReserveFor(size_t limit) {
  return std::min(std::max<size_t>(64, limit / 8), limit / 2);
}

Listener::Listener(std::string listen, std::vector<Socket> sockets, int port,
                   std::string unix_path)
    : listen_(std::move(listen)),
      sockets_(std::move(sockets)),
      port_(port),
      unix_path_(std::move(unix_path)) {}

Listener::~Listener() { Stop(); }

void Listener::Start(grpc::experimental::ExternalConnectionAcceptor* acceptor,
                     int reserve, OnShed on_shed) {
  acceptor_ = acceptor;
  reserve_option_ = reserve;
  on_shed_ = std::move(on_shed);
  ReadLimit();
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  thread_ = std::thread([this] { Run(); });
}

void Listener::ReadLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 ||
      limit.rlim_cur == RLIM_INFINITY) {
    limit_ = 0;
    reserve_ = 0;
    shed_from_ = SIZE_MAX;
    return;
  }
  limit_ = static_cast<size_t>(limit.rlim_cur);
  const size_t reserve =
      reserve_option_ >= 0
          ? std::min(static_cast<size_t>(reserve_option_), limit_)
          : ReserveFor(limit_);
  reserve_ = reserve;
  // Descriptors are numbered from the lowest free one: a connection given
  // number N means 0 .. N-1 are all open.
  shed_from_ = limit_ - reserve;
}

void Listener::Stop() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    // An eventfd's counter: this write cannot fail short of a bug.
    if (write(wake_fd_, &one, sizeof(one)) != sizeof(one)) {
      Log(LogLevel::kError, "--listen=%s: cannot wake the listener: %s",
          listen_.c_str(), std::strerror(errno));
    }
    thread_.join();
  }
  for (const Socket& s : sockets_) close(s.fd);
  sockets_.clear();
  if (!unix_path_.empty()) unlink(unix_path_.c_str());
  for (int* fd : {&wake_fd_, &spare_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

void Listener::Run() {
  std::vector<pollfd> polled;
  for (const Socket& s : sockets_) polled.push_back({s.fd, POLLIN, 0});
  polled.push_back({wake_fd_, POLLIN, 0});
  while (true) {
    for (pollfd& p : polled) p.revents = 0;
    // Connections shed and not yet in the log are reported within 10 s of
    // the last report, whether or not more come.
    int timeout_ms = -1;
    if (shed_unreported_ > 0) {
      timeout_ms = static_cast<int>(std::max<int64_t>(
          0, absl::ToInt64Milliseconds(absl::Seconds(10) -
                                       (SteadyNow() - last_warning_))));
    }
    const int ready = poll(polled.data(), polled.size(), timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      Log(LogLevel::kError, "--listen=%s: poll: %s", listen_.c_str(),
          std::strerror(errno));
      absl::SleepFor(absl::Milliseconds(100));
      continue;
    }
    if (polled.back().revents != 0) break;  // Stop.
    bool starved = false;
    for (size_t i = 0; i < sockets_.size(); ++i) {
      if (polled[i].revents != 0 && !AcceptAll(sockets_[i])) starved = true;
    }
    if (shed_unreported_ > 0 &&
        SteadyNow() - last_warning_ >= absl::Seconds(10)) {
      constexpr absl::string_view kMoreFiles =
          "; raise the open-file limit (ulimit -n, systemd's LimitNOFILE=, "
          "docker run --ulimit nofile=) or find what holds them";
      const std::string why =
          last_reason_ == kReserve
              ? absl::StrCat("fewer than ", reserve_.load(), " of its ", limit_,
                             " file descriptors were free (those are kept "
                             "for its files)",
                             kMoreFiles)
          : last_reason_ == kNoDescriptors
              ? absl::StrCat("it had no file descriptor free at all",
                             kMoreFiles)
          : last_reason_ == kBanned
              ? std::string(
                    "their address is kept out for a while after a "
                    "connection from it was cut (the warning that said so "
                    "says why)")
              : std::string("the system had no memory for a connection");
      Log(LogLevel::kWarning,
          "--listen=%s: %zu new connection(s) closed unserved (%zu since "
          "start): %s",
          listen_.c_str(), shed_unreported_, shed_.load(), why.c_str());
      last_warning_ = SteadyNow();
      shed_unreported_ = 0;
    }
    if (starved) {
      // Out of descriptors or memory: give the process a moment rather
      // than spin on the queue; Stop still wakes it.
      pollfd wake{wake_fd_, POLLIN, 0};
      if (poll(&wake, 1, 50) > 0) break;
    }
  }
}

bool Listener::AcceptAll(const Socket& socket) {
  ReadLimit();
  // Lost when another thread took the descriptor it gave up.
  if (spare_fd_ < 0) spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  // At most so many a round, so that Stop is heard through a flood.
  for (int round = 0; round < 4096; ++round) {
    sockaddr_storage peer_address{};
    socklen_t peer_length = sizeof(peer_address);
    const int fd =
        accept4(socket.fd, reinterpret_cast<sockaddr*>(&peer_address),
                &peer_length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const int error = errno;
      if (error == EINTR || OneConnectionFailed(error)) continue;
      if (error == EAGAIN || error == EWOULDBLOCK) return true;
      const bool descriptors = error == EMFILE || error == ENFILE;
      if (!descriptors && error != ENOBUFS && error != ENOMEM) {
        Log(LogLevel::kError, "--listen=%s: accept: %s", listen_.c_str(),
            std::strerror(error));
        return false;
      }
      // The spare descriptor makes room to take the oldest waiting
      // connection off the queue and close it: its client learns at once,
      // rather than when it gives up. Then a plain accept again: the next
      // is served if descriptors were freed meanwhile, else shed the same
      // way. With no spare (another thread took its descriptor), the
      // caller waits a moment.
      if (spare_fd_ < 0) return false;
      close(spare_fd_);
      int shed;
      do {
        shed = accept4(socket.fd, nullptr, nullptr, SOCK_CLOEXEC);
      } while (shed < 0 && (errno == EINTR || OneConnectionFailed(errno)));
      if (shed >= 0) {
        close(shed);
        Shed(descriptors ? kNoDescriptors : kNoMemory);
      }
      spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (shed < 0) return false;  // None waiting, or none could be taken.
      continue;
    }
    if (static_cast<size_t>(fd) >= shed_from_) {
      close(fd);
      Shed(kReserve);
      continue;
    }
    if (socket.tcp) {
      const std::pair<std::string, int> peer = PeerOf(peer_address);
      bool banned = false;
      {
        MutexLock lock(&peers_mu_);
        auto ban = banned_.find(peer.first);
        if (ban != banned_.end()) {
          banned = SteadyNow() < ban->second;
          if (!banned) banned_.erase(ban);
        }
        if (banned) {
          peers_.erase(fd);
        } else {
          peers_[fd] = {peer.first, peer.second};
        }
      }
      if (banned) {
        close(fd);
        Shed(kBanned);
        continue;
      }
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters
        connection;
    connection.listener_fd = socket.fd;
    connection.fd = fd;  // gRPC's from here on: it closes it.
    acceptor_->HandleNewConnection(&connection);
  }
  return true;
}

bool Listener::Cut(const std::string& ip, int port, absl::Duration ban) {
  const std::string wanted = Unmapped(ip);
  MutexLock lock(&peers_mu_);
  for (auto it = peers_.begin(); it != peers_.end();) {
    sockaddr_storage now{};
    socklen_t length = sizeof(now);
    std::pair<std::string, int> peer{"", 0};
    if (getpeername(it->first, reinterpret_cast<sockaddr*>(&now), &length) ==
        0) {
      peer = PeerOf(now);
    }
    if (peer.first != it->second.ip || peer.second != it->second.port) {
      it = peers_.erase(it);  // Closed, and perhaps the number reused.
      continue;
    }
    if (peer.first == wanted && peer.second == port) {
      shutdown(it->first, SHUT_RDWR);  // gRPC closes it.
      peers_.erase(it);
      // Only an address whose connection was cut (so logged and counted)
      // is kept out.
      banned_[wanted] = SteadyNow() + ban;
      return true;
    }
    ++it;
  }
  return false;
}

Listener::BytesByPeer Listener::Bytes() const {
  BytesByPeer bytes;
  MutexLock lock(&peers_mu_);
  bytes.reserve(peers_.size());
  for (const auto& [fd, peer] : peers_) {
    // A descriptor gRPC has closed fails here, or (taken again by another
    // socket) counts under a peer gone, whose socket channelz no longer
    // lists; Cut and the next accept of the number mend the entry.
    tcp_info info{};
    socklen_t length = sizeof(info);
    int queued = 0;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0 ||
        length < offsetof(tcp_info, tcpi_bytes_received) +
                     sizeof(info.tcpi_bytes_received) ||
        ioctl(fd, SIOCINQ, &queued) != 0) {
      continue;
    }
    bytes[{peer.ip, peer.port}] = {
        static_cast<int64_t>(info.tcpi_bytes_received) - queued,
        static_cast<int64_t>(info.tcpi_bytes_acked)};
  }
  return bytes;
}

void Listener::Shed(const char* reason) {
  shed_.fetch_add(1);
  ++shed_unreported_;
  last_reason_ = reason;
  if (on_shed_) on_shed_(reason);
}

}  // namespace engram::rpc
