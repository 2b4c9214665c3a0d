#include "server/cluster/shard_calls.h"

#include <thread>

#include "absl/strings/str_cat.h"

namespace engram::cluster {

absl::Status FromShard(const grpc::Status& status, const Replica& replica) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(status.error_message(), " [shard group ",
                                   replica.group, ", ", replica.address, "]"));
}

const Replica* FailOver(ShardPool& pool, const Replica& failed,
                        absl::string_view why) {
  pool.MarkUnreachable(failed, why);
  absl::StatusOr<const Replica*> next = pool.Pick(failed.group);
  // Alone in its group (a single replica is never marked): nobody else.
  if (!next.ok() || *next == &failed) return nullptr;
  return *next;
}

absl::Status ReadFromGroup(
    ShardPool& pool, uint32_t group,
    const std::function<absl::Status(const Replica&)>& read) {
  absl::StatusOr<const Replica*> first = pool.Pick(group);
  if (!first.ok()) return first.status();
  const Replica* r = *first;
  for (int attempt = 1;; ++attempt) {
    absl::Status s = read(*r);
    if (!absl::IsUnavailable(s) || attempt == kMaxReadAttempts) return s;
    r = FailOver(pool, *r, s.message());
    if (r == nullptr) return s;
  }
}

absl::StatusOr<std::vector<engram::v1::Store>> GroupStores(
    ShardPool& pool, const std::string& name, absl::Time deadline) {
  absl::StatusOr<std::vector<const Replica*>> replicas = pool.PickEach();
  if (!replicas.ok()) return replicas.status();
  engram::v1::GetStoreRequest request;
  request.set_name(name);
  std::vector<engram::v1::Store> parts;
  if (absl::Status s = FirstError(EngramOnEach(
          pool, *replicas, &engram::v1::Engram::Stub::async::GetStore, request,
          &parts, deadline, OnUnavailable::kFailOver));
      !s.ok()) {
    return s;
  }
  return parts;
}

std::vector<absl::Status> InParallel(
    size_t n, const std::function<absl::Status(size_t)>& fn) {
  std::vector<absl::Status> status(n);
  std::vector<std::thread> threads;
  for (size_t i = 1; i < n; ++i) {
    threads.emplace_back([&, i] { status[i] = fn(i); });
  }
  if (n > 0) status[0] = fn(0);
  for (std::thread& t : threads) t.join();
  return status;
}

bool FailuresAllRefused(const std::vector<absl::Status>& status) {
  for (const absl::Status& s : status) {
    switch (s.code()) {
      case absl::StatusCode::kOk:
      case absl::StatusCode::kInvalidArgument:
      case absl::StatusCode::kNotFound:
      case absl::StatusCode::kAlreadyExists:
      case absl::StatusCode::kFailedPrecondition:
      case absl::StatusCode::kResourceExhausted:
      case absl::StatusCode::kOutOfRange:
      case absl::StatusCode::kAborted:
      case absl::StatusCode::kPermissionDenied:
      case absl::StatusCode::kUnauthenticated:
        break;
      default:
        return false;
    }
  }
  return true;
}

absl::Status FirstError(const std::vector<absl::Status>& status) {
  for (const absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

StepFanout::StepFanout(ShardPool& pool, std::vector<const Replica*> replicas,
                       const v1::PartialStepRequest& step, absl::Time deadline)
    : replicas_(std::move(replicas)),
      step_(step),
      calls_(
          pool, replicas_,
          [&step](size_t) -> const v1::PartialStepRequest& { return step; },
          ShardCall(&v1::Shard::Stub::async::PartialStep), deadline,
          OnUnavailable::kFailOver) {}

absl::StatusOr<std::vector<v1::PartialStepResponse>> StepFanout::Answers() {
  if (absl::Status failed = FirstError(calls_.Wait()); !failed.ok()) {
    return failed;
  }
  std::vector<v1::PartialStepResponse>& parts = calls_.responses();
  for (size_t g = 0; g < parts.size(); ++g) {
    if (static_cast<uint32_t>(parts[g].rows_size()) != step_.count()) {
      return absl::InternalError(absl::StrCat(
          "shard group ", replicas_[g]->group, " answered ",
          parts[g].rows_size(), " rows for ", step_.count(), " states"));
    }
  }
  return std::move(parts);
}

absl::StatusOr<std::vector<v1::PartialStepResponse>> StepOnEach(
    ShardPool& pool, const std::vector<const Replica*>& replicas,
    const v1::PartialStepRequest& step, absl::Time deadline) {
  return StepFanout(pool, replicas, step, deadline).Answers();
}

}  // namespace engram::cluster
