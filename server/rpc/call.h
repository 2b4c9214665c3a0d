// The policy every RPC of engramd's services goes through, in one place:
// the method table (which methods change data), the bearer token for that
// kind, the request size limit, and on return the metrics, the log line and
// a bounded status message.
//
//   grpc::Status Service::GetStore(grpc::ServerContext* context,
//                                  const v1::GetStoreRequest* request,
//                                  v1::Store* response) {
//     Call call(&policy_, "GetStore", request->name());
//     if (!call.Admit(*context, request)) return call.Refused();
//     ...
//     return call.Done(status);
//   }
//
// Thread-safe: a CallPolicy is read-only once built; a Call belongs to one
// call, whose steps may run on different threads one after another (a
// callback method admits on gRPC's thread and may finish on another).
#ifndef ENGRAM_SERVER_RPC_CALL_H_
#define ENGRAM_SERVER_RPC_CALL_H_

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"
#include "server/metrics/metrics.h"
#include "server/rpc/auth.h"
#include "server/rpc/handlers.h"
#include "server/rpc/memory_guard.h"
#include "server/rpc/thread_floor.h"
#include "server/rpc/write_budget.h"

namespace engram::store {
class Store;
}  // namespace engram::store

namespace engram::rpc {

// What a server does after a write that succeeded, given the store object the
// write went to.
using AfterWrite = std::function<void(store::Store& written,
                                      const grpc::ServerContextBase& context)>;

// How many calls of one kind may hold a thread at once. A stream (an
// import, a restore, a backup, a watch) holds one of gRPC's threads for as
// long as it lasts, however slowly its client sends or reads — or after its
// client went silent, until the connection's keepalive ends it — and so
// does a streamed unary write (AddPatterns) until its request has come.
// Without a bound, enough of them leave no thread for any other call: gRPC
// refuses every call but Retrieve ("Server Threadpool Exhausted").
//
// A share may draw from a whole that other shares draw from too (the
// threads that any of them may hold together), so that shares that each
// leave threads free do not, all full at once, leave none.
//
// Thread-safe.
class StreamSlots {
 public:
  // One slot held, given back when the Slot is destroyed or reset; or none
  // (false). Move-only; must not outlive its StreamSlots.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept
        : slots_(std::exchange(other.slots_, nullptr)) {}
    Slot& operator=(Slot&& other) noexcept {
      if (this != &other) {
        reset();
        slots_ = std::exchange(other.slots_, nullptr);
      }
      return *this;
    }
    ~Slot() { reset(); }
    explicit operator bool() const { return slots_ != nullptr; }
    void reset() {
      if (slots_ != nullptr) slots_->Release();
      slots_ = nullptr;
    }

   private:
    friend class StreamSlots;
    explicit Slot(StreamSlots* slots) : slots_(slots) {}
    StreamSlots* slots_ = nullptr;
  };

  // Up to `limit` at once; each also takes one of `whole`'s, if given
  // (which must outlive every slot taken).
  explicit StreamSlots(size_t limit,
                       std::shared_ptr<StreamSlots> whole = nullptr)
      : limit_(limit), whole_(std::move(whole)) {}
  // A slot of this share and of its whole, or none: when `limit` are held,
  // or when the whole's are (then *whole_full, if given, is set to true).
  Slot TryTake(bool* whole_full = nullptr);
  size_t limit() const { return limit_; }
  size_t used() const { return used_.load(); }
  const StreamSlots* whole() const { return whole_.get(); }

 private:
  bool TakeOne();
  void Release();

  const size_t limit_;
  const std::shared_ptr<StreamSlots> whole_;
  std::atomic<size_t> used_{0};
};

// Of `threads` gRPC threads (--rpc_threads): how many streams may hold one
// (half), how many writes waiting for their request (a quarter) and how
// many other writes (half: each holds its thread until the storage has it
// on disk, so a disk that stalls would otherwise leave none for reads);
// each at least one. The three together hold at most HeldShare: all but an
// eighth, and at least kFewestThreadsLeft, which every other call keeps
// (reads while a stalled disk holds the writes and idle clients the
// streams).
size_t StreamShare(int threads);
size_t UnreadShare(int threads);
size_t WriteShare(int threads);
size_t HeldShare(int threads);

// The shares of `threads`, each drawing from `held`.
struct ThreadShares {
  std::shared_ptr<StreamSlots> held;
  std::shared_ptr<StreamSlots> streams;
  std::shared_ptr<StreamSlots> unread;
  std::shared_ptr<StreamSlots> writes;
};
ThreadShares ShareThreads(int threads);

struct CallPolicy {
  TokenAuthorizer auth;
  // The largest request or response message (--max_message_mb).
  size_t max_message_bytes = 256 << 20;
  metrics::Metrics* metrics = nullptr;  // Borrowed; must outlive the calls.
  // Called after each write that succeeded, with the store object it went to
  // (Call::Wrote) — not a name looked up again, which a delete and re-create
  // in between would resolve to another store. A shard records the write
  // stamp its router sent. May be empty.
  AfterWrite after_write;
  // What writes in flight may hold (--max_write_memory_mb); null: no limit.
  std::shared_ptr<WriteBudget> write_budget;
  // What the process may have resident; null: no limit. A write's read
  // turn and its reservation each take a share; retrievals of more than a
  // little work take one as they start (kRetrievalCost).
  std::shared_ptr<MemoryGuard> memory_guard;
  // What streams may hold of gRPC's threads (shares.streams), streamed
  // unary writes while their request is still coming (shares.unread), and
  // writes that are not streams once it has (shares.writes), all drawing
  // from shares.held; Server::Start fills them (ShareThreads), a null one
  // (a bare policy in a test) has no limit.
  ThreadShares shares;
};

// Whether a method of engram.v1.Engram or engram.cluster.v1.Shard changes
// data (needs a write token); nullopt for a name that is not a method.
std::optional<bool> MethodWrites(absl::string_view method);

// Whether a method is a stream (of requests, answers or both); nullopt for
// a name that is not a method.
std::optional<bool> MethodStreams(absl::string_view method);

// The name of a status code, as gRPC spells it ("NOT_FOUND").
const char* CodeName(absl::StatusCode code);

// The refusal of an oversize message: how big, the limit, what to do.
absl::Status TooLarge(absl::string_view what, size_t bytes, size_t limit,
                      absl::string_view advice);

// A call's deadline on the wall clock (none beyond a day: InfiniteFuture),
// as work it waits for or calls it makes inherit it.
absl::Time DeadlineOf(const grpc::ServerContextBase* context);

// Stops work between steps when the client gives up or the deadline passes
// (measured by the steady clock from the moment the check is made).
std::function<absl::Status()> DeadlineCheck(
    const grpc::ServerContextBase* context);

class Call {
 public:
  // Longest status message sent back; longer ones are clipped.
  static constexpr size_t kMaxMessage = 4096;

  Call(const CallPolicy* policy, const char* method, absl::string_view store);
  // Tells the write budget how large the call's requests were
  // (WriteBudget::Ended): declared before the request, a call ends after it.
  ~Call();
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  // Checks the caller's token against the method's kind (an unknown method
  // counts as a write), takes a stream's slot (CallPolicy::shares.streams,
  // held until the call ends; a write that is not a stream takes one of
  // shares.writes) and checks the request's size (null for a
  // stream, whose messages are checked as they come); false means the call
  // must end with Refused().
  bool Admit(const grpc::ServerContextBase& context,
             const google::protobuf::Message* request);
  // The same for a request of `request_bytes` still in its wire form (a raw
  // method). A write's request also takes its share of the policy's write
  // budget (waiting for it while earlier writes hold it), until Done.
  bool Admit(const grpc::ServerContextBase& context, size_t request_bytes);
  // For a write that reads its request itself (a streamed unary method),
  // before reading it: checks the caller's token, takes a slot of
  // shares.unread (its thread waits for the request; Admit gives it back),
  // then waits for a turn to
  // read a request of up to the policy's largest message
  // (WriteBudget::AwaitRead). Then Admit(context, &request) as usual (the
  // token not checked again), which ends the turn. False means the call must
  // end with Refused().
  bool AdmitUnread(const grpc::ServerContextBase& context);
  // Names the call's store once its request has been read.
  void set_store(absl::string_view store);
  // For a client stream that writes: the share of the write budget for its
  // next message of `message_bytes`, in place of the previous message's.
  absl::Status ReserveWrite(size_t message_bytes);
  // A share of the policy's memory guard of `bytes` for `what`, in place of
  // the call's share before (none without a guard).
  absl::Status TakeMemory(size_t bytes, absl::string_view what);
  // For an answer of `answer_bytes` that gRPC will hold until its client
  // has read it (a page of patterns): a share of twice that (the answer as
  // built and as gRPC writes it) for an answer of WriteBudget::kSmallRequest
  // or more, `what` naming it in a refusal.
  absl::Status TakeAnswerMemory(size_t answer_bytes, absl::string_view what);
  // A retrieval's (or a shard's step's) share as it starts: kRetrievalCost
  // x its request, for a request of WriteBudget::kSmallRequest or more
  // (smaller ones take little, and are not measured).
  absl::Status TakeRetrievalMemory(size_t request_bytes);
  // For a synchronous method: runs `work` on one of `handlers`' threads,
  // this thread waiting, with the call's retrieval share of the memory
  // guard; the refusal of the threads or of the guard, else `work`'s status.
  absl::Status RunRetrieval(Handlers& handlers, size_t request_bytes,
                            absl::FunctionRef<absl::Status()> work);
  // For a client stream whose messages all stay held until it ends (a
  // restore's files): adds a message of `message_bytes` to the call's share,
  // without waiting (see WriteBudget::Grow; `advice` for a stream larger
  // than the whole budget).
  absl::Status GrowWrite(size_t message_bytes, absl::string_view advice);
  grpc::Status Refused() { return Done(refused_); }
  // The refusal of a write whose caller went away before it began.
  static absl::Status Cancelled();

  // Names the store the call wrote to; if the call ends well, Done hands it
  // to the policy's after_write.
  void Wrote(std::shared_ptr<store::Store> store) {
    written_ = std::move(store);
  }

  // Records and logs the call's end; returns the status to send.
  grpc::Status Done(const absl::Status& status);

 private:
  // A slot of `slots` (none if null), held until slot_ is reset or the
  // call ends; when there is none, the refusal, naming `what` the slots are
  // for and `until` when each gives its thread back.
  absl::Status TakeSlot(StreamSlots* slots, absl::string_view what,
                        absl::string_view until);

  const CallPolicy* const policy_;
  const char* const method_;
  // From the method table, looked up once: a write (an unknown method
  // counts as one), a stream.
  bool writes_ = true;
  bool streams_ = false;
  std::string store_;
  const absl::Time start_;
  absl::Status refused_;
  const grpc::ServerContextBase* context_ = nullptr;  // Set by Admit.
  std::shared_ptr<store::Store> written_;             // Set by Wrote.
  WriteBudget::Reservation reserved_;
  WriteBudget::Reading reading_;  // Set by AdmitUnread, ended by Admit.
  MemoryGuard::Share memory_;     // The read turn's, then the write's.
  bool token_checked_ = false;    // Passed in AdmitUnread: Admit skips it.
  StreamSlots::Slot slot_;        // A stream's, or an unread write's.
  size_t largest_request_ = 0;    // The largest request or message taken in.
  size_t grown_ = 0;              // What GrowWrite added up.
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_CALL_H_
