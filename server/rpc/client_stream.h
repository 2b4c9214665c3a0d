// Reading a client's stream of messages (ImportPatterns, RestoreStore) so
// that a message whose bytes do not parse is refused, not taken for the
// stream's end.
//
//   bool unparsed = false;
//   while (ReadNext(*reader, message, unparsed)) { ... }
//   if (unparsed) return UnparsedMessage(messages_read, message);
#ifndef ENGRAM_SERVER_RPC_CLIENT_STREAM_H_
#define ENGRAM_SERVER_RPC_CLIENT_STREAM_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/sync_stream.h"

namespace engram::rpc {

// Reads the next message: false at the stream's end. gRPC's reader ends the
// reading at a message whose bytes do not parse as at the true end, yet
// reads on past it: one read more tells the two apart when a message
// follows the unparseable one, and sets `unparsed`. An unparseable last
// message cannot be told from the end (answers count the messages read).
template <typename Message>
bool ReadNext(grpc::ServerReaderInterface<Message>& reader, Message& message,
              bool& unparsed) {
  if (reader.Read(&message)) return true;
  unparsed = reader.Read(&message);
  return false;
}

// The refusal of a stream whose message `index` (from 0) did not parse as
// `message`'s type.
inline absl::Status UnparsedMessage(uint64_t index,
                                    const google::protobuf::Message& message) {
  return absl::InvalidArgumentError(
      absl::StrCat("message ", index, ": its bytes are not an ",
                   message.GetDescriptor()->full_name(),
                   "; neither it nor the messages after it were read"));
}

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_CLIENT_STREAM_H_
