// accounts: who may use the admin interface — Argon2id password hashes (libsodium's
// crypto_pwhash_str), API tokens (random; the store keeps only their SHA-256), browser sessions
// with their CSRF tokens, and the limiter of failed logins.
// It must never keep, return or log a password or a token in clear, but for handing a new one
// once to whoever created it; and hashing (slow on purpose) must never run on the event loop.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "util/util.hpp"

namespace bmx::accounts {

std::string hash_password(const std::string& password);  // Argon2id; throws std::bad_alloc
bool verify_password(const std::string& hash, const std::string& password);
std::string new_password();                                // 20 random letters and digits
std::string random_token(std::size_t bytes = 32);          // URL-safe, no padding
std::string token_hash(std::string_view token);            // SHA-256, hex
bool same_secret(std::string_view a, std::string_view b);  // constant time for equal lengths

enum class Role { Operator, Customer };
std::optional<Role> parse_role(std::string_view s);
const char* to_string(Role r);

// Browser sessions: the cookie's value is a random id. The store keeps only session_key(id), so
// every node of a fleet knows the session and a dump shows no cookie; the CSRF token is derived
// from the id (csrf_token) and is kept nowhere. Idle sessions end after kSessionIdle.
inline constexpr Seconds kSessionIdle{8 * 3600};
std::string session_key(std::string_view id);
std::string csrf_token(std::string_view id);

// Failed logins: after kLoginMaxFailures within kLoginWindow from one address, or for one
// account, the next tries are refused without checking the password until the window has passed.
// The store counts them under these keys, so the limit holds for a whole fleet; each try is
// reserved there before its password is checked (Store::reserve_login_attempt), so parallel
// tries cannot all pass a count made before any of them failed.
inline constexpr std::size_t kLoginMaxFailures = 5;
inline constexpr Seconds kLoginWindow{300};
struct LoginKeys {
    std::string ip, user;  // "ip:ADDRESS", "user:NAME"
};
LoginKeys login_keys(const std::string& ip, const std::string& user);

}  // namespace bmx::accounts
