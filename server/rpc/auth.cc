#include "server/rpc/auth.h"

#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "server/base/file_text.h"
#include "server/base/steady_clock.h"

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
  absl::StatusOr<std::string> text = ReadFileText(path, size_t{1} << 20);
  if (!text.ok()) return text.status();
  Tokens tokens;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++number;
    absl::string_view entry = absl::StripAsciiWhitespace(line);
    if (entry.empty() || entry[0] == '#') continue;
    std::vector<absl::string_view> parts =
        absl::StrSplit(entry, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (parts.size() != 2 || (parts[0] != "read" && parts[0] != "write") ||
        parts[1].size() < 16) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " line ", number,
                       ": expected 'read TOKEN' or 'write TOKEN', tokens of "
                       "16+ characters"));
    }
    tokens.push_back({std::string(parts[1]), parts[0] == "write"});
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds no token"));
  }
  return tokens;
}

absl::StatusOr<TokenAuthorizer> TokenAuthorizer::Load(const std::string& path) {
  absl::StatusOr<FileBacked<Tokens>> file =
      FileBacked<Tokens>::Load(path, &TokenAuthorizer::Read);
  if (!file.ok()) return file.status();
  TokenAuthorizer auth;
  auth.file_.emplace(*std::move(file));
  return auth;
}

size_t TokenAuthorizer::size() const {
  return file_.has_value() ? file_->get()->size() : 0;
}

absl::StatusOr<bool> TokenAuthorizer::Reload() {
  if (!file_.has_value()) return false;
  return file_->Reload();
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
  const std::shared_ptr<const Tokens> tokens = file_->get();
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
  const absl::Time start = SteadyNow();
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
    // Its latency is the check's: the request was never read.
    metrics_->RecordRequest(method->name(), "UNAUTHENTICATED",
                            SecondsSince(start));
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      std::string(status.message()));
}

}  // namespace engram::rpc
