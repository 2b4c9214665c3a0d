#include "server/rpc/page_token.h"

#include <string>

#include "gtest/gtest.h"

namespace engram::rpc {
namespace {

TEST(PageTokensTest, ATokenOpensOnlyForItsListing) {
  const PageTokens tokens;
  const std::string token = tokens.Issue(PageTokens::Patterns("a"), "17");
  EXPECT_EQ(*tokens.Open(PageTokens::Patterns("a"), token), "17");
  EXPECT_FALSE(tokens.Open(PageTokens::Patterns("b"), token).ok());
  EXPECT_FALSE(tokens.Open(PageTokens::Stores(), token).ok());
}

// A server's own key is its run's: another run refuses its tokens.
TEST(PageTokensTest, RandomKeysRefuseEachOthersTokens) {
  const PageTokens one, other;
  const std::string token = one.Issue(PageTokens::Stores(), "faces");
  EXPECT_EQ(*one.Open(PageTokens::Stores(), token), "faces");
  EXPECT_FALSE(other.Open(PageTokens::Stores(), token).ok());
}

// A router's key comes from its cluster: every router of it, or the same
// one restarted, opens the others' tokens; another cluster's routers and
// a server's random key do not.
TEST(PageTokensTest, KeysFromTheSameSeedOpenEachOthersTokens) {
  const PageTokens router("router of cluster c"),
      restarted("router of cluster c"), elsewhere("router of cluster d"),
      random;
  const std::string listing = PageTokens::Patterns("s");
  const std::string token = router.Issue(listing, "2:0:99");
  EXPECT_EQ(*restarted.Open(listing, token), "2:0:99");
  EXPECT_FALSE(elsewhere.Open(listing, token).ok());
  EXPECT_FALSE(random.Open(listing, token).ok());
  EXPECT_FALSE(router.Open(listing, random.Issue(listing, "2:0:99")).ok());
}

// An altered token is refused, whichever byte changed.
TEST(PageTokensTest, AnAlteredTokenIsRefused) {
  const PageTokens tokens("router of cluster c");
  const std::string listing = PageTokens::Patterns("s");
  const std::string token = tokens.Issue(listing, "2:1:12345");
  for (size_t i = 0; i < token.size(); ++i) {
    std::string altered = token;
    altered[i] = altered[i] == 'A' ? 'B' : 'A';
    EXPECT_FALSE(tokens.Open(listing, altered).ok()) << "byte " << i;
  }
  EXPECT_FALSE(tokens.Open(listing, token.substr(0, token.size() - 1)).ok());
  EXPECT_FALSE(tokens.Open(listing, "").ok());
}

}  // namespace
}  // namespace engram::rpc
