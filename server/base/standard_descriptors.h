// Descriptors 0, 1 and 2 made open before the process opens anything.
//
// A process started with stdin, stdout or stderr closed (`2>&-`, a
// supervisor that closes them) hands those numbers to the first files it
// opens, and what it writes to stdout or stderr lands in whatever took
// them. engramd started with all three closed got its signal pipe on 1 and
// 2, read its own first log line as a signal and shut down at once; a
// data file given number 2 would have had log lines written into it.
//
//   int main(...) {
//     if (!OpenStandardDescriptors()) return 1;   // First of all.
#ifndef ENGRAM_SERVER_BASE_STANDARD_DESCRIPTORS_H_
#define ENGRAM_SERVER_BASE_STANDARD_DESCRIPTORS_H_

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace engram {

// Opens /dev/null on each of 0, 1 and 2 that is closed; false if that
// failed (nothing can be said: there may be no stderr).
inline bool OpenStandardDescriptors() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    // The lowest free number: `fd`, those below it being open.
    const int opened = open("/dev/null", O_RDWR);
    if (opened != fd) {
      if (opened >= 0) close(opened);
      return false;
    }
  }
  return true;
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_STANDARD_DESCRIPTORS_H_
