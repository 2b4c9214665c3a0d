#include "server/rpc/auth.h"

#include <unistd.h>

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
  // Of this process alone: ctest runs each test as a process, two at once.
  const std::string path =
      ::testing::TempDir() + "/auth_test_tokens_" + std::to_string(getpid());
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
  const TokenAuthorizer auth = Tokens();
  TokenMetadataProcessor processor(&auth, &metrics);
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
  const TokenAuthorizer auth = Tokens();
  TokenMetadataProcessor processor(&auth, &metrics);
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
  const TokenAuthorizer auth = Tokens();
  TokenMetadataProcessor processor(&auth, &metrics);
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
  const TokenAuthorizer auth = Tokens();
  TokenMetadataProcessor processor(&auth, &metrics);
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

// Writes `text` to `path` as a new version (a new inode, as a Kubernetes
// secret's update or an editor's save gives).
void Write(const std::string& path, const std::string& text) {
  const std::string next = path + ".next";
  {
    std::ofstream out(next);
    out << text;
  }
  ASSERT_EQ(std::rename(next.c_str(), path.c_str()), 0);
}

absl::Status Ask(const TokenAuthorizer& auth, const std::string& token,
                 bool writes) {
  const std::string text = "Bearer " + token;
  const absl::string_view header = text;
  return auth.CheckHeader(&header, writes);
}

TEST(TokenAuthorizerTest, ReloadsARotatedFileAndKeepsTheTokensOfABadOne) {
  const std::string path =
      ::testing::TempDir() + "/auth_test_rotated_" + std::to_string(getpid());
  Write(path, "write first-0123456789abcdef\n");
  absl::StatusOr<TokenAuthorizer> auth = TokenAuthorizer::Load(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE(Ask(*auth, "first-0123456789abcdef", true).ok());
  EXPECT_EQ(auth->Reload().value_or(true), false);  // Unchanged.

  // Rotated: the new token in force, the old one refused.
  Write(path, "write second-0123456789abcdef\nread reader-0123456789abcdef\n");
  EXPECT_EQ(auth->Reload().value_or(false), true);
  EXPECT_EQ(auth->size(), 2u);
  EXPECT_TRUE(Ask(*auth, "second-0123456789abcdef", true).ok());
  EXPECT_EQ(Ask(*auth, "first-0123456789abcdef", false).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Ask(*auth, "reader-0123456789abcdef", true).code(),
            absl::StatusCode::kPermissionDenied);

  // Damaged, empty, gone: each an error once, the tokens kept — never a
  // server open to anyone.
  for (const char* bad : {"write short\n", "", "# nothing\n"}) {
    Write(path, bad);
    absl::StatusOr<bool> reloaded = auth->Reload();
    EXPECT_FALSE(reloaded.ok()) << bad;
    EXPECT_EQ(auth->Reload().value_or(true), false) << "reported twice";
    EXPECT_TRUE(auth->enabled());
    EXPECT_TRUE(Ask(*auth, "second-0123456789abcdef", true).ok()) << bad;
    EXPECT_EQ(Ask(*auth, "", false).code(), absl::StatusCode::kUnauthenticated);
  }
  std::remove(path.c_str());
  EXPECT_FALSE(auth->Reload().ok());
  EXPECT_TRUE(Ask(*auth, "second-0123456789abcdef", true).ok());

  // Back: in force again.
  Write(path, "read third-0123456789abcdef\n");
  EXPECT_EQ(auth->Reload().value_or(false), true);
  EXPECT_TRUE(Ask(*auth, "third-0123456789abcdef", false).ok());
  EXPECT_EQ(Ask(*auth, "second-0123456789abcdef", false).code(),
            absl::StatusCode::kUnauthenticated);
  std::remove(path.c_str());
}

TEST(TokenAuthorizerTest, WithoutAFileNothingReloads) {
  TokenAuthorizer none;
  EXPECT_FALSE(none.enabled());
  EXPECT_EQ(none.Reload().value_or(true), false);
  EXPECT_TRUE(Ask(none, "", true).ok());
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
