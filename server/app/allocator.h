#ifndef ENGRAM_SERVER_APP_ALLOCATOR_H_
#define ENGRAM_SERVER_APP_ALLOCATOR_H_

#include <cstddef>
#include <functional>
#include <optional>
#include <string>

#include "server/metrics/prometheus_metrics.h"

namespace engram::app {

// Which allocator engramd runs with and how freed memory goes back to the
// system, for the configuration line: "jemalloc 5.3.0 (freed pages back to
// the system after 10 s, by a background thread)", or "the C library's
// malloc" in a sanitizer build.
std::string DescribeAllocator();

// Reads what the allocator holds, for the metrics; empty where it cannot
// say (the C library's malloc).
std::function<std::optional<metrics::HeapBytes>()> HeapReader();

// The memory this process may use: the machine's, or its cgroup's limit
// (cgroup v2, then v1) where that is lower; 0 if neither can be read.
size_t MemoryLimitBytes();

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_ALLOCATOR_H_
