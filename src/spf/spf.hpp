// spf: the Sender Policy Framework check (RFC 7208) — is this client IP allowed to send mail for
// the MAIL FROM (or HELO) domain? check_host() fetches the domain's one "v=spf1" TXT record through
// a small Dns interface and evaluates it as sections 4 to 7 say: every mechanism and modifier, the
// macros, the explanation (exp=), and the processing limits — 10 terms that query DNS, 2 void
// lookups, 10 names per mx/ptr, a time budget. It also writes the Received-SPF: header field
// (section 9.1). It reports a result and never decides what happens to the mail: that is policy's
// job. It must never turn a temporary DNS failure into "fail", never query more than the limits
// allow however the published record is written, never block the event loop, and never pass on
// bytes from DNS or from the sender unchecked (records are parsed strictly, explanations and header
// values are reduced to printable ASCII).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "dns/resolver.hpp"

namespace bmx::spf {

enum class Result { None, Neutral, Pass, Fail, SoftFail, TempError, PermError };
const char* to_string(Result r);  // "none", "neutral", "pass", "fail", "softfail", ...

// Processing limits, RFC 7208 4.6.4 (fixed by the RFC, not settings). Past the first two the
// result is "permerror"; past the third the extra mx targets are a permerror, extra ptr names
// are ignored.
inline constexpr int kMaxDnsTerms = 10;      // include, a, mx, ptr, exists, redirect
inline constexpr int kMaxVoidLookups = 2;    // terms whose lookup gave NXDOMAIN or no records
inline constexpr int kMaxNamesPerTerm = 10;  // MX targets, PTR names (and %{p}) looked up

// Where check_host() asks DNS. `name` is the name as text, without escapes (labels may hold any
// byte but '.'); the answer's rdata is wire format, as dns::Resolver returns it.
class Dns {
  public:
    virtual ~Dns() = default;
    virtual boost::asio::awaitable<dns::Answer> query(const std::string& name, int rrtype) = 0;
};

// Production: asks libunbound through dns::Resolver (a DNSSEC-bogus answer counts as a
// temporary failure).
class ResolverDns : public Dns {
  public:
    explicit ResolverDns(dns::Resolver& resolver) : resolver_(resolver) {}
    boost::asio::awaitable<dns::Answer> query(const std::string& name, int rrtype) override;
    // A name as text -> libunbound's presentation format: bytes other than letters, digits,
    // '-', '_' and the '.' separators become \DDD escapes.
    static std::string presentation(std::string_view name);

  private:
    dns::Resolver& resolver_;
};

struct Options {
    std::string receiver = "unknown";       // %{r}: our host name, in explanations
    std::chrono::seconds time_limit{20};    // whole evaluation; past it "temperror" (4.6.4)
    std::optional<std::int64_t> timestamp;  // %{t}; unset = now
};

struct Outcome {
    Result result = Result::None;
    std::string explanation;  // Fail only: the domain's exp= text, expanded; "" = none given
    std::string mechanism;    // the term that decided ("-all", "ip4:192.0.2.0/24"); "default"
                              // when none matched; "" when no record was evaluated
    std::string domain;       // the domain whose record decided (after redirect=)
    std::string problem;      // why, for None/TempError/PermError (logs, Received-SPF)
    std::string identity;     // "mailfrom" or "helo" (set by check_mail_from/check_helo)
};

// RFC 7208 4: check_host(<ip>, <domain>, <sender>). `helo` feeds %{h}. An IPv4-mapped IPv6
// address is treated as IPv4. Arguments are references: pass named objects (see netio.hpp).
boost::asio::awaitable<Outcome> check_host(Dns& dns, const boost::asio::ip::address& ip,
                                           const std::string& domain, const std::string& sender,
                                           const std::string& helo, const Options& options);
boost::asio::awaitable<Outcome> check_host(Dns& dns, const boost::asio::ip::address& ip,
                                           const std::string& domain, const std::string& sender,
                                           const std::string& helo);

// The two identities (RFC 7208 2.3, 2.4). MAIL FROM: <domain> is the part after the last '@';
// a null reverse-path ("") checks "postmaster@<helo>" instead. HELO: <domain> = helo, <sender> =
// "postmaster@<helo>".
boost::asio::awaitable<Outcome> check_mail_from(Dns& dns, const boost::asio::ip::address& ip,
                                                const std::string& sender, const std::string& helo,
                                                const Options& options);
boost::asio::awaitable<Outcome> check_helo(Dns& dns, const boost::asio::ip::address& ip,
                                           const std::string& helo, const Options& options);

// RFC 7208 9.1: "Received-SPF: <result> (<comment>) client-ip=...; envelope-from=...; helo=...;
// receiver=...; identity=...; mechanism=...; problem=..." folded at 78 columns, CRLF-terminated,
// no line over 998 octets. `sender` is the MAIL FROM reverse-path ("" for null).
std::string received_spf_header(const Outcome& outcome, const boost::asio::ip::address& ip,
                                const std::string& sender, const std::string& helo,
                                const std::string& receiver_hostname);

}  // namespace bmx::spf
