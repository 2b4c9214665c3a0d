#include "client/files.h"

#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/matrix_io.h"
#include "gtest/gtest.h"
#include "server/base/file_text.h"
#include "tests/scratch_dir.h"

namespace engram::client {
namespace {

namespace fs = std::filesystem;

class FilesTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) const { return dir_ / name; }
  // The names in the test's directory, sorted.
  std::vector<std::string> Names() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_.path())) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }
  static std::string Text(const std::string& path) {
    return ReadFileText(path, size_t{1} << 20).value_or("<unreadable>");
  }

  const ScratchDir dir_{"files"};
};

TEST_F(FilesTest, ReplaceFileWritesThePiecesAndReplacesWhatWasThere) {
  const std::string path = Path("out.txt");
  const absl::string_view first[] = {"one ", "two"};
  ASSERT_TRUE(ReplaceFile(path, first).ok());
  EXPECT_EQ(Text(path), "one two");
  const absl::string_view second[] = {"three"};
  ASSERT_TRUE(ReplaceFile(path, second).ok());
  EXPECT_EQ(Text(path), "three");
  EXPECT_EQ(Names(), std::vector<std::string>{"out.txt"});
}

TEST_F(FilesTest, ReplaceFileLeavesTheOldFileWhenTheDiskFills) {
  const std::string path = Path("out.npy");
  std::ofstream(path) << "the results of yesterday";
  // A file size limit fails writes past it as a full disk would (EFBIG
  // where the disk says ENOSPC), in this process only.
  struct sigaction ignore {};
  struct sigaction before {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &before), 0);
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &limit), 0);
  const rlimit saved = limit;
  limit.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  Matrix big;
  big.rows = 100;
  big.cols = 100;
  big.data.assign(big.rows * big.cols, 0.5f);
  const absl::Status written = WriteNpy(path, big);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &saved), 0);
  ASSERT_EQ(sigaction(SIGXFSZ, &before, nullptr), 0);

  EXPECT_FALSE(written.ok());
  EXPECT_TRUE(absl::StrContains(written.message(), "writing " + path))
      << written;
  EXPECT_EQ(Text(path), "the results of yesterday");
  EXPECT_EQ(Names(), std::vector<std::string>{"out.npy"});  // No leftovers.

  // With room, the same write lands whole.
  ASSERT_TRUE(WriteNpy(path, big).ok());
  absl::StatusOr<Matrix> read = ReadMatrix(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->rows, 100u);
  EXPECT_EQ(read->cols, 100u);
  EXPECT_EQ(read->data, big.data);
}

TEST_F(FilesTest, ReplaceFileSaysWhyItCannotWrite) {
  fs::create_directory(Path("a_directory"));
  const absl::string_view text[] = {"x"};
  const absl::Status over_directory = ReplaceFile(Path("a_directory"), text);
  EXPECT_EQ(over_directory.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(over_directory.message(), "Is a directory"))
      << over_directory;
  EXPECT_EQ(Names(), std::vector<std::string>{"a_directory"});

  const absl::Status no_directory = ReplaceFile(Path("missing/out.npy"), text);
  EXPECT_EQ(no_directory.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(
      absl::StrContains(no_directory.message(), "No such file or directory"))
      << no_directory;
}

TEST_F(FilesTest, FillNewDirectoryIsWholeOrAbsent) {
  // A trailing slash names the same directory.
  absl::Status filled = FillNewDirectory(
      Path("export/"), "export", [](const std::string& partial) {
        const absl::string_view text[] = {"rows"};
        return ReplaceFile(partial + "/values.npy", text);
      });
  ASSERT_TRUE(filled.ok()) << filled;
  EXPECT_EQ(Names(), std::vector<std::string>{"export"});
  EXPECT_EQ(Text(Path("export/values.npy")), "rows");

  // Not over one that holds something.
  const absl::Status again =
      FillNewDirectory(Path("export"), "export",
                       [](const std::string&) { return absl::OkStatus(); });
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(absl::StrContains(again.message(),
                                "is not empty; export into a new directory"))
      << again;

  // A failure midway leaves neither the directory nor its partial copy.
  const absl::Status failed =
      FillNewDirectory(Path("cut"), "back up", [](const std::string& partial) {
        const absl::string_view text[] = {"half"};
        if (absl::Status s = ReplaceFile(partial + "/one", text); !s.ok()) {
          return s;
        }
        return absl::UnavailableError("the server went away");
      });
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Names(), std::vector<std::string>{"export"});

  // An empty directory is filled in place of it.
  fs::create_directory(Path("empty"));
  EXPECT_TRUE(FillNewDirectory(Path("empty"), "export", [](const std::string&) {
                return absl::OkStatus();
              }).ok());
  EXPECT_TRUE(fs::is_directory(Path("empty")));
  EXPECT_FALSE(fs::exists(Path("empty.partial")));

  for (const char* none : {".", "..", "", "a/.."}) {
    EXPECT_EQ(
        FillNewDirectory(none, "export",
                         [](const std::string&) { return absl::OkStatus(); })
            .code(),
        absl::StatusCode::kInvalidArgument)
        << none;
  }
}

}  // namespace
}  // namespace engram::client
