#include "delivery/route.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <algorithm>
#include <boost/system/error_code.hpp>
#include <cstring>

#include "util/util.hpp"

namespace bmx::delivery {

namespace asio = boost::asio;

std::string Target::text() const {
    std::string ip = address.to_string();
    return host + "[" + ip + "]:" + std::to_string(port);
}

MxPlan plan_mx(std::vector<dns::Mx> records, const std::vector<std::string>& our_names,
               std::mt19937& rng) {
    MxPlan plan;
    int ours = -1;
    for (const auto& r : records)
        for (const auto& n : our_names)
            if (iequals(r.host, n) && (ours < 0 || r.preference < ours)) ours = r.preference;
    plan.we_are_listed = ours >= 0;
    for (auto& r : records)
        if (ours < 0 || r.preference < ours) plan.hosts.push_back(std::move(r));
    plan.loops = plan.we_are_listed && plan.hosts.empty();
    // Equal preferences share the load at random: shuffle, then a stable sort keeps that order.
    std::shuffle(plan.hosts.begin(), plan.hosts.end(), rng);
    std::stable_sort(plan.hosts.begin(), plan.hosts.end(), [](const dns::Mx& a, const dns::Mx& b) {
        return a.preference < b.preference;
    });
    return plan;
}

namespace {

std::mt19937& rng() {
    static std::mt19937 r{std::random_device{}()};
    return r;
}

// Adds every address of `host` to the route; false (with the reason in `why`) when it has none.
asio::awaitable<bool> add_host(dns::Resolver& resolver, const std::string& host, std::uint16_t port,
                               bool from_mx, bool mx_secure, Route& route, std::string& why,
                               dns::Status& status) {
    auto a = co_await resolver.addresses(host);
    status = a.status;
    if (a.status != dns::Status::Ok) {
        why =
            host + ": " + dns::to_string(a.status) + (a.error.empty() ? "" : " (" + a.error + ")");
        co_return false;
    }
    if (from_mx && !a.cname.empty())
        route.warnings.push_back("MX target " + host + " is a CNAME for " + a.cname +
                                 " (RFC 2181 10.3 forbids it; followed anyway)");
    for (auto& addr : a.addresses)
        route.targets.push_back(Target{host, addr, port, from_mx, mx_secure && a.secure});
    co_return true;
}

}  // namespace

namespace {

asio::awaitable<Route> unchecked_route(dns::Resolver& resolver, const Config& cfg,
                                       const std::string& domain, std::optional<HostPort> fixed) {
    Route r;
    if (fixed) {
        boost::system::error_code ec;
        auto ip = asio::ip::make_address(fixed->host, ec);
        if (!ec) {
            r.targets.push_back(Target{fixed->host, ip, fixed->port});
            r.kind = Route::Kind::Ok;
            co_return r;
        }
        std::string why;
        dns::Status st;
        const std::string host = fixed->host;
        bool ok = co_await add_host(resolver, host, fixed->port, false, false, r, why, st);
        r.kind = ok ? Route::Kind::Ok : Route::Kind::Defer;
        if (!ok) r.error = "primary " + why;
        co_return r;
    }

    auto mx = co_await resolver.mx(domain);
    if (mx.status == dns::Status::NxDomain) {
        r.error = "domain " + domain + " does not exist (NXDOMAIN); deferring until max_age";
        r.warnings.push_back(r.error);
        co_return r;
    }
    if (mx.status == dns::Status::TempFail || mx.status == dns::Status::Bogus) {
        r.error = "MX lookup for " + domain + ": " + dns::to_string(mx.status) +
                  (mx.error.empty() ? "" : " (" + mx.error + ")");
        co_return r;
    }
    if (mx.status == dns::Status::NoData) {  // no MX: the domain's own address (RFC 5321 5.1)
        std::string why;
        dns::Status st;
        bool ok = co_await add_host(resolver, domain, cfg.delivery_port, false, false, r, why, st);
        r.kind = ok ? Route::Kind::Ok : Route::Kind::Defer;
        if (!ok) r.error = "no MX and no address for " + domain + ": " + why;
        co_return r;
    }
    if (mx.null_mx()) {
        r.kind = Route::Kind::NullMx;
        r.error = domain + " publishes a null MX: it accepts no mail (RFC 7505)";
        co_return r;
    }
    auto plan = plan_mx(mx.records, cfg.our_names(), rng());
    if (plan.loops) {
        r.error =
            "mail for " + domain + " loops back to myself: no MX is preferred over " + cfg.hostname;
        r.warnings.push_back(r.error);
        co_return r;
    }
    std::vector<std::string> reasons;
    for (const auto& host : plan.hosts) {
        if (host.host.empty()) continue;  // "." among other records: nothing to connect to
        std::string why;
        dns::Status st;
        const std::string name = host.host;
        bool ok = co_await add_host(resolver, name, cfg.delivery_port, true, mx.secure, r, why, st);
        if (!ok) {
            reasons.push_back(why);
            if (st == dns::Status::NxDomain || st == dns::Status::NoData)
                r.warnings.push_back("MX target " + why);
        }
    }
    if (r.targets.empty()) {
        std::string all;
        for (auto& s : reasons) all += (all.empty() ? "" : "; ") + s;
        r.error = "no usable MX host for " + domain + ": " + all;
        co_return r;
    }
    r.kind = Route::Kind::Ok;
    co_return r;
}

}  // namespace

bool own_endpoint(const std::vector<HostPort>& listen, const std::vector<asio::ip::address>& local,
                  const asio::ip::address& a, std::uint16_t port) {
    const auto plain = [](const asio::ip::address& x) {  // ::ffff:1.2.3.4 is 1.2.3.4
        if (x.is_v6() && x.to_v6().is_v4_mapped())
            return asio::ip::address(asio::ip::make_address_v4(asio::ip::v4_mapped, x.to_v6()));
        return x;
    };
    const auto target = plain(a);
    for (const auto& l : listen) {
        if (l.port != port) continue;
        boost::system::error_code ec;
        const auto bound = asio::ip::make_address(l.host, ec);
        if (ec) continue;
        if (!bound.is_unspecified()) {
            if (plain(bound) == target) return true;
            continue;
        }
        // 0.0.0.0 or ::, every address of this host, the whole of 127/8 included
        if (target.is_loopback() || target.is_unspecified()) return true;
        for (const auto& mine : local)
            if (plain(mine) == target) return true;
    }
    return false;
}

std::vector<asio::ip::address> local_addresses() {
    std::vector<asio::ip::address> out;
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) return out;
    for (ifaddrs* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr) continue;
        if (i->ifa_addr->sa_family == AF_INET) {
            const auto* sin = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
            out.push_back(asio::ip::address_v4(ntohl(sin->sin_addr.s_addr)));
        } else if (i->ifa_addr->sa_family == AF_INET6) {
            const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(i->ifa_addr);
            asio::ip::address_v6::bytes_type b;
            std::memcpy(b.data(), sin6->sin6_addr.s6_addr, b.size());
            out.push_back(asio::ip::address_v6(b));
        }
    }
    ::freeifaddrs(list);
    return out;
}

asio::awaitable<Route> route(dns::Resolver& resolver, const Config& cfg,
                             const std::string& domain) {
    const DomainConfig* dc = cfg.find_domain(domain);
    std::optional<HostPort> fixed;
    if (dc && dc->primary)
        fixed = dc->primary;
    else if (!dc && cfg.relayhost)
        fixed = cfg.relayhost;
    co_return co_await route_via(resolver, cfg, domain, fixed);
}

asio::awaitable<Route> route_via(dns::Resolver& resolver, const Config& cfg,
                                 const std::string& domain, std::optional<HostPort> primary) {
    Route r = co_await unchecked_route(resolver, cfg, domain, primary);
    if (r.kind != Route::Kind::Ok) co_return r;
    // A target that is this server's own SMTP listener would take the message straight back:
    // the loop a domain whose primary points here (or at an address of this host) makes.
    const auto local = local_addresses();
    std::vector<Target> kept;
    std::string looped;
    for (auto& t : r.targets) {
        if (own_endpoint(cfg.listen, local, t.address, t.port))
            looped += (looped.empty() ? "" : ", ") + t.text();
        else
            kept.push_back(std::move(t));
    }
    r.targets = std::move(kept);
    if (looped.empty()) co_return r;
    r.warnings.push_back("mail for " + domain + " loops back to myself: " + looped +
                         (r.targets.empty() ? " is" : " are skipped, being") +
                         " this server's own SMTP listener");
    if (r.targets.empty()) {
        r.kind = Route::Kind::Defer;
        r.self_loop = true;
        r.error = r.warnings.back();
    }
    co_return r;
}

}  // namespace bmx::delivery
