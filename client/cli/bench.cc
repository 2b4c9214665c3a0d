#include "client/cli/bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

namespace engram::client {

namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t i = std::min(sorted.size() - 1,
                            static_cast<size_t>(p / 100.0 * sorted.size()));
  return sorted[i];
}

}  // namespace

BenchResult RunBench(Client& client, const BenchOptions& o) {
  const size_t rows = o.dim ? o.queries.size() / o.dim : 0;
  const auto start = Clock::now();
  const auto measure_from =
      start + std::chrono::duration_cast<Clock::duration>(
                  std::chrono::duration<double>(o.warmup_s));
  const auto stop_at =
      measure_from + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(o.duration_s));
  std::atomic<size_t> issued{0}, done{0};
  std::atomic<bool> finished{false};
  absl::Mutex mu;
  std::vector<double> latencies;  // ms, measured calls only.
  BenchResult result;
  v1::RetrieveRequest overrides;
  overrides.set_omit_vectors(!o.vectors);

  auto worker = [&] {
    std::vector<double> mine;
    size_t errors = 0;
    std::string first_error;
    AnswerArena answers;
    while (true) {
      const size_t k = issued.fetch_add(1);
      if (o.requests > 0 && k >= o.requests) break;
      if (o.requests == 0 && Clock::now() >= stop_at) break;
      if (o.rate > 0) {
        std::this_thread::sleep_until(
            start + std::chrono::duration_cast<Clock::duration>(
                        std::chrono::duration<double>(k / o.rate)));
      }
      std::vector<float> batch;
      batch.reserve(o.batch * o.dim);
      for (size_t i = 0; i < o.batch; ++i) {
        const size_t r = (k * o.batch + i) % rows;
        batch.insert(batch.end(), o.queries.begin() + r * o.dim,
                     o.queries.begin() + (r + 1) * o.dim);
      }
      const auto t0 = Clock::now();
      const absl::Status r =
          client.Retrieve(o.store, batch, o.dim, overrides, answers.Fresh());
      const auto t1 = Clock::now();
      done.fetch_add(1);
      if (t0 < measure_from && o.requests == 0) continue;
      if (!r.ok()) {
        if (errors++ == 0) first_error = r.ToString();
        continue;
      }
      mine.push_back(
          std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    absl::MutexLock lock(&mu);
    latencies.insert(latencies.end(), mine.begin(), mine.end());
    result.errors += errors;
    if (result.first_error.empty()) result.first_error = first_error;
  };

  std::thread progress;
  if (o.progress) {
    progress = std::thread([&] {
      while (!finished) {
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        const double elapsed =
            std::chrono::duration<double>(Clock::now() - start).count();
        absl::FPrintF(stderr, "\r%6.1fs  %zu requests  %.0f req/s   ", elapsed,
                      done.load(), done.load() / std::max(elapsed, 1e-9));
      }
      absl::FPrintF(stderr, "\n");
    });
  }
  std::vector<std::thread> workers;
  for (int i = 0; i < std::max(1, o.concurrency); ++i)
    workers.emplace_back(worker);
  for (std::thread& t : workers) t.join();
  const auto end = Clock::now();
  finished = true;
  if (progress.joinable()) progress.join();

  std::sort(latencies.begin(), latencies.end());
  result.requests = latencies.size();
  const auto from = o.requests > 0 ? start : measure_from;
  result.seconds = std::chrono::duration<double>(end - from).count();
  result.requests_per_s = result.requests / std::max(result.seconds, 1e-9);
  result.queries_per_s = result.requests_per_s * o.batch;
  result.p50_ms = Percentile(latencies, 50);
  result.p90_ms = Percentile(latencies, 90);
  result.p99_ms = Percentile(latencies, 99);
  result.max_ms = latencies.empty() ? 0 : latencies.back();
  return result;
}

}  // namespace engram::client
