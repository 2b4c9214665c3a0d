#include "server/base/log.h"

#include <string>

#include "gtest/gtest.h"

namespace engram {
namespace {

TEST(JsonEscapedTest, EscapesWhatJsonNeedsAndKeepsUtf8) {
  EXPECT_EQ(JsonEscaped("plain text"), "plain text");
  EXPECT_EQ(JsonEscaped("a\"b\\c\nd\te"), "a\\\"b\\\\c\\nd\\te");
  EXPECT_EQ(JsonEscaped(std::string("\x01\x1f\x7f", 3)),
            "\\u0001\\u001f\\u007f");
  EXPECT_EQ(JsonEscaped(std::string("nul\0end", 7)), "nul\\u0000end");
  // Two-, three- and four-byte sequences pass through.
  EXPECT_EQ(JsonEscaped("β · ≥ 𝛽"), "β · ≥ 𝛽");
}

TEST(JsonEscapedTest, EveryByteThatIsNotUtf8BecomesTheReplacementCharacter) {
  const std::string kBad = "\xef\xbf\xbd";
  EXPECT_EQ(JsonEscaped("\xff"), kBad);
  EXPECT_EQ(JsonEscaped("a\x80z"), "a" + kBad + "z");
  EXPECT_EQ(JsonEscaped("\xc3"), kBad);                        // Cut short.
  EXPECT_EQ(JsonEscaped("\xc0\xaf"), kBad + kBad);             // Overlong '/'.
  EXPECT_EQ(JsonEscaped("\xe0\x80\xaf"), kBad + kBad + kBad);  // Overlong.
  EXPECT_EQ(JsonEscaped("\xed\xa0\x80"), kBad + kBad + kBad);  // Surrogate.
  EXPECT_EQ(JsonEscaped("\xf4\x90\x80\x80"),
            kBad + kBad + kBad + kBad);             // Past U+10FFFF.
  EXPECT_EQ(JsonEscaped("\xe2\x89"), kBad + kBad);  // Cut short.
}

TEST(TextEscapedTest, KeepsQuotesAndTabsAndEscapesWhatWouldBreakTheLine) {
  EXPECT_EQ(TextEscaped("store 'a' \"b\" c\\d\te β"),
            "store 'a' \"b\" c\\d\te β");
  EXPECT_EQ(TextEscaped("one\n2026-12-05T01:23:13.000Z ERROR forged"),
            "one\\n2026-12-05T01:23:13.000Z ERROR forged");
  EXPECT_EQ(TextEscaped(std::string("\r\x1b[2J\0", 6)),
            "\\u000d\\u001b[2J\\u0000");
  EXPECT_EQ(TextEscaped("shard says \xff\xa6"),
            "shard says \xef\xbf\xbd\xef\xbf\xbd");
}

// Regression: a shard's error text with bytes that are not UTF-8 went into
// the router's text log as they came, and readers of the log failed on it.
TEST(LogLineTest, ATextLineIsOneLineOfUtf8WhateverTheMessage) {
  const absl::Time when = absl::FromUnixSeconds(1796433793);
  SetLogFormat(LogFormat::kText);
  EXPECT_EQ(LogLine(LogLevel::kWarning, "unreachable: \xa6\nINFO ready", when),
            "2026-12-05T01:23:13.000Z WARN unreachable: \xef\xbf\xbd\\nINFO "
            "ready\n");
}

TEST(LogLineTest, TextAndJson) {
  const absl::Time when = absl::FromUnixSeconds(1796433793);
  SetLogFormat(LogFormat::kText);
  EXPECT_EQ(LogLine(LogLevel::kWarning, "careful", when),
            "2026-12-05T01:23:13.000Z WARN careful\n");
  SetLogFormat(LogFormat::kJson);
  EXPECT_EQ(LogLine(LogLevel::kError, "a \"b\"\n", when),
            "{\"time\":\"2026-12-05T01:23:13.000Z\",\"level\":\"error\","
            "\"msg\":\"a \\\"b\\\"\\n\"}\n");
  SetLogFormat(LogFormat::kText);
}

}  // namespace
}  // namespace engram
