#include "domains/domains.hpp"

#include <gtest/gtest.h>

using namespace bmx;

TEST(Domains, TheTwoFactsAreChecked) {
    std::string n = "Shop.Example.";
    EXPECT_EQ(Domains::check_name(n), "");
    EXPECT_EQ(n, "shop.example");
    std::string idn = "bücher.example";
    EXPECT_NE(Domains::check_name(idn).find("A-label"), std::string::npos);
    for (std::string bad : std::vector<std::string>{"", "nodot", "a..b", "-a.test", "a_b.test",
                                                    "a b.test", std::string(64, 'a') + ".test"})
        EXPECT_NE(Domains::check_name(bad), "") << bad;
    std::string ace = "xn--bcher-kva.example";
    EXPECT_EQ(Domains::check_name(ace), "");

    for (const char* ok : {"mail.example", "mail.example:2525", "192.0.2.1", "192.0.2.1:25",
                           "[192.0.2.1]:25", "[2001:db8::1]:25", "[2001:db8::1]"})
        EXPECT_EQ(Domains::check_primary(ok), "") << ok;
    for (const char* bad : {"", "2001:db8::1", "mail.example:0", "mail.example:65536",
                            "[mail.example]:25", "[0.0.0.0]:25", "mail example", "a/b"})
        EXPECT_NE(Domains::check_primary(bad), "") << bad;
}

TEST(Domains, LiveSetFindsReplacesAndKeepsOldConfigsAlive) {
    Config cfg;
    cfg.policy.greylisting = false;
    Domains d(cfg);
    d.load({{"a.test", "mx.a.test", "any", false, 0, "ann", {}}});
    const DomainConfig* first = d.find("A.TEST");
    ASSERT_NE(first, nullptr);
    EXPECT_EQ(first->primary->host, "mx.a.test");
    d.put({"a.test", "mx2.a.test:2525", "verify", true, 2048, "ann", {}});
    const DomainConfig* second = d.find("a.test");
    EXPECT_EQ(second->primary->port, 2525);
    EXPECT_EQ(second->policy.recipients, RecipientCheck::Verify);
    EXPECT_TRUE(second->policy.greylisting);
    EXPECT_EQ(second->policy.max_message_size, 2048u);
    EXPECT_EQ(first->primary->host, "mx.a.test");  // a session holding it still reads it
    d.remove("a.test");
    EXPECT_EQ(d.find("a.test"), nullptr);
    EXPECT_EQ(second->name, "a.test");
    EXPECT_EQ(d.size(), 0u);
}
