// Bearer tokens: who may call engram, and whether they may write.
//
// A token file holds one token per line, "read TOKEN" or "write TOKEN"
// ("write" tokens may also read); blank lines and lines starting with '#'
// are skipped. Clients send "authorization: Bearer TOKEN". The health
// service is not checked, so probes need no token.
//
// Each method checks the token as it runs (Check). Over TLS, a
// TokenMetadataProcessor checks it before that, as the call's headers
// arrive: gRPC reads a unary request in whole before any method runs, so
// without it a caller with no token could have engramd read requests of
// up to twice --max_message_mb, on as many streams as it opens (eight of
// 200 MiB at once: 1.4 GB resident).
//
// The file may change while engramd runs (a rotated token): Reload reads
// it again if it changed, and the next calls are checked against the new
// tokens. A file that no longer reads, or holds no token or a malformed
// line, leaves the tokens as they were: never fewer checks.
//
// Thread-safe.
#ifndef ENGRAM_SERVER_RPC_AUTH_H_
#define ENGRAM_SERVER_RPC_AUTH_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/security/auth_metadata_processor.h"
#include "grpcpp/server_context.h"
#include "server/base/file_backed.h"
#include "server/metrics/metrics.h"

namespace engram::rpc {

class TokenAuthorizer {
 public:
  // No tokens: every call is allowed.
  TokenAuthorizer() = default;
  static absl::StatusOr<TokenAuthorizer> Load(const std::string& path);

  // Whether calls need a token; fixed by Load.
  bool enabled() const { return file_.has_value(); }

  // Reads the file again if it changed (FileBacked::Reload): true if the
  // tokens were replaced; an error, the tokens kept, if the new version
  // holds no valid tokens.
  absl::StatusOr<bool> Reload();
  size_t size() const;  // How many tokens.

  // OK, UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED (a read
  // token for a writing method).
  absl::Status Check(const grpc::ServerContextBase& context, bool writes) const;
  // The same for an authorization header's value (null: none sent).
  absl::Status CheckHeader(const absl::string_view* authorization,
                           bool writes) const;

 private:
  struct Token {
    std::string secret;
    bool write;
    bool operator==(const Token& o) const {
      return secret == o.secret && write == o.write;
    }
  };
  using Tokens = std::vector<Token>;
  static absl::StatusOr<Tokens> Read(const std::string& path);

  std::optional<FileBacked<Tokens>> file_;  // None: no tokens needed.
};

// Refuses, as its headers arrive, a call that needs a token and carries
// none of `auth`'s (UNAUTHENTICATED, with Check's message), so that gRPC
// never reads its request; whether the token may write is left to the
// method. The health and reflection services need no token. Refusals are
// counted in `metrics` (if set) as the method's requests. gRPC supports it
// over TLS only.
class TokenMetadataProcessor final : public grpc::AuthMetadataProcessor {
 public:
  // Both borrowed; they must outlive the server's calls.
  TokenMetadataProcessor(const TokenAuthorizer* auth, metrics::Metrics* metrics)
      : auth_(auth), metrics_(metrics) {}

  bool IsBlocking() const override { return false; }  // Compares strings.
  grpc::Status Process(const InputMetadata& metadata,
                       grpc::AuthContext* context, OutputMetadata* consumed,
                       OutputMetadata* response) override;

 private:
  const TokenAuthorizer* const auth_;
  metrics::Metrics* const metrics_;
};

// Whether the method at `path` ("/grpc.health.v1.Health/Check") is open to
// callers without a token: health checks and server reflection.
bool NeedsNoToken(absl::string_view path);

// The method a gRPC path ("/engram.v1.Engram/Retrieve") names among the
// compiled-in services; null for any other.
const google::protobuf::MethodDescriptor* MethodAt(absl::string_view path);

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_AUTH_H_
