#include "accounts/accounts.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "store/store.hpp"

using namespace bmx;
using namespace bmx::accounts;

TEST(Accounts, PasswordsAreArgon2idAndVerify) {
    const auto h = hash_password("correct horse");
    EXPECT_TRUE(h.starts_with("$argon2id$"));
    EXPECT_EQ(h.find("correct horse"), std::string::npos);
    EXPECT_TRUE(verify_password(h, "correct horse"));
    EXPECT_FALSE(verify_password(h, "correct horse "));
    EXPECT_FALSE(verify_password("", "x"));
    EXPECT_FALSE(verify_password("not a hash", "x"));
    EXPECT_NE(hash_password("correct horse"), h);  // salted
}

TEST(Accounts, NewSecretsAreRandomAndTokensHashed) {
    const auto p = new_password();
    EXPECT_EQ(p.size(), 20u);
    EXPECT_NE(p, new_password());
    const auto t = random_token();
    EXPECT_GE(t.size(), 43u);
    EXPECT_EQ(
        t.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
        std::string::npos);
    EXPECT_EQ(token_hash("abc"),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_TRUE(same_secret("abc", "abc"));
    EXPECT_FALSE(same_secret("abc", "abd"));
    EXPECT_FALSE(same_secret("", ""));  // an empty secret never matches
    EXPECT_FALSE(same_secret("abc", "abcd"));
}

TEST(Accounts, SessionKeyAndCsrfTokenAreDifferentHashesOfTheId) {
    const auto id = random_token();
    EXPECT_EQ(session_key(id), session_key(id));
    EXPECT_EQ(csrf_token(id), csrf_token(id));
    EXPECT_NE(session_key(id), csrf_token(id));  // the store's key does not give the CSRF token
    EXPECT_EQ(session_key(id).find(id), std::string::npos);
    EXPECT_NE(csrf_token(id), csrf_token(random_token()));
}

namespace {

// A failed login as the admin's login handler records it: under the address's key and the
// account's, in the store; and its rule for refusing the next try.
void fail_login(Store& s, const std::string& ip, const std::string& user, TimePoint t) {
    const auto k = login_keys(ip, user);
    s.add_login_failure({k.ip, k.user}, t, t - kLoginWindow);
}
bool refused(Store& s, const std::string& ip, const std::string& user, TimePoint t) {
    const auto k = login_keys(ip, user);
    return s.login_failures(k.ip, t - kLoginWindow) >= kLoginMaxFailures ||
           s.login_failures(k.user, t - kLoginWindow) >= kLoginMaxFailures;
}

}  // namespace

TEST(Accounts, FailedLoginsAreCountedByAddressAndByAccount) {
    const auto k = login_keys("192.0.2.1", "ann");
    EXPECT_EQ(k.ip, "ip:192.0.2.1");
    EXPECT_EQ(k.user, "user:ann");
    // An account named like an address is not that address.
    EXPECT_NE(login_keys("192.0.2.1", "x").ip, login_keys("x", "192.0.2.1").user);

    char tmpl[] = "/tmp/bmx_accounts_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    const std::string dir = tmpl;
    {
        auto store = open_sqlite_store(dir + "/queue.db");
        const auto t = now();
        // By address: one address guessing five accounts is stopped, for every account.
        for (int i = 0; i < 5; ++i) {
            EXPECT_FALSE(refused(*store, "192.0.2.1", "guess" + std::to_string(i), t)) << i;
            fail_login(*store, "192.0.2.1", "guess" + std::to_string(i), t);
        }
        EXPECT_TRUE(refused(*store, "192.0.2.1", "ann", t));
        EXPECT_FALSE(refused(*store, "192.0.2.2", "ann", t));     // ann from elsewhere: fine
        EXPECT_FALSE(refused(*store, "192.0.2.2", "guess0", t));  // one failure for guess0
        // By account: five addresses guessing bob's password lock bob, from any address.
        for (int i = 0; i < 5; ++i) {
            const std::string ip = "198.51.100." + std::to_string(i);
            EXPECT_FALSE(refused(*store, ip, "bob", t)) << ip;
            fail_login(*store, ip, "bob", t);
        }
        EXPECT_TRUE(refused(*store, "203.0.113.9", "bob", t));
        EXPECT_FALSE(refused(*store, "203.0.113.9", "carol", t));  // that address is fine
        EXPECT_EQ(store->login_failures(login_keys("198.51.100.0", "x").ip, t - kLoginWindow), 1u);
        // Four failures are not five; and the window forgets.
        for (int i = 0; i < 4; ++i) fail_login(*store, "203.0.113.1", "dave", t);
        EXPECT_FALSE(refused(*store, "203.0.113.1", "dave", t));
        EXPECT_FALSE(refused(*store, "192.0.2.1", "ann", t + kLoginWindow + Seconds(1)));
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
}

TEST(Accounts, Roles) {
    EXPECT_EQ(parse_role("operator"), Role::Operator);
    EXPECT_EQ(parse_role("customer"), Role::Customer);
    EXPECT_FALSE(parse_role("admin"));
    EXPECT_STREQ(to_string(Role::Customer), "customer");
}
