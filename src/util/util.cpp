#include "util/util.hpp"

#include <atomic>
#include <cctype>
#include <ctime>
#include <random>

namespace bmx {

namespace {
std::atomic<std::int64_t> g_offset{0};
}

TimePoint now() {
    return Clock::now() + Seconds(g_offset.load(std::memory_order_relaxed));
}
void set_time_offset(Seconds offset) {
    g_offset.store(offset.count());
}
std::int64_t to_unix(TimePoint t) {
    return std::chrono::duration_cast<Seconds>(t.time_since_epoch()).count();
}
TimePoint from_unix(std::int64_t s) {
    return TimePoint(Seconds(s));
}

std::optional<Seconds> parse_duration(std::string_view text) {
    if (text.empty() || text.size() > 20) return std::nullopt;
    std::int64_t value = 0;
    std::size_t i = 0;
    for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
        value = value * 10 + (text[i] - '0');
        if (value > 100LL * 365 * 86400) return std::nullopt;
    }
    if (i == 0) return std::nullopt;
    std::int64_t unit = 1;
    if (i < text.size()) {
        if (i + 1 != text.size()) return std::nullopt;
        switch (text[i]) {
            case 's':
                unit = 1;
                break;
            case 'm':
                unit = 60;
                break;
            case 'h':
                unit = 3600;
                break;
            case 'd':
                unit = 86400;
                break;
            default:
                return std::nullopt;
        }
    }
    return Seconds(value * unit);
}

std::string format_duration(Seconds s) {
    auto v = s.count();
    if (v == 0) return "0s";
    std::string out;
    if (v < 0) {  // (no "-" + format_duration(-s): GCC 12 warns of an overlapping copy there)
        out.push_back('-');
        v = -v;
    }
    const std::pair<std::int64_t, char> units[] = {{86400, 'd'}, {3600, 'h'}, {60, 'm'}, {1, 's'}};
    for (auto [len, ch] : units) {
        if (v >= len) {
            out += std::to_string(v / len);
            out += ch;
            v %= len;
        }
    }
    return out;
}

std::size_t utf8_sequence(std::string_view s) {
    const auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
    const unsigned char c = b(0);
    std::size_t n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
    if (n == 0 || s.size() < n) return 0;
    for (std::size_t i = 1; i < n; ++i)
        if ((b(i) & 0xc0) != 0x80) return 0;
    if (n == 3 && ((c == 0xe0 && b(1) < 0xa0) || (c == 0xed && b(1) > 0x9f))) return 0;
    if (n == 4 && ((c == 0xf0 && b(1) < 0x90) || (c == 0xf4 && b(1) > 0x8f))) return 0;
    if (n == 2 && c == 0xc2 && b(1) < 0xa0) return 0;  // C1 controls (U+0080-U+009F)
    return n;
}

std::string printable(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
            out += static_cast<char>(c);
            ++i;
        } else if (std::size_t n = c >= 0x80 ? utf8_sequence(s.substr(i)) : 0; n > 0) {
            out.append(s.substr(i, n));
            i += n;
        } else {
            char hex[5];
            std::snprintf(hex, sizeof hex, "\\x%02X", c);
            out += c == '\\' ? "\\\\" : c == '"' ? "\\\"" : hex;
            ++i;
        }
    }
    return out;
}

std::string new_queue_id() {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    static std::atomic<std::uint32_t> counter{0};
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch())
                  .count();
    std::uint64_t hi = static_cast<std::uint64_t>(us) & 0xffffffffffULL;  // 40 bits of time
    std::uint64_t lo = (rng() ^ counter.fetch_add(1)) & 0xffffffULL;      // 24 bits
    char buf[17];
    std::snprintf(buf, sizeof buf, "%010llX%06llX", static_cast<unsigned long long>(hi),
                  static_cast<unsigned long long>(lo));
    return buf;
}

bool valid_domain_name(std::string_view d) {
    if (d.empty() || d.size() > 253 || d.front() == '.' || d.back() == '.' || d.front() == '-')
        return false;
    std::size_t label = 0;
    for (char c : d) {
        if (c == '.') {
            if (label == 0) return false;
            label = 0;
            continue;
        }
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-')) return false;
        if (++label > 63) return false;
    }
    return true;
}

std::string to_lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}

std::string rfc5322_date(TimePoint t) {
    std::time_t tt = Clock::to_time_t(t);
    std::tm tm{};
    gmtime_r(&tt, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    return buf;
}

}  // namespace bmx
