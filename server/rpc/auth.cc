#include "server/rpc/auth.h"

#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace engram::rpc {

namespace {

// Compares in time independent of where the strings differ.
bool SameSecret(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i];
  return diff == 0;
}

}  // namespace

absl::StatusOr<TokenAuthorizer::Tokens> TokenAuthorizer::Read(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read token file ", path));
  }
  Tokens tokens;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    std::vector<absl::string_view> parts =
        absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (parts.size() != 2 || (parts[0] != "read" && parts[0] != "write") ||
        parts[1].size() < 16) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " line ", number,
                       ": expected 'read TOKEN' or 'write TOKEN', tokens of "
                       "16+ characters"));
    }
    tokens.push_back({std::string(parts[1]), parts[0] == "write"});
  }
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("cannot read token file ", path));
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds no token"));
  }
  return tokens;
}

absl::StatusOr<TokenAuthorizer> TokenAuthorizer::Load(const std::string& path) {
  const std::optional<FileStamp> stamp = FileStamp::Of(path);
  absl::StatusOr<Tokens> tokens = Read(path);
  if (!tokens.ok()) return tokens.status();
  TokenAuthorizer auth;
  auth.path_ = path;
  auth.enabled_ = true;
  {
    MutexLock lock(&auth.mu_);
    auth.tokens_ = std::make_shared<const Tokens>(*std::move(tokens));
    auth.stamp_ = stamp;
  }
  return auth;
}

TokenAuthorizer::TokenAuthorizer(const TokenAuthorizer& other) {
  *this = other;
}

TokenAuthorizer& TokenAuthorizer::operator=(const TokenAuthorizer& other) {
  if (this == &other) return *this;
  std::shared_ptr<const Tokens> tokens;
  std::optional<FileStamp> stamp;
  bool read_again;
  {
    MutexLock lock(&other.mu_);
    tokens = other.tokens_;
    stamp = other.stamp_;
    read_again = other.read_again_;
  }
  path_ = other.path_;
  enabled_ = other.enabled_;
  MutexLock lock(&mu_);
  tokens_ = std::move(tokens);
  stamp_ = stamp;
  read_again_ = read_again;
  return *this;
}

std::shared_ptr<const TokenAuthorizer::Tokens> TokenAuthorizer::tokens() const {
  MutexLock lock(&mu_);
  return tokens_;
}

size_t TokenAuthorizer::size() const { return tokens()->size(); }

absl::StatusOr<bool> TokenAuthorizer::Reload() {
  if (!enabled_) return false;
  const std::optional<FileStamp> before = FileStamp::Of(path_);
  {
    MutexLock lock(&mu_);
    if (before == stamp_ && !read_again_) return false;
    stamp_ = before;  // Tried: a bad version is reported once.
    read_again_ = false;
  }
  absl::StatusOr<Tokens> tokens = Read(path_);
  if (before.has_value() && FileStamp::Of(path_) != before) {
    MutexLock lock(&mu_);
    read_again_ = true;  // Written while it was read.
    return false;
  }
  if (!tokens.ok()) return tokens.status();
  MutexLock lock(&mu_);
  tokens_ = std::make_shared<const Tokens>(*std::move(tokens));
  return true;
}

absl::Status TokenAuthorizer::Check(const grpc::ServerContextBase& context,
                                    bool writes) const {
  if (!enabled()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  auto found = metadata.find("authorization");
  if (found == metadata.end()) return CheckHeader(nullptr, writes);
  const absl::string_view value(found->second.data(), found->second.size());
  return CheckHeader(&value, writes);
}

absl::Status TokenAuthorizer::CheckHeader(
    const absl::string_view* authorization, bool writes) const {
  if (!enabled()) return absl::OkStatus();
  if (authorization == nullptr) {
    return absl::UnauthenticatedError(
        "this server requires a token: send 'authorization: Bearer TOKEN'");
  }
  absl::string_view value = *authorization;
  if (!absl::ConsumePrefix(&value, "Bearer ")) {
    return absl::UnauthenticatedError(
        "the authorization header must read 'Bearer TOKEN'");
  }
  const std::shared_ptr<const Tokens> tokens = this->tokens();
  for (const Token& token : *tokens) {
    if (SameSecret(value, token.secret)) {
      if (writes && !token.write) {
        return absl::PermissionDeniedError(
            "this token is read-only; the method changes data");
      }
      return absl::OkStatus();
    }
  }
  return absl::UnauthenticatedError("unknown token");
}

bool NeedsNoToken(absl::string_view path) {
  return absl::StartsWith(path, "/grpc.health.v1.Health/") ||
         absl::StartsWith(path, "/grpc.reflection.");
}

const google::protobuf::MethodDescriptor* MethodAt(absl::string_view path) {
  return google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(
      absl::StrReplaceAll(absl::StripPrefix(path, "/"), {{"/", "."}}));
}

grpc::Status TokenMetadataProcessor::Process(const InputMetadata& metadata,
                                             grpc::AuthContext*,
                                             OutputMetadata*, OutputMetadata*) {
  auto get = [&](absl::string_view key) -> std::optional<absl::string_view> {
    auto found = metadata.find(grpc::string_ref(key.data(), key.size()));
    if (found == metadata.end()) return std::nullopt;
    return absl::string_view(found->second.data(), found->second.size());
  };
  const std::optional<absl::string_view> path = get(":path");
  // Without the path the call cannot be told from a health check: its
  // method checks it.
  if (!path.has_value() || NeedsNoToken(*path)) return grpc::Status::OK;
  const std::optional<absl::string_view> authorization = get("authorization");
  const absl::Status status = auth_->CheckHeader(
      authorization.has_value() ? &*authorization : nullptr, false);
  if (status.ok()) return grpc::Status::OK;
  // Counted under the method's name only where the method is one of
  // engram's: the path is the caller's to choose.
  const google::protobuf::MethodDescriptor* method = MethodAt(*path);
  if (metrics_ != nullptr && method != nullptr) {
    metrics_->RecordRequest(method->name(), "UNAUTHENTICATED", 0);
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      std::string(status.message()));
}

}  // namespace engram::rpc
