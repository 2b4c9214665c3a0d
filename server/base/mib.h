// Amounts of memory in messages and logs, in whole MiB.
//
//   absl::StrCat("writes in flight hold ", MiB(held), " of the ", MiB(limit))
//
// An amount held is rounded up, so that 1 byte reads "1 MiB" and an amount
// just past a limit never reads as the limit's own figure; the limits are set
// in whole MiB and read exactly. Thread-safe: a pure function.
#ifndef ENGRAM_SERVER_BASE_MIB_H_
#define ENGRAM_SERVER_BASE_MIB_H_

#include <cstddef>
#include <string>

#include "absl/strings/str_cat.h"

namespace engram {

// "N MiB" for `bytes`, N rounded up.
inline std::string MiB(size_t bytes) {
  return absl::StrCat((bytes + (size_t{1} << 20) - 1) >> 20, " MiB");
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_MIB_H_
