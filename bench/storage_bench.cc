// Durability figures, in process, through the same registry and RocksDB
// storage engramd uses:
//  1. add throughput (patterns/s) for batches of 1, 100 and 10,000, with the
//     write-ahead log fsynced per batch (the default) and without;
//  2. reload time of N patterns x D dims, next to reading the same float bytes
//     from a plain file (both from the page cache).
//
//   storage_bench [--dir=/tmp/engram-storage-bench] [--reload_n=1000000]
//   [--dim=128]
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "bench/bench_main.h"
#include "server/core/low_rank.h"
#include "server/store/registry.h"
#include "server/store/rocksdb_storage.h"

ABSL_FLAG(std::string, dir, "/tmp/engram-storage-bench", "Scratch directory.");
ABSL_FLAG(size_t, reload_n, 1000000, "Patterns for the reload figure.");
ABSL_FLAG(uint32_t, dim, 128, "Dimension.");
ABSL_FLAG(uint32_t, low_rank_dim, 16,
          "Dimension of the store whose low-rank sums' upkeep is measured.");

namespace engram::store {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::vector<Pattern> RandomPatterns(size_t n, uint32_t dim, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<Pattern> out(n);
  for (Pattern& p : out) {
    p.values.resize(dim);
    for (float& v : p.values) v = normal(rng);
  }
  return out;
}

struct Db {
  std::unique_ptr<RocksDbStorage> storage;
  std::unique_ptr<StoreRegistry> registry;
};

Db Open(const std::string& path, bool sync, size_t low_rank_values) {
  Db db;
  db.storage = std::move(*RocksDbStorage::Open({path, sync}));
  Limits limits;
  limits.max_batch = 1000000;
  limits.max_low_rank_values = low_rank_values;
  db.registry = std::make_unique<StoreRegistry>(limits, db.storage.get());
  if (!db.registry->Load().ok()) std::abort();
  return db;
}

// What a dot store of `dim` keeps under the limit.
std::string Sums(uint32_t dim, size_t low_rank_values) {
  const uint32_t degree = core::SumsDegree(dim, dim, 4, low_rank_values);
  if (degree == 0) return "none";
  return "to g = " + std::to_string(degree) +
         " (r = " + std::to_string(core::TaylorRank(dim, degree)) + ")";
}

void AddThroughput(const std::string& root, uint32_t dim,
                   size_t low_rank_values) {
  std::mt19937 rng(1);
  std::printf("add throughput, dim %u, one writer, low-rank sums %s\n", dim,
              Sums(dim, low_rank_values).c_str());
  std::printf("%8s %14s %14s %8s\n", "batch", "fsync pat/s", "no-fsync pat/s",
              "ratio");
  for (size_t batch : {size_t{1}, size_t{100}, size_t{10000}}) {
    double rate[2];
    for (int sync = 1; sync >= 0; --sync) {
      const std::string path = root + "/add";
      std::filesystem::remove_all(path);
      Db db = Open(path, sync, low_rank_values);
      StoreSettings settings;
      settings.name = "bench";
      settings.dimension = dim;
      std::shared_ptr<Store> store = *db.registry->Create(settings);
      const size_t total = batch == 1 ? (sync ? 2000 : 20000)
                                      : batch * (batch == 100 ? 200 : 10);
      const std::vector<Pattern> patterns = RandomPatterns(batch, dim, rng);
      const auto start = Clock::now();
      for (size_t done = 0; done < total; done += batch) {
        if (!store->Add(patterns).ok()) std::abort();
      }
      rate[sync] = total / Seconds(start);
    }
    std::printf("%8zu %14.0f %14.0f %8.2f\n", batch, rate[1], rate[0],
                rate[0] / rate[1]);
  }
}

void Reload(const std::string& root, size_t n, uint32_t dim,
            size_t low_rank_values) {
  const std::string path = root + "/reload";
  std::filesystem::remove_all(path);
  std::mt19937 rng(2);
  {
    Db db = Open(path, false, low_rank_values);
    StoreSettings settings;
    settings.name = "bench";
    settings.dimension = dim;
    std::shared_ptr<Store> store = *db.registry->Create(settings);
    for (size_t done = 0; done < n; done += 10000) {
      if (!store
               ->Add(
                   RandomPatterns(std::min<size_t>(10000, n - done), dim, rng))
               .ok()) {
        std::abort();
      }
    }
  }
  const std::string plain = root + "/plain.f32";
  {
    std::vector<float> row(dim, 1.0f);
    std::ofstream out(plain, std::ios::binary);
    for (size_t i = 0; i < n; ++i)
      out.write(reinterpret_cast<const char*>(row.data()), dim * 4);
  }
  double reload = 1e9, read = 1e9;
  for (int rep = 0; rep < 3; ++rep) {
    auto start = Clock::now();
    {
      Db db = Open(path, true, low_rank_values);
      if ((*db.registry->Get("bench"))->view()->size() != n) std::abort();
      reload = std::min(reload, Seconds(start));
    }
    start = Clock::now();
    std::vector<float> all(n * dim);
    std::ifstream in(plain, std::ios::binary);
    in.read(reinterpret_cast<char*>(all.data()), all.size() * 4);
    read = std::min(read, Seconds(start));
  }
  std::printf(
      "reload of %zu patterns x %u dims (%.0f MB of floats), low-rank sums "
      "%s: %.2f s; plain-file read of the same bytes %.3f s; ratio %.1fx\n",
      n, dim, n * dim * 4 / 1e6, Sums(dim, low_rank_values).c_str(), reload,
      read, reload / read);
}

}  // namespace
}  // namespace engram::store

int main(int argc, char** argv) {
  engram::bench::Start(argc, argv);
  const std::string root = absl::GetFlag(FLAGS_dir);
  std::filesystem::create_directories(root);
  const size_t limit = engram::store::Limits{}.max_low_rank_values;
  engram::store::AddThroughput(root, absl::GetFlag(FLAGS_dim), limit);
  engram::store::Reload(root, absl::GetFlag(FLAGS_reload_n),
                        absl::GetFlag(FLAGS_dim), limit);
  // The upkeep of the low-rank sums: a dot store small enough to keep them.
  const uint32_t small = absl::GetFlag(FLAGS_low_rank_dim);
  for (size_t values : {limit, size_t{0}}) {
    engram::store::AddThroughput(root, small, values);
    engram::store::Reload(root, absl::GetFlag(FLAGS_reload_n), small, values);
  }
  std::filesystem::remove_all(root);
  return 0;
}
