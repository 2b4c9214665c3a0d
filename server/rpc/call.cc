#include "server/rpc/call.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "server/base/clip.h"
#include "server/base/log.h"
#include "server/base/steady_clock.h"
#include "server/rpc/convert.h"

namespace engram::rpc {

namespace {

// The method table: which RPCs change data. One place, checked against the
// service descriptor by a test.
struct Method {
  absl::string_view name;
  bool writes;
  // A stream: it holds one of gRPC's threads for as long as it lasts.
  bool streams = false;
};
// When a stream, or a write waiting for its request, gives its thread back.
constexpr absl::string_view kWhileItSends = "while its client sends or reads";

constexpr Method kMethods[] = {
    {"CreateStore", true},
    {"GetStore", false},
    {"ListStores", false},
    {"UpdateStore", true},
    {"DeleteStore", true},
    {"AddPatterns", true},
    {"ImportPatterns", true, true},
    {"GetPattern", false},
    {"ListPatterns", false},
    {"DeletePatterns", true},
    {"Retrieve", false},
    {"GetFitStatus", false},
    {"WatchFit", false, true},
    {"StartFit", true},
    {"CancelFit", true},
    {"StartCalibration", true},
    {"GetCalibrationStatus", false},
    {"WatchCalibration", false, true},
    {"CancelCalibration", true},
    // A backup reads every pattern, as ListPatterns does; a restore writes.
    {"CreateBackup", false, true},
    {"RestoreStore", true, true},
    // engram.cluster.v1.Shard: what routers ask of shards.
    {"Describe", false},
    {"PartialStep", false},
    {"GetValues", false},
    {"ListPatternsAfter", false},
    {"CheckDelete", false},  // Checks a delete; changes nothing.
    {"GetLowRankSums", false},
    {"GetSample", false},
    {"PutFeatureMap", true},
    {"GetFeatureMap", false},
    {"PutCalibration", true},
    // engram.cluster.v1.Router.
    {"ClusterStatus", false},
};

const Method* FindMethod(absl::string_view name) {
  for (const Method& m : kMethods) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

}  // namespace

const char* CodeName(absl::StatusCode code) {
  static constexpr const char* kNames[] = {"OK",
                                           "CANCELLED",
                                           "UNKNOWN",
                                           "INVALID_ARGUMENT",
                                           "DEADLINE_EXCEEDED",
                                           "NOT_FOUND",
                                           "ALREADY_EXISTS",
                                           "PERMISSION_DENIED",
                                           "RESOURCE_EXHAUSTED",
                                           "FAILED_PRECONDITION",
                                           "ABORTED",
                                           "OUT_OF_RANGE",
                                           "UNIMPLEMENTED",
                                           "INTERNAL",
                                           "UNAVAILABLE",
                                           "DATA_LOSS",
                                           "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  return index >= 0 && index <= 16 ? kNames[index] : "UNKNOWN";
}

// The size limit's refusal: how big, the limit, and what to do.
absl::Status TooLarge(absl::string_view what, size_t bytes, size_t limit,
                      absl::string_view advice) {
  return absl::ResourceExhaustedError(
      absl::StrCat(what, " is ", bytes, " bytes, over the limit of ", limit,
                   " bytes (--max_message_mb=", limit >> 20, "); ", advice));
}

std::optional<bool> MethodWrites(absl::string_view method) {
  const Method* m = FindMethod(method);
  if (m == nullptr) return std::nullopt;
  return m->writes;
}

std::optional<bool> MethodStreams(absl::string_view method) {
  const Method* m = FindMethod(method);
  if (m == nullptr) return std::nullopt;
  return m->streams;
}

size_t StreamShare(int threads) {
  return static_cast<size_t>(std::max(1, threads / 2));
}

size_t UnreadShare(int threads) {
  return static_cast<size_t>(std::max(1, threads / 4));
}

size_t WriteShare(int threads) {
  return static_cast<size_t>(std::max(1, threads / 2));
}

size_t HeldShare(int threads) {
  return static_cast<size_t>(
      std::max(1, threads - std::max(kFewestThreadsLeft, threads / 8)));
}

ThreadShares ShareThreads(int threads) {
  ThreadShares shares;
  shares.held = std::make_shared<StreamSlots>(HeldShare(threads));
  shares.streams =
      std::make_shared<StreamSlots>(StreamShare(threads), shares.held);
  shares.unread =
      std::make_shared<StreamSlots>(UnreadShare(threads), shares.held);
  shares.writes =
      std::make_shared<StreamSlots>(WriteShare(threads), shares.held);
  return shares;
}

bool StreamSlots::TakeOne() {
  size_t used = used_.load();
  do {
    if (used >= limit_) return false;
  } while (!used_.compare_exchange_weak(used, used + 1));
  return true;
}

StreamSlots::Slot StreamSlots::TryTake(bool* whole_full) {
  if (!TakeOne()) return Slot();
  if (whole_ != nullptr && !whole_->TakeOne()) {
    used_.fetch_sub(1);
    if (whole_full != nullptr) *whole_full = true;
    return Slot();
  }
  return Slot(this);
}

void StreamSlots::Release() {
  used_.fetch_sub(1);
  if (whole_ != nullptr) whole_->used_.fetch_sub(1);
}

Call::Call(const CallPolicy* policy, const char* method,
           absl::string_view store)
    : policy_(policy),
      method_(method),
      store_(Clip(store)),
      start_(SteadyNow()) {
  if (const Method* m = FindMethod(method)) {
    writes_ = m->writes;
    streams_ = m->streams;
  }
}

bool Call::Admit(const grpc::ServerContextBase& context,
                 const google::protobuf::Message* request) {
  return Admit(context, request == nullptr ? 0 : request->ByteSizeLong());
}

Call::~Call() {
  slot_.reset();
  if (policy_->write_budget != nullptr && largest_request_ > 0 && writes_) {
    policy_->write_budget->Ended(largest_request_);
  }
}

void Call::set_store(absl::string_view store) { store_ = Clip(store); }

bool Call::AdmitUnread(const grpc::ServerContextBase& context) {
  context_ = &context;
  refused_ = policy_->auth.Check(context, writes_);
  token_checked_ = refused_.ok();
  // Its thread is held until the request has come, however slowly.
  if (refused_.ok()) {
    refused_ = TakeSlot(policy_->shares.unread.get(),
                        "writes waiting for their request", kWhileItSends);
  }
  if (refused_.ok() && writes_ && policy_->write_budget != nullptr) {
    absl::StatusOr<WriteBudget::Reading> turn =
        policy_->write_budget->AwaitRead(policy_->max_message_bytes,
                                         DeadlineOf(&context));
    if (turn.ok()) {
      reading_ = *std::move(turn);
    } else {
      refused_ = turn.status();
    }
  }
  if (refused_.ok() && writes_) {
    refused_ =
        TakeMemory(WriteBudget::kWaitingCost * policy_->max_message_bytes,
                   "reading the request");
  }
  return refused_.ok();
}

bool Call::Admit(const grpc::ServerContextBase& context, size_t request_bytes) {
  context_ = &context;
  largest_request_ = std::max(largest_request_, request_bytes);
  refused_ =
      token_checked_ ? absl::OkStatus() : policy_->auth.Check(context, writes_);
  // A streamed unary write's slot: its request has come.
  if (!streams_) slot_.reset();
  if (refused_.ok() && streams_) {
    refused_ = TakeSlot(policy_->shares.streams.get(),
                        "streams (imports, restores, backups, watches)",
                        kWhileItSends);
  } else if (refused_.ok() && writes_) {
    refused_ = TakeSlot(policy_->shares.writes.get(), "writes",
                        "until the storage has it on disk: is the disk slow?");
  }
  if (refused_.ok() && request_bytes > policy_->max_message_bytes) {
    refused_ =
        TooLarge("the request", request_bytes, policy_->max_message_bytes,
                 "split it into smaller requests");
  }
  if (refused_.ok() && writes_) refused_ = ReserveWrite(request_bytes);
  reading_ = WriteBudget::Reading();  // Read; refused or counted as itself.
  // A caller gone while the write waited for its memory (a client that gave
  // up, a router killed) gets nothing written: applied now, the write would
  // land where no one learns of it — a retry would add it twice, a replica
  // would hold what its peers do not.
  if (refused_.ok() && writes_ && context.IsCancelled()) {
    refused_ = Cancelled();
  }
  return refused_.ok();
}

absl::Status Call::TakeSlot(StreamSlots* slots, absl::string_view what,
                            absl::string_view until) {
  if (slot_ || slots == nullptr) return absl::OkStatus();
  bool whole_full = false;
  slot_ = slots->TryTake(&whole_full);
  if (slot_) return absl::OkStatus();
  if (whole_full) {
    return absl::ResourceExhaustedError(absl::StrCat(
        slots->whole()->limit(),
        " streams and writes together are in flight, the most engramd "
        "takes at once (each holds one of its gRPC threads, --rpc_threads, ",
        until, "; the rest are kept for reads); this call is one of the ", what,
        ", ", slots->used(), " of at most ", slots->limit(),
        "; try again when one ends"));
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      slots->limit(), " ", what,
      " are in flight, the most engramd takes at once (each holds one of "
      "its gRPC threads, --rpc_threads, ",
      until, "); try again when one ends"));
}

absl::Status Call::Cancelled() {
  return absl::CancelledError(
      "the call was cancelled before the write began: nothing was written");
}

absl::Status Call::TakeMemory(size_t bytes, absl::string_view what) {
  memory_ = MemoryGuard::Share();  // The one before, given back first.
  if (policy_->memory_guard == nullptr) return absl::OkStatus();
  absl::StatusOr<MemoryGuard::Share> share =
      policy_->memory_guard->Take(bytes, what);
  if (!share.ok()) return share.status();
  memory_ = *std::move(share);
  return absl::OkStatus();
}

absl::Status Call::TakeAnswerMemory(size_t answer_bytes,
                                    absl::string_view what) {
  if (answer_bytes < WriteBudget::kSmallRequest) return absl::OkStatus();
  return TakeMemory(2 * answer_bytes, what);
}

absl::Status Call::TakeRetrievalMemory(size_t request_bytes) {
  if (request_bytes < WriteBudget::kSmallRequest) return absl::OkStatus();
  return TakeMemory(kRetrievalCost * request_bytes, "the retrieval");
}

absl::Status Call::RunRetrieval(Handlers& handlers, size_t request_bytes,
                                absl::FunctionRef<absl::Status()> work) {
  absl::Status status;
  std::string why;
  // While it waits for a thread it holds its request as received and as
  // parsed.
  if (!handlers.RunAndWait(
          [&] {
            status = TakeRetrievalMemory(request_bytes);
            if (status.ok()) status = work();
          },
          2 * request_bytes, &why)) {
    return RetrievalThreadsBusy(why);
  }
  return status;
}

absl::Status Call::ReserveWrite(size_t message_bytes) {
  largest_request_ = std::max(largest_request_, message_bytes);
  reserved_ = WriteBudget::Reservation();
  WriteBudget::Reservation held;
  if (policy_->write_budget != nullptr && context_ != nullptr) {
    absl::StatusOr<WriteBudget::Reservation> reserved =
        policy_->write_budget->Reserve(message_bytes, DeadlineOf(context_),
                                       &reading_);
    if (!reserved.ok()) return reserved.status();
    held = *std::move(reserved);
  }
  // Once its turn in the write memory came, what the process has resident.
  if (message_bytes < WriteBudget::kSmallRequest) {
    memory_ = MemoryGuard::Share();
  } else if (absl::Status s = TakeMemory(
                 // What the write still allocates: its request, as received
                 // and as parsed, is there already.
                 (WriteBudget::kWriteCost - WriteBudget::kWaitingCost) *
                     message_bytes,
                 "the write");
             !s.ok()) {
    return s;
  }
  reserved_ = std::move(held);
  return absl::OkStatus();
}

absl::Status Call::GrowWrite(size_t message_bytes, absl::string_view advice) {
  grown_ += message_bytes;
  largest_request_ = std::max(largest_request_, grown_);
  if (policy_->write_budget == nullptr) return absl::OkStatus();
  return policy_->write_budget->Grow(reserved_, message_bytes, advice);
}

grpc::Status Call::Done(const absl::Status& status) {
  reserved_ = WriteBudget::Reservation();
  memory_ = MemoryGuard::Share();
  const double seconds = SecondsSince(start_);
  const char* code = CodeName(status.code());
  if (status.ok() && policy_->after_write && context_ != nullptr &&
      written_ != nullptr) {
    policy_->after_write(*written_, *context_);
  }
  if (policy_->metrics != nullptr) {
    policy_->metrics->RecordRequest(method_, code, seconds);
  }
  Log(status.ok() ? LogLevel::kDebug : LogLevel::kInfo,
      "rpc %s store=%s status=%s duration_ms=%.3f%s%s", method_, store_, code,
      seconds * 1e3,
      status.ok() ? "" : " message=", std::string(status.message()));
  // A status travels in a header of bounded size: every echoed value is
  // clipped where it is written, and the whole message here.
  if (status.message().size() > kMaxMessage) {
    return ToGrpc(
        absl::Status(status.code(), Clip(status.message(), kMaxMessage)));
  }
  return ToGrpc(status);
}

absl::Time DeadlineOf(const grpc::ServerContextBase* context) {
  return WallDeadline(context->deadline());
}

// Stops retrieval between tiles when the client gives up or the deadline
// passes.
std::function<absl::Status()> DeadlineCheck(
    const grpc::ServerContextBase* context) {
  // The deadline on the steady clock, once: by the wall clock a clock set
  // back would let the work run past it by the step.
  const absl::Time until = SteadyDeadline(DeadlineOf(context));
  return [context, until]() -> absl::Status {
    if (SteadyNow() >= until) {
      return absl::DeadlineExceededError(
          "the deadline passed during retrieval");
    }
    if (context->IsCancelled()) {
      return absl::CancelledError("the client cancelled the call");
    }
    return absl::OkStatus();
  };
}

}  // namespace engram::rpc
