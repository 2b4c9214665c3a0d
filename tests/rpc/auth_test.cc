#include "server/rpc/auth.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "server/metrics/metrics.h"

namespace engram::rpc {
namespace {

class CountingMetrics final : public metrics::NullMetrics {
 public:
  void RecordRequest(absl::string_view method, absl::string_view code,
                     double) override {
    requests.emplace_back(std::string(method), std::string(code));
  }
  std::vector<std::pair<std::string, std::string>> requests;
};

TokenAuthorizer Tokens() {
  const std::string path = ::testing::TempDir() + "/auth_test_tokens";
  {
    std::ofstream out(path);
    out << "read reader-0123456789abcdef\nwrite writer-0123456789abcdef\n";
  }
  absl::StatusOr<TokenAuthorizer> auth = TokenAuthorizer::Load(path);
  std::remove(path.c_str());
  EXPECT_TRUE(auth.ok()) << auth.status();
  return *std::move(auth);
}

// The processor's answer for headers `headers` (name, value).
grpc::Status Process(
    TokenMetadataProcessor& processor,
    const std::vector<std::pair<std::string, std::string>>& headers) {
  grpc::AuthMetadataProcessor::InputMetadata metadata;
  for (const auto& [name, value] : headers) metadata.emplace(name, value);
  grpc::AuthMetadataProcessor::OutputMetadata consumed, response;
  return processor.Process(metadata, nullptr, &consumed, &response);
}

TEST(TokenMetadataProcessorTest,
     RefusesACallWithNoKnownTokenAsItsHeadersArrive) {
  CountingMetrics metrics;
  TokenMetadataProcessor processor(Tokens(), &metrics);
  const std::string retrieve = "/engram.v1.Engram/Retrieve";
  grpc::Status none = Process(processor, {{":path", retrieve}});
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(none.error_message(),
            "this server requires a token: send 'authorization: Bearer TOKEN'");
  grpc::Status unknown =
      Process(processor, {{":path", retrieve},
                          {"authorization", "Bearer nobody-0123456789abcdef"}});
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(unknown.error_message(), "unknown token");
  grpc::Status basic = Process(
      processor, {{":path", retrieve}, {"authorization", "Basic dXNlcg=="}});
  EXPECT_EQ(basic.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Counted as the method's requests, as a refusal by the method would be.
  EXPECT_EQ(metrics.requests, (std::vector<std::pair<std::string, std::string>>(
                                  3, {"Retrieve", "UNAUTHENTICATED"})));
}

TEST(TokenMetadataProcessorTest, LeavesWhetherATokenMayWriteToTheMethod) {
  CountingMetrics metrics;
  TokenMetadataProcessor processor(Tokens(), &metrics);
  for (const char* token :
       {"Bearer reader-0123456789abcdef", "Bearer writer-0123456789abcdef"}) {
    EXPECT_TRUE(Process(processor, {{":path", "/engram.v1.Engram/AddPatterns"},
                                    {"authorization", token}})
                    .ok())
        << token;
  }
  EXPECT_TRUE(metrics.requests.empty());
}

TEST(TokenMetadataProcessorTest, HealthAndReflectionNeedNoToken) {
  CountingMetrics metrics;
  TokenMetadataProcessor processor(Tokens(), &metrics);
  for (const char* path :
       {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"}) {
    EXPECT_TRUE(Process(processor, {{":path", path}}).ok()) << path;
  }
  // Without a path the call cannot be told from a health check: its method
  // checks the token.
  EXPECT_TRUE(Process(processor, {}).ok());
  EXPECT_TRUE(metrics.requests.empty());
}

TEST(TokenMetadataProcessorTest, CountsRefusalsOnlyUnderMethodsThatExist) {
  CountingMetrics metrics;
  TokenMetadataProcessor processor(Tokens(), &metrics);
  for (const char* path : {"/engram.v1.Engram/NoSuchMethod", "/x/y", "",
                           "/engram.cluster.v1.Shard/PartialStep"}) {
    EXPECT_EQ(Process(processor, {{":path", path}}).error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << path;
  }
  // The path is the caller's to choose: only a real method is a label.
  EXPECT_EQ(metrics.requests, (std::vector<std::pair<std::string, std::string>>{
                                  {"PartialStep", "UNAUTHENTICATED"}}));
}

TEST(MethodAtTest, NamesCompiledInMethodsOnly) {
  ASSERT_NE(MethodAt("/engram.v1.Engram/Retrieve"), nullptr);
  EXPECT_EQ(MethodAt("/engram.v1.Engram/Retrieve")->name(), "Retrieve");
  EXPECT_EQ(MethodAt("engram.v1.Engram/Retrieve")->name(), "Retrieve");
  EXPECT_EQ(MethodAt("/engram.v1.Engram/Nothing"), nullptr);
  EXPECT_EQ(MethodAt(""), nullptr);
}

}  // namespace
}  // namespace engram::rpc
