#include "server/base/file_backed.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/base/file_text.h"

namespace engram {
namespace {

std::string Path(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "file_backed_test_", getpid(), "_",
                      name);
}

void SetTime(const std::string& path, absl::Time time) {
  const timespec times[2] = {absl::ToTimespec(time), absl::ToTimespec(time)};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

absl::Time TimeOf(const std::string& path) {
  struct stat info;
  EXPECT_EQ(stat(path.c_str(), &info), 0);
  return absl::TimeFromTimespec(info.st_mtim);
}

// Replaced as an operator's rotation does it: written aside, then renamed
// over the file. Dated an hour back (each version its own time: the inode
// may be one used before), as a version written long before it is read.
void Put(const std::string& path, const std::string& text) {
  const std::string aside = path + ".new";
  std::ofstream(aside, std::ios::binary | std::ios::trunc) << text;
  SetTime(aside, absl::Now() - absl::Hours(1));
  ASSERT_EQ(std::rename(aside.c_str(), path.c_str()), 0);
}

// Overwritten in place, the same size, dated `time`: with the time it had,
// a write its stamp cannot tell from the one before.
void Overwrite(const std::string& path, const std::string& text,
               absl::Time time) {
  std::ofstream(path, std::ios::binary | std::ios::in | std::ios::out) << text;
  SetTime(path, time);
}

// A file holding one number.
absl::StatusOr<int> ReadNumber(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileText(path);
  if (!text.ok()) return text.status();
  int n = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &n)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a number"));
  }
  return n;
}

TEST(FileBackedTest, ReplacesTheValueOnlyWithAVersionThatReads) {
  const std::string path = Path("one");
  Put(path, "1");
  absl::StatusOr<FileBacked<int>> file =
      FileBacked<int>::Load(path, ReadNumber);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*file->get(), 1);
  EXPECT_EQ(file->Reload().value(), false);  // Unchanged.

  Put(path, "2");
  EXPECT_EQ(file->Reload().value(), true);
  EXPECT_EQ(*file->get(), 2);

  Put(path, "two");
  absl::StatusOr<bool> reloaded = file->Reload();
  EXPECT_EQ(reloaded.status().message(), path + ": not a number");
  EXPECT_EQ(*file->get(), 2);
  EXPECT_EQ(file->Reload().value(), false);  // Reported once.

  ASSERT_EQ(std::remove(path.c_str()), 0);
  EXPECT_EQ(file->Reload().status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(file->Reload().value(), false);
  EXPECT_EQ(*file->get(), 2);

  Put(path, "3");
  EXPECT_EQ(file->Reload().value(), true);
  EXPECT_EQ(*file->get(), 3);
}

TEST(FileBackedTest, AFileThatDoesNotReadIsRefusedAtLoad) {
  const std::string path = Path("bad");
  Put(path, "x");
  EXPECT_EQ(FileBacked<int>::Load(path, ReadNumber).status().message(),
            path + ": not a number");
  EXPECT_EQ(FileBacked<int>::Load(Path("missing"), ReadNumber).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(FileBackedTest, SeveralFilesAreOneVersion) {
  const std::string a = Path("a"), b = Path("b");
  Put(a, "10");
  Put(b, "5");
  int reads = 0;
  const auto sum = [&]() -> absl::StatusOr<int> {
    ++reads;
    absl::StatusOr<int> x = ReadNumber(a), y = ReadNumber(b);
    if (!x.ok()) return x.status();
    if (!y.ok()) return y.status();
    return *x + *y;
  };
  // An empty path is no file: never looked at.
  absl::StatusOr<FileBacked<int>> file = FileBacked<int>::Load({a, "", b}, sum);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*file->get(), 15);
  EXPECT_EQ(file->Reload().value(), false);
  EXPECT_EQ(reads, 1);

  Put(b, "7");  // Either file's change reads both.
  EXPECT_EQ(file->Reload().value(), true);
  EXPECT_EQ(*file->get(), 17);
  Put(a, "bad");
  EXPECT_FALSE(file->Reload().ok());
  EXPECT_EQ(*file->get(), 17);
  Put(a, "20");
  EXPECT_EQ(file->Reload().value(), true);
  EXPECT_EQ(*file->get(), 27);
}

TEST(FileBackedTest, AVersionTooRecentForItsStampIsReadAgain) {
  const std::string path = Path("recent");
  Put(path, "1");
  int reads = 0;
  const auto read = [&]() -> absl::StatusOr<int> {
    ++reads;
    return ReadNumber(path);
  };
  absl::StatusOr<FileBacked<int>> file = FileBacked<int>::Load({path}, read);
  ASSERT_TRUE(file.ok());

  // Written long before the read: its stamp is trusted, and a write that
  // keeps it is not seen (the limit of stamps).
  Overwrite(path, "2", TimeOf(path));
  EXPECT_EQ(file->Reload().value(), false);
  EXPECT_EQ(*file->get(), 1);
  EXPECT_EQ(reads, 1);

  // Written just now: a second write in the same clock tick keeps the
  // stamp, so the version is read again until it is older than the
  // clock's resolution, and taken when it differs.
  const absl::Time now = absl::Now();
  Overwrite(path, "3", now);
  EXPECT_EQ(file->Reload().value(), true);
  EXPECT_EQ(*file->get(), 3);
  Overwrite(path, "4", now);
  EXPECT_EQ(file->Reload().value(), true);
  EXPECT_EQ(*file->get(), 4);
  EXPECT_EQ(file->Reload().value(), false);  // Read again: the same.
  EXPECT_EQ(reads, 4);

  // A damaged version in the same tick is reported once, the value kept.
  Overwrite(path, "x", now);
  EXPECT_FALSE(file->Reload().ok());
  EXPECT_EQ(file->Reload().value(), false);
  EXPECT_EQ(*file->get(), 4);
  Overwrite(path, "5", now);
  EXPECT_EQ(file->Reload().value(), true);
  EXPECT_EQ(*file->get(), 5);

  // Once older than the resolution, it is no longer read.
  SetTime(path, now - FileBacked<int>::kStampResolution);
  EXPECT_EQ(file->Reload().value(), true);  // The stamp changed.
  const int settled = reads;
  EXPECT_EQ(file->Reload().value(), false);
  EXPECT_EQ(file->Reload().value(), false);
  EXPECT_EQ(reads, settled);

  // At Load too.
  Overwrite(path, "6", absl::Now());
  absl::StatusOr<FileBacked<int>> fresh = FileBacked<int>::Load({path}, read);
  ASSERT_TRUE(fresh.ok());
  Overwrite(path, "7", TimeOf(path));
  EXPECT_EQ(fresh->Reload().value(), true);
  EXPECT_EQ(*fresh->get(), 7);
}

TEST(FileBackedTest, AVersionChangedWhileReadIsReadAgain) {
  const std::string path = Path("moving");
  Put(path, "1");
  // Reads the number; the first `writes_while_read` reads then write the
  // next number to the file, as a rotation under way would.
  int writes_while_read = 0;
  const auto read = [&]() -> absl::StatusOr<int> {
    absl::StatusOr<int> n = ReadNumber(path);
    if (n.ok() && writes_while_read > 0) {
      --writes_while_read;
      Put(path, absl::StrCat(*n + 1));
    }
    return n;
  };
  absl::StatusOr<FileBacked<int>> file = FileBacked<int>::Load({path}, read);
  ASSERT_TRUE(file.ok());
  Put(path, "5");
  writes_while_read = 1;
  // The read saw 5, but the file holds 6 by then: not taken.
  EXPECT_EQ(file->Reload().value(), false);
  EXPECT_EQ(*file->get(), 1);
  EXPECT_EQ(file->Reload().value(), true);  // Read again, though unchanged.
  EXPECT_EQ(*file->get(), 6);

  // At Load: read again until it holds still.
  writes_while_read = 2;
  absl::StatusOr<FileBacked<int>> again = FileBacked<int>::Load({path}, read);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again->get(), 8);
}

TEST(FileBackedTest, CopiesShareNothing) {
  const std::string path = Path("copy");
  Put(path, "1");
  FileBacked<int> first = *FileBacked<int>::Load(path, ReadNumber);
  FileBacked<int> second = first;
  Put(path, "2");
  EXPECT_EQ(first.Reload().value(), true);
  EXPECT_EQ(*second.get(), 1);
  EXPECT_EQ(second.Reload().value(), true);
  EXPECT_EQ(*second.get(), 2);
}

}  // namespace
}  // namespace engram
