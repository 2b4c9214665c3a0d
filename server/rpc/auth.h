// Bearer tokens: who may call engram, and whether they may write.
//
// A token file holds one token per line, "read TOKEN" or "write TOKEN"
// ("write" tokens may also read); blank lines and lines starting with '#'
// are skipped. Clients send "authorization: Bearer TOKEN". The health
// service is not checked, so probes need no token.
//
// Thread-safe: immutable after Load.
#ifndef ENGRAM_SERVER_RPC_AUTH_H_
#define ENGRAM_SERVER_RPC_AUTH_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"

namespace engram::rpc {

class TokenAuthorizer {
 public:
  // No tokens: every call is allowed.
  TokenAuthorizer() = default;
  static absl::StatusOr<TokenAuthorizer> Load(const std::string& path);

  bool enabled() const { return !tokens_.empty(); }

  // OK, UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED (a read
  // token for a writing method).
  absl::Status Check(const grpc::ServerContextBase& context, bool writes) const;

 private:
  struct Token {
    std::string secret;
    bool write;
  };
  std::vector<Token> tokens_;
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_AUTH_H_
