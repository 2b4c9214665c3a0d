#ifndef ENGRAM_SERVER_APP_ALLOCATOR_H_
#define ENGRAM_SERVER_APP_ALLOCATOR_H_

#include <string>

namespace engram::app {

// Which allocator engramd runs with and how freed memory goes back to the
// system, for the configuration line: "jemalloc 5.3.0 (freed pages back to
// the system after 10 s, by a background thread)", or "the C library's
// malloc" in a sanitizer build.
std::string DescribeAllocator();

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_ALLOCATOR_H_
