#include "policy/policy.hpp"

#include <algorithm>
#include <boost/asio/ip/address.hpp>

#include "util/util.hpp"

namespace bmx::policy {

Decision check_recipient_domain(const Config& cfg, const std::string& domain) {
    if (cfg.find_domain(domain)) return {};
    return {false,
            "550 5.7.1 Relay access denied: " + domain +
                " is not a domain this backup MX serves (no [[domain]] entry)",
            "relay"};
}

Decision check_recipient_routing(const std::string& local_part) {
    if (local_part.find_first_of("%!@") == std::string::npos) return {};
    return {false,
            "550 5.7.1 Relay access denied: sender-specified routing (% ! or @ in the "
            "local part) is not accepted",
            "routing"};
}

Decision check_recipient_count(const Config& cfg, std::size_t count) {
    if (count < cfg.max_recipients) return {};
    return {false,
            "452 4.5.3 Too many recipients (smtp.max_recipients = " +
                std::to_string(cfg.max_recipients) + "); send the rest in another transaction",
            "max_recipients"};
}

Decision check_recipient_listed(const DomainPolicy& p, const std::string& address) {
    const std::string a = to_lower(address);
    const std::string wildcard = "*" + a.substr(a.rfind('@'));
    for (const auto& r : p.recipient_list)
        if (r == a || r == wildcard) return {};
    return {false,
            "550 5.1.1 <" + address +
                ">: Recipient address rejected: unknown user (recipients = \"list\")",
            "unknown_recipient"};
}

Decision check_helo(const std::string& name) {
    const Decision bad{false,
                       "501 5.5.2 <" + printable(name.substr(0, 64)) +
                           ">: Helo command rejected: invalid host name; use a host name "
                           "or an address literal like [192.0.2.1] (policy.helo_syntax)",
                       "helo_syntax"};
    if (name.size() > 2 && name.front() == '[' && name.back() == ']') {
        std::string lit = name.substr(1, name.size() - 2);
        if (lit.size() > 5 && iequals(lit.substr(0, 5), "IPv6:")) lit = lit.substr(5);
        boost::system::error_code ec;
        (void)boost::asio::ip::make_address(lit, ec);
        return ec ? bad : Decision{};
    }
    if (name.empty() || name.size() > 255 || name.front() == '.' || name.front() == '-') return bad;
    std::size_t label = 0;
    for (std::size_t i = 0; i < name.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(name[i]);
        if (c == '.') {
            if (label == 0 || name[i - 1] == '-') return bad;
            label = 0;
        } else if (std::isalnum(c) || c == '-' || c == '_') {
            if (++label > 63) return bad;
        } else {
            return bad;
        }
    }
    // A bare IP address is not a host name: RFC 5321 wants it in brackets.
    boost::system::error_code ec;
    (void)boost::asio::ip::make_address(name.back() == '.' ? name.substr(0, name.size() - 1) : name,
                                        ec);
    return ec ? Decision{} : bad;
}

std::string client_network(const std::string& ip, int v6_prefix) {
    boost::system::error_code ec;
    auto a = boost::asio::ip::make_address(ip, ec);
    if (ec) return ip;
    if (a.is_v6() && a.to_v6().is_v4_mapped())
        a = boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6());
    if (a.is_v4()) {
        auto b = a.to_v4().to_bytes();
        return std::to_string(b[0]) + "." + std::to_string(b[1]) + "." + std::to_string(b[2]);
    }
    auto b = a.to_v6().to_bytes();
    char buf[40];
    if (v6_prefix == 48)
        std::snprintf(buf, sizeof buf, "%x:%x:%x::/48", (b[0] << 8) | b[1], (b[2] << 8) | b[3],
                      (b[4] << 8) | b[5]);
    else
        std::snprintf(buf, sizeof buf, "%x:%x:%x:%x", (b[0] << 8) | b[1], (b[2] << 8) | b[3],
                      (b[4] << 8) | b[5], (b[6] << 8) | b[7]);
    return buf;
}

std::vector<Network> parse_networks(const std::vector<std::string>& cidrs) {
    std::vector<Network> out;
    for (const auto& n : cidrs) {
        auto slash = n.find('/');
        boost::system::error_code ec;
        auto net = boost::asio::ip::make_address(n.substr(0, slash), ec);
        if (ec) continue;
        int full = net.is_v4() ? 32 : 128;
        int len = slash == std::string::npos ? full : std::stoi(n.substr(slash + 1));
        out.push_back({net, std::min(len, full)});
    }
    return out;
}

namespace {
std::vector<unsigned char> bytes_of(const boost::asio::ip::address& a) {
    if (a.is_v4()) {
        auto b = a.to_v4().to_bytes();
        return {b.begin(), b.end()};
    }
    auto b = a.to_v6().to_bytes();
    return {b.begin(), b.end()};
}
}  // namespace

bool in_networks(const std::string& ip, const std::vector<Network>& networks) {
    boost::system::error_code ec;
    auto a = boost::asio::ip::make_address(ip, ec);
    if (ec) return false;
    if (a.is_v6() && a.to_v6().is_v4_mapped())
        a = boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6());
    const auto x = bytes_of(a);
    for (const auto& n : networks) {
        if (n.address.is_v4() != a.is_v4()) continue;
        const auto y = bytes_of(n.address);
        bool match = true;
        for (int bit = 0; bit < n.prefix && match; ++bit) {
            int mask = 0x80 >> (bit % 8);
            if ((x[static_cast<std::size_t>(bit / 8)] & mask) !=
                (y[static_cast<std::size_t>(bit / 8)] & mask))
                match = false;
        }
        if (match) return true;
    }
    return false;
}

}  // namespace bmx::policy
