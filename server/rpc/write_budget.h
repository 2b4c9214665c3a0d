// Memory that writes in flight may take, so that concurrent large adds
// cannot take more than the machine has. A write costs several times its
// request while it runs (the parsed request, the patterns converted from it,
// the storage's write batch and memtable, the store's own copy), so each
// write of at least kSmallRequest bytes reserves kWriteCost times its
// request before it starts and gives that back when it ends. A write that
// does not fit in what is free waits, in order of arrival, until earlier
// writes end; past its deadline it is refused. Writes wait only while what
// the waiting ones hold (kWaitingCost times their requests) fits in the
// budget too; past that, and for one that needs more than the whole budget
// (it could never run), the refusal comes at once. A stream whose messages
// all stay held (a restore) grows its reservation message by message.
//
// A request is only counted once it has been read, and gRPC reads a unary
// request in whole before its handler runs: sixteen concurrent adds of
// 36 MiB were 576 MiB in memory before any of them could be refused. A
// method that reads its request itself (a streamed unary one) first waits
// for a turn to read (AwaitRead): a request being read counts as the
// largest it may be, twice over (as received and as parsed), and requests
// are read only while those and what waiting writes hold fit in the budget
// (one at a time where even one does not).
//
//   WriteBudget budget(4ull << 30);
//   absl::StatusOr<WriteBudget::Reservation> held =
//       budget.Reserve(request_bytes, deadline);
//   if (!held.ok()) return held.status();  // RESOURCE_EXHAUSTED
//   ... write; the reservation ends with `held`.
//
// Thread-safe.
#ifndef ENGRAM_SERVER_RPC_WRITE_BUDGET_H_
#define ENGRAM_SERVER_RPC_WRITE_BUDGET_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/base/held.h"
#include "server/base/mutex.h"

namespace engram::rpc {

class WriteBudget {
  // What the handles below give back (before them: they name them).
  void Return(size_t bytes);
  void EndReading(size_t bytes);

 public:
  // What a write holds, counted in its request's bytes.
  static constexpr size_t kWriteCost = 5;
  // What a write holds while it waits for its share, counted the same way:
  // its request as received and as parsed. Writes wait only while what they
  // hold fits in the budget as well; past that they are refused at once.
  static constexpr size_t kWaitingCost = 2;
  // Requests smaller than this reserve nothing and never wait.
  static constexpr size_t kSmallRequest = 1 << 20;
  // The longest a write waits (when its deadline is later or unset).
  static constexpr absl::Duration kMaxWait = absl::Seconds(60);

  // Returns its bytes to the budget when it ends; movable.
  using Reservation = Held<WriteBudget, &WriteBudget::Return>;

  // `limit_bytes` > 0; `flag` names it in refusals ("--max_write_memory_mb").
  // `return_freed`, if set, has the allocator give the pages of freed memory
  // back to the system at once (see Ended).
  WriteBudget(size_t limit_bytes, const char* flag,
              std::function<void()> return_freed = nullptr);

  // A turn to read one request; ends when the request has its reservation
  // (Reserve) or is dropped. Movable.
  using Reading = Held<WriteBudget, &WriteBudget::EndReading>;

  // Waits, in order of arrival, until a request of up to `largest_request`
  // bytes may be read: until kWaitingCost x that fits in the budget with
  // what the requests being read and the waiting writes hold, or none is
  // being read; until `deadline` (at most kMaxWait), then
  // RESOURCE_EXHAUSTED.
  absl::StatusOr<Reading> AwaitRead(size_t largest_request,
                                    absl::Time deadline);

  // Reserves kWriteCost x `request_bytes` (nothing for a small request),
  // waiting for it until `deadline` (at most kMaxWait); RESOURCE_EXHAUSTED
  // naming the budget and what to do if it is larger than the budget or
  // not free in time. `read`, the turn this request was read in, ends here.
  absl::StatusOr<Reservation> Reserve(size_t request_bytes, absl::Time deadline,
                                      Reading* read = nullptr);

  // For a stream whose messages all stay held until it ends (a restore's
  // files): adds kWriteCost x `bytes` (however small) to `held`, a
  // reservation of this budget or an empty one. It does not wait: writes
  // waiting for memory may be waiting for what `held` holds. RESOURCE_EXHAUSTED
  // if the stream would need more than the whole budget (`advice` says what
  // to do then) or if what it needs is not free now.
  absl::Status Grow(Reservation& held, size_t bytes, absl::string_view advice);

  // A write call has ended whose requests or messages were at most
  // `largest_request` bytes (a restore's: all it sent), all freed by now.
  // Where kWriteCost times that is at least an eighth of the budget, the
  // freed pages go back to the system now: the allocator keeps them for
  // seconds, per arena, and under a burst of large writes they stacked up
  // far past the budget (sixteen concurrent adds of 36 MiB against a
  // 192 MiB budget: from 40 MiB to 1 GiB resident).
  void Ended(size_t largest_request);

  size_t limit() const { return limit_; }
  size_t reserved() const;
  size_t waiting() const;  // Writes waiting for their share.
  size_t reading() const;  // Requests being read (AwaitRead).

 private:
  void EndRead(size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes a waiting write (its ticket and what it holds) off the queue.
  void StopWaiting(uint64_t ticket, size_t held_waiting)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // "writes in flight hold X of the Y the server lets writes take (flag)".
  std::string InFlight() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // "more than the server lets writes take (flag=N)".
  std::string MoreThanTheWhole() const;

  const size_t limit_;
  const char* const flag_;
  const std::function<void()> return_freed_;
  mutable Mutex mu_;
  CondVar freed_;
  size_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<uint64_t> waiting_ ABSL_GUARDED_BY(mu_);  // Tickets, oldest first.
  size_t waiting_bytes_ ABSL_GUARDED_BY(mu_) = 0;    // kWaitingCost x theirs.
  std::set<uint64_t> to_read_ ABSL_GUARDED_BY(mu_);  // Tickets, oldest first.
  size_t reading_ ABSL_GUARDED_BY(mu_) = 0;
  size_t reading_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // kWaitingCost x largest.
};

// The largest message a server takes by default: 256 MiB, or where the write
// budget is small a fifth of it (no larger write could be admitted, and a
// request is read in whole before it is checked), at least 4 MiB; whole MiB.
// `write_budget_bytes` 0: no budget.
size_t DefaultMaxMessageBytes(size_t write_budget_bytes);

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_WRITE_BUDGET_H_
