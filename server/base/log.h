// Minimal leveled logging to stderr, one line per call:
//   engram::Log(engram::LogLevel::kInfo, "listening on %s", address);
//
// Thread-safe: each line is written with a single fwrite.
#ifndef ENGRAM_SERVER_BASE_LOG_H_
#define ENGRAM_SERVER_BASE_LOG_H_

#include <atomic>
#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace engram {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Lines below this level are dropped (default kInfo).
inline std::atomic<int>& MinLogLevel() {
  static std::atomic<int> level{static_cast<int>(LogLevel::kInfo)};
  return level;
}

template <typename... Args>
void Log(LogLevel level, const absl::FormatSpec<Args...>& format,
         const Args&... args) {
  if (static_cast<int>(level) < MinLogLevel().load(std::memory_order_relaxed)) {
    return;
  }
  static constexpr const char* kNames[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  std::string line =
      absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                    absl::UTCTimeZone()),
                   " ", kNames[static_cast<int>(level)], " ",
                   absl::StrFormat(format, args...), "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_LOG_H_
