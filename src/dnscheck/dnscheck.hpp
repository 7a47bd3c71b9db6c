// dnscheck: reads a domain's live DNS the way a sending MTA will, and tells the operator, one
// check per line, whether mail will reach the primary first and this backup second — with the fix
// for each problem and the exact MX record line to publish. It must never change anything: it
// only asks DNS and knocks on the primary's SMTP port.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "dns/resolver.hpp"

namespace bmx::dnscheck {

enum class Level { Ok, Warning, Error };
const char* to_string(Level l);

struct Check {
    Level level = Level::Ok;
    std::string name;     // "mx-present", "backup-listed", ...
    std::string message;  // what was found
    std::string fix;      // what to do, when not ok
};

struct Report {
    std::string domain;
    std::vector<Check> checks;
    std::string publish;  // "example.it. 3600 IN MX 20 mx2.provider.it."
    bool ok() const;      // no error
    std::string text() const;
    std::string json() const;
};

struct Options {
    std::string hostname;                // this backup's name as it should appear in the MX set
    std::vector<std::string> our_names;  // hostname + also_known_as
    const Config* config = nullptr;      // when given: is the domain configured here?
    std::uint16_t smtp_port = 25;        // where the primary must answer
};

boost::asio::awaitable<Report> check(dns::Resolver& resolver, const std::string& domain,
                                     const Options& opt);

// "same network" for the checks: same /24 for IPv4, same /48 for IPv6.
bool same_network(const boost::asio::ip::address& a, const boost::asio::ip::address& b);

}  // namespace bmx::dnscheck
