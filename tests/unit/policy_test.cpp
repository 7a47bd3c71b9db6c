#include "policy/policy.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace bmx;
using namespace bmx::policy;

namespace {

Config two_domains() {
    return parse_config(R"toml(
[smtp]
max_recipients = 3
[[domain]]
name = "example.test"
primary = "127.0.0.1:2526"
[[domain]]
name = "Other.Test"
primary = "mail.other.test"
)toml");
}

}  // namespace

TEST(RecipientDomain, ConfiguredDomainsAccepted) {
    Config c = two_domains();
    for (const char* d : {"example.test", "other.test"}) {
        auto r = check_recipient_domain(c, d);
        EXPECT_TRUE(r.ok) << d;
        EXPECT_EQ(r.reply, "") << d;
    }
}

TEST(RecipientDomain, CaseInsensitive) {
    Config c = two_domains();
    EXPECT_TRUE(check_recipient_domain(c, "EXAMPLE.TEST").ok);
    EXPECT_TRUE(check_recipient_domain(c, "Example.Test").ok);
    EXPECT_TRUE(check_recipient_domain(c, "OTHER.test").ok);
}

TEST(RecipientDomain, OtherDomainsRefusedAsRelay) {
    Config c = two_domains();
    for (const char* d : {"evil.test", "sub.example.test", "example.test.evil", "xexample.test",
                          "test", "", "[127.0.0.1]"}) {
        auto r = check_recipient_domain(c, d);
        EXPECT_FALSE(r.ok) << d;
        EXPECT_TRUE(r.reply.starts_with("550 5.7.1 ")) << d << ": " << r.reply;
        EXPECT_NE(r.reply.find(d), std::string::npos) << r.reply;
    }
}

TEST(RecipientDomain, NoDomainsConfiguredRefusesEverything) {
    Config c;
    auto r = check_recipient_domain(c, "localhost");
    EXPECT_FALSE(r.ok);
    EXPECT_TRUE(r.reply.starts_with("550 5.7.1")) << r.reply;
}

TEST(RecipientCount, BelowMaxAllowed) {
    Config c = two_domains();
    for (std::size_t n = 0; n < 3; ++n) {
        auto r = check_recipient_count(c, n);
        EXPECT_TRUE(r.ok) << n;
        EXPECT_EQ(r.reply, "");
    }
}

TEST(RecipientCount, RefusedAtMax) {
    Config c = two_domains();
    auto r = check_recipient_count(c, 3);
    EXPECT_FALSE(r.ok);
    EXPECT_TRUE(r.reply.starts_with("452 4.5.3 ")) << r.reply;
    EXPECT_NE(r.reply.find("max_recipients = 3"), std::string::npos) << r.reply;
}

TEST(RecipientCount, RefusedAboveMax) {
    Config c = two_domains();
    EXPECT_FALSE(check_recipient_count(c, 4).ok);
    EXPECT_FALSE(check_recipient_count(c, 1000000).ok);
}

TEST(RecipientCount, DefaultLimitIsHundred) {
    Config c;
    EXPECT_TRUE(check_recipient_count(c, 99).ok);
    EXPECT_FALSE(check_recipient_count(c, 100).ok);
}

TEST(RecipientCount, LimitOfOne) {
    Config c;
    c.max_recipients = 1;
    EXPECT_TRUE(check_recipient_count(c, 0).ok);
    auto r = check_recipient_count(c, 1);
    EXPECT_FALSE(r.ok);
    EXPECT_TRUE(r.reply.starts_with("452 4.5.3")) << r.reply;
}

TEST(PolicyRouting, SenderSpecifiedRoutingRefused) {
    for (const char* local : {"user%other.test", "other.test!user", "\"user@other.test\""})
        EXPECT_FALSE(bmx::policy::check_recipient_routing(local).ok) << local;
    EXPECT_TRUE(bmx::policy::check_recipient_routing("first.last+tag").ok);
    EXPECT_EQ(bmx::policy::check_recipient_routing("a%b").reply.substr(0, 9), "550 5.7.1");
}

TEST(PolicyNetworks, CidrMatchingForBothFamilies) {
    auto nets = bmx::policy::parse_networks({"127.0.0.0/8", "192.0.2.7", "2001:db8::/32"});
    ASSERT_EQ(nets.size(), 3u);
    EXPECT_TRUE(bmx::policy::in_networks("127.1.2.3", nets));
    EXPECT_TRUE(bmx::policy::in_networks("::ffff:127.0.0.1", nets));  // v4-mapped
    EXPECT_TRUE(bmx::policy::in_networks("192.0.2.7", nets));
    EXPECT_FALSE(bmx::policy::in_networks("192.0.2.8", nets));
    EXPECT_TRUE(bmx::policy::in_networks("2001:db8:1::1", nets));
    EXPECT_FALSE(bmx::policy::in_networks("2001:db9::1", nets));
    EXPECT_FALSE(bmx::policy::in_networks("not an ip", nets));
}
