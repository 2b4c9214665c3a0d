// Preloaded into engramd by stalled_disk_test.py (LD_PRELOAD): fsync and
// fdatasync wait while the file named by ENGRAM_TEST_STALL_FLAG exists, as
// on a disk that stalls, then do their work.
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

namespace {

void WaitWhileStalled() {
  const char* flag = std::getenv("ENGRAM_TEST_STALL_FLAG");
  if (flag == nullptr) return;
  struct stat st;
  while (stat(flag, &st) == 0) usleep(10000);
}

template <typename F>
F Next(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" int fsync(int fd) {
  static const auto real = Next<int (*)(int)>("fsync");
  WaitWhileStalled();
  return real(fd);
}

extern "C" int fdatasync(int fd) {
  static const auto real = Next<int (*)(int)>("fdatasync");
  WaitWhileStalled();
  return real(fd);
}
