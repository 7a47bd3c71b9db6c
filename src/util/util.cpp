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
    if (v < 0) return "-" + format_duration(Seconds(-v));
    if (v == 0) return "0s";
    std::string out;
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
