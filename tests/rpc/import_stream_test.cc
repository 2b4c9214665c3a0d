// ImportStream: the checks and refusals engramd and a router share for an
// ImportPatterns stream (the end-to-end tests compare the two servers' texts).
#include "server/rpc/import_stream.h"

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace engram::rpc {
namespace {

using ::absl::StatusCode;

v1::ImportPatternsRequest Message(const std::string& store, int patterns) {
  v1::ImportPatternsRequest message;
  message.set_store(store);
  for (int i = 0; i < patterns; ++i) message.add_patterns()->add_values(1.0f);
  return message;
}

// A client's stream as gRPC's reader gives it: each entry a message, or
// nullopt for one whose bytes did not parse (the read fails, and the reader
// reads on past it); after the last entry every read fails.
class FakeReader final
    : public grpc::ServerReaderInterface<v1::ImportPatternsRequest> {
 public:
  explicit FakeReader(
      std::vector<std::optional<v1::ImportPatternsRequest>> stream)
      : stream_(std::move(stream)) {}
  void SendInitialMetadata() override {}
  bool NextMessageSize(uint32_t* size) override {
    *size = 0;
    return next_ < stream_.size();
  }
  bool Read(v1::ImportPatternsRequest* message) override {
    if (next_ >= stream_.size()) return false;
    const std::optional<v1::ImportPatternsRequest>& entry = stream_[next_++];
    if (!entry) return false;
    *message = *entry;
    return true;
  }

 private:
  std::vector<std::optional<v1::ImportPatternsRequest>> stream_;
  size_t next_ = 0;
};

// Reads `reader` to its end as a handler does; the stream's End.
absl::Status ReadAll(FakeReader reader, ImportStream& stream) {
  v1::ImportPatternsRequest message;
  while (stream.Read(reader, message)) {
    if (absl::Status s = stream.Next(message); !s.ok()) return s;
    stream.Committed(message.patterns_size());
  }
  return stream.End();
}

TEST(ImportStreamTest, AMessageThatDoesNotParseIsRefusedWhenOneFollowsIt) {
  ImportStream stream(1 << 20);
  absl::Status s = ReadAll(
      FakeReader({Message("s", 2), std::nullopt, Message("s", 5)}), stream);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "message 1: its bytes are not an engram.v1.ImportPatternsRequest; "
            "neither it nor the messages after it were read; 2 patterns of "
            "earlier messages were committed");
  EXPECT_EQ(stream.added(), 2u);  // The message after it was not added.

  ImportStream first(1 << 20);
  s = ReadAll(FakeReader({std::nullopt, Message("s", 1)}), first);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message().substr(0, 40),
            "message 0: its bytes are not an engram.v");
}

TEST(ImportStreamTest, TheTrueEndIsNotMistakenForAnUnparsedMessage) {
  ImportStream stream(1 << 20);
  EXPECT_TRUE(
      ReadAll(FakeReader({Message("s", 2), Message("", 3)}), stream).ok());
  EXPECT_EQ(stream.messages(), 2u);
  EXPECT_EQ(stream.added(), 5u);
  // An unparseable last message looks like the end; `batches` (messages())
  // says how many were read.
  ImportStream last(1 << 20);
  EXPECT_TRUE(ReadAll(FakeReader({Message("s", 2), std::nullopt}), last).ok());
  EXPECT_EQ(last.messages(), 1u);
}

TEST(ImportStreamTest, CountsMessagesAndWhatWasCommitted) {
  ImportStream stream(1 << 20);
  ASSERT_TRUE(stream.Next(Message("s", 2)).ok());
  EXPECT_EQ(stream.store(), "s");
  stream.Committed(2);
  ASSERT_TRUE(stream.Next(Message("", 0)).ok());  // Empty and unnamed: fine.
  ASSERT_TRUE(stream.Next(Message("s", 3)).ok());
  stream.Committed(3);
  EXPECT_TRUE(stream.End().ok());
  EXPECT_EQ(stream.messages(), 3u);
  EXPECT_EQ(stream.added(), 5u);
}

TEST(ImportStreamTest, TheFirstMessageMustNameTheStore) {
  ImportStream stream(1 << 20);
  absl::Status s = stream.Next(Message("", 1));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "store is required in the first message of ImportPatterns");
  EXPECT_EQ(stream.messages(), 1u);
}

TEST(ImportStreamTest, ALaterStoreMustBeTheSame) {
  ImportStream stream(1 << 20);
  ASSERT_TRUE(stream.Next(Message("imp", 1)).ok());
  stream.Committed(1);
  absl::Status s = stream.Next(Message(std::string(100, 'x'), 1));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "message 1: store '" + std::string(64, 'x') +
                "...(100 bytes)' differs from the first message's 'imp'; 1 "
                "patterns of earlier messages were committed");
}

TEST(ImportStreamTest, AnOversizeMessageIsRefusedWithWhatToDo) {
  ImportStream stream(64);
  ASSERT_TRUE(stream.Next(Message("s", 1)).ok());
  stream.Committed(1);
  absl::Status s = stream.Next(Message("s", 40));
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("message 1 is "), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("send fewer patterns per message; 1 patterns of "
                             "earlier messages were committed"),
            absl::string_view::npos)
      << s;
}

TEST(ImportStreamTest, AFailedAddNamesTheMessageAndKeepsItsCode) {
  ImportStream stream(1 << 20);
  ASSERT_TRUE(stream.Next(Message("s", 2)).ok());
  stream.Committed(2);
  ASSERT_TRUE(stream.Next(Message("s", 2)).ok());
  absl::Status s = stream.Failed(
      absl::AlreadyExistsError("patterns[1].id 7 already exists"));
  EXPECT_EQ(s.code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(s.message(),
            "message 1: patterns[1].id 7 already exists; 2 patterns of "
            "earlier messages were committed");
}

TEST(ImportStreamTest, AStreamWithNoMessageIsRefused) {
  ImportStream stream(1 << 20);
  absl::Status s = stream.End();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "the stream held no message; the first must name the store");
}

}  // namespace
}  // namespace engram::rpc
