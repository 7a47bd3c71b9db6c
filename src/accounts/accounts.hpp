// accounts: who may use the admin interface — Argon2id password hashes (libsodium's
// crypto_pwhash_str), API tokens (random; the store keeps only their SHA-256), browser sessions
// with their CSRF tokens, and the limiter of failed logins.
// It must never keep, return or log a password or a token in clear, but for handing a new one
// once to whoever created it; and hashing (slow on purpose) must never run on the event loop.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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

// Failed logins: after `max` failures within `window` from one address, or for one account, the
// next tries are refused without checking the password until the window has passed.
class LoginLimiter {
  public:
    LoginLimiter(unsigned max = 5, Seconds window = Seconds(300)) : max_(max), window_(window) {}
    bool blocked(const std::string& ip, const std::string& user, TimePoint t);
    void failed(const std::string& ip, const std::string& user, TimePoint t);
    void succeeded(const std::string& user);

  private:
    bool over(const std::string& key, TimePoint t);
    unsigned max_;
    Seconds window_;
    std::map<std::string, std::vector<TimePoint>> failures_;  // "ip:..." / "user:..."
};

}  // namespace bmx::accounts
