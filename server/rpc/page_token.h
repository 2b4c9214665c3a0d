// Page tokens of ListStores and ListPatterns: opaque, bound to the listing
// that issued them (ListStores, or ListPatterns of one store) and signed
// with a key of this server process (HMAC-SHA256, OpenSSL), so a token works
// only for its own listing, and a forged or altered one is refused.
//
//   PageTokens tokens;
//   std::string token = tokens.Issue(PageTokens::Patterns("faces"), "1234");
//   absl::StatusOr<std::string> cursor =
//       tokens.Open(PageTokens::Patterns("faces"), token);  // "1234"
//
// A server's own tokens do not outlive the process: after a restart a
// listing starts over. A router's are keyed by its cluster's name
// (PageTokens(seed)): any router of the cluster, restarted or not,
// continues a listing another one began. Those tokens are no secret — their
// cursors hold nothing a client could not reach by paging — but still bound
// to their listing, and an altered one is refused.
//
// Thread-safe: the key is constant after construction.
#ifndef ENGRAM_SERVER_RPC_PAGE_TOKEN_H_
#define ENGRAM_SERVER_RPC_PAGE_TOKEN_H_

#include <array>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace engram::rpc {

class PageTokens {
 public:
  PageTokens();  // A random key.
  // The key derived from `seed`: every PageTokens of the same seed opens
  // the tokens of the others.
  explicit PageTokens(absl::string_view seed);

  // The listing a token belongs to.
  static std::string Stores() { return "ListStores"; }
  static std::string Patterns(absl::string_view store);

  // A token that resumes `listing` after `cursor`.
  std::string Issue(absl::string_view listing, absl::string_view cursor) const;
  // The cursor of a token that `listing` issued; INVALID_ARGUMENT for any
  // other token.
  absl::StatusOr<std::string> Open(absl::string_view listing,
                                   absl::string_view token) const;

 private:
  std::string Mac(absl::string_view listing, absl::string_view cursor) const;

  std::array<unsigned char, 32> key_;
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_PAGE_TOKEN_H_
