// Filtered retrieval by selectivity, in process, through the store layer
// engramd uses: a store of M random patterns (d dims) where 1% carry the
// metadata entry sel=1, 10% sel=10 (disjoint), and every pattern one of 10
// labels. Times L queries unfiltered and with filters matching 1%, 10% and
// 100% (all ten labels) of the store, next to the time over a store that
// holds only the matching patterns (the floor a filter can reach).
//
//   filter_bench [--patterns=1000000] [--dim=128] [--queries=1,64] [--reps=9]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_main.h"
#include "server/store/retrieve.h"
#include "server/store/store.h"

ABSL_FLAG(size_t, patterns, 1000000, "Patterns in the store.");
ABSL_FLAG(uint32_t, dim, 128, "Dimension.");
ABSL_FLAG(std::vector<std::string>, queries,
          std::vector<std::string>({"1", "64"}), "Batch sizes L.");
ABSL_FLAG(int, reps, 9, "Repetitions per figure (the median is printed).");
ABSL_FLAG(int, threads, 2, "Retrieval threads.");

namespace engram::store {
namespace {

int Run() {
  const size_t m = absl::GetFlag(FLAGS_patterns);
  const uint32_t d = absl::GetFlag(FLAGS_dim);
  EphemeralStorage storage;
  Limits limits;
  limits.max_batch = 100000;
  StoreSettings settings;
  settings.name = "bench";
  settings.dimension = d;
  settings.retrieval.top_k = 10;
  Store store(settings, limits, &storage);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 1.0f / std::sqrt(float(d)));
  std::vector<std::vector<Pattern>> only(3);  // 1%, 10%, 100% in row order.
  for (size_t first = 0; first < m; first += 100000) {
    std::vector<Pattern> batch(std::min<size_t>(100000, m - first));
    for (size_t i = 0; i < batch.size(); ++i) {
      const size_t row = first + i;
      Pattern& p = batch[i];
      p.values.resize(d);
      for (float& v : p.values) v = normal(rng);
      p.label = absl::StrCat("c", row % 10);
      if (row % 100 == 0) p.metadata = {{"sel", "1"}};
      if (row % 10 == 1) p.metadata = {{"sel", "10"}};
      if (row % 100 == 0) only[0].push_back(p);
      if (row % 10 == 1) only[1].push_back(p);
    }
    if (!store.Add(batch).ok()) return 1;
  }
  struct Case {
    const char* name;
    Filter filter;
    size_t only;
  };
  Filter all;
  for (int c = 0; c < 10; ++c) all.labels.push_back(absl::StrCat("c", c));
  const std::vector<Case> cases = {
      {"1% (metadata sel=1)", Filter{{}, {{"sel", "1"}}, false}, 0},
      {"10% (metadata sel=10)", Filter{{}, {{"sel", "10"}}, false}, 1},
      {"100% (all ten labels)", all, 2},
  };
  // Stores holding only the matches: what a filter's answer must cost.
  std::vector<std::unique_ptr<Store>> floors;
  for (int i = 0; i < 2; ++i) {
    StoreSettings s = settings;
    s.name = absl::StrCat("only", i);
    floors.push_back(std::make_unique<Store>(s, limits, &storage));
    for (size_t f = 0; f < only[i].size(); f += 100000) {
      const size_t n = std::min<size_t>(100000, only[i].size() - f);
      if (!floors.back()
               ->Add(absl::MakeConstSpan(only[i]).subspan(f, n))
               .ok()) {
        return 1;
      }
    }
  }
  core::RetrievalOptions options;
  options.threads = absl::GetFlag(FLAGS_threads);
  const int reps = absl::GetFlag(FLAGS_reps);
  std::printf(
      "store: %zu x %u random patterns; %d retrieval threads, top-10, "
      "1 step, median of %d\n",
      m, d, options.threads, reps);
  std::printf("%-24s %6s %12s %14s %12s\n", "filter", "L", "ms",
              "store of only", "vs unfiltered");
  for (const std::string& l_text : absl::GetFlag(FLAGS_queries)) {
    const size_t l = std::stoul(l_text);
    std::vector<float> queries(l * d);
    for (float& v : queries) v = normal(rng);
    auto time = [&](const Store& s, const Filter& f) {
      RetrieveRequest request;
      request.queries = queries;
      request.num_queries = l;
      request.path = PathChoice::kExact;
      request.filter = f;
      return bench::MedianMs(reps, [&] {
        if (!Retrieve(*s.view(), request, limits, options).ok()) std::abort();
      });
    };
    const double unfiltered = time(store, Filter{});
    std::printf("%-24s %6zu %12.2f %14s %12s\n", "none", l, unfiltered, "",
                "1.00x");
    for (const Case& c : cases) {
      const double ms = time(store, c.filter);
      const std::string floor =
          c.only < 2 ? absl::StrCat(time(*floors[c.only], Filter{})) : "-";
      std::printf("%-24s %6zu %12.2f %14s %11.3fx\n", c.name, l, ms,
                  floor.c_str(), ms / unfiltered);
    }
  }
  return 0;
}

}  // namespace
}  // namespace engram::store

int main(int argc, char** argv) {
  engram::bench::Start(argc, argv);
  return engram::store::Run();
}
