#include "server/metrics/prometheus_metrics.h"

#include <map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "server/metrics/internal/http_endpoint.h"
#include "server/metrics/internal/process.h"

namespace engram::metrics {

namespace {

// engram_build_info's labels: the version and what the options add.
std::map<std::string, std::string> BuildLabels(
    const PrometheusOptions& options) {
  std::map<std::string, std::string> labels = options.build_labels;
  labels["version"] = options.version;
  return labels;
}

class PrometheusMetrics : public Metrics {
 public:
  explicit PrometheusMetrics(const PrometheusOptions& options)
      : options_(options),
        registry_(std::make_shared<prometheus::Registry>()),
        requests_(prometheus::BuildCounter()
                      .Name("engram_requests_total")
                      .Help("RPCs handled, by method and gRPC status code.")
                      .Register(*registry_)),
        latency_(prometheus::BuildHistogram()
                     .Name("engram_request_duration_seconds")
                     .Help("RPC latency in seconds, by method.")
                     .Register(*registry_)),
        queries_(prometheus::BuildCounter()
                     .Name("engram_queries_total")
                     .Help("Queries retrieved, by the path that ran.")
                     .Register(*registry_)),
        patterns_(prometheus::BuildGauge()
                      .Name("engram_patterns")
                      .Help("Patterns stored, by store.")
                      .Register(*registry_)),
        memory_(prometheus::BuildGauge()
                    .Name("engram_store_memory_bytes")
                    .Help("Bytes of memory a store's patterns take (values, "
                          "features, norms, row records), by store.")
                    .Register(*registry_)),
        damaged_(prometheus::BuildGauge()
                     .Name("engram_damaged_stores")
                     .Help("Stores whose data could not be loaded at start.")
                     .Register(*registry_)
                     .Add({})),
        norms_(prometheus::BuildGauge()
                   .Name("engram_pattern_norm")
                   .Help("Norm statistics of the stored patterns, by store and "
                         "statistic (max, mean, max_feature).")
                   .Register(*registry_)),
        storage_writes_(
            prometheus::BuildHistogram()
                .Name("engram_storage_write_duration_seconds")
                .Help("Duration of one atomic storage write, by result.")
                .Register(*registry_)),
        queries_per_request_(
            prometheus::BuildHistogram()
                .Name("engram_queries_per_request")
                .Help("Queries in one Retrieve request.")
                .Register(*registry_)
                .Add({},
                     prometheus::Histogram::BucketBoundaries{
                         1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096})),
        bounds_(
            prometheus::BuildHistogram()
                .Name("engram_retrieval_error_bound")
                .Help("Error bound each Retrieve reported for its path (0 for "
                      "exact), by path.")
                .Register(*registry_)),
        fits_(prometheus::BuildGauge()
                  .Name("engram_fits")
                  .Help("Stage I fits, by state (running, pending).")
                  .Register(*registry_)),
        expired_(prometheus::BuildCounter()
                     .Name("engram_patterns_expired_total")
                     .Help("Patterns that expired and were reclaimed, by "
                           "store.")
                     .Register(*registry_)),
        expiry_sweep_(prometheus::BuildCounter()
                          .Name("engram_expiry_sweep_seconds_total")
                          .Help("Time spent reclaiming expired patterns.")
                          .Register(*registry_)),
        fits_total_(prometheus::BuildCounter()
                        .Name("engram_fits_total")
                        .Help("Stage I fits finished, by result.")
                        .Register(*registry_)),
        fit_duration_(
            prometheus::BuildHistogram()
                .Name("engram_fit_duration_seconds")
                .Help("Duration of finished Stage I fits.")
                .Register(*registry_)
                .Add({},
                     prometheus::Histogram::BucketBoundaries{
                         0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800})),
        fit_loss_(prometheus::BuildGauge()
                      .Name("engram_fit_last_loss")
                      .Help("Separation loss at the end of the last successful "
                            "fit, by store.")
                      .Register(*registry_)),
        calibrations_(prometheus::BuildCounter()
                          .Name("engram_calibrations_total")
                          .Help("Calibrations finished, by result (applied, "
                                "kept, reported, failed, cancelled).")
                          .Register(*registry_)),
        calibration_duration_(
            prometheus::BuildHistogram()
                .Name("engram_calibration_duration_seconds")
                .Help("Duration of finished calibrations.")
                .Register(*registry_)
                .Add({},
                     prometheus::Histogram::BucketBoundaries{
                         0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800})),
        shard_calls_(prometheus::BuildCounter()
                         .Name("engram_shard_requests_total")
                         .Help("A router's calls to its shards, by shard, "
                               "method and gRPC status code.")
                         .Register(*registry_)),
        shard_latency_(prometheus::BuildHistogram()
                           .Name("engram_shard_request_duration_seconds")
                           .Help("A router's calls to its shards: latency in "
                                 "seconds, by shard and method.")
                           .Register(*registry_)),
        shard_bytes_(prometheus::BuildCounter()
                         .Name("engram_shard_bytes_total")
                         .Help("Bytes of a router's calls to its shards, by "
                               "shard and direction (sent, received).")
                         .Register(*registry_)),
        shard_replicas_(prometheus::BuildGauge()
                            .Name("engram_shard_replicas")
                            .Help("A router's shard replicas, by state "
                                  "(ready, not_ready).")
                            .Register(*registry_)),
        connections_shed_(
            prometheus::BuildCounter()
                .Name("engram_connections_shed_total")
                .Help("Connections closed unserved, by reason: reserve "
                      "(fewer file descriptors free than engramd keeps for "
                      "its files), no_descriptors or no_memory (accepting "
                      "failed for want of them), stream_flood (cut for "
                      "resetting streams by the thousand), memory_flood "
                      "(cut when memory ran out, for the most bytes sent "
                      "with no message received and no stream ended), "
                      "unread_answers (cut for answers its client took "
                      "none of) or banned (its address kept out for a "
                      "while after any cut).")
                .Register(*registry_)),
        log_lines_dropped_(
            prometheus::BuildCounter()
                .Name("engram_log_lines_dropped_total")
                .Help("Log lines dropped: stderr was not read fast enough "
                      "(a queue of 1 MiB was full) or refused them (no "
                      "reader).")
                .Register(*registry_)
                .Add({})),
        capacity_{&CapacityGauge("engram_capacity_recall_at_1",
                                 "Recall@1 of corrupted stored patterns at "
                                 "the calibrated setting, by store."),
                  &CapacityGauge("engram_capacity_error",
                                 "Mean squared error of retrieving corrupted "
                                 "stored patterns at the calibrated setting, "
                                 "by store."),
                  &CapacityGauge("engram_capacity_well_separated_fraction",
                                 "Fraction of sampled patterns that win at "
                                 "least half the weight when queried with "
                                 "themselves, by store."),
                  &CapacityGauge("engram_capacity_theory_beta",
                                 "Beta the separation condition of Ramsauer "
                                 "et al. needs for half the sampled patterns, "
                                 "by store."),
                  &CapacityGauge("engram_calibrated_beta",
                                 "The best beta the last calibration found, "
                                 "by store.")} {
    prometheus::BuildGauge()
        .Name("engram_build_info")
        .Help(
            "Always 1; the labels describe the build and what it runs on: "
            "version, cpu, blas_family (OpenBLAS kernels), kernel_isa "
            "(engram's own).")
        .Register(*registry_)
        .Add(BuildLabels(options))
        .Set(1);
    SetFits(0, 0);
    // Each reason rpc::Listener gives, from zero: a rule's increase() sees
    // the first one shed.
    for (const char* reason :
         {"reserve", "no_descriptors", "no_memory", "stream_flood",
          "memory_flood", "unread_answers", "banned"}) {
      connections_shed_.Add({{"reason", reason}});
    }
  }

  // Serves the registry in the text format; the port it bound, or 0.
  absl::StatusOr<int> Start() {
    if (options_.listen.empty()) return 0;
    absl::StatusOr<std::unique_ptr<internal::HttpEndpoint>> endpoint =
        internal::HttpEndpoint::Start(options_.listen, [registry = registry_,
                                                        started = started_,
                                                        gauges =
                                                            options_.gauges] {
          std::vector<prometheus::MetricFamily> families = registry->Collect();
          for (prometheus::MetricFamily& family : internal::ProcessFamilies(
                   started, gauges ? gauges() : std::vector<ScrapedGauge>())) {
            families.push_back(std::move(family));
          }
          return prometheus::TextSerializer().Serialize(families);
        });
    if (!endpoint.ok()) return endpoint.status();
    endpoint_ = std::move(*endpoint);
    return endpoint_->port();
  }

  void RecordRequest(absl::string_view method, absl::string_view code,
                     double seconds) override {
    requests_
        .Add({{"method", std::string(method)}, {"code", std::string(code)}})
        .Increment();
    LatencyFor(method).Observe(seconds);
  }

  void RecordRetrieval(absl::string_view path, size_t queries,
                       double error_bound) override {
    queries_.Add({{"path", std::string(path)}}).Increment(queries);
    queries_per_request_.Observe(static_cast<double>(queries));
    static const prometheus::Histogram::BucketBoundaries kBuckets = {
        0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1};
    bounds_.Add({{"path", std::string(path)}}, kBuckets).Observe(error_bound);
  }

  void SetNorms(absl::string_view store, double max_norm, double mean_norm,
                double max_feature_norm) override {
    const std::string label = StoreLabel(store);
    norms_.Add({{"store", label}, {"stat", "max"}}).Set(max_norm);
    norms_.Add({{"store", label}, {"stat", "mean"}}).Set(mean_norm);
    norms_.Add({{"store", label}, {"stat", "max_feature"}})
        .Set(max_feature_norm);
  }

  void RecordStorageWrite(double seconds, bool ok) override {
    static const prometheus::Histogram::BucketBoundaries kBuckets = {
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
        0.01,    0.025,  0.05,    0.1,    0.25,  1};
    storage_writes_.Add({{"result", ok ? "ok" : "error"}}, kBuckets)
        .Observe(seconds);
  }

  void SetStoreSize(absl::string_view store, double count,
                    double memory_bytes) override {
    patterns_.Add({{"store", StoreLabel(store)}}).Set(count);
    memory_.Add({{"store", StoreLabel(store)}}).Set(memory_bytes);
  }

  void RecordExpired(absl::string_view store, size_t patterns,
                     double seconds) override {
    expired_.Add({{"store", StoreLabel(store)}})
        .Increment(static_cast<double>(patterns));
    expiry_sweep_.Add({}).Increment(seconds);
  }

  void SetFits(size_t running, size_t pending) override {
    fits_.Add({{"state", "running"}}).Set(static_cast<double>(running));
    fits_.Add({{"state", "pending"}}).Set(static_cast<double>(pending));
  }

  void RecordFit(absl::string_view store, absl::string_view result,
                 double seconds, double loss_after) override {
    fits_total_.Add({{"result", std::string(result)}}).Increment();
    fit_duration_.Observe(seconds);
    if (result == "succeeded") {
      fit_loss_.Add({{"store", StoreLabel(store)}}).Set(loss_after);
    }
  }

  void RecordCalibration(absl::string_view result, double seconds) override {
    calibrations_.Add({{"result", std::string(result)}}).Increment();
    calibration_duration_.Observe(seconds);
  }

  void SetCapacity(absl::string_view store, const Capacity& capacity) override {
    const double values[kCapacityFigures] = {
        capacity.recall_at_1, capacity.error, capacity.well_separated_fraction,
        capacity.theory_beta_median, capacity.beta};
    for (size_t i = 0; i < kCapacityFigures; ++i) {
      capacity_[i]->Add({{"store", StoreLabel(store)}}).Set(values[i]);
    }
  }

  void SetDamagedStores(size_t count) override {
    damaged_.Set(static_cast<double>(count));
  }

  void RemoveStore(absl::string_view store) override {
    if (!options_.per_store_labels) return;
    patterns_.Remove(&patterns_.Add({{"store", std::string(store)}}));
    memory_.Remove(&memory_.Add({{"store", std::string(store)}}));
    fit_loss_.Remove(&fit_loss_.Add({{"store", std::string(store)}}));
    expired_.Remove(&expired_.Add({{"store", std::string(store)}}));
    for (prometheus::Family<prometheus::Gauge>* family : capacity_) {
      family->Remove(&family->Add({{"store", std::string(store)}}));
    }
    for (const char* stat : {"max", "mean", "max_feature"}) {
      norms_.Remove(
          &norms_.Add({{"store", std::string(store)}, {"stat", stat}}));
    }
  }

 private:
  std::string StoreLabel(absl::string_view store) const {
    return options_.per_store_labels ? std::string(store) : "all";
  }

  prometheus::Family<prometheus::Gauge>& CapacityGauge(const char* name,
                                                       const char* help) {
    return prometheus::BuildGauge().Name(name).Help(help).Register(*registry_);
  }

  void RecordShardCall(absl::string_view shard, absl::string_view method,
                       absl::string_view code, double seconds,
                       size_t bytes_sent, size_t bytes_received) override {
    const std::string s(shard), m(method);
    shard_calls_.Add({{"shard", s}, {"method", m}, {"code", std::string(code)}})
        .Increment();
    static const prometheus::Histogram::BucketBoundaries kBuckets = {
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
        0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
    shard_latency_.Add({{"shard", s}, {"method", m}}, kBuckets)
        .Observe(seconds);
    shard_bytes_.Add({{"shard", s}, {"direction", "sent"}})
        .Increment(static_cast<double>(bytes_sent));
    shard_bytes_.Add({{"shard", s}, {"direction", "received"}})
        .Increment(static_cast<double>(bytes_received));
  }

  void RecordConnectionShed(absl::string_view reason) override {
    connections_shed_.Add({{"reason", std::string(reason)}}).Increment();
  }

  void RecordLogLinesDropped(size_t lines) override {
    log_lines_dropped_.Increment(static_cast<double>(lines));
  }

  void SetShardReplicas(size_t ready, size_t not_ready) override {
    shard_replicas_.Add({{"state", "ready"}}).Set(static_cast<double>(ready));
    shard_replicas_.Add({{"state", "not_ready"}})
        .Set(static_cast<double>(not_ready));
  }

  prometheus::Histogram& LatencyFor(absl::string_view method) {
    static const prometheus::Histogram::BucketBoundaries kBuckets = {
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
        0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
    return latency_.Add({{"method", std::string(method)}}, kBuckets);
  }

  const PrometheusOptions options_;
  // When engramd started (its metrics first), for process_start_time_seconds.
  const double started_ = absl::ToUnixMicros(absl::Now()) * 1e-6;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Family<prometheus::Counter>& queries_;
  prometheus::Family<prometheus::Gauge>& patterns_;
  prometheus::Family<prometheus::Gauge>& memory_;
  prometheus::Gauge& damaged_;
  prometheus::Family<prometheus::Gauge>& norms_;
  prometheus::Family<prometheus::Histogram>& storage_writes_;
  prometheus::Histogram& queries_per_request_;
  prometheus::Family<prometheus::Histogram>& bounds_;
  prometheus::Family<prometheus::Gauge>& fits_;
  prometheus::Family<prometheus::Counter>& expired_;
  prometheus::Family<prometheus::Counter>& expiry_sweep_;
  prometheus::Family<prometheus::Counter>& fits_total_;
  prometheus::Histogram& fit_duration_;
  prometheus::Family<prometheus::Gauge>& fit_loss_;
  prometheus::Family<prometheus::Counter>& calibrations_;
  prometheus::Histogram& calibration_duration_;
  static constexpr size_t kCapacityFigures = 5;
  prometheus::Family<prometheus::Counter>& shard_calls_;
  prometheus::Family<prometheus::Histogram>& shard_latency_;
  prometheus::Family<prometheus::Counter>& shard_bytes_;
  prometheus::Family<prometheus::Gauge>& shard_replicas_;
  prometheus::Family<prometheus::Counter>& connections_shed_;
  prometheus::Counter& log_lines_dropped_;
  prometheus::Family<prometheus::Gauge>* capacity_[kCapacityFigures];
  std::unique_ptr<internal::HttpEndpoint> endpoint_;
};

}  // namespace

absl::StatusOr<PrometheusExport> StartPrometheusMetrics(
    const PrometheusOptions& options) {
  auto metrics = std::make_unique<PrometheusMetrics>(options);
  absl::StatusOr<int> port = metrics->Start();
  if (!port.ok()) return port.status();
  return PrometheusExport{std::move(metrics), *port};
}

}  // namespace engram::metrics
