// policy/checker: the stateful rules of policy/ — per-client concurrency and rates (address and
// /24 or /64), DNS block and allow lists (postscreen-style weights, queried in parallel), recipient
// validation against a list or by asking the primary (with the answer cached in the store), and
// greylisting (RFC 6647, triplets in the store so they survive restarts).
// It must never accept a recipient the rules refuse, never block the event loop (store calls go
// through the queue's thread, DNS through the resolver), and never let its counters grow without
// bound.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>

#include "config/config.hpp"
#include "dns/resolver.hpp"
#include "policy/policy.hpp"
#include "queue/queue.hpp"
#include "spf/spf.hpp"

namespace bmx::policy {

// What the primary said about a recipient, asked with MAIL FROM:<> / RCPT TO: / QUIT.
struct Verification {
    enum class Kind { Exists, NoSuchUser, Unknown } kind = Kind::Unknown;
    std::string reply;  // the primary's reply, or why there is none
};
using Verifier = std::function<boost::asio::awaitable<Verification>(const std::string& domain,
                                                                    const std::string& recipient)>;

struct Reputation {
    int score = 0;
    bool blocked = false;      // score >= dnsbl_threshold
    bool allowlisted = false;  // score <= dnswl_threshold: skips greylisting
    std::string hits;          // "zen.spamhaus.org(3) list.dnswl.org(-5)"
};

class Checker {
  public:
    Checker(const Config& cfg, Queue& queue, dns::Resolver& resolver, Verifier verifier);

    Decision connect(const std::string& ip);  // a session starts (count it only if ok)
    void disconnect(const std::string& ip);   // a counted session ends
    boost::asio::awaitable<Reputation> reputation(const std::string& ip);
    Decision mail(const std::string& ip);
    // SPF for MAIL FROM (RFC 7208): the outcome, and a refusal when the sender's domain says
    // "fail". Arguments are references to named objects (see netio.hpp).
    boost::asio::awaitable<std::pair<spf::Outcome, Decision>> spf(const std::string& ip,
                                                                  const std::string& sender,
                                                                  const std::string& helo);
    // After relay control and the recipient count: rate, DNSBL, recipient validation, greylisting.
    boost::asio::awaitable<Decision> rcpt(const std::string& ip, const std::string& sender,
                                          const std::string& recipient, const DomainConfig& domain,
                                          const Reputation& rep);

    // A fleet: every second, this node's new events go to the store and the other nodes' counts
    // come back into each window (see share_rates): a client cannot multiply its quota by the
    // number of nodes, within what it sends to the others in that second.
    boost::asio::awaitable<void> share();
    void stop_sharing() {
        sharing_stopped_ = true;
        if (share_timer_) share_timer_->cancel();
    }

  private:
    struct Window {  // events in the current and the previous minute: a sliding-window estimate
        std::int64_t minute = 0;
        std::uint32_t current = 0, previous = 0;
        std::uint32_t others_current = 0, others_previous = 0;  // the fleet's other nodes
        std::uint32_t unshared = 0;                             // ours since the last share
        void roll(std::int64_t now_minute);
        std::uint32_t add(std::int64_t now_minute, double into_minute);
    };
    struct Client {
        std::uint32_t active = 0;
        Window connections, messages, recipients;
        std::int64_t last_seen = 0;
    };
    Client& client(const std::string& ip);
    void prune();
    boost::asio::awaitable<Decision> verify(const std::string& recipient, const DomainConfig& d);

    const Config& cfg_;
    Queue& queue_;
    dns::Resolver& resolver_;
    spf::ResolverDns spf_dns_;
    std::vector<Network> exceptions_;  // policy.limit_exceptions, parsed once
    Verifier verifier_;
    std::unordered_map<std::string, Client> clients_;
    std::unordered_map<std::string, std::uint32_t> subnets_;  // active sessions per network
    std::optional<boost::asio::steady_timer> share_timer_;
    bool sharing_stopped_ = false;
};

// DNS list query name for an address: "2.0.0.127.zen.spamhaus.org", nibbles for IPv6.
std::string dnsbl_name(const std::string& ip, const std::string& zone);

}  // namespace bmx::policy
