#include "server/metrics/internal/http_endpoint.h"

#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace engram::metrics::internal {

namespace {

constexpr char kPath[] = "/metrics";
constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Splits "host:port" or "[v6]:port"; the host may be empty (all addresses).
absl::Status SplitListen(absl::string_view listen, std::string& host,
                         uint16_t& port) {
  const size_t colon = listen.rfind(':');
  uint32_t parsed = 0;
  if (colon == absl::string_view::npos ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &parsed) || parsed > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address '", listen, "' is not HOST:PORT (port 0-65535)"));
  }
  absl::string_view h = listen.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') {
    h = h.substr(1, h.size() - 2);
  }
  host = std::string(h);
  port = static_cast<uint16_t>(parsed);
  return absl::OkStatus();
}

MHD_Result Send(MHD_Connection* connection, unsigned code,
                absl::string_view body, const char* allow = nullptr) {
  MHD_Response* response = MHD_create_response_from_buffer(
      body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;  // Out of memory: close.
  MHD_add_response_header(
      response, MHD_HTTP_HEADER_CONTENT_TYPE,
      code == MHD_HTTP_OK ? kContentType : "text/plain; charset=utf-8");
  if (allow != nullptr) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, allow);
  }
  const MHD_Result queued = MHD_queue_response(connection, code, response);
  MHD_destroy_response(response);
  return queued;
}

}  // namespace

struct HttpEndpointCallbacks {
  static MHD_Result Handle(void* cls, MHD_Connection* connection,
                           const char* url, const char* method, const char*,
                           const char*, size_t* upload_data_size, void**) {
    const auto* endpoint = static_cast<const HttpEndpoint*>(cls);
    // Bodies are never read: every answer is queued on the first call, and
    // libmicrohttpd closes a connection whose body was left unread.
    *upload_data_size = 0;
    const bool get = std::strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    const bool head = std::strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (std::strcmp(url, kPath) != 0) {
      return Send(connection, MHD_HTTP_NOT_FOUND,
                  "not found: engramd serves only GET /metrics\n");
    }
    if (!get && !head) {
      return Send(connection, MHD_HTTP_METHOD_NOT_ALLOWED,
                  "method not allowed: /metrics takes GET or HEAD\n",
                  "GET, HEAD");
    }
    // HEAD gets GET's headers; libmicrohttpd leaves the body out.
    return Send(connection, MHD_HTTP_OK, endpoint->render_());
  }
};

absl::StatusOr<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(
    absl::string_view listen, Render render, const HttpLimits& limits) {
  std::string host;
  uint16_t port = 0;
  if (absl::Status status = SplitListen(listen, host, port); !status.ok()) {
    return status;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (int error = getaddrinfo(host.empty() ? nullptr : host.c_str(),
                              service.c_str(), &hints, &found);
      error != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", listen, "': ", gai_strerror(error)));
  }
  sockaddr_storage address{};
  std::memcpy(&address, found->ai_addr, found->ai_addrlen);
  const bool v6 = found->ai_family == AF_INET6;
  freeaddrinfo(found);

  std::unique_ptr<HttpEndpoint> endpoint(new HttpEndpoint(std::move(render)));
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO;
  if (v6) flags |= MHD_USE_IPv6;
  endpoint->daemon_ = MHD_start_daemon(
      flags, port, /*apc=*/nullptr, nullptr, &HttpEndpointCallbacks::Handle,
      endpoint.get(), MHD_OPTION_SOCK_ADDR,
      reinterpret_cast<const sockaddr*>(&address), MHD_OPTION_CONNECTION_LIMIT,
      limits.connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
      limits.connections_per_address, MHD_OPTION_CONNECTION_TIMEOUT,
      limits.idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
      limits.memory_per_connection, MHD_OPTION_END);
  if (endpoint->daemon_ == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve metrics on ", listen,
        ": the address is in use or cannot be bound (--metrics_listen)"));
  }
  const MHD_DaemonInfo* info =
      MHD_get_daemon_info(endpoint->daemon_, MHD_DAEMON_INFO_BIND_PORT);
  endpoint->port_ = info != nullptr ? info->port : port;
  return endpoint;
}

HttpEndpoint::~HttpEndpoint() {
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
}

}  // namespace engram::metrics::internal
