#include "server/app/allocator.h"

#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

#ifdef ENGRAM_JEMALLOC
#include <jemalloc/jemalloc.h>

// jemalloc reads this before the first allocation. Pages a bulk write's
// requests and memtables freed go back to the system after the decay time
// (10 s) on a thread of jemalloc's own: without it they would wait for the
// next allocations, and an idle engramd would keep them. MALLOC_CONF in the
// environment still overrides each option.
extern "C" {
const char* malloc_conf = "background_thread:true,abort_conf:true";
}
#endif

namespace engram::app {

std::string DescribeAllocator() {
#ifdef ENGRAM_JEMALLOC
  const char* version = nullptr;
  size_t size = sizeof(version);
  if (mallctl("version", &version, &size, nullptr, 0) != 0 ||
      version == nullptr) {
    return "jemalloc";
  }
  ssize_t decay_ms = -1;
  size = sizeof(decay_ms);
  mallctl("opt.dirty_decay_ms", &decay_ms, &size, nullptr, 0);
  bool background = false;
  size = sizeof(background);
  mallctl("background_thread", &background, &size, nullptr, 0);
  // "5.3.0-0-g54eaed1d..." -> "5.3.0".
  absl::string_view release(version);
  release = release.substr(0, release.find('-'));
  const std::string after =
      decay_ms < 0 ? "never" : absl::StrCat("after ", decay_ms / 1000.0, " s");
  return absl::StrCat(
      "jemalloc ", release, " (freed pages back to the system ", after,
      background ? ", by a background thread" : ", on later allocations", ")");
#else
  return "the C library's malloc";
#endif
}

std::vector<metrics::ScrapedGauge> HeapGauges() {
#ifdef ENGRAM_JEMALLOC
  // jemalloc's statistics are a snapshot taken when the epoch advances.
  uint64_t epoch = 1;
  size_t size = sizeof(epoch);
  if (mallctl("epoch", &epoch, &size, &epoch, size) != 0) return {};
  size_t allocated = 0, resident = 0;
  size = sizeof(size_t);
  if (mallctl("stats.allocated", &allocated, &size, nullptr, 0) != 0 ||
      mallctl("stats.resident", &resident, &size, nullptr, 0) != 0) {
    return {};
  }
  return {{"engram_heap_allocated_bytes",
           "Bytes in live allocations of the memory allocator.",
           static_cast<double>(allocated)},
          {"engram_heap_resident_bytes",
           "Bytes the memory allocator holds resident: live allocations, its "
           "metadata, and freed pages not yet given back to the system.",
           static_cast<double>(resident)}};
#else
  return {};
#endif
}

void ReturnFreedMemory() {
#ifdef ENGRAM_JEMALLOC
  static const std::string* const purge =
      new std::string(absl::StrCat("arena.", MALLCTL_ARENAS_ALL, ".purge"));
  mallctl(purge->c_str(), nullptr, nullptr, nullptr, 0);
#endif
}

MemoryLimit DetectMemoryLimit() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  uint64_t limit =
      pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * page : 0;
  const char* source = "the machine's memory";
  // /proc/self/cgroup names the process's group: "0::/path" for cgroup v2,
  // "N:memory:/path" (or "N:a,memory,b:/path") for v1's memory controller.
  // Inside a container it is usually "/", the namespace's root. A limit of
  // "max" does not parse, and v1's "none" is a huge number: both skipped.
  std::vector<std::string> files;
  std::ifstream cgroups("/proc/self/cgroup");
  for (std::string line; std::getline(cgroups, line);) {
    const std::vector<std::string> fields = absl::StrSplit(line, ':');
    if (fields.size() != 3) continue;
    if (fields[0] == "0" && fields[1].empty()) {
      files.push_back("/sys/fs/cgroup" + fields[2] + "/memory.max");
    }
    for (absl::string_view controller : absl::StrSplit(fields[1], ',')) {
      if (controller == "memory") {
        files.push_back("/sys/fs/cgroup/memory" + fields[2] +
                        "/memory.limit_in_bytes");
      }
    }
  }
  for (const std::string& path : files) {
    std::ifstream in(path);
    uint64_t bytes = 0;
    if (in >> bytes && bytes > 0 && (limit == 0 || bytes < limit)) {
      limit = bytes;
      source = "its cgroup's limit";
    }
  }
  return {static_cast<size_t>(limit), limit > 0 ? source : "unknown"};
}

}  // namespace engram::app
