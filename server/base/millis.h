// A duration as gRPC's channel arguments take it: whole milliseconds in an
// int, at least 1 (0 or less turns a feature off or means "now").
//
//   args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ChannelMillis(options.keepalive));
//
// Thread-safe: a pure function.
#ifndef ENGRAM_SERVER_BASE_MILLIS_H_
#define ENGRAM_SERVER_BASE_MILLIS_H_

#include <algorithm>
#include <cstdint>
#include <limits>

#include "absl/time/time.h"

namespace engram {

// `d` in milliseconds, clamped to [1, INT_MAX] (an infinite duration too).
inline int ChannelMillis(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1,
                                              std::numeric_limits<int>::max()));
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_MILLIS_H_
