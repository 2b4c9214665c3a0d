// A read-only HTTP endpoint that serves one text resource, `/metrics`, over
// GNU libmicrohttpd.
//
//   absl::StatusOr<std::unique_ptr<HttpEndpoint>> endpoint =
//       HttpEndpoint::Start("127.0.0.1:9464", [&] { return Render(); });
//   (*endpoint)->port();  // The bound port (useful with port 0).
//
// The port may be reachable from anywhere, so every request is treated as
// hostile: GET and HEAD of /metrics get 200; any other path 404; any other
// method 405 (with Allow); malformed requests 400 and oversized request lines
// or headers 414/431 from libmicrohttpd itself; request bodies are never
// read. Connections are bounded in number (in all and per client address),
// in memory and in idle time, so slow or stalled clients are closed.
//
// Thread-safe: `render` runs on the endpoint's one polling thread; Start and
// the destructor must not race.
#ifndef ENGRAM_SERVER_METRICS_INTERNAL_HTTP_ENDPOINT_H_
#define ENGRAM_SERVER_METRICS_INTERNAL_HTTP_ENDPOINT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct MHD_Daemon;

namespace engram::metrics::internal {

struct HttpLimits {
  unsigned connections = 64;             // Open connections in all.
  unsigned connections_per_address = 8;  // ...from one client address.
  unsigned idle_timeout_s = 10;          // Closes a connection idle this long.
  size_t memory_per_connection = 32 << 10;  // Request line and headers.
};

class HttpEndpoint {
 public:
  using Render = std::function<std::string()>;

  // Binds `listen` ("host:port", "[v6]:port"; port 0 picks a free port) and
  // serves until destroyed.
  static absl::StatusOr<std::unique_ptr<HttpEndpoint>> Start(
      absl::string_view listen, Render render, const HttpLimits& limits = {});
  ~HttpEndpoint();
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  int port() const { return port_; }

 private:
  explicit HttpEndpoint(Render render) : render_(std::move(render)) {}

  const Render render_;
  MHD_Daemon* daemon_ = nullptr;
  int port_ = 0;

  friend struct HttpEndpointCallbacks;
};

}  // namespace engram::metrics::internal

#endif  // ENGRAM_SERVER_METRICS_INTERNAL_HTTP_ENDPOINT_H_
