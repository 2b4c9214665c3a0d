// `engram bench`: a load generator against a running engramd.
#ifndef ENGRAM_CLIENT_CLI_BENCH_H_
#define ENGRAM_CLIENT_CLI_BENCH_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"

namespace engram::client {

struct BenchOptions {
  std::string store;
  std::vector<float> queries;  // rows x dim, row-major; cycled through.
  size_t dim = 0;
  int concurrency = 1;
  double duration_s = 10;  // Ignored when requests > 0.
  size_t requests = 0;
  size_t batch = 1;  // Queries per request.
  double rate =
      0;  // Requests per second over all workers; 0: as fast as possible.
  double warmup_s = 1;    // Calls in this first period are not counted.
  bool vectors = true;    // Ask for the retrieved vectors.
  bool progress = false;  // A live line on stderr.
};

struct BenchResult {
  size_t requests = 0;
  size_t errors = 0;
  std::string first_error;
  double seconds = 0;
  double requests_per_s = 0;
  double queries_per_s = 0;
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, max_ms = 0;
};

// Runs the load with `concurrency` threads sharing `client`.
BenchResult RunBench(Client& client, const BenchOptions& options);

}  // namespace engram::client

#endif  // ENGRAM_CLIENT_CLI_BENCH_H_
