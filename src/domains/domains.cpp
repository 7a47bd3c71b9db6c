#include "domains/domains.hpp"

#include <boost/asio/ip/address.hpp>

#include "util/util.hpp"

namespace bmx {

std::shared_ptr<const DomainConfig> Domains::make(const StoredDomain& d) const {
    auto c = std::make_shared<DomainConfig>();
    c->name = d.name;
    c->policy = cfg_.policy;  // the [policy] defaults, with the domain's own switches
    c->policy.recipients = d.recipients == "any" ? RecipientCheck::Any : RecipientCheck::Verify;
    // A domain added at run time never accepts blind: while its primary cannot say whether a
    // recipient exists, the sender is asked to try again (no 250, so no bounce to a forgery).
    if (c->policy.recipients == RecipientCheck::Verify) c->policy.verify_unknown_accept = false;
    c->policy.greylisting = d.greylisting;
    c->policy.max_message_size = static_cast<std::uint64_t>(d.max_message_size);
    c->primary = parse_host_port(d.primary, 25);
    return c;
}

void Domains::load(const std::vector<StoredDomain>& stored) {
    std::map<std::string, Live, std::less<>> fresh;
    for (const auto& d : stored) {
        auto old = live_.find(d.name);
        if (old != live_.end() && old->second.stored.primary == d.primary &&
            old->second.stored.recipients == d.recipients &&
            old->second.stored.greylisting == d.greylisting &&
            old->second.stored.max_message_size == d.max_message_size) {
            fresh.emplace(d.name, std::move(old->second));
            continue;
        }
        fresh.emplace(d.name, Live{d, make(d)});
    }
    for (auto& [name, l] : live_)
        if (l.config) retired_.push_back(std::move(l.config));
    live_ = std::move(fresh);
}

void Domains::put(const StoredDomain& d) {
    auto it = live_.find(d.name);
    if (it != live_.end()) {
        retired_.push_back(std::move(it->second.config));
        it->second = Live{d, make(d)};
    } else {
        live_.emplace(d.name, Live{d, make(d)});
    }
}

void Domains::remove(const std::string& name) {
    auto it = live_.find(name);
    if (it == live_.end()) return;
    retired_.push_back(std::move(it->second.config));
    live_.erase(it);
}

const DomainConfig* Domains::find(std::string_view name) const {
    auto it = live_.find(to_lower(name));
    return it == live_.end() ? nullptr : it->second.config.get();
}

const StoredDomain* Domains::stored(std::string_view name) const {
    auto it = live_.find(to_lower(name));
    return it == live_.end() ? nullptr : &it->second.stored;
}

std::vector<StoredDomain> Domains::all() const {
    std::vector<StoredDomain> out;
    for (const auto& [name, l] : live_) out.push_back(l.stored);
    return out;
}

std::string Domains::check_name(std::string& name) {
    if (!name.empty() && name.back() == '.') name.pop_back();
    for (unsigned char c : name)
        if (c >= 0x80)
            return "give an internationalized name in its A-label form (xn--...), as DNS has it";
    name = to_lower(name);
    if (name.size() > 253 || !valid_domain_name(name) || name.find('.') == std::string::npos)
        return "not a domain name: " + name;
    return "";
}

std::string Domains::check_primary(const std::string& primary) {
    auto hp = parse_host_port(primary, 25);
    if (!hp || hp->port == 0) return "the primary must be \"host\", \"host:port\" or \"[ip]:port\"";
    boost::system::error_code ec;
    const auto ip = boost::asio::ip::make_address(hp->host, ec);
    if (!ec) {
        if (ip.is_unspecified() || ip.is_multicast()) return "not a usable address: " + hp->host;
        return "";
    }
    if (hp->host.find(':') != std::string::npos || !valid_domain_name(hp->host) ||
        primary.starts_with('['))
        return "not a host name: " + hp->host;
    return "";
}

}  // namespace bmx
