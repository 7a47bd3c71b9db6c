#include "delivery/client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <optional>

#include "netio/netio.hpp"
#include "util/util.hpp"

namespace bmx::delivery {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;

namespace {

struct Extensions {
    bool pipelining = false, size = false, eightbit = false, smtputf8 = false;
};

Extensions parse_ehlo(const Reply& r) {
    Extensions e;
    for (std::size_t i = 1; i < r.lines.size(); ++i) {
        std::string kw = r.lines[i].substr(0, r.lines[i].find(' '));
        if (iequals(kw, "PIPELINING")) e.pipelining = true;
        if (iequals(kw, "SIZE")) e.size = true;
        if (iequals(kw, "8BITMIME")) e.eightbit = true;
        if (iequals(kw, "SMTPUTF8")) e.smtputf8 = true;
    }
    return e;
}

Reply local_reply(int code, std::string text) {
    return Reply{code, {std::move(text)}};
}

class Conn {
  public:
    Conn(asio::any_io_executor ex, const Settings& s) : sock_(ex), deadline_(ex), s_(s) {}

    // Runs `body(*this)` under the deadline watchdog; a timeout ends it with `timed_out_`.
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

    asio::awaitable<bool> connect(const HostPort& to) {
        doing_ = "connecting to " + to.text();
        tcp::resolver resolver(sock_.get_executor());
        auto [ec, results] = co_await resolver.async_resolve(to.host, std::to_string(to.port),
                                                             asio::as_tuple(asio::use_awaitable));
        if (ec) {
            partial_.error = "cannot resolve " + to.host + ": " + ec.message();
            co_return false;
        }
        std::string last;
        for (const auto& ep : results) {
            sock_ = tcp::socket(sock_.get_executor());
            auto [cec] =
                co_await sock_.async_connect(ep.endpoint(), asio::as_tuple(asio::use_awaitable));
            if (!cec) {
                partial_.remote = to.host + "[" + ep.endpoint().address().to_string() +
                                  "]:" + std::to_string(to.port);
                co_return true;
            }
            last = "connect to " + to.host + "[" + ep.endpoint().address().to_string() +
                   "]:" + std::to_string(to.port) + ": " + cec.message();
        }
        partial_.error = last.empty() ? "no address for " + to.host : last;
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
            bool more = co_await netio::read_more(sock_, in_);
            if (!more) {
                partial_.error = "lost connection with " + partial_.remote + " " + doing_;
                co_return std::nullopt;
            }
        }
    }

    asio::awaitable<bool> send(std::string_view data, std::string_view doing) {
        doing_ = std::string(doing);
        deadline_.expires_after(s_.reply_timeout);
        bool ok = co_await netio::write_all(sock_, data);
        if (ok) co_return true;
        partial_.error = "lost connection with " + partial_.remote + " " + doing_;
        co_return false;
    }

    // Greeting and EHLO (HELO fallback). nullopt: the session could not start; partial_ says why.
    asio::awaitable<std::optional<Extensions>> hello() {
        auto greet = co_await reply("waiting for the greeting");
        if (!greet) co_return std::nullopt;
        if (!greet->positive()) {
            partial_.error = partial_.remote + " greeted with: " + greet->text();
            co_return std::nullopt;
        }
        const std::string ehlo_cmd = "EHLO " + s_.helo_name + "\r\n";
        const bool ok1 = co_await send(ehlo_cmd, "after EHLO");
        if (!ok1) co_return std::nullopt;
        auto ehlo = co_await reply("after EHLO");
        if (!ehlo) co_return std::nullopt;
        if (ehlo->positive()) {
            partial_.reached = true;
            co_return parse_ehlo(*ehlo);
        }
        const std::string helo_cmd = "HELO " + s_.helo_name + "\r\n";
        const bool ok2 = co_await send(helo_cmd, "after HELO");
        if (!ok2) co_return std::nullopt;
        auto helo = co_await reply("after HELO");
        if (!helo) co_return std::nullopt;
        if (!helo->positive()) {
            partial_.error = partial_.remote + " refused HELO: " + helo->text();
            co_return std::nullopt;
        }
        partial_.reached = true;
        co_return Extensions{};
    }

    asio::awaitable<void> quit() {
        quitting_ = true;
        const bool ok3 = co_await send("QUIT\r\n", "after QUIT");
        if (ok3) {
            deadline_.expires_after(std::chrono::seconds(5));
            co_await reply("after QUIT");
        }
        boost::system::error_code ec;
        sock_.shutdown(tcp::socket::shutdown_both, ec);
        sock_.close(ec);
    }

    Outcome partial_;

  private:
    tcp::socket sock_;
    asio::steady_timer deadline_;
    const Settings& s_;
    std::string in_;
    ReplyParser parser_;
    std::string doing_;
    bool quitting_ = false;
};

asio::awaitable<Outcome> transaction(Conn& c, const HostPort& to, const Envelope& env,
                                     std::string_view body) {
    auto fail = [&c] { return std::move(c.partial_); };
    const bool ok4 = co_await c.connect(to);
    if (!ok4) co_return fail();
    auto ext = co_await c.hello();
    if (!ext) co_return fail();
    const std::size_t n = env.recipients.size();
    if (env.smtputf8 && !ext->smtputf8) {
        c.partial_.rcpt.assign(
            n, local_reply(550, "5.6.7 " + c.partial_.remote +
                                    " does not support SMTPUTF8, which this message needs"));
        co_await c.quit();
        co_return fail();
    }
    std::string mail = "MAIL FROM:<" + env.sender + ">";
    if (ext->size) mail += " SIZE=" + std::to_string(body.size());
    if (env.eightbit && ext->eightbit) mail += " BODY=8BITMIME";
    if (env.smtputf8) mail += " SMTPUTF8";
    mail += "\r\n";
    std::vector<std::string> rcpt_cmds;
    for (const auto& r : env.recipients) rcpt_cmds.push_back("RCPT TO:<" + r + ">\r\n");

    std::optional<Reply> mail_reply, data_reply;
    std::vector<Reply> rcpt_replies;
    if (ext->pipelining) {  // RFC 2920: MAIL, every RCPT and DATA in one write
        std::string batch = mail;
        for (auto& r : rcpt_cmds) batch += r;
        batch += "DATA\r\n";
        const bool ok5 = co_await c.send(batch, "after MAIL FROM");
        if (!ok5) co_return fail();
        mail_reply = co_await c.reply("after MAIL FROM");
        if (!mail_reply) co_return fail();
        for (std::size_t i = 0; i < n; ++i) {
            const std::string doing = "after RCPT TO:<" + env.recipients[i] + ">";
            auto r = co_await c.reply(doing);
            if (!r) co_return fail();
            rcpt_replies.push_back(*r);
        }
        data_reply = co_await c.reply("after DATA");
        if (!data_reply) co_return fail();
    } else {
        const bool ok6 = co_await c.send(mail, "after MAIL FROM");
        if (!ok6) co_return fail();
        mail_reply = co_await c.reply("after MAIL FROM");
        if (!mail_reply) co_return fail();
        if (mail_reply->positive()) {
            for (std::size_t i = 0; i < n; ++i) {
                std::string doing = "after RCPT TO:<" + env.recipients[i] + ">";
                const bool ok7 = co_await c.send(rcpt_cmds[i], doing);
                if (!ok7) co_return fail();
                auto r = co_await c.reply(doing);
                if (!r) co_return fail();
                rcpt_replies.push_back(*r);
            }
        }
    }
    if (!mail_reply->positive()) {
        c.partial_.rcpt.assign(n, *mail_reply);
        co_await c.quit();
        co_return fail();
    }
    bool any = false;
    for (auto& r : rcpt_replies) any = any || r.positive();
    if (!ext->pipelining && any) {
        const bool ok8 = co_await c.send("DATA\r\n", "after DATA");
        if (!ok8) co_return fail();
        data_reply = co_await c.reply("after DATA");
        if (!data_reply) co_return fail();
    }
    std::optional<Reply> final_reply;
    if (data_reply && data_reply->code == 354) {
        // With no accepted recipient a (misbehaving) server may still say 354: end it empty.
        std::string data = any ? stuff_body(body) : std::string(".\r\n");
        const bool ok9 = co_await c.send(data, "after end of data");
        if (!ok9) co_return fail();
        final_reply = co_await c.reply("after end of data");
        if (!final_reply) co_return fail();
    } else if (data_reply) {
        final_reply = data_reply;
    }
    for (std::size_t i = 0; i < n; ++i) {
        const Reply& r = rcpt_replies[i];
        c.partial_.rcpt.push_back(r.positive() && final_reply ? *final_reply : r);
    }
    co_await c.quit();
    co_return fail();
}

}  // namespace

asio::awaitable<Outcome> deliver(const Settings& s, const HostPort& to, const Envelope& env,
                                 std::string_view body) {
    Conn c(co_await asio::this_coro::executor, s);
    // Named, not a temporary inside co_await: GCC 12 may destroy such temporaries twice.
    auto work = [&](Conn& conn) { return transaction(conn, to, env, body); };
    co_return co_await c.run(work);
}

static asio::awaitable<Outcome> probe_session(Conn& c, const HostPort& to) {
    bool connected = co_await c.connect(to);
    if (!connected) co_return std::move(c.partial_);
    auto ext = co_await c.hello();
    if (ext) co_await c.quit();
    co_return std::move(c.partial_);
}

asio::awaitable<Outcome> probe(const Settings& s, const HostPort& to) {
    Conn c(co_await asio::this_coro::executor, s);
    auto work = [&to](Conn& conn) { return probe_session(conn, to); };
    co_return co_await c.run(work);
}

}  // namespace bmx::delivery
