#include "accounts/accounts.hpp"

#include <openssl/sha.h>
#include <sodium.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <stdexcept>

namespace bmx::accounts {
namespace {

void init() {
    static const bool ok = sodium_init() >= 0;
    if (!ok) throw std::runtime_error("libsodium cannot start");
}

}  // namespace

std::string hash_password(const std::string& password) {
    init();
    char out[crypto_pwhash_STRBYTES];
    // libsodium's "interactive" cost (2 passes, 64 MiB): right for a login form.
    if (crypto_pwhash_str_alg(
            out, password.data(), password.size(), crypto_pwhash_OPSLIMIT_INTERACTIVE,
            crypto_pwhash_MEMLIMIT_INTERACTIVE, crypto_pwhash_ALG_ARGON2ID13) != 0)
        throw std::bad_alloc();
    return out;
}

bool verify_password(const std::string& hash, const std::string& password) {
    init();
    if (hash.empty() || hash.size() >= crypto_pwhash_STRBYTES) return false;
    return crypto_pwhash_str_verify(hash.c_str(), password.data(), password.size()) == 0;
}

std::string new_password() {
    init();
    static constexpr std::string_view kChars =
        "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";  // no 0/O, 1/l/I
    std::string pw;
    for (int i = 0; i < 20; ++i)
        pw += kChars[randombytes_uniform(static_cast<std::uint32_t>(kChars.size()))];
    return pw;
}

std::string random_token(std::size_t bytes) {
    init();
    std::string raw(bytes, '\0');
    randombytes_buf(raw.data(), raw.size());
    std::string out(sodium_base64_encoded_len(bytes, sodium_base64_VARIANT_URLSAFE_NO_PADDING),
                    '\0');
    sodium_bin2base64(out.data(), out.size(), reinterpret_cast<const unsigned char*>(raw.data()),
                      raw.size(), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    out.resize(std::strlen(out.c_str()));
    sodium_memzero(raw.data(), raw.size());
    return out;
}

std::string token_hash(std::string_view token) {
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), md);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : md) {
        out += kHex[c >> 4];
        out += kHex[c & 15];
    }
    return out;
}

bool same_secret(std::string_view a, std::string_view b) {
    init();
    return a.size() == b.size() && !a.empty() && sodium_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::optional<Role> parse_role(std::string_view s) {
    if (s == "operator") return Role::Operator;
    if (s == "customer") return Role::Customer;
    return std::nullopt;
}

const char* to_string(Role r) {
    return r == Role::Operator ? "operator" : "customer";
}

std::string session_key(std::string_view id) {
    return token_hash(id);
}

std::string csrf_token(std::string_view id) {  // a different hash than the key's: not in the store
    return token_hash("csrf:" + std::string(id));
}

LoginKeys login_keys(const std::string& ip, const std::string& user) {
    return {"ip:" + ip, "user:" + user};
}

}  // namespace bmx::accounts
