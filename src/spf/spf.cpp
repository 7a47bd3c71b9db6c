#include "spf/spf.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <vector>

#include "util/util.hpp"

namespace bmx::spf {

namespace asio = boost::asio;
using asio::awaitable;
using asio::ip::address;

const char* to_string(Result r) {
    switch (r) {
        case Result::None:
            return "none";
        case Result::Neutral:
            return "neutral";
        case Result::Pass:
            return "pass";
        case Result::Fail:
            return "fail";
        case Result::SoftFail:
            return "softfail";
        case Result::TempError:
            return "temperror";
        case Result::PermError:
            return "permerror";
    }
    return "?";
}

namespace {

constexpr int kTypeA = 1, kTypePtr = 12, kTypeMx = 15, kTypeTxt = 16, kTypeAaaa = 28;

bool is_alpha(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
bool is_alnum(char c) {
    return is_alpha(c) || is_digit(c);
}
char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}
bool visible(char c) {  // %x21-7E
    auto u = static_cast<unsigned char>(c);
    return u >= 0x21 && u <= 0x7e;
}

// ---------------------------------------------------------------------------------------------
// Macros (RFC 7208 7.1): parsed once with the record, so a syntax error anywhere is a permerror
// before anything is evaluated; expanded when a term needs its target.

struct MacroToken {
    bool macro = false;
    std::string text;         // literal: the characters, %% %_ %- already resolved
    bool escape = false;      // literal written as %%, %_ or %- (a macro-expand in the ABNF)
    char letter = 0;          // macro: lower-case letter
    bool url_escape = false;  // macro: written in upper case
    int parts = 0;            // macro: keep this many right-hand parts; 0 = all
    bool reverse = false;
    std::string delimiters;  // "" = "."
};
using MacroString = std::vector<MacroToken>;

struct MacroSyntax {
    bool spaces = false;       // explain-string: SP allowed between macro-strings
    bool exp_letters = false;  // c, r, t allowed (explanations only, 7.3)
};

std::optional<MacroString> parse_macro_string(std::string_view s, MacroSyntax syntax) {
    MacroString out;
    auto literal = [&out](std::string_view text, bool escape) {
        if (!escape && !out.empty() && !out.back().macro && !out.back().escape) {
            out.back().text += text;
            return;
        }
        MacroToken t;
        t.text = std::string(text);
        t.escape = escape;
        out.push_back(std::move(t));
    };
    std::size_t i = 0;
    while (i < s.size()) {
        char c = s[i];
        if (c != '%') {
            if (!visible(c) && !(syntax.spaces && c == ' ')) return std::nullopt;
            literal(s.substr(i, 1), false);
            ++i;
            continue;
        }
        if (i + 1 >= s.size()) return std::nullopt;
        char n = s[i + 1];
        i += 2;
        if (n == '%') {
            literal("%", true);
            continue;
        }
        if (n == '_') {
            literal(" ", true);
            continue;
        }
        if (n == '-') {
            literal("%20", true);
            continue;
        }
        if (n != '{' || i >= s.size()) return std::nullopt;
        MacroToken m;
        m.macro = true;
        m.letter = lower(s[i]);
        m.url_escape = m.letter != s[i];
        std::string_view letters = syntax.exp_letters ? "slodipvhcrt" : "slodipvh";
        if (letters.find(m.letter) == std::string_view::npos) return std::nullopt;
        ++i;
        bool digits = false;
        while (i < s.size() && is_digit(s[i])) {
            digits = true;
            m.parts = std::min(m.parts * 10 + (s[i] - '0'), 1000);
            ++i;
        }
        if (digits && m.parts == 0) return std::nullopt;  // 7.3: the DIGIT must be nonzero
        if (i < s.size() && lower(s[i]) == 'r') {
            m.reverse = true;
            ++i;
        }
        while (i < s.size() && std::string_view(".-+,/_=").find(s[i]) != std::string_view::npos)
            m.delimiters += s[i++];
        if (i >= s.size() || s[i] != '}') return std::nullopt;
        ++i;
        out.push_back(std::move(m));
    }
    return out;
}

// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
bool valid_toplabel(std::string_view t) {
    if (t.empty()) return false;
    bool alpha = false, dash = false;
    for (char c : t) {
        if (c == '-')
            dash = true;
        else if (is_alpha(c))
            alpha = true;
        else if (!is_digit(c))
            return false;
    }
    if (dash) return is_alnum(t.front()) && is_alnum(t.back());
    return alpha;
}

// domain-spec = macro-string domain-end; domain-end = ( "." toplabel [ "." ] ) / macro-expand
std::optional<MacroString> parse_domain_spec(std::string_view s) {
    auto ms = parse_macro_string(s, {});
    if (!ms || ms->empty()) return std::nullopt;
    const MacroToken& last = ms->back();
    if (last.macro || last.escape) return ms;
    std::string_view t = last.text;
    if (t.ends_with('.')) t.remove_suffix(1);
    auto dot = t.rfind('.');
    if (dot == std::string_view::npos || !valid_toplabel(t.substr(dot + 1))) return std::nullopt;
    return ms;
}

bool needs_p(const MacroString& ms) {
    return std::any_of(ms.begin(), ms.end(),
                       [](const MacroToken& t) { return t.macro && t.letter == 'p'; });
}

struct MacroValues {
    std::string s, l, o, d, i, p, v, h, c, r, t;
    const std::string& get(char letter) const {
        switch (letter) {
            case 's':
                return s;
            case 'l':
                return l;
            case 'o':
                return o;
            case 'd':
                return d;
            case 'i':
                return i;
            case 'p':
                return p;
            case 'v':
                return v;
            case 'h':
                return h;
            case 'c':
                return c;
            case 'r':
                return r;
            default:
                return t;
        }
    }
};

std::string url_escape(std::string_view s) {  // 7.3: all but unreserved (RFC 3986)
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    for (char c : s) {
        if (is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            out += c;
        } else {
            auto u = static_cast<unsigned char>(c);
            out += '%';
            out += hex[u >> 4];
            out += hex[u & 15];
        }
    }
    return out;
}

std::string transform(const std::string& value, const MacroToken& m) {
    if (m.parts == 0 && !m.reverse && m.delimiters.empty()) return value;
    std::string_view delims = m.delimiters.empty() ? std::string_view(".") : m.delimiters;
    std::vector<std::string> parts(1);
    for (char c : value) {
        if (delims.find(c) != std::string_view::npos)
            parts.emplace_back();
        else
            parts.back() += c;
    }
    if (m.reverse) std::reverse(parts.begin(), parts.end());
    std::size_t first = 0;
    if (m.parts > 0 && static_cast<std::size_t>(m.parts) < parts.size())
        first = parts.size() - static_cast<std::size_t>(m.parts);
    std::string out;
    for (std::size_t k = first; k < parts.size(); ++k) {
        if (k > first) out += '.';
        out += parts[k];
    }
    return out;
}

std::string expand_tokens(const MacroString& ms, const MacroValues& v) {
    std::string out;
    for (const auto& t : ms) {
        if (!t.macro) {
            out += t.text;
            continue;
        }
        std::string value = transform(v.get(t.letter), t);
        out += t.url_escape ? url_escape(value) : value;
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Names and addresses.

// A target name ready for DNS (7.3, 4.8): one trailing dot dropped, left labels cut until it fits
// 253 octets. nullopt when it cannot be a DNS name (empty or over-long label): no match.
std::optional<std::string> query_name(std::string n) {
    if (n.ends_with('.')) n.pop_back();
    while (n.size() > 253) {
        auto dot = n.find('.');
        if (dot == std::string::npos) return std::nullopt;
        n.erase(0, dot + 1);
    }
    if (n.empty()) return std::nullopt;
    std::size_t start = 0;
    for (;;) {
        auto dot = n.find('.', start);
        std::size_t len = (dot == std::string::npos ? n.size() : dot) - start;
        if (len == 0 || len > 63) return std::nullopt;
        if (dot == std::string::npos) break;
        start = dot + 1;
    }
    return n;
}

// 4.3: a <domain> that is malformed or not multi-label gives "none" without a lookup.
bool valid_domain(std::string_view n) {
    if (n.empty() || n.size() > 253) return false;
    if (!std::all_of(n.begin(), n.end(), visible)) return false;
    std::size_t start = 0, labels = 0;
    std::string_view last;
    for (;;) {
        auto dot = n.find('.', start);
        std::size_t end = dot == std::string_view::npos ? n.size() : dot;
        if (end == start || end - start > 63) return false;
        ++labels;
        last = n.substr(start, end - start);
        if (dot == std::string_view::npos) break;
        start = dot + 1;
    }
    return labels >= 2 && valid_toplabel(last);
}

struct Ip {
    bool v4 = true;
    std::array<unsigned char, 16> bytes{};  // v4: the first four
};

Ip normalize(const address& a) {  // 5/9/2: an IPv4-mapped IPv6 address is IPv4
    Ip ip;
    if (a.is_v6() && !a.to_v6().is_v4_mapped()) {
        ip.v4 = false;
        ip.bytes = a.to_v6().to_bytes();
        return ip;
    }
    auto b = a.is_v4() ? a.to_v4().to_bytes()
                       : asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).to_bytes();
    std::copy(b.begin(), b.end(), ip.bytes.begin());
    return ip;
}

bool prefix_equal(const unsigned char* a, const unsigned char* b, int bits) {
    int full = bits / 8, rest = bits % 8;
    if (!std::equal(a, a + full, b)) return false;
    if (rest == 0) return true;
    auto mask = static_cast<unsigned char>(0xff << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}

// One A or AAAA rdata against the client, within the term's CIDR length.
bool rdata_matches(const Ip& ip, std::string_view rd, int cidr4, int cidr6) {
    auto* p = reinterpret_cast<const unsigned char*>(rd.data());
    if (ip.v4) return rd.size() == 4 && prefix_equal(ip.bytes.data(), p, cidr4);
    return rd.size() == 16 && prefix_equal(ip.bytes.data(), p, cidr6);
}

bool rdata_is(const Ip& ip, std::string_view rd) {
    return rdata_matches(ip, rd, 32, 128);
}

std::string nibbles(const Ip& ip, bool reversed) {  // %{i} for IPv6 and the ip6.arpa name
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (int k = 0; k < 32; ++k) {
        int n = reversed ? 31 - k : k;
        unsigned char b = ip.bytes[static_cast<std::size_t>(n / 2)];
        if (k) out += '.';
        out += hex[n % 2 ? (b & 15) : (b >> 4)];
    }
    return out;
}

std::string dotted(const Ip& ip, bool reversed) {
    std::string out;
    for (int k = 0; k < 4; ++k) {
        if (k) out += '.';
        out += std::to_string(ip.bytes[static_cast<std::size_t>(reversed ? 3 - k : k)]);
    }
    return out;
}

std::string readable(const Ip& ip) {  // %{c}
    if (ip.v4) return dotted(ip, false);
    return asio::ip::address_v6(ip.bytes).to_string();
}

std::string reverse_name(const Ip& ip) {
    return ip.v4 ? dotted(ip, true) + ".in-addr.arpa" : nibbles(ip, true) + ".ip6.arpa";
}

std::optional<std::string> txt_string(std::string_view rd) {  // the strings, joined (3.3)
    std::string out;
    std::size_t i = 0;
    while (i < rd.size()) {
        std::size_t len = static_cast<unsigned char>(rd[i]);
        if (i + 1 + len > rd.size()) return std::nullopt;
        out.append(rd.substr(i + 1, len));
        i += 1 + len;
    }
    return out;
}

bool is_spf_record(std::string_view s) {  // 4.5: "v=spf1" then a space or the end
    return s.size() >= 6 && iequals(s.substr(0, 6), "v=spf1") && (s.size() == 6 || s[6] == ' ');
}

// ---------------------------------------------------------------------------------------------
// Records (RFC 7208 4.6, 5, 6).

enum class Mech { All, Include, A, Mx, Ptr, Ip4, Ip6, Exists };

struct Term {
    Mech mech = Mech::All;
    Result qualifier = Result::Pass;
    std::string text;  // as written, for Outcome::mechanism
    bool has_target = false;
    MacroString target;
    int cidr4 = 32, cidr6 = 128;
    std::array<unsigned char, 16> network{};
};

struct Record {
    std::vector<Term> terms;
    std::optional<MacroString> redirect, exp;
    bool has_all = false;
};

// ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT); ip6: 0*2DIGIT; within the address size.
std::optional<int> parse_cidr(std::string_view d, int max) {
    if (d.empty() || d.size() > 3 || !std::all_of(d.begin(), d.end(), is_digit)) {
        return std::nullopt;
    }
    if (d.size() > 1 && d[0] == '0') return std::nullopt;
    int v = 0;
    for (char c : d) v = v * 10 + (c - '0');
    if (v > max) return std::nullopt;
    return v;
}

// ip4-network = qnum "." qnum "." qnum "." qnum, no leading zeros.
bool parse_ip4(std::string_view s, unsigned char* out) {
    for (int k = 0; k < 4; ++k) {
        if (k) {
            if (s.empty() || s[0] != '.') return false;
            s.remove_prefix(1);
        }
        std::size_t n = 0;
        while (n < s.size() && n < 4 && is_digit(s[n])) ++n;
        if (n == 0 || n > 3 || (n > 1 && s[0] == '0')) return false;
        int v = 0;
        for (std::size_t j = 0; j < n; ++j) v = v * 10 + (s[j] - '0');
        if (v > 255) return false;
        out[k] = static_cast<unsigned char>(v);
        s.remove_prefix(n);
    }
    return s.empty();
}

bool parse_ip6(std::string_view s, unsigned char* out) {
    if (s.empty() || s.size() > 45) return false;
    std::string z(s);
    return ::inet_pton(AF_INET6, z.c_str(), out) == 1;
}

// Strips a trailing `sep` + digits from `rest`; returns the digits.
std::optional<std::string_view> strip_cidr(std::string_view& rest, std::string_view sep) {
    std::size_t k = rest.size();
    while (k > 0 && is_digit(rest[k - 1])) --k;
    if (k == rest.size() || k < sep.size() || rest.substr(k - sep.size(), sep.size()) != sep) {
        return std::nullopt;
    }
    auto digits = rest.substr(k);
    rest = rest.substr(0, k - sep.size());
    return digits;
}

// [":" domain-spec]; `required` for include and exists.
bool parse_target(std::string_view rest, bool required, Term& t) {
    if (rest.empty()) return !required;
    if (rest[0] != ':') return false;
    auto spec = parse_domain_spec(rest.substr(1));
    if (!spec) return false;
    t.has_target = true;
    t.target = std::move(*spec);
    return true;
}

bool parse_mechanism(std::string_view term, Term& t) {
    t.text = std::string(term);
    std::string_view q = "+-?~";
    if (!term.empty() && q.find(term[0]) != std::string_view::npos) {
        const Result results[] = {Result::Pass, Result::Fail, Result::Neutral, Result::SoftFail};
        t.qualifier = results[q.find(term[0])];
        term.remove_prefix(1);
    }
    auto end = term.find_first_of(":/");
    std::string name = to_lower(term.substr(0, end));
    std::string_view rest = end == std::string_view::npos ? std::string_view() : term.substr(end);
    if (name == "all") {
        t.mech = Mech::All;
        return rest.empty();
    }
    if (name == "include" || name == "exists") {
        t.mech = name == "include" ? Mech::Include : Mech::Exists;
        return parse_target(rest, true, t);
    }
    if (name == "ptr") {
        t.mech = Mech::Ptr;
        return parse_target(rest, false, t);
    }
    if (name == "a" || name == "mx") {  // [":" domain-spec] [dual-cidr-length]
        t.mech = name == "a" ? Mech::A : Mech::Mx;
        if (auto d6 = strip_cidr(rest, "//")) {
            auto v = parse_cidr(*d6, 128);
            if (!v) return false;
            t.cidr6 = *v;
        }
        if (auto d4 = strip_cidr(rest, "/")) {
            auto v = parse_cidr(*d4, 32);
            if (!v) return false;
            t.cidr4 = *v;
        }
        return parse_target(rest, false, t);
    }
    if (name == "ip4" || name == "ip6") {  // ":" network [ "/" cidr ]
        bool v4 = name == "ip4";
        t.mech = v4 ? Mech::Ip4 : Mech::Ip6;
        if (rest.empty() || rest[0] != ':') return false;
        rest.remove_prefix(1);
        auto slash = rest.find('/');
        auto net = rest.substr(0, slash);
        if (!(v4 ? parse_ip4(net, t.network.data()) : parse_ip6(net, t.network.data()))) {
            return false;
        }
        if (slash != std::string_view::npos) {
            auto v = parse_cidr(rest.substr(slash + 1), v4 ? 32 : 128);
            if (!v) return false;
            (v4 ? t.cidr4 : t.cidr6) = *v;
        }
        return true;
    }
    return false;
}

// The whole record, before anything is evaluated (4.6: syntax errors anywhere are permerror).
std::optional<Record> parse_record(std::string_view text, std::string& problem) {
    Record rec;
    std::string_view body = text.substr(6);
    std::size_t i = 0;
    while (i < body.size()) {
        if (body[i] == ' ') {
            ++i;
            continue;
        }
        auto end = body.find(' ', i);
        std::string_view term = body.substr(i, end == std::string_view::npos ? end : end - i);
        i = end == std::string_view::npos ? body.size() : end;
        // modifier = name "=" ...; name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
        std::size_t k = 0;
        if (is_alpha(term[0])) {
            k = 1;
            while (k < term.size() &&
                   (is_alnum(term[k]) || term[k] == '-' || term[k] == '_' || term[k] == '.'))
                ++k;
        }
        if (k > 0 && k < term.size() && term[k] == '=') {
            std::string name = to_lower(term.substr(0, k));
            std::string_view value = term.substr(k + 1);
            if (name == "redirect" || name == "exp") {
                auto& slot = name == "redirect" ? rec.redirect : rec.exp;
                if (slot) {
                    problem = name + "= appears twice";
                    return std::nullopt;
                }
                slot = parse_domain_spec(value);
                if (!slot) {
                    problem = "bad domain-spec in '" + std::string(term) + "'";
                    return std::nullopt;
                }
            } else if (!parse_macro_string(value, {false, true})) {  // unknown: ignored if valid
                problem = "bad macro-string in '" + std::string(term) + "'";
                return std::nullopt;
            }
            continue;
        }
        Term t;
        if (!parse_mechanism(term, t)) {
            problem = "syntax error in '" + std::string(term) + "'";
            return std::nullopt;
        }
        rec.has_all = rec.has_all || t.mech == Mech::All;
        rec.terms.push_back(std::move(t));
    }
    return rec;
}

// Keeps what goes into explanations, headers and logs printable: control bytes and bytes that
// are not UTF-8 become '?'; a UTF-8 sender (SMTPUTF8, RFC 6532 headers) stays intact.
std::string printable(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t n = visible(s[i]) || s[i] == ' ' ? 1 : utf8_sequence(s.substr(i));
        out.append(n ? s.substr(i, n) : std::string_view("?"));
        i += n ? n : 1;
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// One check_host() evaluation, with its include/redirect recursion sharing the limits.

class Evaluator {
  public:
    Evaluator(Dns& dns, const address& ip, const std::string& sender, const std::string& helo,
              const Options& opts)
        : dns_(dns), ip_(normalize(ip)), opts_(opts), start_(std::chrono::steady_clock::now()) {
        auto at = sender.rfind('@');
        std::string local = at == std::string::npos ? std::string() : sender.substr(0, at);
        if (local.empty()) local = "postmaster";  // 4.3
        vars_.o = at == std::string::npos ? sender : sender.substr(at + 1);
        vars_.l = local;
        vars_.s = local + "@" + vars_.o;
        vars_.h = helo;
        vars_.i = ip_.v4 ? dotted(ip_, false) : nibbles(ip_, false);
        vars_.v = ip_.v4 ? "in-addr" : "ip6";
        vars_.c = readable(ip_);
        vars_.r = opts.receiver.empty() ? "unknown" : opts.receiver;
        vars_.t = std::to_string(opts.timestamp ? *opts.timestamp : to_unix(now()));
    }

    awaitable<Outcome> check(const std::string& domain, bool top);

  private:
    enum class Match { No, Yes, Temp, Perm };

    awaitable<dns::Answer> lookup(const std::string& name, int rrtype);
    awaitable<Match> evaluate(const Term& t, const std::string& domain);
    awaitable<Match> match_addresses(const std::string& name, int cidr4, int cidr6,
                                     bool counts_void);
    awaitable<Match> match_mx(const std::string& name, const Term& t);
    awaitable<Match> match_ptr(const std::string& target);
    awaitable<Match> match_include(const std::string& target);
    awaitable<std::vector<std::string>> ptr_names(dns::Status& status);
    awaitable<bool> has_client_ip(const std::string& name);
    awaitable<std::string> validated_name(const std::string& domain);  // %{p}
    awaitable<std::string> expand(const MacroString& ms, const std::string& domain);
    awaitable<std::string> explain(const MacroString& exp, const std::string& domain);

    bool count_term() {
        if (++terms_ <= kMaxDnsTerms) return true;
        problem_ = "more than " + std::to_string(kMaxDnsTerms) + " DNS-querying terms";
        return false;
    }
    bool count_void() {
        if (++voids_ <= kMaxVoidLookups) return true;
        problem_ = "more than " + std::to_string(kMaxVoidLookups) + " void DNS lookups";
        return false;
    }

    Dns& dns_;
    Ip ip_;
    const Options& opts_;
    std::chrono::steady_clock::time_point start_;
    MacroValues vars_;
    int terms_ = 0, voids_ = 0;
    bool timed_out_ = false;
    std::string problem_;
    std::optional<std::vector<std::string>> validated_;  // %{p} candidates, looked up once
};

awaitable<dns::Answer> Evaluator::lookup(const std::string& name, int rrtype) {
    if (std::chrono::steady_clock::now() - start_ > opts_.time_limit) {
        timed_out_ = true;
        dns::Answer late;
        late.error = "SPF time limit reached";
        co_return late;
    }
    dns::Answer a = co_await dns_.query(name, rrtype);
    if (a.status == dns::Status::Bogus) a.status = dns::Status::TempFail;
    co_return a;
}

awaitable<std::string> Evaluator::expand(const MacroString& ms, const std::string& domain) {
    MacroValues v = vars_;
    v.d = domain;
    if (needs_p(ms)) v.p = co_await validated_name(domain);
    co_return expand_tokens(ms, v);
}

awaitable<std::vector<std::string>> Evaluator::ptr_names(dns::Status& status) {
    const std::string rev = reverse_name(ip_);
    dns::Answer a = co_await lookup(rev, kTypePtr);
    status = a.status;
    std::vector<std::string> names;
    for (const auto& rd : a.rdata) {
        if (names.size() >= static_cast<std::size_t>(kMaxNamesPerTerm)) break;  // 4.6.4
        std::size_t pos = 0;
        auto n = dns::decode_name(rd, pos);
        if (n && !n->empty()) names.push_back(*n);
    }
    co_return names;
}

awaitable<bool> Evaluator::has_client_ip(const std::string& name) {
    dns::Answer a = co_await lookup(name, ip_.v4 ? kTypeA : kTypeAaaa);
    bool found = false;
    if (a.status == dns::Status::Ok) {  // 5.5: a DNS error skips the name
        for (const auto& rd : a.rdata) found = found || rdata_is(ip_, rd);
    }
    co_return found;
}

awaitable<std::string> Evaluator::validated_name(const std::string& domain) {
    if (!validated_) {
        dns::Status status;
        std::vector<std::string> names = co_await ptr_names(status);
        std::vector<std::string> ok;
        for (const auto& n : names) {
            bool valid = co_await has_client_ip(n);
            if (valid) ok.push_back(n);
        }
        validated_ = std::move(ok);
    }
    std::string d = to_lower(domain);
    if (d.ends_with('.')) d.pop_back();
    for (const auto& n : *validated_)  // 7.3: the domain itself, else a subdomain, else any
        if (n == d) co_return n;
    for (const auto& n : *validated_)
        if (n.ends_with("." + d)) co_return n;
    if (!validated_->empty()) co_return validated_->front();
    co_return std::string("unknown");
}

awaitable<Evaluator::Match> Evaluator::match_addresses(const std::string& name, int cidr4,
                                                       int cidr6, bool counts_void) {
    dns::Answer a = co_await lookup(name, ip_.v4 ? kTypeA : kTypeAaaa);
    if (a.status == dns::Status::TempFail) {
        problem_ = "address lookup for " + name + ": " + a.error;
        co_return Match::Temp;
    }
    if (a.status != dns::Status::Ok) {
        if (counts_void && !count_void()) co_return Match::Perm;
        co_return Match::No;
    }
    for (const auto& rd : a.rdata)
        if (rdata_matches(ip_, rd, cidr4, cidr6)) co_return Match::Yes;
    co_return Match::No;
}

awaitable<Evaluator::Match> Evaluator::match_mx(const std::string& name, const Term& t) {
    dns::Answer a = co_await lookup(name, kTypeMx);
    if (a.status == dns::Status::TempFail) {
        problem_ = "MX lookup for " + name + ": " + a.error;
        co_return Match::Temp;
    }
    if (a.status != dns::Status::Ok) {
        if (!count_void()) co_return Match::Perm;
        co_return Match::No;
    }
    std::vector<std::string> hosts;
    for (const auto& rd : a.rdata)
        if (auto mx = dns::decode_mx(rd)) hosts.push_back(mx->host);
    if (hosts.size() > static_cast<std::size_t>(kMaxNamesPerTerm)) {  // 4.6.4
        problem_ = "mx: " + name + " has more than " + std::to_string(kMaxNamesPerTerm) + " MX";
        co_return Match::Perm;
    }
    for (const auto& host : hosts) {
        if (host.empty()) continue;  // null MX (RFC 7505): no host
        Match m = co_await match_addresses(host, t.cidr4, t.cidr6, false);
        if (m != Match::No) co_return m;
    }
    co_return Match::No;
}

awaitable<Evaluator::Match> Evaluator::match_ptr(const std::string& target) {
    dns::Status status;
    std::vector<std::string> names = co_await ptr_names(status);
    if (status == dns::Status::NxDomain || status == dns::Status::NoData) {
        if (!count_void()) co_return Match::Perm;
    }
    const std::string t = to_lower(target);
    for (const auto& n : names) {  // 5.5: a DNS error on the PTR lookup is no match
        if (n != t && !n.ends_with("." + t)) continue;
        bool valid = co_await has_client_ip(n);
        if (valid) co_return Match::Yes;
    }
    co_return Match::No;
}

awaitable<Evaluator::Match> Evaluator::match_include(const std::string& target) {
    Outcome sub = co_await check(target, false);
    switch (sub.result) {  // 5.2
        case Result::Pass:
            co_return Match::Yes;
        case Result::Fail:
        case Result::SoftFail:
        case Result::Neutral:
            co_return Match::No;
        case Result::TempError:
            problem_ = sub.problem;
            co_return Match::Temp;
        case Result::PermError:
            problem_ = sub.problem;
            co_return Match::Perm;
        case Result::None:
            break;
    }
    problem_ = "include:" + target + " has no SPF record";
    co_return Match::Perm;
}

awaitable<Evaluator::Match> Evaluator::evaluate(const Term& t, const std::string& domain) {
    if (t.mech == Mech::All) co_return Match::Yes;
    if (t.mech == Mech::Ip4 || t.mech == Mech::Ip6) {
        bool v4 = t.mech == Mech::Ip4;
        if (ip_.v4 != v4) co_return Match::No;
        bool in = prefix_equal(ip_.bytes.data(), t.network.data(), v4 ? t.cidr4 : t.cidr6);
        co_return in ? Match::Yes : Match::No;
    }
    if (!count_term()) co_return Match::Perm;
    std::string target = domain;
    if (t.has_target) target = co_await expand(t.target, domain);
    auto name = query_name(target);
    if (t.mech == Mech::Include) {
        if (!name) {
            problem_ = "include:" + target + ": not a domain name";
            co_return Match::Perm;
        }
        co_return co_await match_include(*name);
    }
    if (!name) co_return Match::No;  // 4.3/4.8: a name DNS cannot hold does not exist
    if (t.mech == Mech::A) co_return co_await match_addresses(*name, t.cidr4, t.cidr6, true);
    if (t.mech == Mech::Mx) co_return co_await match_mx(*name, t);
    if (t.mech == Mech::Ptr) co_return co_await match_ptr(*name);
    // exists: an A lookup, whatever the client's address family (5.7).
    dns::Answer a = co_await lookup(*name, kTypeA);
    if (a.status == dns::Status::TempFail) {
        problem_ = "exists:" + *name + ": " + a.error;
        co_return Match::Temp;
    }
    if (a.status == dns::Status::Ok && !a.rdata.empty()) co_return Match::Yes;
    if (!count_void()) co_return Match::Perm;
    co_return Match::No;
}

awaitable<std::string> Evaluator::explain(const MacroString& exp, const std::string& domain) {
    // 6.2: any trouble here means "no explanation", never a different result.
    std::string target = co_await expand(exp, domain);
    auto name = query_name(target);
    if (!name) co_return std::string();
    dns::Answer a = co_await lookup(*name, kTypeTxt);
    if (a.status != dns::Status::Ok || a.rdata.size() != 1) co_return std::string();
    auto text = txt_string(a.rdata[0]);
    if (!text) co_return std::string();
    auto ms = parse_macro_string(*text, {true, true});
    if (!ms) co_return std::string();
    std::string out = co_await expand(*ms, domain);
    co_return printable(out);
}

awaitable<Outcome> Evaluator::check(const std::string& domain, bool top) {
    Outcome out;
    out.domain = domain;
    if (out.domain.ends_with('.')) out.domain.pop_back();
    const std::string name = out.domain;
    if (!valid_domain(name)) {
        out.problem = "'" + printable(name) + "' is not a valid domain name";
        co_return out;
    }
    dns::Answer txt = co_await lookup(name, kTypeTxt);
    if (txt.status == dns::Status::TempFail) {
        out.result = Result::TempError;
        out.problem = "TXT lookup for " + name + ": " + txt.error;
        co_return out;
    }
    std::vector<std::string> records;
    for (const auto& rd : txt.rdata) {
        auto s = txt_string(rd);
        if (s && is_spf_record(*s)) records.push_back(std::move(*s));
    }
    if (records.empty()) {
        out.problem = "no SPF record for " + name;
        co_return out;
    }
    if (records.size() > 1) {  // 4.5
        out.result = Result::PermError;
        out.problem = std::to_string(records.size()) + " SPF records for " + name;
        co_return out;
    }
    std::string problem;
    auto rec = parse_record(records[0], problem);
    if (!rec) {
        out.result = Result::PermError;
        out.problem = name + ": " + printable(problem);
        co_return out;
    }
    for (const auto& term : rec->terms) {
        Match m = co_await evaluate(term, name);
        if (timed_out_) {
            out.result = Result::TempError;
            out.problem =
                "SPF time limit (" + std::to_string(opts_.time_limit.count()) + "s) reached";
            co_return out;
        }
        if (m == Match::No) continue;
        out.mechanism = printable(term.text);
        if (m == Match::Temp || m == Match::Perm) {
            out.result = m == Match::Temp ? Result::TempError : Result::PermError;
            out.problem = printable(problem_);
            co_return out;
        }
        out.result = term.qualifier;
        if (out.result == Result::Fail && top && rec->exp) {
            out.explanation = co_await explain(*rec->exp, name);
        }
        co_return out;
    }
    if (rec->redirect && !rec->has_all) {  // 6.1
        if (!count_term()) {
            out.result = Result::PermError;
            out.problem = problem_;
            co_return out;
        }
        std::string target = co_await expand(*rec->redirect, name);
        auto next = query_name(target);
        if (!next) {
            out.result = Result::PermError;
            out.problem = "redirect=" + printable(target) + ": not a domain name";
            co_return out;
        }
        Outcome sub = co_await check(*next, top);
        if (sub.result == Result::None) {
            sub.result = Result::PermError;
            sub.problem = "redirect=" + printable(*next) + ": no SPF record";
        }
        co_return sub;
    }
    out.result = Result::Neutral;  // 4.7
    out.mechanism = "default";
    co_return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::string ResolverDns::presentation(std::string_view name) {
    std::string out;
    for (char c : name) {
        if (is_alnum(c) || c == '-' || c == '_' || c == '.') {
            out += c;
        } else {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\%03u",
                          static_cast<unsigned>(static_cast<unsigned char>(c)));
            out += buf;
        }
    }
    return out;
}

awaitable<dns::Answer> ResolverDns::query(const std::string& name, int rrtype) {
    const std::string text = presentation(name);
    dns::Answer a = co_await resolver_.query(text, rrtype);
    co_return a;
}

awaitable<Outcome> check_host(Dns& dns, const address& ip, const std::string& domain,
                              const std::string& sender, const std::string& helo,
                              const Options& options) {
    Evaluator ev(dns, ip, sender, helo, options);
    Outcome out = co_await ev.check(domain, true);
    co_return out;
}

awaitable<Outcome> check_host(Dns& dns, const address& ip, const std::string& domain,
                              const std::string& sender, const std::string& helo) {
    const Options options;
    Outcome out = co_await check_host(dns, ip, domain, sender, helo, options);
    co_return out;
}

awaitable<Outcome> check_mail_from(Dns& dns, const address& ip, const std::string& sender,
                                   const std::string& helo, const Options& options) {
    std::string mailbox = sender.empty() ? "postmaster@" + helo : sender;  // 2.4
    auto at = mailbox.rfind('@');
    std::string domain = at == std::string::npos ? mailbox : mailbox.substr(at + 1);
    Outcome out = co_await check_host(dns, ip, domain, mailbox, helo, options);
    out.identity = "mailfrom";
    co_return out;
}

awaitable<Outcome> check_helo(Dns& dns, const address& ip, const std::string& helo,
                              const Options& options) {
    const std::string mailbox = "postmaster@" + helo;  // 2.3
    Outcome out = co_await check_host(dns, ip, helo, mailbox, helo, options);
    out.identity = "helo";
    co_return out;
}

// ---------------------------------------------------------------------------------------------
// Received-SPF (RFC 7208 9.1).

namespace {

constexpr std::size_t kMaxValue = 400;  // keeps every folded line far below 998 octets

bool is_atext(char c) {
    return is_alnum(c) || std::string_view("!#$%&'*+-/=?^_`{|}~").find(c) != std::string_view::npos;
}

bool is_dot_atom(std::string_view s) {
    if (s.empty() || s.front() == '.' || s.back() == '.') return false;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '.') {
            if (s[i + 1] == '.') return false;
        } else if (!is_atext(s[i])) {
            return false;
        }
    }
    return true;
}

std::string header_value(std::string_view raw) {  // dot-atom / quoted-string
    std::string v = printable(raw.substr(0, kMaxValue));
    if (is_dot_atom(v)) return v;
    std::string out = "\"";
    for (char c : v) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

std::string comment_text(std::string_view raw) {  // ctext: no ( ) \ unescaped
    std::string out;
    for (char c : printable(raw.substr(0, kMaxValue))) {
        if (c == '(' || c == ')' || c == '\\') out += '\\';
        out += c;
    }
    return out;
}

}  // namespace

std::string received_spf_header(const Outcome& outcome, const address& ip,
                                const std::string& sender, const std::string& helo,
                                const std::string& receiver_hostname) {
    const bool helo_identity = outcome.identity == "helo";
    const std::string from = sender.empty() ? "postmaster@" + helo : sender;
    const std::string who = comment_text(helo_identity ? helo : from);
    const std::string client = ip.to_string();
    const std::string receiver = receiver_hostname.empty() ? "unknown" : receiver_hostname;
    std::string comment = comment_text(receiver) + ": ";
    switch (outcome.result) {
        case Result::Pass:
            comment += "domain of " + who + " designates " + client + " as permitted sender";
            break;
        case Result::Fail:
            comment +=
                "domain of " + who + " does not designate " + client + " as permitted sender";
            break;
        case Result::SoftFail:
            comment += "transitioning domain of " + who + " does not designate " + client +
                       " as permitted sender";
            break;
        case Result::Neutral:
            comment += client + " is neither permitted nor denied by domain of " + who;
            break;
        case Result::None:
            comment += "domain of " + who + " does not provide an SPF record";
            break;
        case Result::TempError:
            comment += "temporary error in processing during lookup of " + who;
            break;
        case Result::PermError:
            comment += "permanent error in processing domain of " + who;
            break;
    }

    std::vector<std::string> tokens;
    std::size_t start = 0;
    std::string c = "(" + comment + ")";
    while (start < c.size()) {  // the comment may fold at its spaces
        auto sp = c.find(' ', start);
        if (sp == std::string::npos) sp = c.size();
        if (sp > start) tokens.push_back(c.substr(start, sp - start));
        start = sp + 1;
    }
    std::vector<std::pair<std::string, std::string>> pairs = {
        {"client-ip", client},
        {"envelope-from", from},
        {"helo", helo},
        {"receiver", receiver},
        {"identity", helo_identity ? "helo" : "mailfrom"}};
    if (!outcome.mechanism.empty()) pairs.emplace_back("mechanism", outcome.mechanism);
    if (!outcome.problem.empty() &&
        (outcome.result == Result::TempError || outcome.result == Result::PermError)) {
        pairs.emplace_back("problem", outcome.problem);
    }
    for (std::size_t k = 0; k < pairs.size(); ++k) {
        tokens.push_back(pairs[k].first + "=" + header_value(pairs[k].second) +
                         (k + 1 < pairs.size() ? ";" : ""));
    }

    std::string out;
    std::string line = std::string("Received-SPF: ") + to_string(outcome.result);
    for (const auto& tok : tokens) {
        if (line.size() + 1 + tok.size() > 78 && line.size() > 1) {
            out += line + "\r\n";
            line = " " + tok;
        } else {
            line += " " + tok;
        }
    }
    return out + line + "\r\n";
}

}  // namespace bmx::spf
