#include "smtp/session.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <map>

#include "metrics/metrics.hpp"
#include "milter/milter.hpp"
#include "netio/netio.hpp"
#include "policy/checker.hpp"
#include "policy/policy.hpp"
#include "store/spool.hpp"
#include "store/store.hpp"
#include "util/util.hpp"

namespace bmx::smtp {

namespace {
// A command refused by a rule, for /metrics.
void count_reject(std::string_view rule) {
    metrics::counter("backupmx_smtp_rejects_total",
                     "SMTP commands refused, by the rule that refused",
                     "reason=" + metrics::label_value(rule.empty() ? "other" : rule))
        .inc();
}
}  // namespace

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {

// A header section longer than this is cut where the first body piece ends when a body spills.
constexpr std::size_t kMaxHead = 1024 * 1024;
// What a session may hold of a message in memory even when [smtp] max_session_memory is used up.
constexpr std::size_t kSessionFreeMemory = 16 * 1024;

std::string join_rcpts(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& r : v) out += (out.empty() ? "<" : ",<") + r + ">";
    return out;
}

// The Received: fields of a header section (ours, prepended, included), counted as Postfix's
// hopcount_limit does: a message that has passed that many hops is going round in a loop.
std::uint32_t received_count(std::string_view message) {
    const auto end = message.find("\r\n\r\n");
    std::string_view head = message.substr(0, end == std::string_view::npos ? message.size() : end);
    std::uint32_t n = 0;
    for (std::size_t at = 0; at < head.size();) {
        auto eol = head.find("\r\n", at);
        if (eol == std::string_view::npos) eol = head.size();
        const auto line = head.substr(at, eol - at);
        if (line.size() >= 9 && iequals(line.substr(0, 9), "received:")) ++n;
        at = eol + 2;
    }
    return n;
}

// HELO names end up in headers and logs: keep printable ASCII without spaces.
std::string header_token(std::string_view s) {
    std::string out;
    for (unsigned char c : s.substr(0, 255))
        out.push_back(c > 32 && c < 127 ? static_cast<char>(c) : '?');
    return out;
}

}  // namespace

Session::Session(Server& server, asio::ip::tcp::socket sock)
    : server_(server),
      cfg_(server.cfg_),
      stream_(std::move(sock)),
      deadline_(stream_.socket().get_executor()) {
    boost::system::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    peer_ = ec ? "unknown" : ep.address().to_string();
    server_.sessions_.insert(this);
}

Session::~Session() {
    server_.sessions_.erase(this);
}

void Session::evict() {
    evicted_ = true;
    stop();
}

void Session::stop() {
    stopping_ = true;
    boost::system::error_code ec;
    stream_.socket().cancel(ec);  // the read it waits in returns; run() says goodbye
}

asio::awaitable<void> Session::run() {
    spdlog::debug("connect from [{}]", peer_);
    if (auto d = server_.checker_.connect(peer_); !d.ok) {
        spdlog::info("reject connect from [{}]: {}", peer_, d.reply);
        count_reject(d.rule);
        deadline_.expires_after(std::chrono::seconds(10));
        reply(d.reply);
        co_await (flush() || netio::watchdog(deadline_));
        stream_.close();
        co_return;
    }
    struct Counted {  // the checker counts this session until it ends, however it ends
        policy::Checker& c;
        std::string ip;
        ~Counted() { c.disconnect(ip); }
    } counted{server_.checker_, peer_};
    deadline_.expires_after(cfg_.command_timeout);
    // operator|| waits for the first to succeed: converse() must not throw, or the session
    // would wait for its deadline (guarded() answers what escapes a command).
    auto r = co_await (guarded() || netio::watchdog(deadline_));
    if (r.index() == 0 && evicted_ && stream_.socket().is_open()) {
        reply("421 4.7.0 " + cfg_.hostname +
              " Error: server busy, idle connection closed (smtp.max_connections)");
        deadline_.expires_after(std::chrono::seconds(2));
        co_await (flush() || netio::watchdog(deadline_));
    } else if (r.index() == 0 && stopping_ && stream_.socket().is_open()) {
        reply("421 4.3.2 " + cfg_.hostname + " Service shutting down, closing connection");
        deadline_.expires_after(std::chrono::seconds(2));
        co_await (flush() || netio::watchdog(deadline_));
    } else if (r.index() == 1 && stream_.socket().is_open()) {
        spdlog::info("timeout from [{}] helo={} after {}", peer_, header_token(helo_),
                     sender_ ? "MAIL FROM" : "connect");
        out_.clear();
        reply("421 4.4.2 " + cfg_.hostname + " Error: timeout exceeded, closing connection");
        deadline_.expires_after(std::chrono::seconds(10));
        co_await (flush() || netio::watchdog(deadline_));
    }
    stream_.close();
    spdlog::debug("disconnect from [{}]", peer_);
}

void Session::reply(std::string line) {
    last_code_ = line.empty() ? '?' : line[0];
    out_ += line;
    out_ += "\r\n";
}

asio::awaitable<bool> Session::flush() {
    if (out_.empty()) co_return true;
    std::string data;
    data.swap(out_);
    const bool ok = co_await stream_.write_all(data);
    co_return ok;
}

asio::awaitable<std::optional<CommandReader::Line>> Session::read_command() {
    bool armed = false;
    for (;;) {
        if (stopping_) co_return std::nullopt;  // no command is taken once shutdown began
        if (auto line = reader_.next(in_)) {
            last_heard_ = std::chrono::steady_clock::now();
            heard_ = true;
            co_return line;
        }
        const bool flushed = co_await flush();
        if (!flushed) co_return std::nullopt;  // the client waits: send what we owe
        // The whole line must arrive within command_timeout: a client dripping one byte at a
        // time does not get to hold the session open forever. The first command has a shorter
        // wait (smtp.first_command_timeout), and under stress every wait is short
        // (smtp.stress_timeout), as Postfix's stress mode does.
        if (!armed) {
            auto limit = heard_ ? cfg_.command_timeout
                                : std::min(cfg_.command_timeout, cfg_.first_command_timeout);
            if (server_.stressed()) limit = std::min(limit, cfg_.stress_timeout);
            deadline_.expires_after(limit);
        }
        armed = true;
        waiting_ = true;
        const bool more = co_await stream_.read_more(in_);
        waiting_ = false;
        if (!more) co_return std::nullopt;
    }
}

void Session::reset_transaction() {
    sender_.reset();
    discard_.clear();
    spf_header_.clear();
    rcpts_.clear();
    smtputf8_ = eightbit_ = false;
}

bool Session::junk() {
    if (++junk_ <= cfg_.max_junk_commands) return false;
    reply("421 4.7.0 " + cfg_.hostname + " Error: too many NOOP/RSET/VRFY commands " +
          "(smtp.max_junk_commands = " + std::to_string(cfg_.max_junk_commands) +
          "), closing connection");
    spdlog::info("too many junk commands from [{}], disconnecting", peer_);
    quit_ = true;
    return true;
}

bool Session::protocol_error() {
    if (++errors_ < cfg_.max_errors) return false;
    reply("421 4.7.0 " + cfg_.hostname + " Error: too many errors (smtp.max_errors = " +
          std::to_string(cfg_.max_errors) + "), closing connection");
    spdlog::info("too many errors from [{}], disconnecting", peer_);
    return true;
}

asio::awaitable<void> Session::guarded() {
    std::exception_ptr failed;
    try {
        co_await converse();
    } catch (...) {
        failed = std::current_exception();
    }
    if (!failed) co_return;
    auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none) std::rethrow_exception(failed);
    std::string what = "unknown exception";
    try {
        std::rethrow_exception(failed);
    } catch (const std::exception& e) {
        what = e.what();
    } catch (...) {
    }
    spdlog::error("internal failure in the session with [{}], closing it: {}", peer_,
                  printable(what));
    out_.clear();
    reply("421 4.3.0 " + cfg_.hostname + " Error: local error in processing, closing connection");
    co_await flush();
}

asio::awaitable<void> Session::converse() {
    if (server_.stopping_) {
        reply("421 4.3.2 " + cfg_.hostname + " Service shutting down, try again later");
        co_await flush();
        co_return;
    }
    reputation_ = co_await server_.checker_.reputation(peer_);
    if (!reputation_.hits.empty())
        spdlog::info("client [{}] DNS lists: {} (score {})", peer_, reputation_.hits,
                     reputation_.score);
    if (cfg_.greet_pause.count() > 0) {
        // Pre-greeting talkers (spamware that does not wait for the banner) are refused.
        asio::steady_timer pause(stream_.socket().get_executor(), cfg_.greet_pause);
        auto r = co_await (stream_.socket().async_wait(asio::ip::tcp::socket::wait_read,
                                                       asio::as_tuple(asio::use_awaitable)) ||
                           pause.async_wait(asio::as_tuple(asio::use_awaitable)));
        if (r.index() == 0) {
            spdlog::info("reject [{}]: talked before the greeting (policy.greet_pause)", peer_);
            count_reject("greet_pause");
            reply("554 5.5.1 " + cfg_.hostname +
                  " Error: talking before the greeting is not allowed (policy.greet_pause)");
            co_await flush();
            co_return;
        }
    }
    reply("220 " + cfg_.hostname + " ESMTP backupmx");
    while (!quit_) {
        auto line = co_await read_command();
        if (!line) co_return;
        if (line->too_long) {
            reply("500 5.5.2 Error: command line too long (RFC 5321 limit: 512 octets)");
            if (protocol_error()) break;
            continue;
        }
        Command c = parse_command(line->text);
        // Whatever a command throws (a store that cannot write while greylisting or verifying,
        // a bug) is logged once and answered at once: never a session left hanging until its
        // deadline. (A handler cannot co_await, hence the exception_ptr.)
        bool error = false;
        std::exception_ptr failed;
        try {
            error = co_await dispatch(c);
        } catch (...) {
            failed = std::current_exception();
        }
        if (failed) {
            // The deadline or a shutdown cancelled the command: that is not a failure of it.
            auto cs = co_await asio::this_coro::cancellation_state;
            if (cs.cancelled() != asio::cancellation_type::none) std::rethrow_exception(failed);
            error = true;
            co_await on_failure(c, failed);
        }
        if (last_code_ == '5') error = true;
        if (error && c.verb != Verb::Quit && protocol_error()) break;
        if (!stream_.socket().is_open()) co_return;
    }
    co_await flush();
}

asio::awaitable<bool> Session::dispatch(const Command& c) {
    bool error = false;
    switch (c.verb) {
        case Verb::Helo:
            on_helo(c, false);
            break;
        case Verb::Ehlo:
            on_helo(c, true);
            break;
        case Verb::Mail:
            co_await on_mail(c);
            break;
        case Verb::Rcpt:
            co_await on_rcpt(c);
            break;
        case Verb::Data:
            co_await on_data(c);
            break;
        case Verb::Rset:
            if (junk()) break;
            co_await end_milter_transactions();
            reset_transaction();
            reply("250 2.0.0 Ok");
            break;
        case Verb::Noop:
            if (!junk()) reply("250 2.0.0 Ok");
            break;
        case Verb::Quit:
            reply("221 2.0.0 Bye");
            quit_ = true;
            break;
        case Verb::Vrfy:
            if (junk()) break;
            reply("252 2.5.2 Cannot VRFY user; send mail and it will be relayed");
            break;
        case Verb::Help:
            reply(
                "214 2.0.0 See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT "
                "VRFY ETRN");
            break;
        case Verb::StartTls:
            co_await on_starttls(c);
            break;
        case Verb::Etrn:
            if (!server_.on_etrn_) {
                reply("502 5.5.1 Error: command not implemented");
                error = true;
            } else if (!junk()) {
                co_await on_etrn(c);
            }
            break;
        case Verb::Expn:
        case Verb::Bdat:
        case Verb::Auth:
            reply("502 5.5.1 Error: command not implemented");
            error = true;
            break;
        case Verb::Empty:
            reply("500 5.5.2 Error: bad syntax");
            error = true;
            break;
        case Verb::Unknown:
            reply("500 5.5.2 Error: command not recognized");
            error = true;
            break;
    }
    co_return error;
}

asio::awaitable<void> Session::on_failure(const Command& c, std::exception_ptr failed) {
    std::string what = "unknown exception";
    bool store = false;
    try {
        std::rethrow_exception(failed);
    } catch (const StoreError& e) {
        what = e.what();
        store = true;
    } catch (const std::exception& e) {
        what = e.what();
    } catch (...) {
    }
    spdlog::error("{} failure in {} from [{}] helo={}, answering 451: {}",
                  store ? "store" : "internal", printable(c.verb_text), peer_, helo_,
                  printable(what));
    count_reject(store ? "store_error" : "internal_error");
    // The transaction is dropped; its milters may be in any state, so they are opened afresh.
    milters_.clear();
    reset_transaction();
    out_.clear();  // what a half-done command queued is not sent
    reply("451 4.3.0 " + cfg_.hostname + " Error: local error in processing" +
          (store ? " (queue store)" : "") + ", try again later");
    // DATA or STARTTLS left the stream where the client's next bytes cannot be read as a
    // command: the session ends after the reply.
    if (c.verb == Verb::Data || c.verb == Verb::StartTls) quit_ = true;
    co_return;
}

void Session::on_helo(const Command& c, bool extended) {
    if (c.arg.empty()) {
        reply(std::string("501 5.5.4 Syntax: ") + (extended ? "EHLO" : "HELO") + " hostname");
        return;
    }
    if (cfg_.helo_required_syntax) {
        auto d = policy::check_helo(c.arg.substr(0, c.arg.find(' ')));
        if (!d.ok) {
            spdlog::info("reject HELO from [{}]: {}", peer_, d.reply);
            count_reject(d.rule);
            return reply(d.reply);
        }
    }
    reset_transaction();
    helo_ = header_token(c.arg.substr(0, c.arg.find(' ')));
    esmtp_ = extended;
    if (!extended) {
        reply("250 " + cfg_.hostname);
        return;
    }
    reply("250-" + cfg_.hostname);
    reply("250-PIPELINING");
    reply("250-SIZE " + std::to_string(cfg_.max_message_size));
    reply("250-8BITMIME");
    reply("250-ENHANCEDSTATUSCODES");
    if (server_.tls_ && !stream_.tls()) reply("250-STARTTLS");
    if (server_.on_etrn_) reply("250-ETRN");
    reply("250 SMTPUTF8");
}

asio::awaitable<void> Session::on_mail(const Command& c) {
    auto refusal = mail_syntax(c);
    if (refusal) co_return reply(*refusal);
    if (cfg_.spf) {
        const std::string sender = pending_sender_.str(), helo = helo_;
        auto [outcome, d] = co_await server_.checker_.spf(peer_, sender, helo);
        if (!d.ok) {
            spdlog::info("reject MAIL from [{}] helo={}: from=<{}>: {}", peer_, helo_, sender,
                         d.reply);
            count_reject(d.rule);
            co_return reply(d.reply);
        }
        boost::system::error_code ec;
        auto ip = asio::ip::make_address(peer_, ec);
        if (!ec) spf_header_ = spf::received_spf_header(outcome, ip, sender, helo_, cfg_.hostname);
    }
    sender_ = std::move(pending_sender_);
    reply("250 2.1.0 Ok");
}

// RFC 1985: a primary (or a network its domain allows) asks for the mail held for it.
asio::awaitable<void> Session::on_etrn(const Command& c) {
    if (helo_.empty()) co_return reply("503 5.5.1 Error: send HELO/EHLO first");
    if (sender_) co_return reply("503 5.5.1 Error: MAIL transaction in progress");
    std::string node = to_lower(c.arg);
    if (node.starts_with('#'))
        co_return reply("458 4.7.0 Unable to queue messages for node " + header_token(c.arg) +
                        ": named queues are not kept here");
    if (node.starts_with('@')) node.erase(0, 1);  // "@domain": the domain and below; we hold
    if (node.ends_with('.')) node.pop_back();     // mail per configured domain, so: the domain
    if (!valid_domain_name(node)) co_return reply("501 5.5.4 Syntax: ETRN domain");
    const std::string peer = peer_;
    const auto answer = co_await server_.on_etrn_(node, peer);
    using K = EtrnAnswer::Kind;
    spdlog::info("ETRN {} from [{}]: {}", node, peer_,
                 answer.kind == K::Started          ? "delivery started"
                 : answer.kind == K::NothingWaiting ? "nothing waiting"
                                                    : "refused (" + answer.why + ")");
    switch (answer.kind) {
        case K::Started:
            co_return reply("250 2.0.0 OK, queuing for node " + node + " started");
        case K::NothingWaiting:
            co_return reply("251 2.0.0 OK, no messages waiting for node " + node);
        case K::NotAllowed:
        case K::UnknownNode:
            co_return reply("459 4.7.1 Node " + node + " not allowed: " + answer.why);
    }
}

std::optional<std::string> Session::mail_syntax(const Command& c) {
    if (helo_.empty()) return "503 5.5.1 Error: send HELO/EHLO first";
    if (sender_) return "503 5.5.1 Error: nested MAIL command";
    auto p = parse_path_arg(c.arg, "FROM", true);
    if (!p.addr) return p.error;
    bool utf8 = false, eight = false;
    std::uint64_t declared_size = 0;
    for (auto& [k, v] : p.params) {
        if (!esmtp_) return std::string("555 5.5.4 Parameters need EHLO");
        if (k == "SIZE") {
            std::uint64_t n = 0;
            if (v.empty() || v.size() > 19 ||
                v.find_first_not_of("0123456789") != std::string::npos)
                return std::string("501 5.5.4 Bad SIZE parameter");
            n = std::stoull(v);
            declared_size = n;
            if (n > cfg_.max_message_size)
                return std::string(
                    "552 5.3.4 Message size exceeds fixed limit (smtp.max_message_size = " +
                    std::to_string(cfg_.max_message_size) + ")");
        } else if (k == "BODY") {
            if (iequals(v, "8BITMIME"))
                eight = true;
            else if (!iequals(v, "7BIT"))
                return std::string("501 5.5.4 BODY must be 7BIT or 8BITMIME");
        } else if (k == "SMTPUTF8" && v.empty()) {
            utf8 = true;
        } else {
            return std::string("555 5.5.4 Unsupported MAIL parameter " + printable(k));
        }
    }
    if (p.addr->utf8 && !utf8)
        return std::string("553 5.6.7 Non-ASCII sender address needs the SMTPUTF8 parameter");
    if (auto d = server_.checker_.mail(peer_); !d.ok) {
        spdlog::info("reject MAIL from [{}] helo={}: from=<{}>: {}", peer_, helo_, p.addr->str(),
                     d.reply);
        count_reject(d.rule);
        return d.reply;
    }
    pending_sender_ = std::move(*p.addr);
    declared_size_ = declared_size;
    smtputf8_ = utf8;
    eightbit_ = eight;
    return std::nullopt;
}

asio::awaitable<void> Session::on_rcpt(const Command& c) {
    if (!sender_) co_return reply("503 5.5.1 Error: need MAIL command");
    auto p = parse_path_arg(c.arg, "TO", false);
    if (!p.addr) co_return reply(p.error);
    if (!p.params.empty())
        co_return reply("555 5.5.4 Unsupported RCPT parameter " + printable(p.params[0].first));
    if (p.addr->utf8 && !smtputf8_)
        co_return reply("553 5.6.7 Non-ASCII recipient address needs SMTPUTF8 on MAIL FROM");
    for (auto& r : rcpts_)
        if (r.str() == p.addr->str()) co_return reply("250 2.1.5 Ok (duplicate recipient)");
    auto d = policy::check_recipient_domain(cfg_, p.addr->domain);
    if (d.ok) d = policy::check_recipient_routing(p.addr->local);
    if (d.ok) d = policy::check_recipient_count(cfg_, rcpts_.size());
    if (d.ok) {
        const std::string sender = sender_->str(), rcpt = p.addr->str();
        const DomainConfig& dc = *cfg_.find_domain(p.addr->domain);
        const auto limit = dc.policy.max_message_size;
        if (limit && declared_size_ > limit)  // the domain's own limit (RFC 1870: 552)
            d = policy::Decision{false,
                                 "552 5.3.4 Message size exceeds fixed limit for " + dc.name +
                                     " (max_message_size = " + std::to_string(limit) + ")",
                                 "max_message_size"};
        else
            d = co_await server_.checker_.rcpt(peer_, sender, rcpt, dc, reputation_);
        if (d.ok) d = co_await milter_rcpt(dc, sender, rcpt);
    }
    if (!d.ok) {
        spdlog::info("reject RCPT from [{}] helo={}: from=<{}> to=<{}>: {}", peer_, helo_,
                     sender_->str(), p.addr->str(), d.reply);
        count_reject(d.rule);
        co_return reply(d.reply);
    }
    rcpts_.push_back(std::move(*p.addr));
    reply("250 2.1.5 Ok");
}

std::string Session::milter_reply(const std::string& text) {
    if (text.starts_with("421")) quit_ = true;  // the milter closes the session (Postfix)
    auto first = text.substr(0, text.find("\r\n"));
    return first;
}

asio::awaitable<policy::Decision> Session::milter_rcpt(const DomainConfig& d,
                                                       const std::string& sender,
                                                       const std::string& rcpt) {
    for (const auto& spec : d.policy.milters) {
        auto& m = milters_[spec];
        if (!m.session) {
            auto ep = milter::parse_endpoint(spec);
            if (!ep) {
                spdlog::error("milter {}: bad endpoint", spec);
                co_return policy::Decision{false,
                                           "451 4.3.5 Server configuration problem - try "
                                           "again later"};
            }
            milter::Settings ms;
            ms.connect_timeout = cfg_.milter_connect_timeout;
            ms.command_timeout = cfg_.milter_command_timeout;
            ms.content_timeout = cfg_.milter_content_timeout;
            ms.default_action = *milter::parse_default_action(cfg_.milter_default_action);
            m.session = std::make_unique<milter::Session>(stream_.socket().get_executor(), *ep, ms);
            m.session->set_macro("j", cfg_.hostname);
            m.session->set_macro("{daemon_name}", "backupmx");
            boost::system::error_code ec;
            auto ep_remote = stream_.socket().remote_endpoint(ec);
            const std::uint16_t port = ec ? 0 : ep_remote.port();
            auto v = co_await m.session->connect("unknown", peer_, port);
            if (v.proceed()) {
                const std::string helo = helo_;
                v = co_await m.session->helo(helo);
            }
            if (!v.proceed()) m.refusal = milter_reply(v.reply);
        }
        if (!m.refusal.empty()) co_return policy::Decision{false, m.refusal};
        if (!m.in_transaction) {
            auto v = co_await m.session->mail(sender, {});
            m.in_transaction = true;
            if (v.action == milter::Verdict::Discard)
                discard_ = "milter " + spec;
            else if (!v.proceed())
                co_return policy::Decision{false, milter_reply(v.reply)};
        }
        auto v = co_await m.session->rcpt(rcpt, {});
        if (v.action == milter::Verdict::Discard)
            discard_ = "milter " + spec;
        else if (!v.proceed())
            co_return policy::Decision{false, milter_reply(v.reply)};
    }
    co_return policy::Decision{};
}

asio::awaitable<void> Session::end_milter_transactions() {
    for (auto& [spec, m] : milters_) {
        if (!m.in_transaction) continue;
        m.in_transaction = false;
        co_await m.session->abort();
    }
}

asio::awaitable<void> Session::on_starttls(const Command& c) {
    if (!server_.tls_) co_return reply("502 5.5.1 Error: command not implemented");
    if (stream_.tls()) co_return reply("503 5.5.1 Error: TLS already active");
    if (!c.arg.empty()) co_return reply("501 5.5.4 Syntax: STARTTLS");
    if (!in_.empty()) {
        // CVE-2011-0411 class: plaintext sent after STARTTLS would be read as if it came
        // through TLS. Refuse the whole session rather than guess.
        spdlog::warn("[{}] pipelined {} bytes after STARTTLS: plaintext injection refused", peer_,
                     in_.size());
        in_.clear();
        reply("554 5.5.1 Error: commands pipelined after STARTTLS refused, closing connection");
        quit_ = true;
        co_return;
    }
    reply("220 2.0.0 Ready to start TLS");
    const bool flushed = co_await flush();
    if (!flushed) {
        quit_ = true;
        co_return;
    }
    deadline_.expires_after(cfg_.command_timeout);
    std::string error;
    const bool ok = co_await stream_.handshake_server(*server_.tls_, error);
    if (!ok) {
        spdlog::info("TLS handshake with [{}] failed: {}", peer_, error);
        quit_ = true;
        stream_.close();
        co_return;
    }
    spdlog::debug("TLS from [{}]: {} {}", peer_, stream_.tls_version(), stream_.tls_cipher());
    // RFC 3207 4.2: forget everything learnt before TLS; the client must EHLO again.
    reset_transaction();
    helo_.clear();
    esmtp_ = false;
}

std::string Session::over_domain_limit(std::uint64_t size) const {
    for (const auto& r : rcpts_) {
        const auto* dc = cfg_.find_domain(r.domain);
        if (dc && dc->policy.max_message_size && size > dc->policy.max_message_size)
            return "552 5.3.4 Message size exceeds fixed limit for " + dc->name +
                   " (max_message_size = " + std::to_string(dc->policy.max_message_size) + ")";
    }
    return "";
}

std::string Session::received_header(const std::string& id) const {
    std::string with = smtputf8_ ? "UTF8SMTP" : (esmtp_ ? "ESMTP" : "SMTP");
    if (stream_.tls()) with += "S";  // RFC 3848 / RFC 6531: ESMTPS, UTF8SMTPS
    // RFC 5321 4.1.3: an IPv6 address literal is tagged "IPv6:" ([IPv6:2001:db8::1]).
    const std::string literal = peer_.find(':') == std::string::npos ? peer_ : "IPv6:" + peer_;
    std::string h = "Received: from " + helo_ + " ([" + literal + "])\r\n";
    if (stream_.tls())
        h += "\t(using " + stream_.tls_version() + " with cipher " + stream_.tls_cipher() + " (" +
             std::to_string(stream_.tls_bits()) + " bits))\r\n";
    h += "\tby " + cfg_.hostname + " (backupmx) with " + with + " id " + id + "\r\n\t";
    if (rcpts_.size() == 1) h += "for <" + rcpts_[0].str() + ">";
    h += "; " + rfc5322_date(now()) + "\r\n";
    return h;
}

asio::awaitable<void> Session::on_data(const Command& c) {
    if (!c.arg.empty()) co_return reply("501 5.5.4 Syntax: DATA");
    if (!sender_) co_return reply("503 5.5.1 Error: need MAIL command");
    if (rcpts_.empty()) co_return reply("554 5.5.1 Error: no valid recipients");
    for (auto& [spec, m] : milters_) {
        if (!m.in_transaction) continue;
        auto v = co_await m.session->data();
        if (!v.proceed() && v.action != milter::Verdict::Discard) {
            spdlog::info("reject DATA from [{}]: milter {}: {}", peer_, spec, v.reply);
            count_reject("milter");
            co_await end_milter_transactions();
            reset_transaction();
            co_return reply(milter_reply(v.reply));
        }
        if (v.action == milter::Verdict::Discard) discard_ = "milter " + spec;
    }
    reply("354 End data with <CR><LF>.<CR><LF>");
    const bool ok12 = co_await flush();
    if (!ok12) {
        quit_ = true;
        co_return;
    }
    std::string id = new_queue_id();
    std::string body = received_header(id);
    DataScanner scan(cfg_.max_message_size);
    // What arrives beyond the first piece goes to a spool file beside the queue: a session holds
    // about one piece, whatever the size. The head kept in memory holds the whole header section
    // (milters and their edits need it) unless that is absurdly long.
    std::shared_ptr<Spool> spool;
    std::string spool_error;
    std::size_t keep = 0;  // bytes of the head, decided at the first spill
    auto spill = [&](bool at_end) {
        if (keep == 0) {
            auto end = body.find("\r\n\r\n");
            if (end != std::string::npos && end < kMaxHead)
                keep = std::max(kBodyPiece, end + 4);
            else if (at_end || body.size() >= kMaxHead)
                keep = kBodyPiece;  // cut, then
            else
                return;  // the header is still coming: it stays whole for now
        }
        if (body.size() <= keep) return;
        if (spool_error.empty()) {
            try {
                if (!spool) spool = Spool::open(cfg_.spool_dir);
                spool->append(std::string_view(body).substr(keep));
            } catch (const std::exception& e) {
                spool_error = e.what();  // read on to the end, then 451
            }
        }
        body.resize(keep);
    };
    // Postfix's smtpd_per_request_deadline with smtpd_min_data_rate: data_timeout for the
    // whole of DATA, extended by one second per min_data_rate bytes received. A fast sender
    // never meets it; a slow-drip client is cut off.
    deadline_.expires_after(cfg_.data_timeout);
    // What this session holds of the message in memory counts against [smtp]
    // max_session_memory, for all sessions together. A header section still unfinished when
    // that is full is not kept at all: the rest is read and dropped, and the end gets 452.
    struct Held {
        std::size_t& total;
        std::size_t mine = 0;
        void set(std::size_t n) {
            total = total - mine + n;
            mine = n;
        }
        ~Held() { total -= mine; }
    } held_mem{server_.data_memory_};
    bool over_memory = false;
    std::string dropped;
    for (;;) {
        std::size_t used = scan.feed(in_, over_memory ? dropped : body);
        in_.erase(0, used);
        dropped.clear();
        if (!over_memory) {
            if (body.size() >= std::max(keep, kBodyPiece) + kBodyPiece) spill(false);
            held_mem.set(body.size());
            if (server_.data_memory_ > cfg_.max_session_memory && keep == 0 &&
                body.size() > kSessionFreeMemory) {
                over_memory = true;
                spdlog::warn(
                    "[{}] DATA: {} bytes of unfinished header while sessions hold {} "
                    "(smtp.max_session_memory = {}): the message is dropped, 452",
                    peer_, body.size(), server_.data_memory_, cfg_.max_session_memory);
                std::string().swap(body);
                held_mem.set(0);
            }
        }
        if (scan.done()) break;
        if (used > 0)
            deadline_.expires_at(deadline_.expiry() +
                                 std::chrono::microseconds(used * 1000000 / cfg_.min_data_rate));
        const bool ok13 = co_await stream_.read_more(in_);
        if (!ok13) {
            spdlog::info("{} from [{}] during DATA after {} bytes: nothing stored",
                         stopping_ ? "shutdown" : "lost connection", peer_, scan.size());
            quit_ = true;
            co_return;
        }
    }
    if (spool) spill(true);  // the tail follows what is spooled
    deadline_.expires_after(cfg_.command_timeout);
    std::string why;
    if (scan.bare_lf() || scan.bare_cr())
        why =
            "550 5.5.2 Message refused: bare <LF> or <CR> in message data (SMTP smuggling "
            "defence; lines must end with <CR><LF>)";
    else if (scan.nul())
        why =
            "550 5.6.0 Message refused: NUL byte in message data (SMTP smuggling defence; RFC "
            "5321 4.5.2 allows none)";
    else if (scan.line_too_long())
        why = "554 5.5.2 Message refused: text line longer than 1000 octets (RFC 5321 4.5.3.1.6)";
    else if (scan.too_big())
        why = "552 5.3.4 Message size exceeds fixed limit (smtp.max_message_size = " +
              std::to_string(cfg_.max_message_size) + ")";
    else if (auto over = over_domain_limit(scan.size()); !over.empty())
        why = over;
    else if (const auto hops = received_count(body); hops >= cfg_.max_hops)
        why = "554 5.4.6 Too many hops: " + std::to_string(hops) +
              " Received: headers, a mail loop (smtp.max_hops = " + std::to_string(cfg_.max_hops) +
              ")";
    else if (over_memory)
        why =
            "452 4.3.1 Insufficient system storage: too much message data in memory at once "
            "(smtp.max_session_memory), try again later";
    else if (!spool_error.empty()) {
        spdlog::error("store failure, answering 451 to [{}] from=<{}>: {}", peer_, sender_->str(),
                      spool_error);
        why = "451 4.3.0 Error: queue file write error, try again later";
    }
    if (!why.empty()) {
        spdlog::info("reject DATA from [{}] helo={}: from=<{}> size={}: {}", peer_, helo_,
                     sender_->str(), scan.size(), why);
        count_reject("content");
        co_await end_milter_transactions();
        reset_transaction();
        co_return reply(why);
    }
    // The primary's content filters, as milters: they see the message without our Received:.
    std::string held;
    for (auto& [spec, m] : milters_) {
        if (!m.in_transaction || !discard_.empty()) continue;
        m.session->set_macro("i", id);
        auto eom = co_await m.session->message(body, true, spool.get());
        if (eom.verdict.action == milter::Verdict::Discard) {
            discard_ = "milter " + spec;
        } else if (!eom.verdict.proceed()) {
            spdlog::info("reject DATA from [{}] helo={}: from=<{}>: milter {}: {}", peer_, helo_,
                         sender_->str(), spec, eom.verdict.reply);
            count_reject("milter");
            co_await end_milter_transactions();
            reset_transaction();
            co_return reply(milter_reply(eom.verdict.reply));
        } else if (!eom.modifications.empty()) {
            // Header edits fall in the head; a new body replaces the spooled rest too.
            body = milter::apply_modifications(body, eom.modifications, true);
            envelope_edits(spec, eom.modifications);
            for (const auto& mod : eom.modifications)
                if (mod.type == milter::Modification::Type::ReplaceBody) spool.reset();
            if (auto q = eom.quarantine()) held = "milter " + spec + ": " + *q;
        }
    }
    co_await end_milter_transactions();
    if (rcpts_.empty() && discard_.empty()) discard_ = "milters: every recipient removed";
    if (!discard_.empty()) {
        spdlog::info("discarded id={} from=<{}> size={}: by {}", id, sender_->str(), scan.size(),
                     discard_);
        reset_transaction();
        co_return reply("250 2.0.0 Ok: queued as " + id);  // accepted, and dropped (RFC: discard)
    }
    body.insert(0, spf_header_);  // RFC 7208 9.1: above our Received:
    auto result = co_await commit(id, std::move(body), spool, held);
    if (result.starts_with("250")) junk_ = 0;  // RSET between messages is not junk
    reply(result);
    reset_transaction();
}

void Session::envelope_edits(const std::string& milter,
                             const std::vector<milter::Modification>& mods) {
    using T = milter::Modification::Type;
    for (const auto& mod : mods) {
        if (mod.type != T::AddRecipient && mod.type != T::DeleteRecipient &&
            mod.type != T::ChangeSender)
            continue;
        std::string path = mod.value;  // milters send "<a@b>" or "a@b"
        if (!path.starts_with("<")) path = "<" + path + ">";
        const bool sender = mod.type == T::ChangeSender;
        auto p = parse_path_arg((sender ? "FROM:" : "TO:") + path, sender ? "FROM" : "TO", sender);
        if (!p.addr) {
            spdlog::warn("milter {}: envelope edit of <{}> ignored: {}", milter, mod.value,
                         p.error);
            continue;
        }
        const auto same = [&](const Address& a) { return iequals(a.str(), p.addr->str()); };
        if (sender) {
            spdlog::info("milter {}: sender <{}> changed to <{}>", milter, sender_->str(),
                         p.addr->str());
            sender_ = *p.addr;
        } else if (mod.type == T::DeleteRecipient) {
            if (std::erase_if(rcpts_, same) > 0)
                spdlog::info("milter {}: recipient <{}> removed", milter, p.addr->str());
        } else if (!cfg_.find_domain(p.addr->domain)) {
            spdlog::warn("milter {}: recipient <{}> not added: {} is not served here", milter,
                         p.addr->str(), p.addr->domain);
        } else if (std::none_of(rcpts_.begin(), rcpts_.end(), same)) {
            spdlog::info("milter {}: recipient <{}> added", milter, p.addr->str());
            rcpts_.push_back(*p.addr);
        }
    }
}

asio::awaitable<std::string> Session::commit(const std::string& id, std::string body,
                                             const std::shared_ptr<Spool>& spool,
                                             const std::string& held) {
    // One queue entry per destination domain, each with its own recipients.
    std::map<std::string, std::vector<std::string>> by_domain;
    for (auto& r : rcpts_) by_domain[r.domain].push_back(r.str());
    std::vector<NewMessage> msgs;
    auto t = now();
    std::string first_id;
    for (auto& [domain, rcpts] : by_domain) {
        NewMessage m;
        m.id = msgs.empty() ? id : new_queue_id();  // the first keeps the id in Received:
        m.domain = domain;
        m.sender = sender_->str();
        m.recipients = std::move(rcpts);
        m.received_at = t;
        m.next_attempt_at = t;
        m.smtputf8 = smtputf8_;
        m.eightbit = eightbit_;
        m.client = helo_ + "[" + peer_ + "]";
        m.held = held;
        m.spool = spool;  // every destination's copy takes the same spooled rest
        msgs.push_back(std::move(m));
    }
    // One body for all the copies: the store keeps it once, under the first copy's id, and
    // removes it with the last copy (the others carry only the head, for the scheduler).
    if (msgs.size() > 1)
        for (auto& m : msgs) {
            m.body_id = msgs.front().id;
            m.body_refs = static_cast<int>(msgs.size());
        }
    for (std::size_t i = 0; i + 1 < msgs.size(); ++i) msgs[i].body = body;
    msgs.back().body = std::move(body);
    try {
        co_await server_.queue_.submit(msgs);  // then scheduled (held ones are not)
    } catch (const std::exception& e) {
        spdlog::error("store failure, answering 451 to [{}] from=<{}>: {}", peer_, sender_->str(),
                      e.what());
        co_return "451 4.3.0 Error: queue file write error, try again later";
    }
    std::string ids;
    for (auto& m : msgs) {
        spdlog::info("accepted id={} from=<{}> to={} size={} domain={} client={}", m.id, m.sender,
                     join_rcpts(m.recipients), body_size(m), m.domain, m.client);
        ids += (ids.empty() ? "" : " ") + m.id;
    }
    static auto& accepted = metrics::counter("backupmx_messages_accepted_total",
                                             "Messages accepted: committed, then answered 250 "
                                             "(one per destination domain)");
    accepted.inc(msgs.size());
    if (!held.empty()) spdlog::info("held id={}: quarantined ({})", msgs.front().id, held);
    co_return "250 2.0.0 Ok: queued as " + ids;
}

}  // namespace bmx::smtp
