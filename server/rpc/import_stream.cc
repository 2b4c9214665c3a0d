#include "server/rpc/import_stream.h"

#include "absl/strings/str_cat.h"
#include "server/base/clip.h"
#include "server/rpc/call.h"
#include "server/rpc/client_stream.h"

namespace engram::rpc {

bool ImportStream::Read(
    grpc::ServerReaderInterface<v1::ImportPatternsRequest>& reader,
    v1::ImportPatternsRequest& message) {
  return ReadNext(reader, message, unparsed_);
}

absl::Status ImportStream::Next(const v1::ImportPatternsRequest& message) {
  const uint64_t index = messages_++;
  const size_t bytes = message.ByteSizeLong();
  if (bytes > max_message_bytes_) {
    return TooLarge(
        absl::StrCat("message ", index), bytes, max_message_bytes_,
        absl::StrCat("send fewer patterns per message; ", Earlier()));
  }
  if (store_.empty()) {
    if (message.store().empty()) {
      return absl::InvalidArgumentError(
          "store is required in the first message of ImportPatterns");
    }
    store_ = message.store();
  } else if (!message.store().empty() && message.store() != store_) {
    return absl::InvalidArgumentError(
        absl::StrCat("message ", index, ": store '", Clip(message.store()),
                     "' differs from the first message's '", Clip(store_),
                     "'; ", Earlier()));
  }
  if (call_ != nullptr) {
    if (absl::Status status = call_->ReserveWrite(bytes); !status.ok()) {
      return Failed(status);
    }
  }
  return absl::OkStatus();
}

absl::Status ImportStream::Failed(const absl::Status& status) const {
  return absl::Status(status.code(),
                      absl::StrCat("message ", messages_ - 1, ": ",
                                   status.message(), "; ", Earlier()));
}

absl::Status ImportStream::End() const {
  if (unparsed_) {
    const absl::Status unparsed =
        UnparsedMessage(messages_, v1::ImportPatternsRequest());
    return absl::InvalidArgumentError(
        absl::StrCat(unparsed.message(), "; ", Earlier()));
  }
  if (!store_.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      "the stream held no message; the first must name the store");
}

std::string ImportStream::Earlier() const {
  return absl::StrCat(added_, " patterns of earlier messages were committed");
}

}  // namespace engram::rpc
