#include "server/store/records.h"

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/core/precision.h"
#include "server/store/internal/little_endian.h"

namespace engram::store {

namespace {

// The 16-bit precision that holds every value exactly, if one does
// (bit for bit: -0.0 stays -0.0), else float32.
core::Precision ExactPrecision(absl::Span<const float> values) {
  for (core::Precision p :
       {core::Precision::kBFloat16, core::Precision::kFloat16}) {
    bool exact = true;
    for (float v : values) {
      const float kept = core::Round(p, v);
      if (std::memcmp(&kept, &v, sizeof v) != 0) {
        exact = false;
        break;
      }
    }
    if (exact) return p;
  }
  return core::Precision::kFloat32;
}

}  // namespace

// Format 1: u8 format, u32 dim, dim x f32, label, u32 entries, entries x
// (key, value); strings as u32 length + bytes; numbers little-endian.
// Format 2 (a pattern that expires): format 1's fields, then its expiry as
// i64 Unix nanoseconds.
// Format 3 (values that bfloat16 or float16 hold exactly: every pattern of
// a store kept at that precision): u8 format, u8 precision (1 bfloat16, 2
// float16), u32 dim, dim x u16, label, entries as format 1, i64 expiry (0:
// never). Decoding widens the values back to the same floats.
std::string EncodePattern(const Pattern& p) {
  const core::Precision precision = ExactPrecision(p.values);
  const bool half = precision != core::Precision::kFloat32;
  std::string out(1, half ? '\x03' : p.expire_ns != 0 ? '\x02' : '\x01');
  auto put_string = [&](absl::string_view s) {
    internal::PutFixed32(out, static_cast<uint32_t>(s.size()));
    out.append(s.data(), s.size());
  };
  out.reserve(2 + 4 + p.values.size() * 4 + p.label.size() + 8);
  if (half) out.push_back(static_cast<char>(precision));
  internal::PutFixed32(out, static_cast<uint32_t>(p.values.size()));
  if (half) {
    std::vector<uint16_t> narrow(p.values.size());
    core::Narrow(precision, p.values.data(), p.values.size(), narrow.data());
    internal::PutFixed16s(out, narrow);
  } else {
    internal::PutFloats(out, p.values);
  }
  put_string(p.label);
  internal::PutFixed32(out, static_cast<uint32_t>(p.metadata.size()));
  for (const auto& [key, value] : p.metadata) {
    put_string(key);
    put_string(value);
  }
  if (half || p.expire_ns != 0) {
    internal::PutFixed64(out, static_cast<uint64_t>(p.expire_ns));
  }
  return out;
}

size_t EncodedPatternBound(const Pattern& p) {
  size_t bytes = 2 + 4 + p.values.size() * 4 + 4 + p.label.size() + 4 + 8;
  for (const auto& [key, value] : p.metadata) {
    bytes += 8 + key.size() + value.size();
  }
  return bytes;
}

namespace {

// Reads fields off the front of a record.
class Reader {
 public:
  explicit Reader(absl::string_view bytes) : bytes_(bytes) {}
  bool U32(uint32_t& v) {
    if (bytes_.size() < 4) return false;
    v = internal::LoadFixed32(bytes_.data());
    bytes_.remove_prefix(4);
    return true;
  }
  bool U64(uint64_t& v) {
    if (bytes_.size() < 8) return false;
    v = internal::LoadFixed64(bytes_.data());
    bytes_.remove_prefix(8);
    return true;
  }
  bool Double(double& v) {
    if (bytes_.size() < 8) return false;
    v = internal::LoadDouble(bytes_.data());
    bytes_.remove_prefix(8);
    return true;
  }
  bool String(std::string& s) {
    uint32_t n;
    if (!U32(n) || bytes_.size() < n) return false;
    s.assign(bytes_.data(), n);
    bytes_.remove_prefix(n);
    return true;
  }
  bool U8(uint8_t& v) {
    if (bytes_.empty()) return false;
    v = static_cast<uint8_t>(bytes_[0]);
    bytes_.remove_prefix(1);
    return true;
  }
  // n 16-bit values of `precision`, widened.
  bool Halves(std::vector<float>& v, uint64_t n, core::Precision precision) {
    if (bytes_.size() / 2 < n) return false;
    std::vector<uint16_t> narrow(n);
    internal::LoadFixed16s(bytes_.data(), n, narrow.data());
    v.resize(n);
    core::Widen(precision, narrow.data(), n, v.data());
    bytes_.remove_prefix(n * 2);
    return true;
  }
  bool Floats(std::vector<float>& v, uint64_t n) {
    if (bytes_.size() / 4 < n) return false;
    v.resize(n);
    internal::LoadFloats(bytes_.data(), n, v.data());
    bytes_.remove_prefix(n * 4);
    return true;
  }
  bool done() const { return bytes_.empty(); }

 private:
  absl::string_view bytes_;
};

}  // namespace

absl::StatusOr<Pattern> DecodePattern(uint64_t id, absl::string_view bytes) {
  Pattern p;
  p.id = id;
  uint32_t dim = 0, entries = 0;
  if (bytes.empty() || bytes[0] < '\x01' || bytes[0] > '\x03') {
    return absl::DataLossError(
        absl::StrCat("pattern ", id, ": unknown record format"));
  }
  const bool half = bytes[0] == '\x03';
  const bool expires = bytes[0] != '\x01';
  Reader reader(bytes.substr(1));
  uint8_t precision = 0;
  if (half &&
      (!reader.U8(precision) ||
       (precision != static_cast<uint8_t>(core::Precision::kBFloat16) &&
        precision != static_cast<uint8_t>(core::Precision::kFloat16)))) {
    return absl::DataLossError(
        absl::StrCat("pattern ", id, ": unknown value precision"));
  }
  bool ok = reader.U32(dim) &&
            (half ? reader.Halves(p.values, dim,
                                  static_cast<core::Precision>(precision))
                  : reader.Floats(p.values, dim)) &&
            reader.String(p.label) && reader.U32(entries);
  for (uint32_t i = 0; ok && i < entries; ++i) {
    std::string key, value;
    ok = reader.String(key) && reader.String(value);
    p.metadata.emplace_back(std::move(key), std::move(value));
  }
  if (ok && expires) {
    uint64_t at = 0;
    ok = reader.U64(at) && (at != 0 || half);
    p.expire_ns = static_cast<int64_t>(at);
  }
  if (!ok || !reader.done()) {
    return absl::DataLossError(
        absl::StrCat("pattern ", id, ": truncated or malformed record"));
  }
  return p;
}

// Format 1: u8 format, u64 version, f64 loss before, f64 loss after, u32
// epochs, f64 seconds, u64 patterns, u32 in_dim, u32 out_dim, weights f32;
// numbers little-endian.
std::string EncodeMap(const FitRecord& r, const core::FeatureMap& map) {
  std::string out(1, '\x01');
  internal::PutFixed64(out, r.version);
  internal::PutDouble(out, r.loss_before);
  internal::PutDouble(out, r.loss_after);
  internal::PutFixed32(out, r.epochs);
  internal::PutDouble(out, r.duration_seconds);
  internal::PutFixed64(out, r.patterns_fitted);
  internal::PutFixed32(out, static_cast<uint32_t>(map.in_dim()));
  internal::PutFixed32(out, static_cast<uint32_t>(map.out_dim()));
  internal::PutFloats(out, map.weights());
  return out;
}

absl::Status DecodeMap(absl::string_view bytes, FitRecord& r,
                       std::shared_ptr<const core::FeatureMap>& map) {
  if (bytes.empty() || bytes[0] != '\x01') {
    return absl::DataLossError("feature map: unknown record format");
  }
  Reader reader(bytes.substr(1));
  uint32_t in = 0, out = 0;
  std::vector<float> weights;
  if (!reader.U64(r.version) || !reader.Double(r.loss_before) ||
      !reader.Double(r.loss_after) || !reader.U32(r.epochs) ||
      !reader.Double(r.duration_seconds) || !reader.U64(r.patterns_fitted) ||
      !reader.U32(in) || !reader.U32(out) ||
      !reader.Floats(weights, uint64_t{in} * out) || !reader.done()) {
    return absl::DataLossError("feature map: truncated or malformed record");
  }
  map = std::make_shared<core::FeatureMap>(in, out, std::move(weights));
  return absl::OkStatus();
}

}  // namespace engram::store
