// What engram counts, as a small interface the other modules call; the
// prometheus-cpp implementation lives in prometheus_metrics.h.
//
// Thread-safe: implementations must accept concurrent calls.
#ifndef ENGRAM_SERVER_METRICS_METRICS_H_
#define ENGRAM_SERVER_METRICS_METRICS_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace engram::metrics {

class Metrics {
 public:
  virtual ~Metrics() = default;

  // One finished RPC: its method, gRPC status code name and duration.
  virtual void RecordRequest(absl::string_view method, absl::string_view code,
                             double seconds) = 0;
  // One Retrieve: how many queries, which path ran ("exact", "low_rank"),
  // and the error bound it reported (0 for exact).
  virtual void RecordRetrieval(absl::string_view path, size_t queries,
                               double error_bound) = 0;
  // The current pattern count of a store and the bytes of memory its
  // patterns take (a removed store: RemoveStore).
  virtual void SetStoreSize(absl::string_view store, double count,
                            double memory_bytes) = 0;
  // A store's norm statistics (the live inputs of the low-rank planner).
  virtual void SetNorms(absl::string_view store, double max_norm,
                        double mean_norm, double max_feature_norm) = 0;
  // One storage write (an RPC's atomic batch) and how long it took.
  virtual void RecordStorageWrite(double seconds, bool ok) = 0;
  virtual void RemoveStore(absl::string_view store) = 0;
  // Stores whose data could not be loaded.
  virtual void SetDamagedStores(size_t count) = 0;
  // Stage I: fits running and waiting; one finished fit ("succeeded",
  // "failed", "cancelled") with its duration and final loss.
  virtual void SetFits(size_t running, size_t pending) = 0;
  virtual void RecordFit(absl::string_view store, absl::string_view result,
                         double seconds, double loss_after) = 0;
  // One finished calibration ("applied", "kept" when nothing beat the
  // current setting, "reported" when found but not applied, "failed",
  // "cancelled") with its duration.
  virtual void RecordCalibration(absl::string_view result, double seconds) = 0;
  // One sweep of expired patterns: how many a store's reclaimed, and how
  // long it took.
  virtual void RecordExpired(absl::string_view store, size_t patterns,
                             double seconds) = 0;
  // A store's capacity at its calibrated setting (the last report).
  struct Capacity {
    double recall_at_1 = 0;
    double error = 0;
    double well_separated_fraction = 0;
    double theory_beta_median = 0;
    double beta = 0;  // The best beta found.
  };
  virtual void SetCapacity(absl::string_view store,
                           const Capacity& capacity) = 0;
  // A router's call to a shard (its address): method, gRPC status code
  // name, duration, and the bytes of the request and the answer.
  virtual void RecordShardCall(absl::string_view shard,
                               absl::string_view method, absl::string_view code,
                               double seconds, size_t bytes_sent,
                               size_t bytes_received) = 0;
  // Replicas of a router's shards that serve (ready) and that do not.
  virtual void SetShardReplicas(size_t ready, size_t not_ready) = 0;
  // A connection closed as it came, unserved, and why (rpc/listener.h).
  virtual void RecordConnectionShed(absl::string_view reason) = 0;
  // Log lines dropped: stderr not read fast enough, or refusing them
  // (app/log_writer.h).
  virtual void RecordLogLinesDropped(size_t lines) = 0;
};

// Counts nothing.
class NullMetrics : public Metrics {
 public:
  void RecordRequest(absl::string_view, absl::string_view, double) override {}
  void RecordRetrieval(absl::string_view, size_t, double) override {}
  void SetStoreSize(absl::string_view, double, double) override {}
  void SetNorms(absl::string_view, double, double, double) override {}
  void RecordStorageWrite(double, bool) override {}
  void RemoveStore(absl::string_view) override {}
  void SetDamagedStores(size_t) override {}
  void SetFits(size_t, size_t) override {}
  void RecordFit(absl::string_view, absl::string_view, double,
                 double) override {}
  void RecordCalibration(absl::string_view, double) override {}
  void RecordExpired(absl::string_view, size_t, double) override {}
  void SetCapacity(absl::string_view, const Capacity&) override {}
  void RecordShardCall(absl::string_view, absl::string_view, absl::string_view,
                       double, size_t, size_t) override {}
  void SetShardReplicas(size_t, size_t) override {}
  void RecordConnectionShed(absl::string_view) override {}
  void RecordLogLinesDropped(size_t) override {}
};

}  // namespace engram::metrics

#endif  // ENGRAM_SERVER_METRICS_METRICS_H_
