#include "server/base/file_text.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace engram {
namespace {

// The directory, without its final '/'.
std::string TempDir() {
  std::string dir = ::testing::TempDir();
  if (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

std::string Write(const std::string& name, const std::string& text) {
  const std::string path =
      TempDir() + "/file_text_test_" + std::to_string(getpid()) + "_" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  return path;
}

TEST(ReadFileTextTest, ReadsTheWholeFileBytesAsTheyAre) {
  std::string text(100000, 'x');  // More than one read's buffer.
  text[7] = '\0';
  text[99999] = '\xff';
  absl::StatusOr<std::string> read = ReadFileText(Write("whole", text));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, text);
  EXPECT_EQ(*ReadFileText(Write("empty", "")), "");
}

TEST(ReadFileTextTest, ReadsWhatHasNoSizeToTellUntilItsEnd) {
  // A pipe: no size up front, more than one read, more than one growth.
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::string text(200000, 'p');
  text[123456] = 'q';
  std::thread writer([&] {
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = write(fds[1], text.data() + done, text.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    close(fds[1]);
  });
  absl::StatusOr<std::string> read =
      ReadFileText("/proc/self/fd/" + std::to_string(fds[0]));
  writer.join();
  close(fds[0]);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, text);
}

TEST(ReadFileTextTest, ANamedPipeNobodyWritesIsEmptyNotAWait) {
  const std::string path =
      TempDir() + "/file_text_test_fifo_" + std::to_string(getpid());
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  absl::StatusOr<std::string> read = ReadFileText(path);
  std::remove(path.c_str());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "");
}

TEST(ReadFileTextTest, SaysWhyAFileCannotBeRead) {
  const std::string missing =
      TempDir() + "/file_text_test_no_such_file_" + std::to_string(getpid());
  absl::StatusOr<std::string> read = ReadFileText(missing);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(read.status().message(),
            "cannot read '" + missing + "': No such file or directory");
  read = ReadFileText(TempDir());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(read.status().message(),
            "cannot read '" + TempDir() + "': Is a directory");
  EXPECT_EQ(ReadFileText("").status().code(), absl::StatusCode::kNotFound);
}

TEST(ReadFileTextTest, RefusesMoreThanTheLimit) {
  const std::string path = Write("limit", std::string(40000, 'y'));
  EXPECT_TRUE(ReadFileText(path, 40000).ok());
  absl::StatusOr<std::string> read = ReadFileText(path, 39999);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(read.status().message(),
            "cannot read '" + path + "': over 39999 bytes");
  // A device that never ends.
  EXPECT_EQ(ReadFileText("/dev/zero", 1 << 20).status().code(),
            absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace engram
