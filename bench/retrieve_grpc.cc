// Exact retrieval through a running engramd, one client: the same shapes as
// retrieve_fashion (the first M Fashion-MNIST images stored, the last L
// scaled by 0.5 as queries), timed from request to decoded response.
//
//   retrieve_grpc --addr=127.0.0.1:50051 [--m=10000] [--l=256] [--reps=20]
//                 [--auto_path] [--omit_vectors] [--get_store]
//                 [--evict_mib=0] [--heap_answer]
//
// Prints the machine and the kernels engramd's --blas_coretype=auto picks
// on it (what engramd runs is in its configuration log line and in
// engram_build_info), then grpc,m,l,best_ms,median_ms,us_per_query.
//
// Several comma-separated addresses (two builds of engramd, say) are called
// in turn, one request each, so that every server sees the same moments of
// a noisy machine; one line per address, in the order given.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_main.h"
#include "client/client.h"
#include "client/matrix_io.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "engramd address.");
ABSL_FLAG(size_t, m, 10000, "Stored patterns.");
ABSL_FLAG(size_t, l, 256, "Queries per request.");
ABSL_FLAG(int, reps, 20, "Timed requests (after one warm-up).");
ABSL_FLAG(bool, omit_vectors, false, "Ask for matches only, no vectors.");
ABSL_FLAG(bool, auto_path, false,
          "Let engramd plan the path (AUTO) instead of asking for EXACT.");
ABSL_FLAG(bool, get_store, false,
          "Time GetStore instead: the fixed cost of one call.");
ABSL_FLAG(bool, heap_answer, false,
          "Parse each answer into a message of its own on the heap instead "
          "of into an arena kept across calls.");
ABSL_FLAG(size_t, evict_mib, 0,
          "Before each call (untimed), write this many MiB of other memory: "
          "the caches as a retrieval over a large store leaves them, for a "
          "call of little work.");

int main(int argc, char** argv) {
  engram::bench::Start(argc, argv);  // The machine, as engramd's auto sees it.
  using namespace engram;
  const size_t m = absl::GetFlag(FLAGS_m), l = absl::GetFlag(FLAGS_l);
  if (absl::GetFlag(FLAGS_reps) < 1) {
    std::fprintf(stderr, "--reps must be at least 1\n");
    return 2;
  }
  absl::StatusOr<client::Matrix> images = client::ReadMatrix(
      "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
  if (!images.ok()) {
    std::fprintf(stderr, "%s\n", images.status().ToString().c_str());
    return 1;
  }
  const size_t d = images->cols;
  const std::vector<std::string> addresses =
      absl::StrSplit(absl::GetFlag(FLAGS_addr), ',');
  std::vector<std::unique_ptr<client::Client>> clients;
  const std::string name = absl::StrCat("bench-", m);
  for (const std::string& address : addresses) {
    client::ClientOptions options;
    options.address = address;
    absl::StatusOr<std::unique_ptr<client::Client>> c =
        client::Client::Connect(options);
    if (!c.ok()) {
      std::fprintf(stderr, "%s: %s\n", address.c_str(),
                   c.status().ToString().c_str());
      return 1;
    }
    if (!(*c)->GetStore(name).ok()) {
      v1::Store store;
      store.set_name(name);
      store.set_dimension(d);
      absl::Status made = (*c)->CreateStore(store).status();
      const absl::Span<const float> rows(images->data.data(), m * d);
      if (made.ok()) made = (*c)->Import(name, rows, d, {}, 2000).status();
      if (!made.ok()) {
        std::fprintf(stderr, "%s: store %s: %s\n", address.c_str(),
                     name.c_str(), made.ToString().c_str());
        return 1;
      }
    }
    clients.push_back(*std::move(c));
  }
  std::vector<float> queries(images->data.end() - l * d, images->data.end());
  for (float& v : queries) v *= 0.5f;
  v1::RetrieveRequest request;
  request.set_path(absl::GetFlag(FLAGS_auto_path) ? v1::AUTO : v1::EXACT);
  request.set_omit_vectors(absl::GetFlag(FLAGS_omit_vectors));
  std::vector<std::vector<double>> ms(clients.size());
  std::vector<char> evict(absl::GetFlag(FLAGS_evict_mib) << 20);
  client::AnswerArena answers;
  for (int rep = -1; rep < absl::GetFlag(FLAGS_reps); ++rep) {
    for (size_t i = 0; i < clients.size(); ++i) {
      client::Client& c = *clients[i];
      for (size_t at = 0; at < evict.size(); at += 64) ++evict[at];
      const auto start = std::chrono::steady_clock::now();
      if (absl::GetFlag(FLAGS_get_store)) {
        if (!c.GetStore(name).ok()) return 1;
      } else {
        absl::StatusOr<v1::RetrieveResponse> heap;
        v1::RetrieveResponse* answer = answers.Fresh();
        absl::Status s;
        if (absl::GetFlag(FLAGS_heap_answer)) {
          heap = c.Retrieve(name, queries, d, request);
          s = heap.status();
          if (heap.ok()) answer = &*heap;
        } else {
          s = c.Retrieve(name, queries, d, request, answer);
        }
        if (!s.ok() || answer->results_size() != static_cast<int>(l)) {
          std::fprintf(stderr, "%s\n", s.ToString().c_str());
          return 1;
        }
      }
      const auto end = std::chrono::steady_clock::now();
      if (rep >= 0) {
        ms[i].push_back(
            std::chrono::duration<double, std::milli>(end - start).count());
      }
    }
  }
  for (std::vector<double>& times : ms) {
    std::sort(times.begin(), times.end());
    std::printf("grpc,%zu,%zu,%.3f,%.3f,%.2f\n", m, l, times.front(),
                times[times.size() / 2], times.front() * 1e3 / l);
  }
  return 0;
}
