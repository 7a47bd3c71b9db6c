// delivery/route: decides where mail for a domain goes — the configured primary (a host name is
// resolved, an IP literal used as is), or the domain's MX records as RFC 5321 5.1 says for a relay
// that is itself an MX: records at or above our own preference dropped, lowest first, equal ones
// shuffled, every address (AAAA, then A) of a host before the next host; no MX means the domain's
// own A/AAAA; a null MX (RFC 7505) means the domain takes no mail.
// It must never route to a host that is not preferred over us, nor to this server's own listener,
// and never turn one bad DNS answer into a bounce: only a null MX is final.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/address.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "dns/resolver.hpp"

namespace bmx::delivery {

struct Target {
    std::string host;  // the name we connect to (for logs, SNI and certificate checks)
    boost::asio::ip::address address;
    std::uint16_t port = 25;
    bool from_mx = false;      // reached through an MX lookup (DANE applies to MX hosts)
    bool dnssec = false;       // the MX and address answers were DNSSEC-validated
    std::string text() const;  // "host[ip]:port"
};

struct Route {
    enum class Kind { Ok, Defer, NullMx } kind = Kind::Defer;
    std::vector<Target> targets;
    std::string error;                  // why it defers (for logs and last_error)
    std::vector<std::string> warnings;  // misconfigurations worth a loud log line
    bool self_loop = false;             // every target was this server's own SMTP listener
};

// Whether `a`:`port` reaches this server: one of its SMTP listening addresses (`listen`), or, for
// a listener on 0.0.0.0 or ::, any address of this host (`local`) and all of loopback.
bool own_endpoint(const std::vector<HostPort>& listen,
                  const std::vector<boost::asio::ip::address>& local,
                  const boost::asio::ip::address& a, std::uint16_t port);
// This host's interface addresses (getifaddrs).
std::vector<boost::asio::ip::address> local_addresses();

// The pure half: which MX hosts to try, in order. `loops` when we are the best MX ourselves.
struct MxPlan {
    std::vector<dns::Mx> hosts;
    bool we_are_listed = false;
    bool loops = false;
};
MxPlan plan_mx(std::vector<dns::Mx> records, const std::vector<std::string>& our_names,
               std::mt19937& rng);

// Resolves the route for `domain` now. `cfg` gives the domain's primary (if any), our names and
// the port for MX hosts; a domain not configured is routed by MX too (DSNs to senders). A target
// that is this server's own listener is dropped; when none is left the route defers, self_loop.
boost::asio::awaitable<Route> route(dns::Resolver& resolver, const Config& cfg,
                                    const std::string& domain);
// The same, with the primary given (nullopt: by MX) rather than read from `cfg`: for a domain
// about to be added.
boost::asio::awaitable<Route> route_via(dns::Resolver& resolver, const Config& cfg,
                                        const std::string& domain, std::optional<HostPort> primary);

}  // namespace bmx::delivery
