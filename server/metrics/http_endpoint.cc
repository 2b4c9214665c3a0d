#include "server/metrics/internal/http_endpoint.h"

#include <microhttpd.h>
#include <sys/socket.h>

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/base/host_port.h"

namespace engram::metrics::internal {

namespace {

constexpr char kPath[] = "/metrics";
constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

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
  absl::StatusOr<HostPort> where = SplitHostPort(listen, "--metrics_listen");
  if (!where.ok()) return where.status();
  const uint16_t port = static_cast<uint16_t>(where->port);
  // The first address the host has: one socket.
  absl::StatusOr<std::vector<SocketAddress>> found =
      Resolve(*where, absl::StrCat("--metrics_listen=", listen));
  if (!found.ok()) return absl::InvalidArgumentError(found.status().message());
  const SocketAddress address = found->front();
  const bool v6 = address.address.ss_family == AF_INET6;

  std::unique_ptr<HttpEndpoint> endpoint(new HttpEndpoint(std::move(render)));
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO;
  if (v6) flags |= MHD_USE_IPv6;
  endpoint->daemon_ = MHD_start_daemon(
      flags, port, /*apc=*/nullptr, nullptr, &HttpEndpointCallbacks::Handle,
      endpoint.get(), MHD_OPTION_SOCK_ADDR, address.get(),
      MHD_OPTION_CONNECTION_LIMIT, limits.connections,
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, limits.connections_per_address,
      MHD_OPTION_CONNECTION_TIMEOUT, limits.idle_timeout_s,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, limits.memory_per_connection,
      MHD_OPTION_END);
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
