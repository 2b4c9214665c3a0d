// Client input echoed in error messages and logs is clipped, so that a huge
// value cannot blow up a status (gRPC carries it in a header with a size
// limit) or a log line.
//
//   absl::StrCat("store '", Clip(name), "' not found")
//
// Thread-safe: a pure function.
#ifndef ENGRAM_SERVER_BASE_CLIP_H_
#define ENGRAM_SERVER_BASE_CLIP_H_

#include <cstddef>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace engram {

// `value` if at most `max` bytes; else its first `max` bytes (not cutting a
// UTF-8 sequence) and how long it was.
inline std::string Clip(absl::string_view value, size_t max = 64) {
  if (value.size() <= max) return std::string(value);
  size_t cut = max;
  // Back up over UTF-8 continuation bytes (10xxxxxx).
  while (cut > 0 && (static_cast<unsigned char>(value[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  return absl::StrCat(value.substr(0, cut), "...(", value.size(), " bytes)");
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_CLIP_H_
