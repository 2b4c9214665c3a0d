#include "server/rpc/page_token.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace engram::rpc {

namespace {

constexpr char kVersion = '\x01';
constexpr size_t kMacBytes = 16;  // HMAC-SHA256, truncated.

}  // namespace

PageTokens::PageTokens() {
  if (RAND_bytes(key_.data(), static_cast<int>(key_.size())) != 1) {
    std::abort();  // No randomness at all: nothing can be trusted.
  }
}

PageTokens::PageTokens(absl::string_view seed) {
  const std::string input = absl::StrCat("engram page tokens 1:", seed);
  unsigned int length = 0;
  unsigned char digest[EVP_MAX_MD_SIZE];
  if (EVP_Digest(input.data(), input.size(), digest, &length, EVP_sha256(),
                 nullptr) != 1 ||
      length != key_.size()) {
    std::abort();  // SHA-256 is always there.
  }
  std::copy(digest, digest + key_.size(), key_.begin());
}

std::string PageTokens::Patterns(absl::string_view store) {
  return absl::StrCat("ListPatterns/", store);
}

std::string PageTokens::Mac(absl::string_view listing,
                            absl::string_view cursor) const {
  // The listing and the cursor, each with its length, so that no two pairs
  // give the same input.
  const std::string input =
      absl::StrCat(listing.size(), ":", listing, cursor.size(), ":", cursor);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac,
       &length);
  return std::string(reinterpret_cast<const char*>(mac), kMacBytes);
}

std::string PageTokens::Issue(absl::string_view listing,
                              absl::string_view cursor) const {
  return absl::WebSafeBase64Escape(absl::StrCat(absl::string_view(&kVersion, 1),
                                                Mac(listing, cursor), cursor));
}

absl::StatusOr<std::string> PageTokens::Open(absl::string_view listing,
                                             absl::string_view token) const {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw) || raw.size() < 1 + kMacBytes ||
      raw[0] != kVersion ||
      CRYPTO_memcmp(raw.data() + 1,
                    Mac(listing, raw.substr(1 + kMacBytes)).data(),
                    kMacBytes) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_token was not issued by ", listing,
        " (a token belongs to one listing, and one engramd's to one run of "
        "it); start the listing again without a token"));
  }
  return raw.substr(1 + kMacBytes);
}

}  // namespace engram::rpc
