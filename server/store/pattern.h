// One pattern as it crosses the store's boundary.
#ifndef ENGRAM_SERVER_STORE_PATTERN_H_
#define ENGRAM_SERVER_STORE_PATTERN_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace engram::store {

// Key-value pairs, sorted by key, keys unique.
using Metadata = std::vector<std::pair<std::string, std::string>>;

struct Pattern {
  uint64_t id = 0;  // 0 on add: assign the next free id.
  std::vector<float> values;
  std::string label;
  Metadata metadata;
  // When it expires, in Unix nanoseconds; 0: never.
  int64_t expire_ns = 0;
};

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_PATTERN_H_
