// MX planning (RFC 5321 5.1 for a relay that is itself an MX) and DNS rdata decoding.
#include "delivery/route.hpp"

#include <gtest/gtest.h>

#include <set>

#include "dns/resolver.hpp"

using namespace bmx;
using delivery::plan_mx;
using dns::Mx;

namespace {
std::vector<std::string> hosts(const delivery::MxPlan& p) {
    std::vector<std::string> out;
    for (auto& h : p.hosts) out.push_back(h.host);
    return out;
}
}  // namespace

TEST(PlanMx, NotListedKeepsAllLowestFirst) {
    std::mt19937 rng(1);
    auto p = plan_mx({{30, "c.test"}, {10, "a.test"}, {20, "b.test"}}, {"mx2.us.test"}, rng);
    EXPECT_EQ(hosts(p), (std::vector<std::string>{"a.test", "b.test", "c.test"}));
    EXPECT_FALSE(p.we_are_listed);
    EXPECT_FALSE(p.loops);
}

TEST(PlanMx, DropsOurselvesAndEveryoneAtOrAboveOurPreference) {
    std::mt19937 rng(1);
    auto p = plan_mx({{10, "primary.test"}, {20, "mx2.us.test"}, {20, "peer.test"}, {30, "z.test"}},
                     {"mx2.us.test"}, rng);
    EXPECT_EQ(hosts(p), (std::vector<std::string>{"primary.test"}));
    EXPECT_TRUE(p.we_are_listed);
}

TEST(PlanMx, OurOtherNamesCountCaseInsensitively) {
    std::mt19937 rng(1);
    auto p = plan_mx({{5, "primary.test"}, {15, "BACKUP.Provider.test"}},
                     {"mx2.us.test", "backup.provider.test"}, rng);
    EXPECT_EQ(hosts(p), (std::vector<std::string>{"primary.test"}));
    EXPECT_TRUE(p.we_are_listed);
}

TEST(PlanMx, BestMxIsUsMeansLoop) {
    std::mt19937 rng(1);
    auto p = plan_mx({{10, "mx2.us.test"}, {20, "other.test"}}, {"mx2.us.test"}, rng);
    EXPECT_TRUE(p.loops);
    EXPECT_TRUE(p.hosts.empty());
}

TEST(PlanMx, EqualPreferencesShareTheLoad) {
    std::set<std::string> firsts;
    for (unsigned seed = 0; seed < 200; ++seed) {
        std::mt19937 rng(seed);
        auto p = plan_mx({{10, "a.test"}, {10, "b.test"}, {10, "c.test"}, {5, "best.test"}},
                         {"mx2.us.test"}, rng);
        ASSERT_EQ(p.hosts.size(), 4u);
        EXPECT_EQ(p.hosts[0].host, "best.test");  // the lower number always first
        firsts.insert(p.hosts[1].host);
    }
    EXPECT_EQ(firsts.size(), 3u) << "equal-preference hosts never rotated";
}

TEST(DnsDecode, MxRecord) {
    const std::string rd(
        "\x00\x0a\x04mail\x07"
        "example\x04test\x00",
        21);
    auto mx = dns::decode_mx(rd);
    ASSERT_TRUE(mx);
    EXPECT_EQ(mx->preference, 10);
    EXPECT_EQ(mx->host, "mail.example.test");
}

TEST(DnsDecode, NullMxIsTheRoot) {
    const std::string rd("\x00\x00\x00", 3);
    auto mx = dns::decode_mx(rd);
    ASSERT_TRUE(mx);
    EXPECT_EQ(mx->preference, 0);
    EXPECT_EQ(mx->host, "");
    dns::MxAnswer a{dns::Status::Ok, {*mx}};
    EXPECT_TRUE(a.null_mx());
}

TEST(DnsDecode, NamesAreLowerCasedAndMalformedOnesRefused) {
    std::size_t pos = 0;
    EXPECT_EQ(dns::decode_name(std::string("\x04MAIL\x02IT\x00", 9), pos), "mail.it");
    pos = 0;
    EXPECT_FALSE(dns::decode_name(std::string("\x05mail", 5), pos));  // runs past the end
    pos = 0;
    EXPECT_FALSE(dns::decode_name(std::string("\xc0\x0c", 2), pos));  // compression pointer
    EXPECT_FALSE(dns::decode_mx(std::string("\x00", 1)));
    EXPECT_FALSE(dns::decode_mx(std::string("\x00\x0a\x00junk", 7)));  // trailing bytes
}

TEST(DnsDecode, TlsaRecord) {
    const std::string rd("\x03\x01\x01\xab\xcd", 5);
    auto t = dns::decode_tlsa(rd);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->usage, 3);
    EXPECT_EQ(t->selector, 1);
    EXPECT_EQ(t->matching, 1);
    EXPECT_EQ(t->data, (std::vector<std::uint8_t>{0xab, 0xcd}));
    EXPECT_FALSE(dns::decode_tlsa(std::string("\x03\x01\x01", 3)));
}

TEST(OwnEndpoint, TheListenAddressAndPortIsOursAnotherPortOrAddressIsNot) {
    const auto ip = [](const char* s) { return boost::asio::ip::make_address(s); };
    const std::vector<bmx::HostPort> listen{{"127.0.0.1", 2525}, {"::1", 2525}};
    EXPECT_TRUE(delivery::own_endpoint(listen, {}, ip("127.0.0.1"), 2525));
    EXPECT_TRUE(delivery::own_endpoint(listen, {}, ip("::ffff:127.0.0.1"), 2525));  // v4-mapped
    EXPECT_TRUE(delivery::own_endpoint(listen, {}, ip("::1"), 2525));
    EXPECT_FALSE(delivery::own_endpoint(listen, {}, ip("127.0.0.1"), 2526));
    EXPECT_FALSE(delivery::own_endpoint(listen, {}, ip("127.0.0.2"), 2525));
}

TEST(OwnEndpoint, AWildcardListenerIsEveryLocalAddressAndAllOfLoopback) {
    const auto ip = [](const char* s) { return boost::asio::ip::make_address(s); };
    const std::vector<bmx::HostPort> any4{{"0.0.0.0", 25}}, any6{{"::", 25}};
    const std::vector<boost::asio::ip::address> local{ip("192.0.2.10"), ip("2001:db8::10")};
    EXPECT_TRUE(delivery::own_endpoint(any4, local, ip("192.0.2.10"), 25));
    EXPECT_TRUE(delivery::own_endpoint(any4, local, ip("127.0.0.7"), 25));
    EXPECT_TRUE(delivery::own_endpoint(any6, local, ip("2001:db8::10"), 25));
    EXPECT_FALSE(delivery::own_endpoint(any4, local, ip("192.0.2.11"), 25));  // the primary
    EXPECT_FALSE(delivery::own_endpoint(any4, local, ip("192.0.2.10"), 2525));
}
