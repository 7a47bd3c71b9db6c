#include "dnscheck/dnscheck.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <map>
#include <set>

#include "delivery/client.hpp"
#include "delivery/route.hpp"
#include "util/json.hpp"
#include "util/util.hpp"

namespace bmx::dnscheck {

namespace asio = boost::asio;

const char* to_string(Level l) {
    switch (l) {
        case Level::Ok:
            return "ok";
        case Level::Warning:
            return "warning";
        case Level::Error:
            return "error";
    }
    return "?";
}

bool Report::ok() const {
    return std::none_of(checks.begin(), checks.end(),
                        [](const Check& c) { return c.level == Level::Error; });
}

std::string Report::text() const {
    std::string out = "dns-check " + domain + "\n";
    int errors = 0, warnings = 0;
    for (const auto& c : checks) {
        std::string level = to_string(c.level);
        level.resize(8, ' ');
        std::string name = c.name;
        if (name.size() < 17) name.resize(17, ' ');
        out += level + " " + name + " " + c.message + "\n";
        if (!c.fix.empty()) out += "         " + std::string(17, ' ') + " fix: " + c.fix + "\n";
        errors += c.level == Level::Error;
        warnings += c.level == Level::Warning;
    }
    out += "publish: " + publish + "\n";
    out += "result: " + std::to_string(errors) + " errors, " + std::to_string(warnings) +
           " warnings\n";
    return out;
}

std::string Report::json() const {
    boost::json::array arr;
    for (const auto& c : checks)
        arr.emplace_back(boost::json::object{{"level", to_string(c.level)},
                                             {"check", c.name},
                                             {"message", c.message},
                                             {"fix", c.fix}});
    boost::json::object o{{"domain", domain}, {"ok", ok()}, {"publish", publish}, {"checks", arr}};
    return json_text(o);
}

bool same_network(const asio::ip::address& a, const asio::ip::address& b) {
    if (a.is_v4() && b.is_v4()) {
        auto x = a.to_v4().to_bytes(), y = b.to_v4().to_bytes();
        return std::equal(x.begin(), x.begin() + 3, y.begin());
    }
    if (a.is_v6() && b.is_v6()) {
        auto x = a.to_v6().to_bytes(), y = b.to_v6().to_bytes();
        return std::equal(x.begin(), x.begin() + 6, y.begin());
    }
    return false;
}

namespace {

bool is_ours(const std::string& host, const Options& opt) {
    for (const auto& n : opt.our_names)
        if (iequals(host, n)) return true;
    return false;
}

bool looks_like_ip(const std::string& host) {
    boost::system::error_code ec;
    (void)asio::ip::make_address(host, ec);
    return !ec;
}

std::string list_addresses(const std::vector<asio::ip::address>& v) {
    std::string out;
    for (auto& a : v) out += (out.empty() ? "" : ", ") + a.to_string();
    return out;
}

}  // namespace

asio::awaitable<Report> check(dns::Resolver& resolver, const std::string& domain,
                              const Options& opt) {
    Report rep;
    rep.domain = domain;
    auto add = [&rep](Level l, std::string name, std::string msg, std::string fix = "") {
        rep.checks.push_back(Check{l, std::move(name), std::move(msg), std::move(fix)});
    };
    const std::string fqdn = domain + ".";
    auto mx = co_await resolver.mx(domain);
    std::vector<dns::Mx> records = mx.records;
    std::sort(records.begin(), records.end(),
              [](auto& a, auto& b) { return a.preference < b.preference; });

    int ours = -1;
    for (auto& r : records)
        if (is_ours(r.host, opt) && (ours < 0 || r.preference < ours)) ours = r.preference;
    std::vector<dns::Mx> primaries;
    for (auto& r : records)
        if (!r.host.empty() && !is_ours(r.host, opt) && (ours < 0 || r.preference < ours))
            primaries.push_back(r);
    int publish_pref = ours >= 0 ? ours : primaries.empty() ? 20 : primaries[0].preference + 10;
    rep.publish = fqdn + " 3600 IN MX " + std::to_string(publish_pref) + " " + opt.hostname + ".";
    const std::string publish_primary = fqdn + " 3600 IN MX 10 <your primary server>.";

    // 1. MX records present
    if (mx.status == dns::Status::NxDomain) {
        add(Level::Error, "mx-present", domain + " does not exist (NXDOMAIN)",
            "create the zone, then publish: " + publish_primary + " and " + rep.publish);
    } else if (mx.status == dns::Status::TempFail || mx.status == dns::Status::Bogus) {
        add(Level::Error, "mx-present",
            "MX lookup failed: " + std::string(dns::to_string(mx.status)) + " (" + mx.error + ")",
            "check the domain's name servers answer (and DNSSEC signatures are valid)");
    } else if (mx.status == dns::Status::NoData) {
        add(Level::Error, "mx-present",
            "no MX records: senders use the domain's address and never try this backup",
            "publish " + publish_primary + " and " + rep.publish);
    } else if (mx.null_mx()) {
        add(Level::Error, "mx-present", "null MX (RFC 7505): the domain says it takes no mail",
            "replace the \"MX 0 .\" record with the primary and this backup");
    } else {
        std::string list;
        for (auto& r : records)
            list += (list.empty() ? "" : ", ") + std::to_string(r.preference) + " " + r.host;
        add(Level::Ok, "mx-present", std::to_string(records.size()) + " MX records: " + list);
    }
    const bool have_mx = mx.status == dns::Status::Ok && !mx.null_mx();

    // 2. this backup listed, with a higher number than the primary
    if (have_mx) {
        if (ours < 0)
            add(Level::Error, "backup-listed",
                opt.hostname + " is not among the MX records of " + domain,
                "publish " + rep.publish);
        else
            add(Level::Ok, "backup-listed",
                opt.hostname + " is listed with preference " + std::to_string(ours));
        if (primaries.empty())
            add(Level::Error, "primary-preferred",
                "no MX is preferred over this backup: it would receive the mail first",
                "give the primary a lower number than " + std::to_string(publish_pref) + ", e.g. " +
                    publish_primary);
        else if (ours >= 0)
            add(Level::Ok, "primary-preferred",
                primaries[0].host + " (" + std::to_string(primaries[0].preference) +
                    ") is preferred over this backup (" + std::to_string(ours) + ")");
    }

    // 3. every MX target is a host name with addresses, not a CNAME nor an IP literal
    std::map<std::string, std::vector<asio::ip::address>> addrs;
    for (auto& r : records) {
        if (r.host.empty() || addrs.count(r.host)) continue;
        if (looks_like_ip(r.host)) {
            add(Level::Error, "mx-target",
                "MX target " + r.host + " is an IP address, not a host name",
                "publish a host name (with an A/AAAA record for " + r.host + ") as the MX target");
            addrs[r.host] = {};
            continue;
        }
        const std::string host = r.host;
        auto a = co_await resolver.addresses(host);
        addrs[r.host] = a.addresses;
        if (a.status != dns::Status::Ok)
            add(Level::Error, "mx-target",
                "MX target " + host + " has no A/AAAA record (" + dns::to_string(a.status) + ")",
                "add A and/or AAAA records for " + host);
        else if (!a.cname.empty())
            add(Level::Error, "mx-target",
                "MX target " + host + " is a CNAME for " + a.cname + " (RFC 2181 10.3)",
                "point the MX record at " + a.cname + " directly");
        else
            add(Level::Ok, "mx-target", host + " has addresses " + list_addresses(a.addresses));
    }

    // 4. equal preferences share the load
    std::map<int, std::vector<std::string>> by_pref;
    for (auto& r : records)
        if (!r.host.empty()) by_pref[r.preference].push_back(r.host);
    for (auto& [pref, hosts] : by_pref) {
        if (hosts.size() < 2) continue;
        std::string list;
        for (auto& h : hosts) list += (list.empty() ? "" : ", ") + h;
        add(Level::Ok, "load-sharing",
            "preference " + std::to_string(pref) + " is shared by " + list +
                ": senders pick among them at random");
    }

    // 5. the primary and this backup are not the same host or network
    if (!primaries.empty()) {
        std::vector<asio::ip::address> mine;
        if (ours >= 0) {
            for (auto& r : records)
                if (is_ours(r.host, opt)) mine = addrs[r.host];
        } else {
            const std::string me = opt.hostname;
            mine = (co_await resolver.addresses(me)).addresses;
        }
        Level level = Level::Ok;
        std::string msg = "primary and backup have separate networks";
        for (auto& p : primaries)
            for (auto& pa : addrs[p.host])
                for (auto& ma : mine) {
                    if (pa == ma) {
                        level = Level::Error;
                        msg = p.host + " and " + opt.hostname + " share the address " +
                              pa.to_string();
                    } else if (same_network(pa, ma) && level == Level::Ok) {
                        level = Level::Warning;
                        msg = p.host + " (" + pa.to_string() + ") and " + opt.hostname + " (" +
                              ma.to_string() + ") are in the same network (/24 or /48)";
                    }
                }
        if (mine.empty()) msg = "cannot tell: " + opt.hostname + " has no address in DNS";
        add(level, "independence", msg,
            level == Level::Ok ? "" : "run the backup in another network and data centre");
    }

    // 6. at least two name servers, on different networks
    std::string zone = domain;
    dns::NameAnswer ns;
    for (int i = 0; i < 10; ++i) {  // the zone apex may be a parent of the mail domain
        ns = co_await resolver.ns(zone);
        if (ns.status != dns::Status::NoData) break;
        auto dot = zone.find('.');
        if (dot == std::string::npos) break;
        zone = zone.substr(dot + 1);
    }
    if (ns.status != dns::Status::Ok) {
        add(Level::Error, "ns", "NS lookup failed: " + std::string(dns::to_string(ns.status)),
            "check the delegation of " + domain);
    } else if (ns.names.size() < 2) {
        add(Level::Error, "ns", zone + " has " + std::to_string(ns.names.size()) + " name server",
            "use at least two name servers on different networks (RFC 2182)");
    } else {
        std::vector<asio::ip::address> ns_addrs;
        for (auto& n : ns.names) {
            const std::string name = n;
            auto a = co_await resolver.addresses(name);
            ns_addrs.insert(ns_addrs.end(), a.addresses.begin(), a.addresses.end());
        }
        bool spread = false;
        for (std::size_t i = 0; i < ns_addrs.size(); ++i)
            for (std::size_t j = i + 1; j < ns_addrs.size(); ++j)
                if (!same_network(ns_addrs[i], ns_addrs[j])) spread = true;
        std::string list;
        for (auto& n : ns.names) list += (list.empty() ? "" : ", ") + n;
        if (spread)
            add(Level::Ok, "ns",
                zone + " has " + std::to_string(ns.names.size()) +
                    " name servers on different networks: " + list);
        else
            add(Level::Warning, "ns",
                "all name servers of " + zone + " are in one network (/24 or /48): " + list,
                "add a name server in another network so DNS survives the primary's outage");
    }

    // 7. the primary answers SMTP
    if (!primaries.empty()) {
        std::vector<delivery::Target> targets;
        for (auto& p : primaries)
            for (auto& a : addrs[p.host]) targets.push_back({p.host, a, opt.smtp_port});
        delivery::TlsContexts tls;
        delivery::Settings s{opt.hostname, std::chrono::seconds(10), std::chrono::seconds(10)};
        s.contexts = &tls;
        auto o = co_await delivery::probe(s, targets);
        if (o.reached)
            add(Level::Ok, "primary-smtp", o.remote + " answers SMTP");
        else
            add(Level::Error, "primary-smtp",
                "no primary answered SMTP on port " + std::to_string(opt.smtp_port) + ": " +
                    o.error,
                "check that the primary listens on port " + std::to_string(opt.smtp_port) +
                    " and that its firewall lets this backup in");
    }

    // 8. the domain is configured here, and its mail does not come straight back
    if (opt.config) {
        if (opt.config->find_domain(domain)) {
            add(Level::Ok, "configured", domain + " is configured in this backupmx");
            auto r = co_await delivery::route(resolver, *opt.config, domain);
            if (r.self_loop)
                add(Level::Error, "no-loop", r.error,
                    "point its primary at the primary mail server, not at this backup");
            else if (r.kind == delivery::Route::Kind::Ok)
                add(Level::Ok, "no-loop",
                    "mail for " + domain + " goes to " + r.targets.front().text() +
                        ", not back to this server");
        } else
            add(Level::Error, "configured", domain + " is not configured in this backupmx",
                "add [[domain]] name = \"" + domain + "\" to the config");
    }
    co_return rep;
}

}  // namespace bmx::dnscheck
