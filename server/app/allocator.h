#ifndef ENGRAM_SERVER_APP_ALLOCATOR_H_
#define ENGRAM_SERVER_APP_ALLOCATOR_H_

#include <cstddef>
#include <string>
#include <vector>

#include "server/metrics/prometheus_metrics.h"

namespace engram::app {

// Which allocator engramd runs with and how freed memory goes back to the
// system, for the configuration line: "jemalloc 5.3.0 (freed pages back to
// the system after 10 s, by a background thread)", or "the C library's
// malloc" in a sanitizer build.
std::string DescribeAllocator();

// What the allocator holds, as engram_heap_allocated_bytes (in live
// allocations) and engram_heap_resident_bytes (resident: those, its
// metadata, and freed pages not yet given back); none where it cannot say
// (the C library's malloc).
std::vector<metrics::ScrapedGauge> HeapGauges();

// Has the allocator give the pages of freed memory back to the system now
// rather than after its decay time (jemalloc: every arena's); nothing with
// the C library's malloc.
void ReturnFreedMemory();

// The memory engramd may use, from which the defaults of the stores', the
// writes' and the retrievals' bounds and the resident memory guard derive.
struct MemoryLimit {
  size_t bytes = 0;    // 0: unknown (then those bounds are off).
  std::string source;  // "the machine's memory", "its cgroup's limit".
};

// The memory this process may use: the machine's, or its cgroup's limit
// (cgroup v2, then v1) where that is lower.
MemoryLimit DetectMemoryLimit();

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_ALLOCATOR_H_
