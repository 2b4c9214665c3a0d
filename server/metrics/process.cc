#include "server/metrics/internal/process.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <string>
#include <utility>

namespace engram::metrics::internal {

namespace {

// Entries of /proc/self/fd but the one reading it; nullopt if it cannot be
// opened (which is what running out of descriptors looks like).
std::optional<double> OpenDescriptors() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return std::nullopt;
  double count = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;
}

// Virtual and resident bytes from /proc/self/statm (in pages).
std::optional<std::pair<double, double>> MemoryBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return std::nullopt;
  unsigned long long size = 0, resident = 0;
  const int read = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  if (read != 2) return std::nullopt;
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  return std::make_pair(size * page, resident * page);
}

void Add(std::vector<prometheus::MetricFamily>& out, const char* name,
         const char* help, prometheus::MetricType type, double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  out.push_back(std::move(family));
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessFamilies(
    double start_seconds, const std::vector<ScrapedGauge>& gauges) {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  rusage usage;
  if (getrusage(RUSAGE_SELF, &usage) == 0) {
    const auto seconds = [](const timeval& t) {
      return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6;
    };
    Add(out, "process_cpu_seconds_total",
        "User and system CPU time spent in seconds.", MetricType::Counter,
        seconds(usage.ru_utime) + seconds(usage.ru_stime));
  }
  if (std::optional<double> open = OpenDescriptors()) {
    Add(out, "process_open_fds", "Number of open file descriptors.",
        MetricType::Gauge, *open);
  }
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 &&
      limit.rlim_cur != RLIM_INFINITY) {
    Add(out, "process_max_fds",
        "Maximum number of open file descriptors (the soft limit).",
        MetricType::Gauge, static_cast<double>(limit.rlim_cur));
  }
  if (std::optional<std::pair<double, double>> memory = MemoryBytes()) {
    Add(out, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
        MetricType::Gauge, memory->first);
    Add(out, "process_resident_memory_bytes", "Resident memory size in bytes.",
        MetricType::Gauge, memory->second);
  }
  Add(out, "process_start_time_seconds",
      "Start time of the process since unix epoch in seconds.",
      MetricType::Gauge, start_seconds);
  for (const ScrapedGauge& gauge : gauges) {
    Add(out, gauge.name.c_str(), gauge.help.c_str(), MetricType::Gauge,
        gauge.value);
  }
  return out;
}

}  // namespace engram::metrics::internal
