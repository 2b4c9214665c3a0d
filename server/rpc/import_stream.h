// The checks every ImportPatterns stream makes of each message before its
// patterns are added, and its refusals, worded once for engramd and a router
// alike (a client cannot tell which it talks to).
//
//   ImportStream stream(policy.max_message_bytes, &call);
//   while (stream.Read(*reader, message)) {
//     if (absl::Status s = stream.Next(message); !s.ok()) return s;
//     ... add message.patterns() to stream.store() ...
//     if (!added.ok()) return stream.Failed(added.status());
//     stream.Committed(added->size());
//   }
//   if (absl::Status s = stream.End(); !s.ok()) return s;
//
// One stream's object belongs to that call.
#ifndef ENGRAM_SERVER_RPC_IMPORT_STREAM_H_
#define ENGRAM_SERVER_RPC_IMPORT_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engram/v1/engram.pb.h"
#include "grpcpp/support/sync_stream.h"

namespace engram::rpc {

class Call;

class ImportStream {
 public:
  // `call` (may be null): the call whose write budget each message takes
  // its share of (Call::ReserveWrite); it must outlive the stream.
  explicit ImportStream(size_t max_message_bytes, Call* call = nullptr)
      : max_message_bytes_(max_message_bytes), call_(call) {}

  // Reads the next message: false at the stream's end, or at a message
  // that did not parse (see ReadNext), which End then refuses.
  bool Read(grpc::ServerReaderInterface<v1::ImportPatternsRequest>& reader,
            v1::ImportPatternsRequest& message);

  // Counts the message read and checks it: its size, and its store (the
  // first must name one; a later one names the same or none); then takes
  // its share of the call's write budget, in place of the previous
  // message's. OK means its patterns, if any, may be added to store().
  absl::Status Next(const v1::ImportPatternsRequest& message);

  // The refusal of the current message's patterns (or of the first
  // message's store): `status` prefixed with the message and followed by
  // what earlier messages committed.
  absl::Status Failed(const absl::Status& status) const;

  // The current message's patterns were added.
  void Committed(uint64_t patterns) { added_ += patterns; }

  // At the stream's end: a stream that named no store, or that held a
  // message that did not parse, is refused.
  absl::Status End() const;

  const std::string& store() const { return store_; }
  // Every message read, empty ones too (ImportPatternsResponse.batches).
  uint64_t messages() const { return messages_; }
  uint64_t added() const { return added_; }

 private:
  std::string Earlier() const;

  const size_t max_message_bytes_;
  Call* const call_;
  std::string store_;
  uint64_t messages_ = 0;
  uint64_t added_ = 0;
  bool unparsed_ = false;  // A message that did not parse ended the reading.
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_IMPORT_STREAM_H_
