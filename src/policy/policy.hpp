// policy: decides, command by command, whether the SMTP session may go on. This file holds the
// pure rules — relay control (only our domains, matched exactly and case-insensitively), the
// recipient count, recipient lists, HELO syntax, client networks; checker.hpp holds the stateful
// ones (rates, greylisting, DNS lists, recipient verification). Every refusal names its rule.
// It must never do I/O itself and never accept a recipient outside a configured domain.
#pragma once

#include <boost/asio/ip/address.hpp>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace bmx::policy {

struct Decision {
    bool ok = true;
    std::string reply;      // full SMTP reply line when refused, naming the rule
    const char* rule = "";  // the rule's short name when refused ("relay", "greylisted", ...)
};

// `domain` is the recipient's domain as parsed (lower-cased, no trailing dot).
Decision check_recipient_domain(const Config& cfg, const std::string& domain);
// Sender-specified routing in the local part ("user%other@ours", "other!user@ours",
// "\"user@other\"@ours") is refused, as Postfix does with allow_untrusted_routing = no: a
// backup that forwarded it could become an open relay through a lenient primary.
Decision check_recipient_routing(const std::string& local_part);
// `count` recipients already accepted in this transaction.
Decision check_recipient_count(const Config& cfg, std::size_t count);
// recipients = "list": the address, or a "*@domain" catch-all, must be listed.
Decision check_recipient_listed(const DomainPolicy& p, const std::string& address);
// HELO/EHLO argument: a host name (letters, digits, hyphens, underscores, dots; not a bare IP)
// or an address literal "[192.0.2.1]" / "[IPv6:2001:db8::1]" (Postfix:
// reject_invalid_helo_hostname).
Decision check_helo(const std::string& name);
// The client's network: "192.0.2" (/24) or, for IPv6, "2001:db8:0:1" (/64: greylisting) or
// "2001:db8:0::/48" (v6_prefix 48: the connection limit per site).
std::string client_network(const std::string& ip, int v6_prefix = 64);
// "addr/len" networks (a bare address is a /32 or /128), parsed once; bad entries are skipped
// (config/ has refused them already).
struct Network {
    boost::asio::ip::address address;
    int prefix = 0;
};
std::vector<Network> parse_networks(const std::vector<std::string>& cidrs);
bool in_networks(const std::string& ip, const std::vector<Network>& networks);

}  // namespace bmx::policy
