#include "client/matrix_io.h"

#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/files.h"
#include "server/base/clip.h"

namespace engram::client {

namespace {

// The whole file, gunzipped if it starts with the gzip magic.
absl::StatusOr<std::string> ReadBytes(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");  // Reads plain files too.
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path));
  }
  std::string bytes;
  char buffer[1 << 16];
  int n;
  while ((n = gzread(file, buffer, sizeof(buffer))) > 0)
    bytes.append(buffer, n);
  int error = Z_OK;
  // gzerror's text lives in `file`: copied before gzclose frees it.
  const std::string message = gzerror(file, &error);
  gzclose(file);
  if (n < 0 || (error != Z_OK && error != Z_STREAM_END)) {
    return absl::DataLossError(
        absl::StrCat("reading ", path, ": ",
                     absl::StripPrefix(message, absl::StrCat(path, ": "))));
  }
  return bytes;
}

struct Range {
  size_t begin;
  size_t end;
};

absl::StatusOr<Range> Slice(const std::string& path, size_t rows, size_t offset,
                            size_t limit) {
  if (offset > rows) {
    return absl::OutOfRangeError(absl::StrCat(
        path, " has ", rows, " rows; --offset=", offset, " is past the end"));
  }
  const size_t end =
      limit == 0 || limit > rows - offset ? rows : offset + limit;
  return Range{offset, end};
}

// a * b, or nullopt where it does not fit in size_t (a shape a damaged or
// hostile header claims).
std::optional<size_t> Product(size_t a, size_t b) {
  size_t product;
  if (__builtin_mul_overflow(a, b, &product)) return std::nullopt;
  return product;
}

// A header's text as a message may show it: clipped, bytes that are not
// printable ASCII as \xHH.
std::string Shown(absl::string_view header) {
  std::string shown;
  for (const char c : Clip(header, 96)) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f) {
      shown.push_back(c);
    } else {
      absl::StrAppend(&shown, "\\x", absl::Hex(byte, absl::kZeroPad2));
    }
  }
  return shown;
}

uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

absl::StatusOr<Matrix> ParseIdx(const std::string& path,
                                const std::string& bytes, size_t offset,
                                size_t limit) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const int ndims = p[3];
  if (p[2] != 0x08 || ndims < 1 || bytes.size() < 4 + 4 * size_t(ndims)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": only unsigned-byte idx files (type 0x08) are supported"));
  }
  const size_t rows = BigEndian32(p + 4);
  std::optional<size_t> cols = 1;
  for (int k = 1; k < ndims && cols; ++k) {
    cols = Product(*cols, BigEndian32(p + 4 + 4 * k));
  }
  const std::optional<size_t> values = cols ? Product(rows, *cols) : cols;
  const size_t header = 4 + 4 * size_t(ndims);
  if (!values || *values > bytes.size()) {
    return absl::DataLossError(absl::StrCat(
        path, ": its header claims more values than the file holds (",
        bytes.size(), " bytes)"));
  }
  if (bytes.size() != header + *values) {
    return absl::DataLossError(absl::StrCat(
        path, ": expected ", header + *values, " bytes, found ", bytes.size()));
  }
  absl::StatusOr<Range> range = Slice(path, rows, offset, limit);
  if (!range.ok()) return range.status();
  Matrix m{range->end - range->begin, *cols, {}};
  m.data.resize(m.rows * m.cols);
  const unsigned char* src = p + header + range->begin * m.cols;
  // Labels (1-D idx1) keep their values; images are scaled to [0, 1].
  const float scale = ndims == 1 ? 1.0f : 1.0f / 255.0f;
  for (size_t i = 0; i < m.data.size(); ++i) m.data[i] = src[i] * scale;
  return m;
}

absl::StatusOr<Matrix> ParseNpy(const std::string& path,
                                const std::string& bytes, size_t offset,
                                size_t limit) {
  if (bytes.size() < 10) {
    return absl::DataLossError(absl::StrCat(path, ": truncated .npy header"));
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, start;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (size_t(static_cast<unsigned char>(bytes[9])) << 8);
    start = 10;
  } else {
    if (bytes.size() < 12) {
      return absl::DataLossError(absl::StrCat(path, ": truncated .npy header"));
    }
    header_len = 0;
    for (int k = 3; k >= 0; --k) {
      header_len = (header_len << 8) | static_cast<unsigned char>(bytes[8 + k]);
    }
    start = 12;
  }
  if (bytes.size() < start + header_len) {
    return absl::DataLossError(absl::StrCat(path, ": truncated .npy header"));
  }
  const std::string header = bytes.substr(start, header_len);
  const size_t data_start = start + header_len;
  size_t item = 0;
  if (absl::StrContains(header, "'<f4'")) {
    item = 4;
  } else if (absl::StrContains(header, "'<f8'")) {
    item = 8;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(path,
                     ": only little-endian float32 or float64 .npy files are "
                     "supported; header is ",
                     Shown(header)));
  }
  if (absl::StrContains(header, "'fortran_order': True")) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": Fortran-order arrays are not supported"));
  }
  const size_t open = header.find("'shape': (");
  const size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) {
    return absl::DataLossError(absl::StrCat(path, ": no shape in .npy header"));
  }
  std::vector<size_t> shape;
  for (absl::string_view part :
       absl::StrSplit(header.substr(open + 10, close - open - 10), ',',
                      absl::SkipWhitespace())) {
    size_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &v)) {
      return absl::DataLossError(
          absl::StrCat(path, ": bad shape in ", Shown(header)));
    }
    shape.push_back(v);
  }
  if (shape.empty() || shape.size() > 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": expected a 1-D or 2-D array, got ", shape.size(), " dims"));
  }
  const size_t rows = shape.size() == 2 ? shape[0] : 1;
  const size_t cols = shape.back();
  const std::optional<size_t> values = Product(rows, cols);
  const std::optional<size_t> data_bytes =
      values ? Product(*values, item) : values;
  if (!data_bytes || bytes.size() - data_start < *data_bytes) {
    return absl::DataLossError(absl::StrCat(
        path, ": shape (", rows, ", ", cols,
        ") claims more values than the file holds (", bytes.size(), " bytes)"));
  }
  absl::StatusOr<Range> range = Slice(path, rows, offset, limit);
  if (!range.ok()) return range.status();
  Matrix m{range->end - range->begin, cols, {}};
  m.data.resize(m.rows * cols);
  const char* src = bytes.data() + data_start + range->begin * cols * item;
  if (item == 4) {
    std::memcpy(m.data.data(), src, m.data.size() * 4);
  } else {
    for (size_t i = 0; i < m.data.size(); ++i) {
      double v;
      std::memcpy(&v, src + 8 * i, 8);
      m.data[i] = static_cast<float>(v);
    }
  }
  return m;
}

absl::StatusOr<Matrix> ParseCsv(const std::string& path,
                                const std::string& bytes, size_t offset,
                                size_t limit) {
  Matrix m;
  size_t line_number = 0, row = 0;
  std::vector<float> values;
  for (absl::string_view line : absl::StrSplit(bytes, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    values.clear();
    bool numeric = true;
    for (absl::string_view cell : absl::StrSplit(line, ',')) {
      float v;
      if (!absl::SimpleAtof(absl::StripAsciiWhitespace(cell), &v)) {
        numeric = false;
        break;
      }
      values.push_back(v);
    }
    if (!numeric) {
      if (m.cols == 0 && row == 0) continue;  // A header row.
      return absl::InvalidArgumentError(
          absl::StrCat(path, " line ", line_number, ": not a number"));
    }
    if (m.cols == 0) m.cols = values.size();
    if (values.size() != m.cols) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " line ", line_number, " has ", values.size(),
                       " values; expected ", m.cols, " like the first row"));
    }
    if (row >= offset && (limit == 0 || row - offset < limit)) {
      m.data.insert(m.data.end(), values.begin(), values.end());
      ++m.rows;
    }
    ++row;
  }
  if (offset > row) {
    return absl::OutOfRangeError(absl::StrCat(
        path, " has ", row, " rows; --offset=", offset, " is past the end"));
  }
  return m;
}

}  // namespace

absl::StatusOr<Matrix> ReadMatrix(const std::string& path, size_t offset,
                                  size_t limit) {
  absl::StatusOr<std::string> bytes = ReadBytes(path);
  if (!bytes.ok()) return bytes.status();
  if (bytes->size() >= 6 && bytes->compare(0, 6, "\x93NUMPY") == 0) {
    return ParseNpy(path, *bytes, offset, limit);
  }
  if (bytes->size() >= 4 && (*bytes)[0] == 0 && (*bytes)[1] == 0 &&
      (*bytes)[2] == 0x08) {
    return ParseIdx(path, *bytes, offset, limit);
  }
  return ParseCsv(path, *bytes, offset, limit);
}

absl::Status WriteNpy(const std::string& path, const Matrix& matrix) {
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (",
                   matrix.rows, ", ", matrix.cols, "), }");
  // Magic (6) + version (2) + length (2) + header + '\n', padded to 64.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  const uint16_t length = static_cast<uint16_t>(header.size());
  const char preamble[10] = {'\x93',
                             'N',
                             'U',
                             'M',
                             'P',
                             'Y',
                             1,
                             0,
                             static_cast<char>(length & 0xff),
                             static_cast<char>(length >> 8)};
  const absl::string_view pieces[] = {
      absl::string_view(preamble, sizeof(preamble)), header,
      absl::string_view(reinterpret_cast<const char*>(matrix.data.data()),
                        matrix.data.size() * sizeof(float))};
  return ReplaceFile(path, pieces);
}

}  // namespace engram::client
