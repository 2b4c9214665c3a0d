// A directory of a test's own under gtest's temporary directory, removed
// with all it holds when the test ends.
//
//   ScratchDir dir("files");
//   WriteNpy(dir / "out.npy", m);
#ifndef ENGRAM_TESTS_SCRATCH_DIR_H_
#define ENGRAM_TESTS_SCRATCH_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace engram {

class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix) {
    std::string pattern = absl::StrCat(::testing::TempDir(), prefix, "_XXXXXX");
    if (mkdtemp(pattern.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp " << pattern << " failed";
    }
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code error;
    std::filesystem::remove_all(path_, error);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  // The path of `name` in the directory.
  std::string operator/(const std::string& name) const {
    return absl::StrCat(path_, "/", name);
  }

 private:
  std::string path_;
};

}  // namespace engram

#endif  // ENGRAM_TESTS_SCRATCH_DIR_H_
