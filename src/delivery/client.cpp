#include "delivery/client.hpp"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <optional>

#include "netio/netio.hpp"
#include "netio/stream.hpp"
#include "util/util.hpp"

namespace bmx::delivery {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;

asio::ssl::context& TlsContexts::get(const std::string& ca_file) {
    auto& c = contexts_[ca_file];
    if (!c) {
        c = netio::client_context();
        boost::system::error_code ec;
        if (ca_file.empty())
            c->set_default_verify_paths(ec);
        else
            c->load_verify_file(ca_file, ec);
        // A bad CA file surfaces as a verification failure on every attempt, logged per message.
    }
    return *c;
}

namespace {

struct Extensions {
    bool pipelining = false, size = false, eightbit = false, smtputf8 = false, starttls = false;
};

Extensions parse_ehlo(const Reply& r) {
    Extensions e;
    for (std::size_t i = 1; i < r.lines.size(); ++i) {
        std::string kw = r.lines[i].substr(0, r.lines[i].find(' '));
        if (iequals(kw, "PIPELINING")) e.pipelining = true;
        if (iequals(kw, "SIZE")) e.size = true;
        if (iequals(kw, "8BITMIME")) e.eightbit = true;
        if (iequals(kw, "SMTPUTF8")) e.smtputf8 = true;
        if (iequals(kw, "STARTTLS")) e.starttls = true;
    }
    return e;
}

Reply local_reply(int code, std::string text) {
    return Reply{code, {std::move(text)}};
}

class Conn {
  public:
    Conn(asio::any_io_executor ex, const Settings& s) : ex_(ex), deadline_(ex), s_(s) {}

    // Runs `body(*this)` under the deadline watchdog; a timeout ends it with an error.
    template <class F>
    asio::awaitable<Outcome> run(F body) {
        deadline_.expires_after(s_.connect_timeout);
        auto r = co_await (body(*this) || netio::watchdog(deadline_));
        if (r.index() == 1) {
            Outcome o = std::move(partial_);
            if (quitting_) co_return o;  // decisions were all in; a slow QUIT changes nothing
            o.rcpt.clear();
            o.error = "timeout " + doing_;
            co_return o;
        }
        co_return std::get<0>(std::move(r));
    }

    // Tries every target in order (RFC 5321 5.1: every address of a host, then the next host).
    asio::awaitable<bool> connect(const std::vector<Target>& targets) {
        std::string errors;
        for (const auto& t : targets) {
            doing_ = "connecting to " + t.text();
            deadline_.expires_after(s_.connect_timeout);
            tcp::socket sock(ex_);
            auto [ec] = co_await sock.async_connect(tcp::endpoint(t.address, t.port),
                                                    asio::as_tuple(asio::use_awaitable));
            if (!ec) {
                // Every write is a whole batch (commands, or a body piece with what ends it):
                // Nagle could only hold the last one back for a delayed ACK.
                sock.set_option(tcp::no_delay(true), ec);
                stream_.emplace(std::move(sock));
                target_ = t;
                partial_.remote = t.text();
                partial_.remote_host = t.host;
                co_return true;
            }
            errors +=
                (errors.empty() ? "" : "; ") + ("connect to " + t.text() + ": " + ec.message());
        }
        partial_.error = targets.empty() ? "no address to connect to" : errors;
        co_return false;
    }

    asio::awaitable<std::optional<Reply>> reply(std::string_view doing) {
        doing_ = std::string(doing);
        deadline_.expires_after(s_.reply_timeout);
        for (;;) {
            if (auto r = parser_.next(in_)) {
                if (r->code == 0) {
                    partial_.error = "malformed reply from " + partial_.remote + " " + doing_;
                    co_return std::nullopt;
                }
                co_return r;
            }
            const bool more = co_await stream_->read_more(in_);
            if (!more) {
                partial_.error = "lost connection with " + partial_.remote + " " + doing_;
                co_return std::nullopt;
            }
        }
    }

    asio::awaitable<bool> send(std::string_view data, std::string_view doing) {
        doing_ = std::string(doing);
        if (!quitting_ && pending()) {  // a reply nobody asked for yet: out of step (smuggling)
            if (doing.starts_with("after ")) doing.remove_prefix(6);
            out_of_step("data waiting before " + std::string(doing) + " was sent");
            co_return false;
        }
        deadline_.expires_after(s_.reply_timeout);
        const bool ok = co_await stream_->write_all(data);
        if (ok) co_return true;
        partial_.error = "lost connection with " + partial_.remote + " " + doing_;
        co_return false;
    }

    asio::awaitable<std::optional<Extensions>> ehlo() {
        const std::string ehlo_cmd = "EHLO " + s_.helo_name + "\r\n";
        const bool sent = co_await send(ehlo_cmd, "after EHLO");
        if (!sent) co_return std::nullopt;
        auto r = co_await reply("after EHLO");
        if (!r) co_return std::nullopt;
        if (r->positive()) co_return parse_ehlo(*r);
        const std::string helo_cmd = "HELO " + s_.helo_name + "\r\n";
        const bool sent2 = co_await send(helo_cmd, "after HELO");
        if (!sent2) co_return std::nullopt;
        auto helo = co_await reply("after HELO");
        if (!helo) co_return std::nullopt;
        if (!helo->positive()) {
            partial_.error = partial_.remote + " refused HELO: " + helo->text();
            co_return std::nullopt;
        }
        co_return Extensions{};
    }

    // Greeting and EHLO. nullopt: the session could not start; partial_ says why.
    asio::awaitable<std::optional<Extensions>> hello() {
        auto greet = co_await reply("waiting for the greeting");
        if (!greet) co_return std::nullopt;
        if (!greet->positive()) {
            partial_.error = partial_.remote + " greeted with: " + greet->text();
            co_return std::nullopt;
        }
        auto ext = co_await ehlo();
        if (ext) partial_.reached = true;
        co_return ext;
    }

    // STARTTLS as the policy says. Returns the extensions to use next (after the second EHLO),
    // or nullopt when the policy forbids going on; `retry_plain` when "may" should reconnect
    // without TLS after a failed handshake.
    asio::awaitable<std::optional<Extensions>> secure(const Extensions& ext, bool& retry_plain) {
        TlsPolicy policy = s_.tls;
        std::vector<dns::Tlsa> tlsa;
        if (policy == TlsPolicy::Dane) {
            if (!s_.resolver) {
                partial_.error = "tls = dane without a resolver";
                co_return std::nullopt;
            }
            const std::string host = target_.host;
            auto a = co_await s_.resolver->tlsa(host, target_.port);
            if (a.status == dns::Status::TempFail || a.status == dns::Status::Bogus) {
                partial_.error = "TLSA lookup for _" + std::to_string(target_.port) + "._tcp." +
                                 host + ": " + dns::to_string(a.status) + " (" + a.error +
                                 "); deferring (tls = dane)";
                co_return std::nullopt;
            }
            if (a.status == dns::Status::Ok && a.secure && !a.records.empty()) {
                tlsa = std::move(a.records);
            } else {
                policy = TlsPolicy::May;  // RFC 7672 2.2: no secure TLSA, opportunistic TLS
                dane_note_ = a.status == dns::Status::Ok && !a.secure ? " (TLSA not DNSSEC-signed)"
                                                                      : " (no TLSA)";
            }
        }
        if (!ext.starttls) {
            if (policy == TlsPolicy::May) co_return ext;
            partial_.error = partial_.remote +
                             " does not offer STARTTLS, required by tls = " + to_string(s_.tls);
            co_return std::nullopt;
        }
        const bool sent = co_await send("STARTTLS\r\n", "after STARTTLS");
        if (!sent) co_return std::nullopt;
        auto r = co_await reply("after STARTTLS");
        if (!r) co_return std::nullopt;
        if (r->code != 220) {
            if (policy == TlsPolicy::May) co_return ext;  // the server changed its mind: go plain
            partial_.error = partial_.remote + " refused STARTTLS: " + r->text();
            co_return std::nullopt;
        }
        in_.clear();  // nothing sent before the handshake may be read after it
        auto& ctx = s_.contexts->get(policy == TlsPolicy::Verify ? s_.tls_ca_file : "");
        const Target t = target_;
        auto prepare = [&](SSL* ssl) {
            boost::system::error_code ec;
            (void)asio::ip::make_address(t.host, ec);  // ec set: a name, not an IP literal
            if (ec) SSL_set_tlsext_host_name(ssl, t.host.c_str());
            if (policy == TlsPolicy::Verify) {
                SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
                if (!ec)
                    return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), t.host.c_str()) == 1;
                return SSL_set1_host(ssl, t.host.c_str()) == 1;
            }
            if (policy == TlsPolicy::Dane) {
                SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
                if (SSL_dane_enable(ssl, t.host.c_str()) <= 0) return false;
                int usable = 0;
                for (auto& rec : tlsa)
                    if (SSL_dane_tlsa_add(ssl, rec.usage, rec.selector, rec.matching,
                                          rec.data.data(), rec.data.size()) > 0)
                        ++usable;
                return usable > 0;
            }
            SSL_set_verify(ssl, SSL_VERIFY_NONE, nullptr);
            return true;
        };
        std::string error;
        deadline_.expires_after(s_.reply_timeout);
        doing_ = "during the TLS handshake";
        const bool ok = co_await stream_->handshake_client(ctx, prepare, error);
        if (!ok) {
            if (policy == TlsPolicy::May) {
                retry_plain = true;
                partial_.error = "TLS handshake with " + partial_.remote + " failed: " + error;
            } else {
                partial_.error = "TLS handshake with " + partial_.remote +
                                 " failed (tls = " + std::string(to_string(s_.tls)) + "): " + error;
            }
            co_return std::nullopt;
        }
        std::string how = policy == TlsPolicy::Dane     ? "dane"
                          : policy == TlsPolicy::Verify ? "verified"
                                                        : "unverified";
        partial_.tls = stream_->tls_version() + " cipher=" + stream_->tls_cipher() +
                       " peer=" + how + dane_note_;
        auto again = co_await ehlo();  // RFC 3207: forget what was said before TLS
        co_return again;
    }

    asio::awaitable<void> quit() {
        quitting_ = true;
        const bool sent = co_await send("QUIT\r\n", "after QUIT");
        if (sent) {
            deadline_.expires_after(std::chrono::seconds(5));
            co_await reply("after QUIT");
        }
        stream_->close();
    }

    // Bytes from the server that no command has asked for yet.
    bool pending() { return !in_.empty() || (stream_ && stream_->pending()); }

    // Replies no longer match commands: nothing of this transaction may be counted on them.
    void out_of_step(const std::string& what) {
        partial_.rcpt.clear();
        partial_.error = "replies from " + partial_.remote + " no longer match commands (" + what +
                         "); connection closed";
    }

    // Whether `r` answers `step`; otherwise the transaction is out of step (see fits()).
    bool check(Step step, const Reply& r) {
        if (fits(step, r)) return true;
        out_of_step("'" + r.text() + "' " + doing_);  // text() is printable already
        return false;
    }

    void drop() {
        if (stream_) stream_->close();
        stream_.reset();
        in_.clear();
        parser_ = ReplyParser{};
    }

    Outcome partial_;

  private:
    asio::any_io_executor ex_;
    asio::steady_timer deadline_;
    const Settings& s_;
    std::optional<netio::Stream> stream_;
    Target target_;
    std::string in_;
    ReplyParser parser_;
    std::string doing_;
    std::string dane_note_;
    bool quitting_ = false;
};

// Connect, greet, STARTTLS by policy; nullopt when the transaction cannot go on.
asio::awaitable<std::optional<Extensions>> open_session(Conn& c, const std::vector<Target>& targets,
                                                        const Settings& s) {
    for (int round = 0; round < 2; ++round) {
        const bool connected = co_await c.connect(targets);
        if (!connected) co_return std::nullopt;
        auto ext = co_await c.hello();
        if (!ext) co_return std::nullopt;
        if (round == 1) co_return ext;  // "may" after a failed handshake: plaintext this time
        bool retry_plain = false;
        auto secured = co_await c.secure(*ext, retry_plain);
        if (secured) co_return secured;
        if (!retry_plain || s.tls != TlsPolicy::May) co_return std::nullopt;
        // tls = may is opportunistic: reconnect once without TLS, and say so (the outcome's
        // error is cleared when the plaintext session opens).
        spdlog::warn("{}; tls = may: trying again in plaintext", c.partial_.error);
        c.drop();
    }
    co_return std::nullopt;
}

// Sends the body piece by piece, dot-stuffed; `end` receives what finishes it. False (with the
// error set) when the connection or the store failed, or the pieces did not add up to the size:
// then the final dot must never be sent.
asio::awaitable<bool> send_body(Conn& c, const Body& body, std::string& end) {
    Stuffer stuffer;
    std::int64_t seen = 0;
    std::string out;  // one piece behind: the last one goes out with the final dot, in one write
    for (;;) {
        std::optional<std::string> piece;
        try {
            piece = co_await (*body.pieces)();
        } catch (const std::exception& e) {
            c.partial_.error = std::string("reading the queued body: ") + e.what();
            co_return false;
        }
        if (!piece) break;
        seen += static_cast<std::int64_t>(piece->size());
        if (!out.empty()) {
            const bool sent = co_await c.send(out, "after end of data");
            if (!sent) co_return false;
            out.clear();
        }
        stuffer.feed(*piece, out);
    }
    if (seen != body.size) {
        c.partial_.error = "the queued body has " + std::to_string(seen) + " bytes, not " +
                           std::to_string(body.size) + "; not sent";
        co_return false;
    }
    stuffer.finish(out);
    end = std::move(out);
    co_return true;
}

// How a connection stands after a transaction.
enum class After { Broken, Idle, NeedsRset };

// One mail transaction on an open session (MAIL, RCPT..., DATA, body): fills c.partial_.rcpt, or
// c.partial_.error when the connection failed. Never QUITs: the caller decides.
asio::awaitable<After> transact(Conn& c, const Extensions& ext, const Envelope& env,
                                const Body& body) {
    const std::size_t n = env.recipients.size();
    if (env.smtputf8 && !ext.smtputf8) {
        c.partial_.rcpt.assign(
            n, local_reply(550, "5.6.7 " + c.partial_.remote +
                                    " does not support SMTPUTF8, which this message needs"));
        co_return After::Idle;
    }
    std::string mail = "MAIL FROM:<" + env.sender + ">";
    if (ext.size) mail += " SIZE=" + std::to_string(body.size);
    if (env.eightbit && ext.eightbit) mail += " BODY=8BITMIME";
    if (env.smtputf8) mail += " SMTPUTF8";
    mail += "\r\n";
    std::vector<std::string> rcpt_cmds;
    for (const auto& r : env.recipients) rcpt_cmds.push_back("RCPT TO:<" + r + ">\r\n");

    std::optional<Reply> mail_reply, data_reply;
    std::vector<Reply> rcpt_replies;
    if (ext.pipelining) {  // RFC 2920: MAIL, every RCPT and DATA in one write
        std::string batch = mail;
        for (auto& r : rcpt_cmds) batch += r;
        batch += "DATA\r\n";
        const bool sent = co_await c.send(batch, "after MAIL FROM");
        if (!sent) co_return After::Broken;
        mail_reply = co_await c.reply("after MAIL FROM");
        if (!mail_reply || !c.check(Step::Mail, *mail_reply)) co_return After::Broken;
        if (mail_reply->code == 421) {  // closing now: the other replies will not come
            c.partial_.rcpt.assign(n, *mail_reply);
            co_return After::Broken;
        }
        for (std::size_t i = 0; i < n; ++i) {
            const std::string doing = "after RCPT TO:<" + env.recipients[i] + ">";
            auto r = co_await c.reply(doing);
            if (!r || !c.check(Step::Rcpt, *r)) co_return After::Broken;
            if (r->code == 421) {
                c.partial_.rcpt.assign(n, *r);
                co_return After::Broken;
            }
            rcpt_replies.push_back(*r);
        }
        data_reply = co_await c.reply("after DATA");
        if (!data_reply || !c.check(Step::Data, *data_reply)) co_return After::Broken;
    } else {
        const bool sent = co_await c.send(mail, "after MAIL FROM");
        if (!sent) co_return After::Broken;
        mail_reply = co_await c.reply("after MAIL FROM");
        if (!mail_reply || !c.check(Step::Mail, *mail_reply)) co_return After::Broken;
        if (mail_reply->positive()) {
            for (std::size_t i = 0; i < n; ++i) {
                const std::string doing = "after RCPT TO:<" + env.recipients[i] + ">";
                const bool rcpt_sent = co_await c.send(rcpt_cmds[i], doing);
                if (!rcpt_sent) co_return After::Broken;
                auto r = co_await c.reply(doing);
                if (!r || !c.check(Step::Rcpt, *r)) co_return After::Broken;
                rcpt_replies.push_back(*r);
            }
        }
    }
    // 421: the server is closing the channel (RFC 5321 3.8), whatever else it said.
    bool closing = mail_reply->code == 421 || (data_reply && data_reply->code == 421);
    for (auto& r : rcpt_replies) closing = closing || r.code == 421;
    if (!mail_reply->positive()) {
        c.partial_.rcpt.assign(n, *mail_reply);
        co_return closing ? After::Broken : After::NeedsRset;
    }
    bool any = false;
    for (auto& r : rcpt_replies) any = any || r.positive();
    if (!ext.pipelining && any) {
        const bool sent = co_await c.send("DATA\r\n", "after DATA");
        if (!sent) co_return After::Broken;
        data_reply = co_await c.reply("after DATA");
        if (!data_reply || !c.check(Step::Data, *data_reply)) co_return After::Broken;
        closing = closing || data_reply->code == 421;
    }
    std::optional<Reply> final_reply;
    bool finished = false;  // the transaction ended with the reply to the final dot
    if (data_reply && data_reply->code == 354) {
        // With no accepted recipient a (misbehaving) server may still say 354: end it empty.
        std::string end = ".\r\n";
        if (any) {
            const bool streamed = co_await send_body(c, body, end);
            if (!streamed) co_return After::Broken;  // no final dot: the primary discards it
        }
        const bool sent = co_await c.send(end, "after end of data");
        if (!sent) co_return After::Broken;
        final_reply = co_await c.reply("after end of data");
        if (!final_reply || !c.check(Step::EndOfData, *final_reply)) co_return After::Broken;
        if (c.pending()) {  // more than one reply to the dot: which one was its own is unknown
            c.out_of_step("more data after the reply to the final dot");
            co_return After::Broken;
        }
        closing = closing || final_reply->code == 421;
        finished = true;
    } else if (data_reply) {
        final_reply = data_reply;  // 4xx or 5xx to DATA (check() let nothing else through)
    }
    for (std::size_t i = 0; i < n; ++i) {
        const Reply& r = rcpt_replies[i];
        c.partial_.rcpt.push_back(r.positive() && final_reply ? *final_reply : r);
    }
    if (closing) co_return After::Broken;
    co_return finished ? After::Idle : After::NeedsRset;
}

asio::awaitable<Outcome> transaction(Conn& c, const Settings& s, const std::vector<Target>& targets,
                                     const Envelope& env, const Body& body) {
    auto ext = co_await open_session(c, targets, s);
    if (!ext) co_return std::move(c.partial_);
    c.partial_.error.clear();  // a failed TLS try that fell back to plaintext is not the outcome
    auto after = co_await transact(c, *ext, env, body);
    if (after != After::Broken) co_await c.quit();
    co_return std::move(c.partial_);
}

asio::awaitable<Outcome> verify_session(Conn& c, const Settings& s,
                                        const std::vector<Target>& targets,
                                        const std::string& recipient) {
    auto ext = co_await open_session(c, targets, s);
    if (!ext) co_return std::move(c.partial_);
    c.partial_.error.clear();
    const bool sent = co_await c.send("MAIL FROM:<>\r\n", "after MAIL FROM");
    if (!sent) co_return std::move(c.partial_);
    auto mail = co_await c.reply("after MAIL FROM");
    if (!mail) co_return std::move(c.partial_);
    if (!mail->positive()) {
        c.partial_.error = "MAIL FROM:<> refused: " + mail->text();
        co_await c.quit();
        co_return std::move(c.partial_);
    }
    const std::string cmd = "RCPT TO:<" + recipient + ">\r\n";
    const bool sent2 = co_await c.send(cmd, "after RCPT TO");
    if (!sent2) co_return std::move(c.partial_);
    auto r = co_await c.reply("after RCPT TO");
    if (!r) co_return std::move(c.partial_);
    c.partial_.rcpt.push_back(*r);
    const bool rset = co_await c.send("RSET\r\n", "after RSET");
    if (rset) co_await c.reply("after RSET");
    co_await c.quit();
    co_return std::move(c.partial_);
}

asio::awaitable<Outcome> probe_session(Conn& c, const Settings& s,
                                       const std::vector<Target>& targets) {
    (void)s;  // a probe asks "are you up?", not "is your TLS right?": no STARTTLS
    const bool connected = co_await c.connect(targets);
    if (!connected) co_return std::move(c.partial_);
    auto ext = co_await c.hello();
    if (ext) co_await c.quit();
    co_return std::move(c.partial_);
}

}  // namespace

asio::awaitable<Outcome> deliver(const Settings& s, const std::vector<Target>& targets,
                                 const Envelope& env, const Body& body) {
    Conn c(co_await asio::this_coro::executor, s);
    // Named, not a temporary inside co_await: GCC 12 may destroy such temporaries twice.
    auto work = [&](Conn& conn) { return transaction(conn, s, targets, env, body); };
    co_return co_await c.run(work);
}

struct Session::Impl {
    Impl(asio::any_io_executor ex, const Settings& s) : c(ex, s), s(s) {}
    Conn c;
    const Settings& s;
    Extensions ext;
    Outcome base;  // reached, remote and tls of the open session
    bool usable = false;
    bool rset = false;  // the last transaction did not end cleanly: RSET before the next
    std::size_t sent = 0;
    std::string open_error;
};

Session::Session(asio::any_io_executor ex, const Settings& s)
    : impl_(std::make_unique<Impl>(ex, s)) {}
Session::~Session() = default;

bool Session::usable() const {
    return impl_->usable;
}
std::size_t Session::transactions() const {
    return impl_->sent;
}

asio::awaitable<Outcome> Session::open(const std::vector<Target>& targets) {
    auto& i = *impl_;
    auto work = [&](Conn& conn) -> asio::awaitable<Outcome> {
        auto ext = co_await open_session(conn, targets, i.s);
        if (ext) {
            i.ext = *ext;
            i.usable = true;
            conn.partial_.error.clear();  // a failed TLS try that fell back to plaintext
        }
        co_return std::move(conn.partial_);
    };
    auto o = co_await i.c.run(work);
    if (!o.error.empty()) i.usable = false;
    i.base = Outcome{o.reached, o.remote, o.remote_host, o.tls, {}, {}};
    i.open_error = o.error;
    co_return o;
}

asio::awaitable<Outcome> Session::send(const Envelope& env, const Body& body) {
    auto& i = *impl_;
    if (!i.usable) {
        Outcome o = i.base;  // why it could not open, for the message that was to go first
        o.error = i.open_error.empty() ? "no open session with the primary" : i.open_error;
        co_return o;
    }
    i.c.partial_ = i.base;
    After after = After::Broken;
    auto work = [&](Conn& conn) -> asio::awaitable<Outcome> {
        if (i.rset) {
            const bool sent = co_await conn.send("RSET\r\n", "after RSET");
            if (!sent) co_return std::move(conn.partial_);
            auto r = co_await conn.reply("after RSET");
            if (!r) co_return std::move(conn.partial_);
            if (!r->positive()) {
                conn.partial_.error = conn.partial_.remote + " refused RSET: " + r->text();
                co_return std::move(conn.partial_);
            }
            i.rset = false;
        }
        after = co_await transact(conn, i.ext, env, body);
        co_return std::move(conn.partial_);
    };
    auto o = co_await i.c.run(work);
    ++i.sent;
    if (!o.error.empty()) after = After::Broken;  // a timeout or a lost connection
    i.usable = after != After::Broken;
    i.rset = after == After::NeedsRset;
    if (!i.usable) i.c.drop();
    co_return o;
}

asio::awaitable<void> Session::close() {
    auto& i = *impl_;
    if (!i.usable) co_return;
    i.usable = false;
    auto work = [&](Conn& conn) -> asio::awaitable<Outcome> {
        co_await conn.quit();
        co_return Outcome{};
    };
    co_await i.c.run(work);
    i.c.drop();
}

asio::awaitable<Outcome> verify(const Settings& s, const std::vector<Target>& targets,
                                const std::string& recipient) {
    Conn c(co_await asio::this_coro::executor, s);
    auto work = [&](Conn& conn) { return verify_session(conn, s, targets, recipient); };
    co_return co_await c.run(work);
}

asio::awaitable<Outcome> probe(const Settings& s, const std::vector<Target>& targets) {
    Conn c(co_await asio::this_coro::executor, s);
    auto work = [&](Conn& conn) { return probe_session(conn, s, targets); };
    co_return co_await c.run(work);
}

}  // namespace bmx::delivery
