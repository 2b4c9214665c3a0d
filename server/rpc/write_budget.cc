#include "server/rpc/write_budget.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/base/mib.h"
#include "server/base/steady_clock.h"

namespace engram::rpc {
namespace {

// How long a request waited, to the millisecond, for a refusal's text.
std::string WaitedSince(absl::Time start) {
  return absl::FormatDuration(
      absl::Trunc(SteadyNow() - start, absl::Milliseconds(1)));
}

}  // namespace

void WriteBudget::EndReading(size_t bytes) {
  MutexLock lock(&mu_);
  EndRead(bytes);
}

WriteBudget::WriteBudget(size_t limit_bytes, const char* flag,
                         std::function<void()> return_freed)
    : limit_(limit_bytes),
      flag_(flag),
      return_freed_(std::move(return_freed)) {}

void WriteBudget::Ended(size_t largest_request) {
  if (return_freed_ && kWriteCost * largest_request >= limit_ / 8) {
    return_freed_();
  }
}

size_t WriteBudget::reserved() const {
  MutexLock lock(&mu_);
  return reserved_;
}

size_t WriteBudget::waiting() const {
  MutexLock lock(&mu_);
  return waiting_.size();
}

size_t WriteBudget::reading() const {
  MutexLock lock(&mu_);
  return reading_;
}

void WriteBudget::EndRead(size_t bytes) {
  --reading_;
  reading_bytes_ -= bytes;
  freed_.SignalAll();
}

void WriteBudget::StopWaiting(uint64_t ticket, size_t held_waiting) {
  waiting_.erase(ticket);
  waiting_bytes_ -= held_waiting;
}

std::string WriteBudget::InFlight() const {
  return absl::StrCat("writes in flight hold ", MiB(reserved_), " of the ",
                      MiB(limit_), " the server lets writes take (", flag_,
                      ")");
}

std::string WriteBudget::MoreThanTheWhole() const {
  return absl::StrCat("more than the server lets writes take (", flag_, "=",
                      limit_ >> 20, ")");
}

void WriteBudget::Return(size_t bytes) {
  MutexLock lock(&mu_);
  reserved_ -= bytes;
  freed_.SignalAll();
}

absl::StatusOr<WriteBudget::Reading> WriteBudget::AwaitRead(
    size_t largest_request, absl::Time deadline) {
  // The call's deadline (a wall-clock time) on the steady clock.
  const absl::Time start = SteadyNow();
  deadline = std::min(SteadyDeadline(deadline), start + kMaxWait);
  const size_t held = kWaitingCost * largest_request;
  MutexLock lock(&mu_);
  const uint64_t ticket = next_ticket_++;
  to_read_.insert(ticket);
  // In order of arrival; one at a time where even one does not fit.
  const bool turn = freed_.AwaitWithTimeout(
      &mu_,
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return *to_read_.begin() == ticket &&
               (reading_ == 0 ||
                reading_bytes_ + waiting_bytes_ + held <= limit_);
      },
      deadline - SteadyNow());
  to_read_.erase(ticket);
  if (!turn) {
    freed_.SignalAll();  // The next one may be first now.
    return absl::ResourceExhaustedError(absl::StrCat(
        reading_, " requests are being read and ", waiting_.size(),
        " more wait for their share of the write memory, holding ",
        MiB(reading_bytes_ + waiting_bytes_), " of the ", MiB(limit_),
        " the server lets writes take (", flag_, "); a request of up to ",
        MiB(largest_request), " (--max_message_mb) waited ", WaitedSince(start),
        " to be read; retry later"));
  }
  ++reading_;
  reading_bytes_ += held;
  freed_.SignalAll();  // The next in line may be read too.
  return Reading(this, held);
}

absl::StatusOr<WriteBudget::Reservation> WriteBudget::Reserve(
    size_t request_bytes, absl::Time deadline, Reading* read) {
  if (read != nullptr) *read = Reading();  // Read: it counts as itself now.
  if (request_bytes < kSmallRequest) return Reservation();
  const size_t bytes = kWriteCost * request_bytes;
  if (bytes > limit_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request is ", MiB(request_bytes), "; a write holds about ",
        kWriteCost, " times its request while it runs (", MiB(bytes), "), ",
        MoreThanTheWhole(), "; split it into smaller requests"));
  }
  const absl::Time start = SteadyNow();
  deadline = std::min(SteadyDeadline(deadline), start + kMaxWait);
  MutexLock lock(&mu_);
  // A write that waits holds its request as received and as parsed: writes
  // may wait only while that fits in the budget too, or waiting writes alone
  // could take what the budget keeps for running ones (eight adds of 36 MiB
  // waiting for a 192 MiB budget held 576 MiB).
  const size_t held_waiting = kWaitingCost * request_bytes;
  if ((!waiting_.empty() || reserved_ + bytes > limit_) &&
      waiting_bytes_ + held_waiting > limit_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        InFlight(), " and ", waiting_.size(), " more wait for it, holding ",
        MiB(waiting_bytes_),
        " of their requests; no more may wait: retry later or send smaller "
        "requests"));
  }
  const uint64_t ticket = next_ticket_++;
  waiting_.insert(ticket);
  waiting_bytes_ += held_waiting;
  // In order of arrival: only the oldest waiting write may take what is free.
  const bool turn = freed_.AwaitWithTimeout(
      &mu_,
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return *waiting_.begin() == ticket && reserved_ + bytes <= limit_;
      },
      deadline - SteadyNow());
  StopWaiting(ticket, held_waiting);
  if (!turn) {
    freed_.SignalAll();  // The next one may be first now.
    return absl::ResourceExhaustedError(absl::StrCat(
        InFlight(), "; this one needs ", MiB(bytes), " (", kWriteCost,
        " times its request) and waited ", WaitedSince(start),
        "; retry later or send smaller requests"));
  }
  reserved_ += bytes;
  freed_.SignalAll();  // The next in line may fit too.
  return Reservation(this, bytes);
}

absl::Status WriteBudget::Grow(Reservation& held, size_t bytes,
                               absl::string_view advice) {
  const size_t more = kWriteCost * bytes;
  const size_t total = held.bytes() + more;
  if (total > limit_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the stream has sent ", MiB(total / kWriteCost),
                     "; a write holds about ", kWriteCost,
                     " times what it is sent while it runs (", MiB(total),
                     "), ", MoreThanTheWhole(), "; ", advice));
  }
  MutexLock lock(&mu_);
  if (reserved_ + more > limit_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        InFlight(), "; the stream needs ", MiB(more), " more (", kWriteCost,
        " times its next message) and cannot wait for it while it holds ",
        MiB(held.bytes()), "; retry later"));
  }
  reserved_ += more;
  held.Add(this, more);
  return absl::OkStatus();
}

size_t DefaultMaxMessageBytes(size_t write_budget_bytes) {
  constexpr size_t kMiB = size_t{1} << 20;
  constexpr size_t kLargest = 256 * kMiB;
  constexpr size_t kSmallest = 4 * kMiB;
  if (write_budget_bytes == 0) return kLargest;
  const size_t fifth =
      write_budget_bytes / WriteBudget::kWriteCost / kMiB * kMiB;
  return std::clamp(fifth, kSmallest, kLargest);
}

}  // namespace engram::rpc
