#include "client/matrix_io.h"

#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace engram::client {
namespace {

class MatrixIoTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string path =
        absl::StrCat(::testing::TempDir(), "matrix_io_", getpid(), "_", name);
    std::ofstream(path, std::ios::binary) << bytes;
    written_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const std::string& path : written_) std::remove(path.c_str());
  }

  // A version 1 .npy file of float32 with `header`'s dict and `data`.
  static std::string Npy(const std::string& dict, const std::string& data) {
    std::string header = dict;
    header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
    header.push_back('\n');
    std::string bytes("\x93NUMPY\x01\x00", 8);
    bytes.push_back(static_cast<char>(header.size() & 0xff));
    bytes.push_back(static_cast<char>(header.size() >> 8));
    return bytes + header + data;
  }
  static std::string BigEndian(uint32_t v) {
    return {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
            static_cast<char>(v >> 8), static_cast<char>(v)};
  }
  static std::string Gzip(const std::string& bytes) {
    uLongf size = compressBound(bytes.size()) + 32;
    std::string out(size, '\0');
    z_stream z{};
    deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8,
                 Z_DEFAULT_STRATEGY);
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
    z.avail_in = bytes.size();
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = size;
    deflate(&z, Z_FINISH);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
  }

  std::vector<std::string> written_;
};

TEST_F(MatrixIoTest, ADamagedGzipIsDataLossNamingTheFile) {
  const std::string npy =
      Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
          std::string(16, '\0'));
  std::string gz = Gzip(npy);
  ASSERT_TRUE(ReadMatrix(Write("good.npy.gz", gz)).ok());
  gz[gz.size() - 6] ^= 0x55;  // The stored CRC-32 no longer matches.
  const std::string path = Write("damaged.npy.gz", gz);
  absl::StatusOr<Matrix> read = ReadMatrix(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(read.status().message(),
            absl::StrCat("reading ", path, ": incorrect data check"));
  absl::StatusOr<Matrix> cut =
      ReadMatrix(Write("cut.npy.gz", gz.substr(0, gz.size() / 2)));
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kDataLoss) << cut.status();
}

TEST_F(MatrixIoTest, AShapeThatOverflowsIsRefusedNotRead) {
  for (const char* shape :
       {"(4611686018427387904, 4)", "(3, 1537228672809129302)",
        "(18446744073709551615, 18446744073709551615)"}) {
    absl::StatusOr<Matrix> read = ReadMatrix(Write(
        "huge.npy",
        Npy(absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': ",
                         shape, ", }"),
            std::string(64, '\0'))));
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << shape;
    EXPECT_TRUE(absl::StrContains(read.status().message(),
                                  "claims more values than the file holds"))
        << read.status();
  }
  // idx: 2^31 x 2^31 x 4 bytes is 2^64, 0 in size_t arithmetic.
  const std::string idx = std::string("\0\0\x08\x03", 4) + BigEndian(1u << 31) +
                          BigEndian(1u << 31) + BigEndian(4);
  absl::StatusOr<Matrix> read = ReadMatrix(Write("huge.idx", idx));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(read.status().message(),
                                "claims more values than the file holds"))
      << read.status();
}

TEST_F(MatrixIoTest, AGarbledHeaderIsShownEscapedAndClipped) {
  std::string dict = "{'descr': '<\xff\x01\x02', 'fortran_order': False, ";
  dict += std::string(300, 'x') + "}";
  absl::StatusOr<Matrix> read = ReadMatrix(Write("garbled.npy", Npy(dict, "")));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(read.status().message(), "'<\\xff\\x01\\x02'"))
      << read.status();
  EXPECT_TRUE(absl::StrContains(read.status().message(), "bytes)"));
  EXPECT_LT(read.status().message().size(), 400u);
}

TEST_F(MatrixIoTest, AnyLimitPastTheEndTakesTheRest) {
  const std::string npy =
      Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 1), }",
          std::string(12, '\0'));
  const std::string csv = "a\n1\n2\n3\n";
  for (const std::string& path :
       {Write("three.npy", npy), Write("three.csv", csv)}) {
    absl::StatusOr<Matrix> read =
        ReadMatrix(path, 1, std::numeric_limits<size_t>::max());
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->rows, 2u) << path;
  }
}

// Damaged copies of files of every format, read: each is read whole (a
// matrix as large as it says) or refused with a message, never misread.
// Under AddressSanitizer this is also a check that no byte outside the file
// is touched.
TEST_F(MatrixIoTest, DamagedFilesAreReadOrRefusedNeverMisread) {
  std::string floats(24 * 4, '\0');
  for (size_t i = 0; i < floats.size(); ++i) floats[i] = static_cast<char>(i);
  const std::string npy = Npy(
      "{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4), }", floats);
  const std::string npy8 = Npy(
      "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", floats);
  const std::string idx = std::string("\0\0\x08\x03", 4) + BigEndian(3) +
                          BigEndian(2) + BigEndian(2) + floats.substr(0, 12);
  const std::string csv = "a,b\n1,2\n3.5,-4e3\n5,6\n";
  const std::string bases[] = {npy, npy8, idx, csv, Gzip(npy), Gzip(idx)};
  const uint32_t boundaries[] = {0, 1, 0x7fffffff, 0x80000000, 0xffffffff};
  std::mt19937 random(20261205);
  const std::string path = Write("damaged", "");
  size_t read = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string bytes = bases[random() % std::size(bases)];
    for (int edits = 1 + random() % 4; edits > 0; --edits) {
      const size_t at = bytes.empty() ? 0 : random() % bytes.size();
      switch (random() % 4) {
        case 0:  // A byte changed.
          if (!bytes.empty()) bytes[at] = static_cast<char>(random());
          break;
        case 1:  // Cut short.
          bytes.resize(at);
          break;
        case 2:  // Bytes inserted.
          bytes.insert(
              at, std::string(1 + random() % 8, static_cast<char>(random())));
          break;
        default:  // A boundary value over four bytes (a length, a dim).
          const uint32_t v = boundaries[random() % std::size(boundaries)];
          if (at + 4 <= bytes.size()) std::memcpy(&bytes[at], &v, 4);
      }
    }
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    absl::StatusOr<Matrix> matrix = ReadMatrix(path, random() % 3);
    if (matrix.ok()) {
      ++read;
      EXPECT_EQ(matrix->data.size(), matrix->rows * matrix->cols) << i;
    } else {
      EXPECT_FALSE(matrix.status().message().empty()) << i;
    }
  }
  EXPECT_GT(read, 0u);  // Some damage leaves a file that still reads.
}

}  // namespace
}  // namespace engram::client
