// Reads and writes dense float matrices in the file formats people keep
// vectors in: NumPy .npy (float32/float64, 1-D or 2-D), CSV (a header row is
// skipped), and idx-ubyte (MNIST-style, pixels scaled to [0, 1]); each may be
// gzipped. Errors name the file, the row and what was expected.
//
// Thread-safe: pure functions.
#ifndef ENGRAM_CLIENT_MATRIX_IO_H_
#define ENGRAM_CLIENT_MATRIX_IO_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace engram::client {

// rows x cols, row-major.
struct Matrix {
  size_t rows = 0;
  size_t cols = 0;
  std::vector<float> data;
};

// Rows [offset, offset + limit) of the file (limit 0: to the end).
absl::StatusOr<Matrix> ReadMatrix(const std::string& path, size_t offset = 0,
                                  size_t limit = 0);

// Writes a float32 .npy file (ReplaceFile: whole, or not at all).
absl::Status WriteNpy(const std::string& path, const Matrix& matrix);

}  // namespace engram::client

#endif  // ENGRAM_CLIENT_MATRIX_IO_H_
