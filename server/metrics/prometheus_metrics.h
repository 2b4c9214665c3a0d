// Metrics exported in the Prometheus text format at http://LISTEN/metrics:
// prometheus-cpp keeps the registry and writes the text format; the HTTP
// endpoint is libmicrohttpd's (internal/http_endpoint.h).
//
// Thread-safe: prometheus-cpp families are; the label maps are guarded.
#ifndef ENGRAM_SERVER_METRICS_PROMETHEUS_METRICS_H_
#define ENGRAM_SERVER_METRICS_PROMETHEUS_METRICS_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/metrics/metrics.h"

namespace engram::metrics {

// A gauge whose value is read when /metrics is scraped.
struct ScrapedGauge {
  std::string name;
  std::string help;
  double value = 0;
};

struct PrometheusOptions {
  std::string listen = "127.0.0.1:9464";  // Empty: no HTTP endpoint.
  bool per_store_labels = true;  // Off: no store label, bounded cardinality.
  std::string version;
  // What engram_build_info's labels say besides the version: the machine
  // and kernels it runs with ({"blas_family", "SkylakeX"}, ...).
  std::map<std::string, std::string> build_labels;
  // Called at every scrape for gauges kept outside the registry (what the
  // memory allocator holds, what writes in flight hold); may be empty.
  std::function<std::vector<ScrapedGauge>()> gauges;
};

struct PrometheusExport {
  std::unique_ptr<Metrics> metrics;
  int port = 0;  // The port /metrics is served on (0: not served).
};

// Starts the exporter; fails if `listen` cannot be bound. Port 0 in `listen`
// picks a free port.
absl::StatusOr<PrometheusExport> StartPrometheusMetrics(
    const PrometheusOptions& options);

}  // namespace engram::metrics

#endif  // ENGRAM_SERVER_METRICS_PROMETHEUS_METRICS_H_
