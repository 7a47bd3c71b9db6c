#include "accounts/accounts.hpp"

#include <gtest/gtest.h>

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

TEST(Accounts, FailedLoginsAreCountedByAddressAndByAccount) {
    const auto k = login_keys("192.0.2.1", "ann");
    EXPECT_EQ(k.ip, "ip:192.0.2.1");
    EXPECT_EQ(k.user, "user:ann");
}

TEST(Accounts, Roles) {
    EXPECT_EQ(parse_role("operator"), Role::Operator);
    EXPECT_EQ(parse_role("customer"), Role::Customer);
    EXPECT_FALSE(parse_role("admin"));
    EXPECT_STREQ(to_string(Role::Customer), "customer");
}
