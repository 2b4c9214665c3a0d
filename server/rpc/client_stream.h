// Reading a client's stream of messages (ImportPatterns, RestoreStore) so
// that a message whose bytes do not parse is refused, not taken for the
// stream's end.
//
//   bool unparsed = false;
//   while (ReadNext(*reader, message, unparsed)) { ... }
//   if (unparsed) return UnparsedMessage(messages_read, message);
//
// And a unary write whose request is read only when the write memory lets
// it (ServeUnaryWrite, for a streamed unary method).
#ifndef ENGRAM_SERVER_RPC_CLIENT_STREAM_H_
#define ENGRAM_SERVER_RPC_CLIENT_STREAM_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/message.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"
#include "grpcpp/support/sync_stream.h"
#include "server/rpc/call.h"

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

// The handler of a unary write registered as streamed unary, so that gRPC
// has not read its request yet: waits for a turn to read it
// (Call::AdmitUnread), reads and admits it, then `write(request, response)`
// (which ends `call`) and sends the response when the write succeeded.
template <typename Request, typename Response, typename Write>
grpc::Status ServeUnaryWrite(
    Call& call, const grpc::ServerContext& context,
    grpc::ServerUnaryStreamer<Request, Response>& streamer, Write write) {
  if (!call.AdmitUnread(context)) return call.Refused();
  Request request;
  if (!streamer.Read(&request)) {
    // Gone while it waited for its turn: nothing to read.
    if (context.IsCancelled()) return call.Done(Call::Cancelled());
    return call.Done(absl::InvalidArgumentError(
        absl::StrCat("the request's bytes are not an ",
                     request.GetDescriptor()->full_name())));
  }
  call.set_store(request.store());
  if (!call.Admit(context, &request)) return call.Refused();
  Response response;
  grpc::Status status = write(request, response);
  // Held back and sent with the status, in one write, as a unary answer is.
  if (status.ok()) streamer.WriteLast(response, grpc::WriteOptions());
  return status;
}

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_CLIENT_STREAM_H_
