// Fixed-width little-endian numbers in storage records (docs/format.md),
// whatever the host's byte order. Floats and doubles are their IEEE-754 bits.
#ifndef ENGRAM_SERVER_STORE_INTERNAL_LITTLE_ENDIAN_H_
#define ENGRAM_SERVER_STORE_INTERNAL_LITTLE_ENDIAN_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/base/config.h"
#include "absl/types/span.h"

namespace engram::store::internal {

inline void PutFixed32(std::string& out, uint32_t v) {
  for (int k = 0; k < 4; ++k) out.push_back(static_cast<char>(v >> (8 * k)));
}

inline void PutFixed64(std::string& out, uint64_t v) {
  for (int k = 0; k < 8; ++k) out.push_back(static_cast<char>(v >> (8 * k)));
}

inline void PutDouble(std::string& out, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  PutFixed64(out, bits);
}

inline void PutFloats(std::string& out, absl::Span<const float> values) {
#ifdef ABSL_IS_LITTLE_ENDIAN
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * 4);
#else
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    PutFixed32(out, bits);
  }
#endif
}

inline void PutFixed16s(std::string& out, absl::Span<const uint16_t> values) {
#ifdef ABSL_IS_LITTLE_ENDIAN
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * 2);
#else
  for (uint16_t v : values) {
    out.push_back(static_cast<char>(v & 0xff));
    out.push_back(static_cast<char>(v >> 8));
  }
#endif
}

inline uint32_t LoadFixed32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return u[0] | (u[1] << 8) | (u[2] << 16) | (uint32_t{u[3]} << 24);
}

inline uint64_t LoadFixed64(const char* p) {
  return LoadFixed32(p) | (uint64_t{LoadFixed32(p + 4)} << 32);
}

inline double LoadDouble(const char* p) {
  const uint64_t bits = LoadFixed64(p);
  double v;
  std::memcpy(&v, &bits, 8);
  return v;
}

inline void LoadFloats(const char* p, size_t n, float* out) {
#ifdef ABSL_IS_LITTLE_ENDIAN
  std::memcpy(out, p, n * 4);
#else
  for (size_t i = 0; i < n; ++i) {
    const uint32_t bits = LoadFixed32(p + 4 * i);
    std::memcpy(out + i, &bits, 4);
  }
#endif
}

inline void LoadFixed16s(const char* p, size_t n, uint16_t* out) {
#ifdef ABSL_IS_LITTLE_ENDIAN
  std::memcpy(out, p, n * 2);
#else
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) {
    out[i] = static_cast<uint16_t>(u[2 * i] | (u[2 * i + 1] << 8));
  }
#endif
}

}  // namespace engram::store::internal

#endif  // ENGRAM_SERVER_STORE_INTERNAL_LITTLE_ENDIAN_H_
