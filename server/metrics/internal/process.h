// The process's own series under Prometheus's standard names, read afresh at
// every scrape: open and allowed file descriptors, resident and virtual
// memory, CPU time and the start time; and gauges read by the caller.
// prometheus-cpp has no such collector; these are what an operator watches a
// flood of connections or a growing heap with.
//
//   std::vector<prometheus::MetricFamily> families = ProcessFamilies(start);
//
// Linux only (/proc/self). A value that cannot be read (no descriptor left
// to open /proc/self/fd with) is left out of that scrape, not reported as 0.
#ifndef ENGRAM_SERVER_METRICS_INTERNAL_PROCESS_H_
#define ENGRAM_SERVER_METRICS_INTERNAL_PROCESS_H_

#include <vector>

#include "prometheus/metric_family.h"
#include "server/metrics/prometheus_metrics.h"

namespace engram::metrics::internal {

// `start_seconds`: when the process started, in seconds since the epoch;
// `gauges` are added as they are.
std::vector<prometheus::MetricFamily> ProcessFamilies(
    double start_seconds, const std::vector<ScrapedGauge>& gauges);

}  // namespace engram::metrics::internal

#endif  // ENGRAM_SERVER_METRICS_INTERNAL_PROCESS_H_
