// The HOST:PORT addresses of the flags engramd listens on (--listen,
// --metrics_listen): split, then resolved to the socket addresses to bind.
//
//   absl::StatusOr<HostPort> where = SplitHostPort("[::1]:50051", "--listen");
//   absl::StatusOr<std::vector<SocketAddress>> addresses =
//       Resolve(*where, "--listen=[::1]:50051");
//
// Refusals name the flag and the address as given. Thread-safe: pure
// functions (getaddrinfo may block on a name server).
#ifndef ENGRAM_SERVER_BASE_HOST_PORT_H_
#define ENGRAM_SERVER_BASE_HOST_PORT_H_

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace engram {

struct HostPort {
  std::string host;  // Without an IPv6 address's brackets; empty: any.
  int port = 0;      // 0: any free port.
};

// "HOST:PORT", "[IPV6]:PORT" or ":PORT"; `flag` names the flag in a
// refusal ("--listen").
inline absl::StatusOr<HostPort> SplitHostPort(absl::string_view address,
                                              absl::string_view flag) {
  const std::string where = absl::StrCat(flag, "=", address);
  HostPort out;
  absl::string_view port;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find(']');
    if (close == absl::string_view::npos ||
        address.substr(close + 1, 1) != ":") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": an IPv6 address is written [ADDRESS]:PORT"));
    }
    out.host = std::string(address.substr(1, close - 1));
    port = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": needs a port: HOST:PORT or [IPV6]:PORT"));
    }
    out.host = std::string(address.substr(0, colon));
    if (out.host.find(':') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": an IPv6 address is written [ADDRESS]:PORT"));
    }
    port = address.substr(colon + 1);
  }
  if (port.empty() ||
      !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port, &out.port) || out.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": the port is a number from 0 (any free one) to 65535"));
  }
  return out;
}

struct SocketAddress {
  sockaddr_storage address{};
  socklen_t length = 0;
  const sockaddr* get() const {
    return reinterpret_cast<const sockaddr*>(&address);
  }
};

// Each address `where.host` names (an empty host: the addresses for any,
// as getaddrinfo gives them), with its port, once each, in the resolver's
// order. `what` starts a refusal ("--listen=host:1").
inline absl::StatusOr<std::vector<SocketAddress>> Resolve(
    const HostPort& where, absl::string_view what) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string service = absl::StrCat(where.port);
  if (const int error =
          getaddrinfo(where.host.empty() ? nullptr : where.host.c_str(),
                      service.c_str(), &hints, &found);
      error != 0) {
    return absl::UnavailableError(absl::StrCat(
        what, ": cannot resolve ", where.host.empty() ? "*" : where.host, ": ",
        gai_strerror(error)));
  }
  std::vector<SocketAddress> out;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_addrlen > sizeof(sockaddr_storage)) continue;
    SocketAddress s;
    std::memcpy(&s.address, a->ai_addr, a->ai_addrlen);
    s.length = a->ai_addrlen;
    if (std::none_of(out.begin(), out.end(), [&](const SocketAddress& o) {
          return o.length == s.length &&
                 std::memcmp(&o.address, &s.address, s.length) == 0;
        })) {
      out.push_back(s);
    }
  }
  freeaddrinfo(found);
  if (out.empty()) {
    return absl::UnavailableError(
        absl::StrCat(what, ": ", where.host, " has no address"));
  }
  return out;
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_HOST_PORT_H_
