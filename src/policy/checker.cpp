#include "policy/checker.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <memory>

#include "util/util.hpp"

namespace bmx::policy {

namespace asio = boost::asio;

std::string dnsbl_name(const std::string& ip, const std::string& zone) {
    boost::system::error_code ec;
    auto a = asio::ip::make_address(ip, ec);
    if (ec) return "";
    if (a.is_v6() && a.to_v6().is_v4_mapped())
        a = asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
    std::string out;
    if (a.is_v4()) {
        auto b = a.to_v4().to_bytes();
        for (int i = 3; i >= 0; --i) out += std::to_string(b[static_cast<std::size_t>(i)]) + ".";
    } else {
        static const char* hex = "0123456789abcdef";
        auto b = a.to_v6().to_bytes();
        for (int i = 15; i >= 0; --i) {
            out += hex[b[static_cast<std::size_t>(i)] & 0xf];
            out += '.';
            out += hex[b[static_cast<std::size_t>(i)] >> 4];
            out += '.';
        }
    }
    return out + zone;
}

void Checker::Window::roll(std::int64_t now_minute) {
    if (now_minute == minute) return;
    const bool next = now_minute == minute + 1;
    previous = next ? current : 0;
    others_previous = next ? others_current : 0;
    current = others_current = 0;
    minute = now_minute;
}

std::uint32_t Checker::Window::add(std::int64_t now_minute, double into_minute) {
    roll(now_minute);
    ++current;
    ++unshared;
    return current + others_current +
           static_cast<std::uint32_t>((previous + others_previous) * (1.0 - into_minute));
}

Checker::Checker(const Config& cfg, Queue& queue, dns::Resolver& resolver, Verifier verifier)
    : cfg_(cfg),
      queue_(queue),
      resolver_(resolver),
      spf_dns_(resolver),
      exceptions_(parse_networks(cfg.limit_exceptions)),
      verifier_(std::move(verifier)) {}

asio::awaitable<std::pair<spf::Outcome, Decision>> Checker::spf(const std::string& ip,
                                                                const std::string& sender,
                                                                const std::string& helo) {
    boost::system::error_code ec;
    const auto addr = asio::ip::make_address(ip, ec);
    if (ec) co_return std::pair<spf::Outcome, Decision>{};
    spf::Options opt;
    opt.receiver = cfg_.hostname;
    // RFC 7208 2.3: the HELO identity first; a "fail" there is conclusive.
    spf::Outcome out;
    if (!helo.empty() && helo.front() != '[')
        out = co_await spf::check_helo(spf_dns_, addr, helo, opt);
    if (out.result != spf::Result::Fail)
        out = co_await spf::check_mail_from(spf_dns_, addr, sender, helo, opt);
    Decision d;
    if (out.result == spf::Result::Fail) {
        std::string why = out.explanation.empty()
                              ? "the domain's SPF record does not allow " + ip + " to send for it"
                              : out.explanation;
        const bool by_helo = out.identity == "helo";
        d = Decision{false,
                     "550 5.7.23 <" + (by_helo ? helo : sender) +
                         ">: " + (by_helo ? "Helo command rejected" : "Sender address rejected") +
                         ": SPF fail: " + why.substr(0, 300) + " (policy.spf)",
                     "spf"};
    }
    co_return std::pair<spf::Outcome, Decision>{out, d};
}

Checker::Client& Checker::client(const std::string& ip) {
    if (clients_.size() > 50000) prune();
    auto& c = clients_[ip];
    c.last_seen = to_unix(now());
    return c;
}

void Checker::prune() {
    const auto t = to_unix(now());
    for (auto it = clients_.begin(); it != clients_.end();)
        it = it->second.active == 0 && t - it->second.last_seen > 120 ? clients_.erase(it) : ++it;
}

namespace {
std::pair<std::int64_t, double> minute_now() {
    auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(now().time_since_epoch()).count();
    return {ms / 60000, static_cast<double>(ms % 60000) / 60000.0};
}
}  // namespace

Decision Checker::connect(const std::string& ip) {
    if (in_networks(ip, exceptions_)) return {};
    auto& c = client(ip);
    const auto net = client_network(ip, 48);  // a site's share: its /24, or its /48
    auto [minute, into] = minute_now();
    if (c.active >= cfg_.client_connections)
        return {false,
                "421 4.7.0 " + cfg_.hostname + " Error: too many connections from " + ip +
                    " (policy.client_connections = " + std::to_string(cfg_.client_connections) +
                    ")",
                "client_connections"};
    if (subnets_[net] >= cfg_.subnet_connections)
        return {false,
                "421 4.7.0 " + cfg_.hostname + " Error: too many connections from " + net +
                    " (policy.subnet_connections = " + std::to_string(cfg_.subnet_connections) +
                    ")",
                "subnet_connections"};
    if (c.connections.add(minute, into) > cfg_.connection_rate)
        return {false,
                "421 4.7.0 " + cfg_.hostname + " Error: too many connections per minute from " +
                    ip + " (policy.connection_rate = " + std::to_string(cfg_.connection_rate) + ")",
                "connection_rate"};
    ++c.active;
    ++subnets_[net];
    return {};
}

void Checker::disconnect(const std::string& ip) {
    if (in_networks(ip, exceptions_)) return;
    auto it = clients_.find(ip);
    if (it != clients_.end() && it->second.active > 0) --it->second.active;
    auto n = subnets_.find(client_network(ip, 48));
    if (n != subnets_.end() && --n->second == 0) subnets_.erase(n);
}

Decision Checker::mail(const std::string& ip) {
    if (in_networks(ip, exceptions_)) return {};
    auto [minute, into] = minute_now();
    if (client(ip).messages.add(minute, into) > cfg_.message_rate)
        return {false,
                "450 4.7.1 Error: too many messages per minute from " + ip +
                    " (policy.message_rate = " + std::to_string(cfg_.message_rate) +
                    "), try again later",
                "message_rate"};
    return {};
}

asio::awaitable<Reputation> Checker::reputation(const std::string& ip) {
    Reputation rep;
    if (cfg_.dnsbl.empty()) co_return rep;
    // Every list at once: each lookup is its own coroutine; we wait for the last one.
    struct Shared {
        std::vector<dns::Answer> answers;
        std::size_t left = 0;
        std::unique_ptr<asio::steady_timer> done;
    };
    auto ex = co_await asio::this_coro::executor;
    auto shared = std::make_shared<Shared>();
    shared->answers.resize(cfg_.dnsbl.size());
    shared->left = cfg_.dnsbl.size();
    shared->done = std::make_unique<asio::steady_timer>(ex, std::chrono::hours(1));
    for (std::size_t i = 0; i < cfg_.dnsbl.size(); ++i) {
        auto lookup = [this, shared, i,
                       name = dnsbl_name(ip, cfg_.dnsbl[i].zone)]() -> asio::awaitable<void> {
            shared->answers[i] = co_await resolver_.query(name, 1);
            if (--shared->left == 0) shared->done->cancel();
        };
        asio::co_spawn(ex, lookup, asio::detached);
    }
    if (shared->left > 0) co_await shared->done->async_wait(asio::as_tuple(asio::use_awaitable));
    for (std::size_t i = 0; i < cfg_.dnsbl.size(); ++i) {
        const auto& a = shared->answers[i];
        if (a.status != dns::Status::Ok) continue;
        bool hit = cfg_.dnsbl[i].match.empty();
        for (const auto& rd : a.rdata) {
            if (rd.size() != 4) continue;
            std::string got = std::to_string(static_cast<unsigned char>(rd[0])) + "." +
                              std::to_string(static_cast<unsigned char>(rd[1])) + "." +
                              std::to_string(static_cast<unsigned char>(rd[2])) + "." +
                              std::to_string(static_cast<unsigned char>(rd[3]));
            if (got == cfg_.dnsbl[i].match) hit = true;
        }
        if (!hit) continue;
        rep.score += cfg_.dnsbl[i].weight;
        rep.hits += (rep.hits.empty() ? "" : " ") + cfg_.dnsbl[i].zone + "(" +
                    std::to_string(cfg_.dnsbl[i].weight) + ")";
    }
    rep.blocked = rep.score >= cfg_.dnsbl_threshold;
    rep.allowlisted = rep.score <= cfg_.dnswl_threshold;
    co_return rep;
}

asio::awaitable<Decision> Checker::verify(const std::string& recipient, const DomainConfig& d) {
    const auto t = now();
    const std::function<std::optional<VerifyEntry>(Store&)> get = [&recipient, t](Store& s) {
        return s.verify_get(recipient, t);
    };
    auto cached = co_await queue_.call(get);
    Verification v;
    if (cached) {
        v.kind = cached->exists ? Verification::Kind::Exists : Verification::Kind::NoSuchUser;
        v.reply = cached->reply + " (cached)";
    } else {
        const std::string domain = d.name;
        v = co_await verifier_(domain, recipient);
        if (v.kind != Verification::Kind::Unknown) {
            const bool exists = v.kind == Verification::Kind::Exists;
            VerifyEntry e{exists,
                          t + (exists ? cfg_.verify_positive_ttl : cfg_.verify_negative_ttl),
                          v.reply};
            const std::function<int(Store&)> put = [&recipient, &e](Store& s) {
                s.verify_put(recipient, e);
                return 0;
            };
            co_await queue_.call(put);
        }
    }
    switch (v.kind) {
        case Verification::Kind::Exists:
            co_return Decision{};
        case Verification::Kind::NoSuchUser:
            co_return Decision{false,
                               "550 5.1.1 <" + recipient +
                                   ">: Recipient address rejected: unknown user "
                                   "(verified with the primary: " +
                                   v.reply + ")",
                               "unknown_recipient"};
        case Verification::Kind::Unknown:
            if (d.policy.verify_unknown_accept) {
                spdlog::info("verify <{}>: no answer ({}); accepting (verify_unknown = accept)",
                             recipient, v.reply);
                co_return Decision{};
            }
            co_return Decision{false,
                               "450 4.1.1 <" + recipient +
                                   ">: Recipient address rejected: unverified address: " + v.reply +
                                   " (verify_unknown = tempfail)",
                               "unverified_recipient"};
    }
    co_return Decision{};
}

asio::awaitable<Decision> Checker::rcpt(const std::string& ip, const std::string& sender,
                                        const std::string& recipient, const DomainConfig& d,
                                        const Reputation& rep) {
    auto [minute, into] = minute_now();
    if (!in_networks(ip, exceptions_) &&
        client(ip).recipients.add(minute, into) > cfg_.recipient_rate)
        co_return Decision{false,
                           "450 4.7.1 Error: too many recipients per minute from " + ip +
                               " (policy.recipient_rate = " + std::to_string(cfg_.recipient_rate) +
                               "), try again later",
                           "recipient_rate"};
    if (rep.blocked)
        co_return Decision{false,
                           "554 5.7.1 Service unavailable; client [" + ip + "] blocked using " +
                               rep.hits + " (policy.dnsbl)",
                           "dnsbl"};
    if (d.policy.recipients == RecipientCheck::List) {
        auto dec = check_recipient_listed(d.policy, recipient);
        if (!dec.ok) co_return dec;
    } else if (d.policy.recipients == RecipientCheck::Verify) {
        auto dec = co_await verify(recipient, d);
        if (!dec.ok) co_return dec;
    }
    if (d.policy.greylisting && !rep.allowlisted) {
        const std::string net = client_network(ip);
        const GreylistRule rule{cfg_.greylist_delay, cfg_.greylist_expiry, cfg_.greylist_allow_ttl};
        const auto t = now();
        const std::function<GreyVerdict(Store&)> grey = [&](Store& s) {
            return s.greylist(net, to_lower(sender), to_lower(recipient), t, rule);
        };
        auto v = co_await queue_.call(grey);
        if (v == GreyVerdict::FirstSeen || v == GreyVerdict::TooEarly)
            co_return Decision{false,
                               "451 4.7.1 <" + recipient +
                                   ">: Recipient address rejected: greylisted, try again "
                                   "in " +
                                   format_duration(cfg_.greylist_delay) + " (RFC 6647)",
                               "greylisted"};
    }
    co_return Decision{};
}

asio::awaitable<void> Checker::share() {
    share_timer_.emplace(co_await asio::this_coro::executor);
    while (!sharing_stopped_) {
        share_timer_->expires_after(std::chrono::seconds(1));
        auto [ec] = co_await share_timer_->async_wait(asio::as_tuple(asio::use_awaitable));
        if (ec || sharing_stopped_) co_return;
        const auto [minute, into] = minute_now();
        (void)into;
        std::vector<Store::RateCount> mine;
        for (auto& [ip, c] : clients_) {
            for (auto [w, kind] : {std::pair{&c.connections, "c"}, std::pair{&c.messages, "m"},
                                   std::pair{&c.recipients, "r"}}) {
                if (!w->unshared) continue;
                mine.push_back({ip + "|" + kind, w->minute, w->unshared});
                w->unshared = 0;
            }
        }
        const std::int64_t since = minute - 1;
        const std::function<std::vector<Store::RateCount>(Store&)> work = [&mine, since](Store& s) {
            return s.share_rates(mine, since);
        };
        std::vector<Store::RateCount> others;
        try {
            others = co_await queue_.call(work);
        } catch (const std::exception& e) {
            spdlog::warn("fleet: rate counters not shared: {}", e.what());
            continue;  // the counts stay local; a lost second is within the tolerance
        }
        for (const auto& r : others) {
            const auto bar = r.key.rfind('|');
            if (bar == std::string::npos) continue;
            auto& c = client(r.key.substr(0, bar));
            const char kind = r.key[bar + 1];
            Window& w = kind == 'c' ? c.connections : kind == 'm' ? c.messages : c.recipients;
            w.roll(minute);
            if (r.minute == minute) w.others_current = r.count;
            if (r.minute == minute - 1) w.others_previous = r.count;
        }
    }
}

}  // namespace bmx::policy
