#include "util/util.hpp"

#include <gtest/gtest.h>

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
