// What the process may have resident, checked before work that takes much
// memory starts.
//
// Each kind of work has a bound of its own: the stores' patterns, the
// writes in flight, the retrievals running and waiting. Together they can
// pass what a container allows: with the stores filled to their ceiling in
// a 768 MiB cgroup, sixteen retrievals of 2,048 queries and twelve adds of
// 24 MiB at once got engramd killed, each burst alone peaking within 10 MiB
// of the limit. The guard measures instead of adding up: it admits a piece
// of work only while the process's resident memory, what the work admitted
// before may still take (its share, held until it ends) and what this one
// may take fit in the limit; where they do not, it first has the allocator
// give back the pages of freed memory it keeps, and measures again.
// Shares are counted on top of what is resident, so work already running
// counts twice: the guard errs towards refusing.
//
//   MemoryGuard guard(691 << 20, "9/10 of 768 MiB", ResidentBytes,
//                     ReturnFreedMemory);
//   absl::StatusOr<MemoryGuard::Share> share =
//       guard.Take(6 * request_bytes, "the retrieval");
//   if (!share.ok()) return share.status();  // RESOURCE_EXHAUSTED
//   ... the work; the share goes with `share`.
//
// Thread-safe.
#ifndef ENGRAM_SERVER_RPC_MEMORY_GUARD_H_
#define ENGRAM_SERVER_RPC_MEMORY_GUARD_H_

#include <cstddef>
#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/base/held.h"
#include "server/base/mutex.h"

namespace engram::rpc {

// The process's resident memory (/proc/self/statm), bytes; 0 where it
// cannot be read.
size_t ResidentBytes();

class MemoryGuard {
  void Return(size_t bytes);  // What a Share gives back.

 public:
  // A piece of work's share; given back when it goes. Movable.
  using Share = Held<MemoryGuard, &MemoryGuard::Return>;

  // `limit_bytes` > 0, `about` says where it comes from in refusals ("9/10
  // of 768 MiB"); `resident` measures the process (ResidentBytes);
  // `return_freed`, if set, has the allocator give freed pages back.
  MemoryGuard(size_t limit_bytes, std::string about,
              std::function<size_t()> resident,
              std::function<void()> return_freed = nullptr);

  // A share of `bytes` for `what` ("the retrieval"), or RESOURCE_EXHAUSTED
  // saying what is resident, what is shared out, the limit and what `what`
  // needs.
  absl::StatusOr<Share> Take(size_t bytes, absl::string_view what);

  // Whether the process's resident memory is past the limit, measured
  // again after the allocator gave back the freed pages it keeps if it was.
  bool Exceeded() const;

  size_t limit() const { return limit_; }
  size_t resident() const { return resident_(); }  // Measured now.
  const std::string& about() const { return about_; }
  size_t taken() const;  // What the shares out hold together.

 private:
  // What is resident, measured again after the allocator gave back the
  // freed pages it keeps if that and `more` pass the limit.
  size_t ResidentFor(size_t more) const;

  const size_t limit_;
  const std::string about_;
  const std::function<size_t()> resident_;
  const std::function<void()> return_freed_;
  mutable Mutex mu_;
  size_t taken_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_MEMORY_GUARD_H_
