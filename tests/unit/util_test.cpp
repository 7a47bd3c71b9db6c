#include "util/util.hpp"

#include <gtest/gtest.h>
#include <spdlog/details/log_msg.h>

#include <boost/json.hpp>

#include "logging/logging.hpp"
#include "util/json.hpp"

using namespace bmx;

TEST(Duration, ParsesUnits) {
    EXPECT_EQ(parse_duration("30s"), Seconds(30));
    EXPECT_EQ(parse_duration("5m"), Seconds(300));
    EXPECT_EQ(parse_duration("2h"), Seconds(7200));
    EXPECT_EQ(parse_duration("14d"), Seconds(14 * 86400));
    EXPECT_EQ(parse_duration("90"), Seconds(90));
}

TEST(Duration, RejectsGarbage) {
    for (const char* bad : {"", "s", "5x", "5mm", "-5m", "1.5h", "5 m", "99999999999999999999d"})
        EXPECT_FALSE(parse_duration(bad).has_value()) << bad;
}

TEST(Duration, Formats) {
    EXPECT_EQ(format_duration(Seconds(0)), "0s");
    EXPECT_EQ(format_duration(Seconds(3725)), "1h2m5s");
    EXPECT_EQ(format_duration(Seconds(86400 * 14)), "14d");
}

TEST(QueueId, UniqueAndHex) {
    std::set<std::string> seen;
    for (int i = 0; i < 10000; ++i) {
        auto id = new_queue_id();
        ASSERT_EQ(id.size(), 16u);
        ASSERT_EQ(id.find_first_not_of("0123456789ABCDEF"), std::string::npos);
        ASSERT_TRUE(seen.insert(id).second) << id;
    }
}

TEST(Duration, FormatsNegative) {
    EXPECT_EQ(format_duration(Seconds(-3725)), "-1h2m5s");
    EXPECT_EQ(format_duration(Seconds(-1)), "-1s");
}

TEST(Printable, KeepsAsciiAndUtf8AndEscapesTheRest) {
    EXPECT_EQ(printable("X-PARAM=1"), "X-PARAM=1");
    EXPECT_EQ(printable("X\rFAKE-REPLY"), "X\\x0DFAKE-REPLY");
    EXPECT_EQ(printable("a\nb\x1b[2Jc\x7f"), "a\\x0Ab\\x1B[2Jc\\x7F");
    EXPECT_EQ(printable(std::string("nul\0x", 5)), "nul\\x00x");
    EXPECT_EQ(printable("\"q\" \\"), "\\\"q\\\" \\\\");
    EXPECT_EQ(printable("j\xc3\xb6rg@\xe4\xbe\x8b.\xf0\x9f\x98\x80"),
              "j\xc3\xb6rg@\xe4\xbe\x8b.\xf0\x9f\x98\x80");  // UTF-8 stays
}

TEST(Printable, BadUtf8AndC1ControlsAreEscaped) {
    EXPECT_EQ(printable("\x9b"), "\\x9B");                    // a lone 8-bit CSI
    EXPECT_EQ(printable("\xc2\x9b"), "\\xC2\\x9B");           // U+009B: a C1 control
    EXPECT_EQ(printable("\xc0\xaf"), "\\xC0\\xAF");           // overlong '/'
    EXPECT_EQ(printable("\xed\xa0\x80"), "\\xED\\xA0\\x80");  // a surrogate
    EXPECT_EQ(printable("\xe4\xbe"), "\\xE4\\xBE");           // cut short
}

TEST(Logging, EscapeMessageWritesEveryControlAndInvalidByteAsHex) {
    using bmx::logging::escape_message;
    EXPECT_EQ(escape_message("user=a\r\n2026-01-01 info forged"),
              "user=a\\x0D\\x0A2026-01-01 info forged");
    EXPECT_EQ(escape_message("\x1b[2J\x07"), "\\x1B[2J\\x07");
    EXPECT_EQ(escape_message("j\xc3\xb6rg \"q\" \\"), "j\xc3\xb6rg \"q\" \\");  // UTF-8 kept
    EXPECT_EQ(escape_message("\xff\xc2\x9b"), "\\xFF\\xC2\\x9B");  // not UTF-8; a C1 CSI
    EXPECT_EQ(escape_message(std::string("a\0b", 3)), "a\\x00b");
}

TEST(Logging, JsonFormatterWritesOneValidObjectPerEvent) {
    auto f = bmx::logging::make_formatter(bmx::logging::Format::Json);
    const std::string payload = "login user=\"x\\y\"\r\n{\"forged\":1}";
    spdlog::details::log_msg msg("backupmx", spdlog::level::info, payload);
    spdlog::memory_buf_t out;
    f->format(msg, out);
    const std::string line(out.data(), out.size());
    ASSERT_EQ(line.back(), '\n');
    EXPECT_EQ(line.find('\n'), line.size() - 1);  // one line
    auto v = boost::json::parse(line.substr(0, line.size() - 1));
    EXPECT_EQ(v.at("level").as_string(), "info");
    EXPECT_EQ(v.at("message").as_string(), "login user=\"x\\y\"\\x0D\\x0A{\"forged\":1}");
}

TEST(Json, JsonTextReplacesInvalidUtf8SoTheDocumentParses) {
    boost::json::object o{{"sender", "\xff\xfe@x.test"}, {"ok", "j\xc3\xb6rg"}};
    o["list"] = boost::json::array{"\xed\xa0\x80", "fine"};
    o["k\xc0"] = 1;
    const std::string text = bmx::json_text(o);
    boost::system::error_code ec;
    auto v = boost::json::parse(text, ec);  // Boost.JSON's parser checks UTF-8
    ASSERT_FALSE(ec) << text;
    EXPECT_EQ(v.at("sender").as_string(), "\xef\xbf\xbd\xef\xbf\xbd@x.test");
    EXPECT_EQ(v.at("ok").as_string(), "j\xc3\xb6rg");
    EXPECT_EQ(v.at("list").as_array()[0].as_string(), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    EXPECT_TRUE(v.as_object().contains("k\xef\xbf\xbd"));
    EXPECT_EQ(bmx::json_text(boost::json::value("plain")), "\"plain\"");
}
