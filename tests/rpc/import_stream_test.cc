// ImportStream: the checks and refusals engramd and a router share for an
// ImportPatterns stream (the end-to-end tests compare the two servers' texts).
#include "server/rpc/import_stream.h"

#include <string>

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
