// Minimal leveled logging to stderr, one line per call:
//   engram::Log(engram::LogLevel::kInfo, "listening on %s", address);
//
// As text ("2026-12-05T01:23:07.111Z INFO listening on ...") or, with
// SetLogFormat(LogFormat::kJson), as one JSON object a line
// ({"time":"2026-12-05T01:23:07.111Z","level":"info","msg":"listening on
// ..."}) for log pipelines. Either way a message is one line: control
// characters are escaped, and bytes that are not UTF-8 become U+FFFD, so
// that every line reads (and, as JSON, parses).
//
// Thread-safe: each line is written with a single fwrite, or handed whole
// to the sink set with SetLogSink (engramd's writer, app/log_writer.h).
#ifndef ENGRAM_SERVER_BASE_LOG_H_
#define ENGRAM_SERVER_BASE_LOG_H_

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace engram {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
enum class LogFormat { kText = 0, kJson = 1 };

// Lines below this level are dropped (default kInfo).
inline std::atomic<int>& MinLogLevel() {
  static std::atomic<int> level{static_cast<int>(LogLevel::kInfo)};
  return level;
}

inline std::atomic<int>& LogFormatSetting() {
  static std::atomic<int> format{static_cast<int>(LogFormat::kText)};
  return format;
}
inline void SetLogFormat(LogFormat format) {
  LogFormatSetting() = static_cast<int>(format);
}

// Where finished lines go instead of stderr; null: stderr, at once.
using LogSink = void (*)(std::string line);
inline std::atomic<LogSink>& LogSinkSetting() {
  static std::atomic<LogSink> sink{nullptr};
  return sink;
}
inline void SetLogSink(LogSink sink) { LogSinkSetting() = sink; }

namespace log_internal {

// `text` with control characters escaped (and, for JSON, quotes and
// backslashes), valid UTF-8 kept, every other byte U+FFFD.
inline std::string Escaped(absl::string_view text, bool json) {
  std::string out;
  out.reserve(text.size() + 8);
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (json && (c == '"' || c == '\\')) {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c == '\n') {
      out += "\\n";
      ++i;
    } else if (c == '\t') {
      out += json ? "\\t" : "\t";
      ++i;
    } else if (c < 0x20 || c == 0x7f) {
      out += absl::StrFormat("\\u%04x", c);
      ++i;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
    } else {
      // A UTF-8 sequence: its length from the lead byte, each continuation
      // byte 10xxxxxx, no overlong form, no surrogate, at most U+10FFFF.
      const size_t length = c >= 0xc2 && c <= 0xdf   ? 2
                            : c >= 0xe0 && c <= 0xef ? 3
                            : c >= 0xf0 && c <= 0xf4 ? 4
                                                     : 0;
      bool valid = length > 0 && i + length <= text.size();
      uint32_t point = length == 2 ? c & 0x1f : length == 3 ? c & 0x0f : c & 7;
      for (size_t k = 1; valid && k < length; ++k) {
        const unsigned char next = static_cast<unsigned char>(text[i + k]);
        valid = (next & 0xc0) == 0x80;
        point = (point << 6) | (next & 0x3f);
      }
      valid = valid && !(length == 3 && point < 0x800) &&
              !(length == 4 && (point < 0x10000 || point > 0x10ffff)) &&
              !(point >= 0xd800 && point <= 0xdfff);
      if (valid) {
        out.append(text.data() + i, length);
        i += length;
      } else {
        out += "\xef\xbf\xbd";  // U+FFFD.
        ++i;
      }
    }
  }
  return out;
}

}  // namespace log_internal

// `text` as the inside of a JSON string: quotes, backslashes and control
// characters escaped, valid UTF-8 kept, every other byte U+FFFD.
inline std::string JsonEscaped(absl::string_view text) {
  return log_internal::Escaped(text, /*json=*/true);
}

// `text` as one line of the text format: newlines and other control
// characters (but tabs) escaped as in JSON, valid UTF-8 kept, every other
// byte U+FFFD; so that text from a client or a peer (a store name, a
// shard's error) can neither forge a line nor break a reader's decoding.
inline std::string TextEscaped(absl::string_view text) {
  return log_internal::Escaped(text, /*json=*/false);
}

// One line of `message` at `level`, in the format set, ending in '\n'.
inline std::string LogLine(LogLevel level, absl::string_view message,
                           absl::Time when) {
  const std::string time =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", when, absl::UTCTimeZone());
  const int index = static_cast<int>(level);
  if (LogFormatSetting().load(std::memory_order_relaxed) ==
      static_cast<int>(LogFormat::kJson)) {
    static constexpr const char* kJsonNames[] = {"debug", "info", "warning",
                                                 "error"};
    return absl::StrCat("{\"time\":\"", time, "\",\"level\":\"",
                        kJsonNames[index], "\",\"msg\":\"",
                        JsonEscaped(message), "\"}\n");
  }
  static constexpr const char* kNames[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  return absl::StrCat(time, " ", kNames[index], " ", TextEscaped(message),
                      "\n");
}

// Writes `message` at `level` unless the level is below MinLogLevel.
inline void LogMessage(LogLevel level, absl::string_view message) {
  if (static_cast<int>(level) < MinLogLevel().load(std::memory_order_relaxed)) {
    return;
  }
  std::string line = LogLine(level, message, absl::Now());
  if (const LogSink sink = LogSinkSetting().load(std::memory_order_acquire)) {
    sink(std::move(line));
    return;
  }
  std::fwrite(line.data(), 1, line.size(), stderr);
}

template <typename... Args>
void Log(LogLevel level, const absl::FormatSpec<Args...>& format,
         const Args&... args) {
  if (static_cast<int>(level) < MinLogLevel().load(std::memory_order_relaxed)) {
    return;
  }
  LogMessage(level, absl::StrFormat(format, args...));
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_LOG_H_
