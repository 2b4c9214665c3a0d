#include "server/app/allocator.h"

#include <sys/types.h>

#include "absl/strings/str_cat.h"
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

}  // namespace engram::app
