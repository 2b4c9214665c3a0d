#include "server/rpc/unix_socket.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/base/file_text.h"
#include "tests/scratch_dir.h"

namespace engram::rpc {
namespace {

TEST(UnixSocketPathTest, TakesBothUnixFormsAndNothingElse) {
  EXPECT_EQ(UnixSocketPath("unix:/run/engram.sock"), "/run/engram.sock");
  EXPECT_EQ(UnixSocketPath("unix:///run/engram.sock"), "/run/engram.sock");
  EXPECT_EQ(UnixSocketPath("unix:engram.sock"), "engram.sock");
  EXPECT_EQ(UnixSocketPath("unix:"), "");
  EXPECT_EQ(UnixSocketPath("unix-abstract:engram"), std::nullopt);
  EXPECT_EQ(UnixSocketPath("127.0.0.1:50051"), std::nullopt);
  EXPECT_EQ(UnixSocketPath("unixhost:50051"), std::nullopt);
  EXPECT_EQ(UnixSocketPath("[::1]:50051"), std::nullopt);
}

TEST(IsUnixAddressTest, PathsAndAbstractNamesButNoHosts) {
  EXPECT_TRUE(IsUnixAddress("unix:/run/engram.sock"));
  EXPECT_TRUE(IsUnixAddress("unix:///run/engram.sock"));
  EXPECT_TRUE(IsUnixAddress("unix-abstract:engram"));
  EXPECT_FALSE(IsUnixAddress("unixhost:50051"));
  EXPECT_FALSE(IsUnixAddress("127.0.0.1:50051"));
  EXPECT_FALSE(IsUnixAddress("[::1]:50051"));
}

class UnixSocketLockTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) const { return dir_ / name; }

  // A socket bound at `path`; listening (a live server) or closed at once
  // (what a killed server leaves).
  static void Bind(const std::string& path, bool listen, int* fd_out) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path.data(), path.size());
    ASSERT_EQ(
        bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)),
        0);
    if (listen) {
      ASSERT_EQ(::listen(fd, 4), 0);
      *fd_out = fd;
    } else {
      close(fd);
    }
  }

  const ScratchDir dir_{"usock"};
};

TEST_F(UnixSocketLockTest, OneHolderAtATime) {
  const std::string path = Path("engram.sock");
  absl::StatusOr<std::unique_ptr<UnixSocketLock>> first =
      UnixSocketLock::Take(path);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<UnixSocketLock>> second =
      UnixSocketLock::Take(path);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(second.status().message(),
                                "another server serves on this socket"))
      << second.status();
  EXPECT_TRUE(absl::StrContains(second.status().message(), path + ".lock"));
  first->reset();
  EXPECT_TRUE(UnixSocketLock::Take(path).ok());
}

TEST_F(UnixSocketLockTest, ReplacesOnlyAStaleSocket) {
  const std::string stale = Path("stale.sock");
  Bind(stale, /*listen=*/false, nullptr);
  absl::StatusOr<std::unique_ptr<UnixSocketLock>> lock =
      UnixSocketLock::Take(stale);
  EXPECT_TRUE(lock.ok()) << lock.status();

  // A live socket of a program that takes no lock is not taken from it.
  const std::string live = Path("live.sock");
  int fd = -1;
  Bind(live, /*listen=*/true, &fd);
  absl::StatusOr<std::unique_ptr<UnixSocketLock>> refused =
      UnixSocketLock::Take(live);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(refused.status().message(),
                                "holds no lock on it serves on this socket"))
      << refused.status();
  close(fd);
  // Once that program is gone, its socket is stale like any other.
  EXPECT_TRUE(UnixSocketLock::Take(live).ok());
}

TEST_F(UnixSocketLockTest, RefusesWhatCannotBecomeASocket) {
  const std::string file = Path("notes.txt");
  std::ofstream(file) << "keep me";
  absl::StatusOr<std::unique_ptr<UnixSocketLock>> over_file =
      UnixSocketLock::Take(file);
  EXPECT_EQ(over_file.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(over_file.status().message(),
                                "something other than a socket is there"))
      << over_file.status();
  EXPECT_EQ(ReadFileText(file, 100).value_or(""), "keep me");

  absl::StatusOr<std::unique_ptr<UnixSocketLock>> no_dir =
      UnixSocketLock::Take(Path("missing/engram.sock"));
  EXPECT_EQ(no_dir.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(no_dir.status().message(),
                                Path("missing") + " does not exist"))
      << no_dir.status();

  const std::string long_path = Path(std::string(120, 'a'));
  absl::StatusOr<std::unique_ptr<UnixSocketLock>> too_long =
      UnixSocketLock::Take(long_path);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      absl::StrContains(too_long.status().message(), "holds at most 107"))
      << too_long.status();

  EXPECT_EQ(UnixSocketLock::Take("").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace engram::rpc
