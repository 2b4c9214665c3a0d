// What expiry costs, in process, through the store layer engramd uses: a
// store of M random patterns (d dims) of which a share expires at once.
// Prints one query's retrieval time before the expiry, after it but before
// the sweep (expired rows left out at read time), and after the sweep; and
// the sweep's time, in memory and with RocksDB storage (fsynced batches);
// and what one delete of one pattern costs.
//
//   expiry_bench [--patterns=1000000] [--dim=128] [--expiring=0.1]
//   [--dir=/tmp/engram-expiry-bench]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/time/clock.h"
#include "bench/bench_main.h"
#include "server/store/registry.h"
#include "server/store/retrieve.h"
#include "server/store/rocksdb_storage.h"

ABSL_FLAG(size_t, patterns, 1000000, "Patterns in the store.");
ABSL_FLAG(uint32_t, dim, 128, "Dimension.");
ABSL_FLAG(double, expiring, 0.1, "Share of the patterns that expire.");
ABSL_FLAG(std::string, dir, "/tmp/engram-expiry-bench", "Scratch directory.");

namespace engram::store {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since)
      .count();
}

// Fills `store`; every pattern in the expiring share expires at `at`.
void Fill(Store& store, size_t m, uint32_t d, double share, int64_t at) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 1.0f / std::sqrt(float(d)));
  const size_t every = static_cast<size_t>(std::lround(1.0 / share));
  for (size_t first = 0; first < m; first += 100000) {
    std::vector<Pattern> batch(std::min<size_t>(100000, m - first));
    for (size_t i = 0; i < batch.size(); ++i) {
      batch[i].values.resize(d);
      for (float& v : batch[i].values) v = normal(rng);
      if ((first + i) % every == 0) batch[i].expire_ns = at;
    }
    if (absl::Status s = store.Add(batch).status(); !s.ok()) {
      std::fprintf(stderr, "add: %s\n", s.ToString().c_str());
      std::abort();
    }
  }
}

int Run() {
  const size_t m = absl::GetFlag(FLAGS_patterns);
  const uint32_t d = absl::GetFlag(FLAGS_dim);
  const double share = absl::GetFlag(FLAGS_expiring);
  Limits limits;
  limits.max_batch = 100000;
  StoreSettings settings;
  settings.name = "bench";
  settings.dimension = d;
  settings.retrieval.top_k = 10;
  std::vector<float> query(d, 0.01f);
  RetrieveRequest request;
  request.queries = query;
  request.num_queries = 1;
  request.path = PathChoice::kExact;
  core::RetrievalOptions options;
  options.threads = 2;
  auto recall = [&](const Store& s) {
    return bench::MedianMs(7, [&] {
      if (!Retrieve(*s.view(), request, limits, options).ok()) std::abort();
    });
  };
  std::printf("store: %zu x %u random patterns, %.0f%% expire at once\n", m, d,
              share * 100);

  EphemeralStorage memory;
  const int64_t at = absl::ToUnixNanos(absl::Now() + absl::Seconds(600));
  Store store(settings, limits, &memory);
  Fill(store, m, d, share, at);
  const double before = recall(store);
  // What one delete of one pattern costs (rows move; the statistics and the
  // filter index follow).
  std::vector<double> one_delete;
  for (size_t i = 0; i < 5; ++i) {
    const uint64_t id = store.view()->info(i * 1000).id;
    const auto t = Clock::now();
    if (!store.Delete({id}).ok()) std::abort();
    one_delete.push_back(Ms(t));
  }
  std::sort(one_delete.begin(), one_delete.end());
  // Read as if the expiry had passed: the same rows, left out at read time.
  // (The store's clock is the real one; wait for a near expiry instead.)
  Store soon(settings, limits, &memory);
  const int64_t near = absl::ToUnixNanos(absl::Now() + absl::Seconds(30));
  Fill(soon, m, d, share, near);
  while (absl::GetCurrentTimeNanos() <= near) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double window = recall(soon);
  auto start = Clock::now();
  absl::StatusOr<size_t> swept = soon.ExpireDue(absl::GetCurrentTimeNanos());
  const double sweep_memory = Ms(start);
  const double after = recall(soon);
  std::printf(
      "one query: before the expiry %.2f ms; expired, not yet swept "
      "%.2f ms; after the sweep %.2f ms\n",
      before, window, after);
  std::printf("sweep of %zu patterns in memory (ephemeral storage): %.0f ms\n",
              swept.ok() ? *swept : 0, sweep_memory);
  std::printf("one delete of one pattern in memory: %.2f ms (median of 5)\n",
              one_delete[2]);

  const std::string dir = absl::GetFlag(FLAGS_dir);
  std::filesystem::remove_all(dir);
  {  // The database closes before its directory goes.
    absl::StatusOr<std::unique_ptr<RocksDbStorage>> db =
        RocksDbStorage::Open({dir, true});
    if (!db.ok()) return 1;
    StoreRegistry registry(limits, db->get());
    if (!registry.Load().ok()) return 1;
    std::shared_ptr<Store> durable = *registry.Create(settings);
    const int64_t later = absl::ToUnixNanos(absl::Now() + absl::Seconds(40));
    Fill(*durable, m, d, share, later);
    while (absl::GetCurrentTimeNanos() <= later) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    start = Clock::now();
    swept = durable->ExpireDue(absl::GetCurrentTimeNanos());
    std::printf(
        "sweep of %zu patterns with RocksDB (fsynced batches of %zu): "
        "%.0f ms\n",
        swept.ok() ? *swept : 0, limits.max_batch, Ms(start));
  }
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace engram::store

int main(int argc, char** argv) {
  engram::bench::Start(argc, argv);
  return engram::store::Run();
}
