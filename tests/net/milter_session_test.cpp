// milter::Session against a scripted fake milter on a Unix socket, in-process: what a real
// libmilter never does — answering late, not at all, with garbage, oversized packets or edits it
// did not negotiate — and exactly which packets the client sends for each protocol flag.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <filesystem>
#include <functional>
#include <map>

#include "milter/milter.hpp"
#include "support.hpp"

using namespace bmx::milter;
using namespace bmx::test;
namespace asio = boost::asio;
using local = asio::local::stream_protocol;
using namespace std::chrono_literals;

namespace {

std::string optneg_reply(std::uint32_t actions, std::uint32_t protocol, std::string lists = "") {
    return frame('O', u32(6) + u32(actions) + u32(protocol) + lists);
}

struct Reply {
    std::string bytes;
    std::chrono::milliseconds delay{0};
    bool close = false;
};
using Responder = std::function<std::vector<Reply>(const Packet&)>;

// A milter that negotiates `actions`/`protocol`, answers SMFIR_CONTINUE to every step that
// wants an answer, and `special[command]` where given.
Responder standard(std::uint32_t actions, std::uint32_t protocol,
                   std::map<char, std::vector<Reply>> special = {}) {
    return [=](const Packet& p) -> std::vector<Reply> {
        if (p.command == 'O') return {{optneg_reply(actions, protocol)}};
        if (p.command == 'D' || p.command == 'A' || p.command == 'Q') return {};
        auto it = special.find(p.command);
        if (it != special.end()) return it->second;
        return {{frame('c', "")}};
    };
}

class Fake {
  public:
    Fake() : acceptor_(io, local::endpoint(dir_.path + "/m.sock")) {}
    Endpoint endpoint() const { return *parse_endpoint("unix:" + dir_.path + "/m.sock"); }

    // Serves one connection with `respond`; records every packet the client sent.
    void start(Responder respond) {
        respond_ = std::move(respond);
        asio::co_spawn(
            io, [this]() { return serve(); }, asio::detached);
    }
    std::string commands() const {  // the client's packets, by command letter
        std::string s;
        for (const auto& p : seen) s += p.command;
        return s;
    }
    const Packet* find(char command, std::size_t nth = 0) const {
        for (const auto& p : seen)
            if (p.command == command && nth-- == 0) return &p;
        return nullptr;
    }
    void run(std::chrono::seconds limit = 10s) { io.run_for(limit); }

    asio::io_context io;
    std::vector<Packet> seen;
    bool peer_closed = false;

  private:
    asio::awaitable<void> serve() {
        auto [ec, sock] = co_await acceptor_.async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec) co_return;
        Decoder d(1 << 20);
        std::array<char, 8192> buf;
        for (;;) {
            auto p = d.next();
            if (!p) {
                auto [e, n] = co_await sock.async_read_some(asio::buffer(buf),
                                                            asio::as_tuple(asio::use_awaitable));
                if (e) {
                    peer_closed = true;
                    co_return;
                }
                d.feed(std::string_view(buf.data(), n));
                continue;
            }
            seen.push_back(*p);
            for (const auto& r : respond_(*p)) {
                if (r.delay.count() > 0) {
                    asio::steady_timer t(io, r.delay);
                    co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
                }
                if (r.close) co_return;
                boost::system::error_code we;
                asio::write(sock, asio::buffer(r.bytes), we);
            }
        }
    }

    TempDir dir_;
    local::acceptor acceptor_;
    Responder respond_;
};

const std::vector<std::string> kNoArgs;

// One whole transaction; the verdict of each step in order: connect helo mail rcpt data eom.
asio::awaitable<void> transaction(Session& m, std::vector<Verdict>& got) {
    got.push_back(co_await m.connect("client.example", "192.0.2.1", 4321));
    got.push_back(co_await m.helo("client.example"));
    got.push_back(co_await m.mail("a@sender.test", kNoArgs));
    got.push_back(co_await m.rcpt("b@example.test", kNoArgs));
    got.push_back(co_await m.data());
    auto eom = co_await m.message("Received: ours\r\nSubject: hi\r\n\r\nbody\r\n");
    got.push_back(eom.verdict);
    co_await m.quit();
}

const Verdict kTempfail{Verdict::Tempfail, "451 4.7.1 Service unavailable - try again later"};
const Verdict kContinue{};

std::vector<Verdict> all(std::size_t n, const Verdict& v) {
    return std::vector<Verdict>(n, v);
}

std::uint16_t free_port() {
    asio::io_context io;
    asio::ip::tcp::acceptor a(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    return a.local_endpoint().port();
}

}  // namespace

TEST(MilterSession, UnreachableMilterGetsTheDefaultActionAtEveryStep) {
    const std::pair<DefaultAction, Verdict> cases[] = {
        {DefaultAction::Tempfail, kTempfail},
        {DefaultAction::Reject, Verdict{Verdict::Reject, "550 5.5.0 Service unavailable"}},
        {DefaultAction::Accept, kContinue},
    };
    const std::string endpoints[] = {"unix:/nonexistent/bmx/milter.sock",
                                     "inet:127.0.0.1:" + std::to_string(free_port())};
    for (const auto& spec : endpoints) {
        for (const auto& [action, expected] : cases) {
            asio::io_context io;
            Settings s;
            s.default_action = action;
            Session m(io.get_executor(), *parse_endpoint(spec), s);
            std::vector<Verdict> got;
            asio::co_spawn(
                io, [&]() { return transaction(m, got); }, asio::detached);
            io.run_for(10s);
            EXPECT_EQ(got, all(6, expected)) << spec;
            EXPECT_TRUE(m.failed());
            EXPECT_NE(m.error().find("connect"), std::string::npos) << m.error();
        }
    }
}

TEST(MilterSession, SilentMilterTimesOut) {
    Fake f;
    f.start([](const Packet&) -> std::vector<Reply> { return {}; });  // never answers
    Settings s;
    s.command_timeout = 300ms;
    Session m(f.io.get_executor(), f.endpoint(), s);
    std::vector<Verdict> got;
    asio::co_spawn(
        f.io, [&]() { return transaction(m, got); }, asio::detached);
    const auto start = std::chrono::steady_clock::now();
    f.run();
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    EXPECT_EQ(got, all(6, kTempfail));
    EXPECT_NE(m.error().find("timeout"), std::string::npos) << m.error();
    EXPECT_EQ(f.commands(), "O");  // nothing after the failure
}

TEST(MilterSession, SlowContentTimesOutWithTheContentTimeout) {
    Fake f;
    f.start(standard(0, 0, {{'E', {{frame('c', ""), 1000ms}}}}));
    Settings s;
    s.content_timeout = 300ms;
    Session m(f.io.get_executor(), f.endpoint(), s);
    std::vector<Verdict> got;
    asio::co_spawn(
        f.io, [&]() { return transaction(m, got); }, asio::detached);
    f.run(3s);
    ASSERT_EQ(got.size(), 6u);
    EXPECT_EQ(got[4], kContinue);
    EXPECT_EQ(got[5], kTempfail);
    EXPECT_NE(m.error().find("after SMFIC_BODYEOB: timeout"), std::string::npos) << m.error();
}

TEST(MilterSession, ProgressKeepsTheClientWaiting) {
    Fake f;
    std::vector<Reply> slow;
    for (int i = 0; i < 4; ++i) slow.push_back({frame('p', ""), 150ms});
    slow.push_back({frame('h', z("X-Late") + z("yes"))});
    slow.push_back({frame('a', "")});
    f.start(standard(smfif::AddHdrs, 0, {{'E', slow}}));
    Settings s;
    s.content_timeout = 400ms;  // the whole answer takes 600 ms; each packet comes within 150
    Session m(f.io.get_executor(), f.endpoint(), s);
    EndOfMessage eom;
    asio::co_spawn(
        f.io,
        [&]() -> asio::awaitable<void> {
            co_await m.connect("c", "192.0.2.1", 1);
            co_await m.mail("a@b", kNoArgs);
            eom = co_await m.end_of_message();
            co_await m.quit();
        },
        asio::detached);
    f.run();
    EXPECT_EQ(eom.verdict.action, Verdict::Accept) << m.error();
    ASSERT_EQ(eom.modifications.size(), 1u);
    EXPECT_EQ(eom.modifications[0].value, " yes");
}

TEST(MilterSession, MalformedAnswersAreProtocolErrors) {
    struct Case {
        std::string name;
        Responder respond;
        std::string error;
    };
    const std::vector<Case> cases = {
        {"oversized packet",
         [](const Packet&) -> std::vector<Reply> { return {{u32(0x7fffffff) + "O"}}; },
         "over the limit"},
        {"zero length", [](const Packet&) -> std::vector<Reply> { return {{u32(0)}}; }, "length 0"},
        {"unknown reply", standard(0, 0, {{'C', {{frame('Z', "")}}}}), "unknown"},
        {"not an OPTNEG", [](const Packet&) -> std::vector<Reply> { return {{frame('c', "")}}; },
         "negotiation: unexpected"},
        {"newer protocol",
         [](const Packet&) -> std::vector<Reply> {
             return {{frame('O', u32(7) + u32(0) + u32(0))}};
         },
         "protocol version 7"},
        {"actions not offered",
         [](const Packet&) -> std::vector<Reply> { return {{optneg_reply(0x1000, 0)}}; },
         "actions 0x1000 beyond"},
        {"protocol flags not offered",
         [](const Packet&) -> std::vector<Reply> { return {{optneg_reply(0, smfip::RcptRej)}}; },
         "protocol flags 0x800 beyond"},
        {"edit before the end of the message",
         standard(smfif::AddHdrs, 0, {{'R', {{frame('h', z("X") + z("y"))}}}}),
         "unexpected SMFIR_ADDHEADER after SMFIC_RCPT"},
        {"edit it did not negotiate",
         standard(smfif::AddHdrs, 0, {{'E', {{frame('m', u32(1) + z("Subject") + z("x"))}}}}),
         "SMFIR_CHGHEADER without having negotiated it"},
        {"quarantine it did not negotiate",
         standard(smfif::AddHdrs, 0, {{'E', {{frame('q', z("why"))}}}}),
         "SMFIR_QUARANTINE without having negotiated it"},
        {"skip it did not negotiate", standard(0, 0, {{'B', {{frame('s', "")}}}}),
         "unexpected SMFIR_SKIP"},
        {"milter hangs up", standard(0, 0, {{'M', {{"", 0ms, true}}}}), "closed by the milter"},
    };
    for (const auto& c : cases) {
        Fake f;
        f.start(c.respond);
        Session m(f.io.get_executor(), f.endpoint());
        std::vector<Verdict> got;
        asio::co_spawn(
            f.io, [&]() { return transaction(m, got); }, asio::detached);
        f.run();
        EXPECT_TRUE(m.failed()) << c.name;
        EXPECT_NE(m.error().find(c.error), std::string::npos) << c.name << ": " << m.error();
        ASSERT_EQ(got.size(), 6u) << c.name;
        EXPECT_EQ(got.back(), kTempfail) << c.name;
    }
}

TEST(MilterSession, MalformedReplyCodeIsAConfigurationProblem) {
    Fake f;
    f.start(standard(0, 0, {{'R', {{frame('y', z("250 2.0.0 fine"))}}}}));
    Session m(f.io.get_executor(), f.endpoint());
    std::vector<Verdict> got;
    asio::co_spawn(
        f.io, [&]() { return transaction(m, got); }, asio::detached);
    f.run();
    ASSERT_EQ(got.size(), 6u);
    EXPECT_EQ(got[2], kContinue);
    EXPECT_EQ(got[3], kTempfail);  // a comm error: Postfix's words for a bad packet
    EXPECT_NE(m.error().find("malformed reply"), std::string::npos) << m.error();
}

TEST(MilterSession, DiscardAtHeloIsAConfigurationError) {
    Fake f;
    f.start(standard(0, 0, {{'H', {{frame('d', "")}}}}));
    Session m(f.io.get_executor(), f.endpoint());
    std::vector<Verdict> got;
    asio::co_spawn(
        f.io, [&]() { return transaction(m, got); }, asio::detached);
    f.run();
    const Verdict conf{Verdict::Tempfail,
                       "451 4.3.5 Server configuration problem - try again later"};
    EXPECT_EQ(got, (std::vector<Verdict>{kContinue, conf, conf, conf, conf, conf}));
}

TEST(MilterSession, ConnectionLevelDecisionsHoldForTheWholeSession) {
    const Verdict reject{Verdict::Reject, "550 5.7.1 Command rejected"};
    const Verdict custom{Verdict::ReplyCode, "554 5.7.1 go away"};
    const Verdict shutdown{Verdict::ReplyCode, "421 4.7.0 Server closing connection"};
    struct Case {
        char at;
        std::string reply;
        std::vector<Verdict> expected;
    };
    const std::vector<Case> cases = {
        {'C', frame('r', ""), all(6, reject)},
        {'H',
         frame('y', z("554 5.7.1 go away")),
         {kContinue, custom, custom, custom, custom, custom}},
        {'C',
         frame('a', ""),
         {Verdict{Verdict::Accept, ""}, kContinue, kContinue, kContinue, kContinue, kContinue}},
        {'R', frame('4', ""), {kContinue, kContinue, kContinue, shutdown, shutdown, shutdown}},
    };
    for (const auto& c : cases) {
        Fake f;
        f.start(standard(0, 0, {{c.at, {{c.reply}}}}));
        Session m(f.io.get_executor(), f.endpoint());
        std::vector<Verdict> got;
        asio::co_spawn(
            f.io, [&]() { return transaction(m, got); }, asio::detached);
        f.run();
        EXPECT_EQ(got, c.expected) << c.at << " " << c.reply.substr(4);
        EXPECT_FALSE(m.failed());
        EXPECT_TRUE(f.peer_closed);  // the milter's connection is given up at once
        EXPECT_EQ(f.commands().back(), c.at) << f.commands();
    }
}

TEST(MilterSession, MessageLevelDecisions) {
    // Reject at RCPT: that recipient only; accept at DATA: no more steps for this message.
    Fake f;
    int rcpts = 0;
    f.start([&](const Packet& p) -> std::vector<Reply> {
        if (p.command == 'O') return {{optneg_reply(0, 0)}};
        if (p.command == 'D' || p.command == 'A' || p.command == 'Q') return {};
        if (p.command == 'R') return {{frame(++rcpts == 1 ? 't' : 'c', "")}};
        if (p.command == 'T') return {{frame('a', "")}};
        return {{frame('c', "")}};
    });
    Session m(f.io.get_executor(), f.endpoint());
    std::vector<Verdict> got;
    asio::co_spawn(
        f.io,
        [&]() -> asio::awaitable<void> {
            got.push_back(co_await m.connect("c", "2001:db8::7", 2525));
            got.push_back(co_await m.mail("<a@b>", kNoArgs));
            got.push_back(co_await m.rcpt("<one@x>", kNoArgs));
            got.push_back(co_await m.rcpt("<two@x>", kNoArgs));
            got.push_back(co_await m.data());
            auto eom = co_await m.message("Received: r\r\nSubject: s\r\n\r\nb\r\n");
            got.push_back(eom.verdict);
            co_await m.abort();
            got.push_back(co_await m.mail("<c@d>", kNoArgs));  // the next message is filtered
            co_await m.quit();
        },
        asio::detached);
    f.run();
    EXPECT_EQ(got, (std::vector<Verdict>{kContinue, kContinue, kTempfail, kContinue,
                                         Verdict{Verdict::Accept, ""}, kContinue, kContinue}));
    EXPECT_EQ(f.commands(), "ODCDMDRDRTADMQ");  // D: macros, before their step
    const Packet* c = f.find('C');
    ASSERT_TRUE(c);
    EXPECT_EQ(c->data, z("c") + "6" + std::string("\x09\xdd", 2) + z("2001:db8::7"));
}

TEST(MilterSession, NoStepsAndNoRepliesAsNegotiated) {
    Fake f;
    // No HELO, no headers, no reply to RCPT or EOH: answering them would desynchronize.
    const std::uint32_t proto = smfip::NoHelo | smfip::NoHdrs | smfip::NrRcpt | smfip::NrEoh;
    f.start([&](const Packet& p) -> std::vector<Reply> {
        if (p.command == 'O') return {{optneg_reply(0, proto)}};
        if (p.command == 'D' || p.command == 'A' || p.command == 'Q' || p.command == 'R' ||
            p.command == 'N')
            return {};
        return {{frame('c', "")}};
    });
    Settings s;
    s.command_timeout = s.content_timeout = 2s;  // a wait for a reply that never comes would fail
    Session m(f.io.get_executor(), f.endpoint(), s);
    std::vector<Verdict> got;
    asio::co_spawn(
        f.io, [&]() { return transaction(m, got); }, asio::detached);
    f.run();
    EXPECT_EQ(got, all(6, kContinue)) << m.error();
    EXPECT_EQ(f.commands(), "ODCDMDRTNBEQ");  // no H, no L; the rest, answered or not
    EXPECT_EQ(m.protocol(), proto);
}

TEST(MilterSession, MacrosAsPostfixSendsThemOrAsTheMilterAsks) {
    Fake f;
    // The milter asks for only {mail_addr} at MAIL (stage 2) and "j" at connect (stage 0).
    const std::string lists = u32(2) + z("mail_addr") + u32(0) + z("{j}");
    f.start([&](const Packet& p) -> std::vector<Reply> {
        if (p.command == 'O') return {{optneg_reply(smfif::SetSymList, 0, lists)}};
        if (p.command == 'D' || p.command == 'A' || p.command == 'Q') return {};
        return {{frame('c', "")}};
    });
    Session m(f.io.get_executor(), f.endpoint());
    m.set_macro("j", "mx2.example.test");
    m.set_macro("{i}", "QUEUEID1");  // "{i}" and "i" are one macro
    std::vector<Verdict> got;
    asio::co_spawn(
        f.io, [&]() { return transaction(m, got); }, asio::detached);
    f.run();
    EXPECT_EQ(got, all(6, kContinue)) << m.error();
    ASSERT_TRUE(f.find('D', 0) && f.find('D', 1) && f.find('D', 2));
    EXPECT_EQ(f.find('D', 0)->data, "C" + z("j") + z("mx2.example.test"));
    EXPECT_EQ(f.find('D', 1)->data, "M" + z("{mail_addr}") + z("a@sender.test"));
    EXPECT_EQ(f.find('D', 2)->data, "R" + z("i") + z("QUEUEID1") + z("{rcpt_addr}") +
                                        z("b@example.test"));  // Postfix's default list
}

TEST(MilterSession, DefaultConnectMacros) {
    Fake f;
    f.start(standard(0, 0));
    Session m(f.io.get_executor(), f.endpoint());
    m.set_macro("j", "mx2.example.test");
    std::vector<Verdict> got;
    asio::co_spawn(
        f.io, [&]() { return transaction(m, got); }, asio::detached);
    f.run();
    ASSERT_TRUE(f.find('D'));
    EXPECT_EQ(f.find('D')->data, "C" + z("j") + z("mx2.example.test") + z("{daemon_name}") +
                                     z("backupmx") + z("v") + z("backupmx") + z("_") +
                                     z("client.example [192.0.2.1]") + z("{client_addr}") +
                                     z("192.0.2.1") + z("{client_name}") + z("client.example") +
                                     z("{client_port}") + z("4321"));
}

TEST(MilterSession, HeadersAndBodyAsSendmailSendsThem) {
    const std::string body(150000, 'b');
    const std::string msg =
        "Received: ours\r\nSubject:  two spaces\r\nX-Folded: a;\r\n\tb\r\nX-Tab:\tt\r\n\r\n" + body;
    for (bool leadspc : {false, true}) {
        Fake f;
        f.start(standard(0, leadspc ? smfip::HdrLeadSpc : 0));
        Session m(f.io.get_executor(), f.endpoint());
        EndOfMessage eom;
        asio::co_spawn(
            f.io,
            [&]() -> asio::awaitable<void> {
                co_await m.connect("c", "192.0.2.1", 1);
                co_await m.mail("a@b", kNoArgs);
                eom = co_await m.message(msg);
                co_await m.quit();
            },
            asio::detached);
        f.run();
        EXPECT_EQ(eom.verdict, kContinue) << m.error();
        ASSERT_TRUE(f.find('L', 2));
        EXPECT_FALSE(f.find('L', 3));  // our Received: is not shown
        // Without SMFIP_HDR_LEADSPC one space goes (not a tab); folds are sent as bare LF.
        EXPECT_EQ(f.find('L', 0)->data, z("Subject") + z(leadspc ? "  two spaces" : " two spaces"));
        EXPECT_EQ(f.find('L', 1)->data, z("X-Folded") + z(leadspc ? " a;\n\tb" : "a;\n\tb"));
        EXPECT_EQ(f.find('L', 2)->data, z("X-Tab") + z("\tt"));
        ASSERT_TRUE(f.find('B', 2));
        EXPECT_FALSE(f.find('B', 3));
        EXPECT_EQ(f.find('B', 0)->data.size(), 65535u);
        EXPECT_EQ(f.find('B', 1)->data.size(), 65535u);
        EXPECT_EQ(f.find('B', 2)->data.size(), 150000u - 2 * 65535u);
        EXPECT_TRUE(f.find('N') && f.find('E'));
    }
}

TEST(MilterSession, SkipStopsTheBody) {
    Fake f;
    f.start(standard(0, smfip::Skip, {{'B', {{frame('s', "")}}}}));
    Session m(f.io.get_executor(), f.endpoint());
    EndOfMessage eom;
    asio::co_spawn(
        f.io,
        [&]() -> asio::awaitable<void> {
            co_await m.connect("c", "192.0.2.1", 1);
            co_await m.mail("a@b", kNoArgs);
            const std::string msg = "Received: r\r\n\r\n" + std::string(200000, 'x');
            eom = co_await m.message(msg);
            co_await m.quit();
        },
        asio::detached);
    f.run();
    EXPECT_EQ(eom.verdict, kContinue) << m.error();
    EXPECT_EQ(f.commands(), "ODCDMNBEQ");  // one chunk, then straight to the end
}

TEST(MilterSession, EditsAtTheEndOfTheMessage) {
    Fake f;
    const std::uint32_t all_actions = kOfferedActions;
    f.start(standard(all_actions, 0,
                     {{'E',
                       {{frame('h', z("X-Spam") + z("yes"))},
                        {frame('i', u32(0) + z("DKIM-Signature") + z("v=1;\n\tb=x"))},
                        {frame('m', u32(1) + z("Subject") + z(""))},
                        {frame('q', z("held"))},
                        {frame('b', "new ")},
                        {frame('+', z("<added@x>"))},
                        {frame('b', "body\r\n")},
                        {frame('c', "")}}}}));
    Session m(f.io.get_executor(), f.endpoint());
    EndOfMessage eom;
    std::string applied;
    const std::string msg = "Received: ours\r\nSubject: s\r\n\r\nold\r\n";
    asio::co_spawn(
        f.io,
        [&]() -> asio::awaitable<void> {
            co_await m.connect("c", "192.0.2.1", 1);
            co_await m.mail("a@b", kNoArgs);
            eom = co_await m.message(msg);
            applied = apply_modifications(msg, eom.modifications);
            co_await m.quit();
        },
        asio::detached);
    f.run();
    EXPECT_EQ(eom.verdict, kContinue) << m.error();
    ASSERT_EQ(eom.modifications.size(), 6u);
    EXPECT_EQ(eom.modifications[4].type, Modification::Type::ReplaceBody);
    EXPECT_EQ(eom.modifications[4].value, "new body\r\n");  // the chunks, joined
    EXPECT_EQ(eom.quarantine(), "held");
    EXPECT_EQ(applied,
              "DKIM-Signature: v=1;\r\n\tb=x\r\nReceived: ours\r\nX-Spam: yes\r\n\r\nnew body\r\n");
}

TEST(MilterSession, ARejectedMessageCarriesNoEdits) {
    Fake f;
    f.start(standard(smfif::AddHdrs, 0,
                     {{'E', {{frame('h', z("X") + z("y"))}, {frame('y', z("550 5.7.1 no"))}}}}));
    Session m(f.io.get_executor(), f.endpoint());
    EndOfMessage eom;
    asio::co_spawn(
        f.io,
        [&]() -> asio::awaitable<void> {
            co_await m.connect("c", "192.0.2.1", 1);
            co_await m.mail("a@b", kNoArgs);
            eom = co_await m.end_of_message();
            co_await m.quit();
        },
        asio::detached);
    f.run();
    EXPECT_EQ(eom.verdict, (Verdict{Verdict::ReplyCode, "550 5.7.1 no"}));
    EXPECT_TRUE(eom.modifications.empty());
}
