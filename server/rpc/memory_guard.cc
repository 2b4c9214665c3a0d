#include "server/rpc/memory_guard.h"

#include <unistd.h>

#include <cstdio>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/base/mib.h"

namespace engram::rpc {

size_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long pages = 0, resident = 0;
  const int read = std::fscanf(f, "%llu %llu", &pages, &resident);
  std::fclose(f);
  if (read != 2) return 0;
  return static_cast<size_t>(resident) *
         static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

MemoryGuard::MemoryGuard(size_t limit_bytes, std::string about,
                         std::function<size_t()> resident,
                         std::function<void()> return_freed)
    : limit_(limit_bytes),
      about_(std::move(about)),
      resident_(std::move(resident)),
      return_freed_(std::move(return_freed)) {}

size_t MemoryGuard::ResidentFor(size_t more) const {
  size_t resident = resident_();
  if (resident + more > limit_ && return_freed_) {
    return_freed_();
    resident = resident_();
  }
  return resident;
}

bool MemoryGuard::Exceeded() const { return ResidentFor(0) > limit_; }

absl::StatusOr<MemoryGuard::Share> MemoryGuard::Take(size_t bytes,
                                                     absl::string_view what) {
  MutexLock lock(&mu_);
  const size_t resident = ResidentFor(taken_ + bytes);
  if (resident + taken_ + bytes > limit_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "memory: engramd has ", MiB(resident),
        " resident and the work under way may take ", MiB(taken_),
        " more, of the ", MiB(limit_), " it may use (", about_, "); ", what,
        " needs about ", MiB(bytes), "; retry later"));
  }
  taken_ += bytes;
  return Share(this, bytes);
}

void MemoryGuard::Return(size_t bytes) {
  MutexLock lock(&mu_);
  taken_ -= bytes;
}

size_t MemoryGuard::taken() const {
  MutexLock lock(&mu_);
  return taken_;
}

}  // namespace engram::rpc
