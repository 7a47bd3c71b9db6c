// milter::Session against real milters from Debian, each started here as a child process on a
// Unix socket or a 127.0.0.1 port in a temporary directory and stopped at the end of the test
// (EOF on its stdin or SIGTERM, then SIGKILL; its process group, nothing else):
// tests/milter/scripted_milter.py on python3-milter (pymilter, the real libmilter) for every
// verdict at every step, every edit and the protocol flags; opendkim signing a message, and
// verifying the signed result through the client again (dkim=pass). Skipped, saying why, when
// /usr/bin/python3 has no Milter module or opendkim is missing.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "milter/milter.hpp"
#include "support.hpp"
#include "util/util.hpp"

using namespace bmx::milter;
using namespace bmx::test;
namespace asio = boost::asio;
namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;

extern char** environ;

namespace {

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

fs::path source_dir() {
    if (const char* e = std::getenv("BMX_SOURCE_DIR")) return e;
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    for (const fs::path& d :
         {exe.parent_path().parent_path(), fs::current_path(), fs::current_path().parent_path()})
        if (fs::exists(d / "tests/milter/scripted_milter.py")) return d;
    return {};
}

std::uint16_t free_port() {
    asio::io_context io;
    asio::ip::tcp::acceptor a(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    return a.local_endpoint().port();
}

bool can_connect(std::uint16_t port) {
    asio::io_context io;
    asio::ip::tcp::socket s(io);
    boost::system::error_code ec;
    s.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
    return !ec;
}

// A child process in its own process group, its output in `log`, its stdin a pipe from us
// (closed by stop(); `stops_at_eof`: the child takes that as its cue). Stopped by the destructor.
class Child {
  public:
    Child(std::vector<std::string> argv, const std::vector<std::string>& extra_env,
          const std::string& log, bool stops_at_eof)
        : log_(log), stops_at_eof_(stops_at_eof) {
        std::vector<std::string> env;
        for (char** e = environ; *e; ++e) env.emplace_back(*e);
        for (const auto& e : extra_env) env.push_back(e);
        std::vector<char*> av, ev;
        for (auto& a : argv) av.push_back(a.data());
        av.push_back(nullptr);
        for (auto& e : env) ev.push_back(e.data());
        ev.push_back(nullptr);
        int fds[2] = {-1, -1};
        if (pipe2(fds, O_CLOEXEC) != 0) return;  // no other child inherits our end
        pid_ = fork();
        if (pid_ == 0) {
            setpgid(0, 0);
            dup2(fds[0], 0);
            const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
            }
            execve(av[0], av.data(), ev.data());
            _exit(127);
        }
        close(fds[0]);
        stdin_ = fds[1];
        if (pid_ > 0) setpgid(pid_, pid_);
    }
    ~Child() { stop(); }

    bool running() {
        if (pid_ <= 0) return false;
        int status = 0;
        if (waitpid(pid_, &status, WNOHANG) == pid_) {
            pid_ = -1;
            return false;
        }
        return true;
    }
    // Closes its stdin (and gives it 2 s if it stops at EOF); then SIGTERM to its group and
    // 10 s (libmilter notices within 5); then SIGKILL. Returns false if it had to be killed.
    bool stop() {
        if (stdin_ >= 0) close(stdin_);
        stdin_ = -1;
        if (!running() || (stops_at_eof_ && wait_exit(2s))) return true;
        kill(-pid_, SIGTERM);
        if (wait_exit(10s)) return true;
        kill(-pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
        return false;
    }
    std::string output() const { return read_file(log_); }

  private:
    bool wait_exit(std::chrono::milliseconds limit) {
        const auto end = std::chrono::steady_clock::now() + limit;
        while (running()) {
            if (std::chrono::steady_clock::now() >= end) return false;
            std::this_thread::sleep_for(20ms);
        }
        return true;
    }

    pid_t pid_ = -1;
    int stdin_ = -1;
    std::string log_;
    bool stops_at_eof_;
};

// Waits (bounded) until `ready()`, or the child died. Returns what happened, "" when ready.
template <class F>
std::string wait_until(Child& c, F ready, std::chrono::milliseconds limit = 15s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
        if (ready()) return "";
        if (!c.running()) return "exited: " + c.output();
        std::this_thread::sleep_for(20ms);
    }
    return "not ready within " + std::to_string(limit.count()) + " ms: " + c.output();
}

bool have_pymilter() {
    return std::system("/usr/bin/python3 -c 'import Milter' >/dev/null 2>&1") == 0;
}

// ---- The scripted milter

struct Script {
    std::string stage = "eom", action = "continue", reply, match, edits = "[]", noreply, nocallback;
    bool leadspc = false;
    bool inet = false;
};

class ScriptedMilter {
  public:
    explicit ScriptedMilter(const Script& s) {
        log_ = dir_.path + "/callbacks.jsonl";
        const std::string ready = dir_.path + "/ready";
        std::string socket;
        if (s.inet) {
            const auto port = free_port();
            socket = "inet:" + std::to_string(port) + "@127.0.0.1";
            endpoint_ = *parse_endpoint("inet:127.0.0.1:" + std::to_string(port));
        } else {
            socket = "unix:" + dir_.path + "/milter.sock";
            endpoint_ = *parse_endpoint(socket);
        }
        const std::string script = (source_dir() / "tests/milter/scripted_milter.py").string();
        child_.emplace(
            std::vector<std::string>{"/usr/bin/python3", script},
            std::vector<std::string>{
                "PYTHONDONTWRITEBYTECODE=1", "MILTER_STDIN_EOF=1", "MILTER_SOCKET=" + socket,
                "MILTER_READY=" + ready, "MILTER_LOG=" + log_, "MILTER_STAGE=" + s.stage,
                "MILTER_ACTION=" + s.action, "MILTER_REPLY=" + s.reply, "MILTER_MATCH=" + s.match,
                "MILTER_EDITS=" + s.edits, "MILTER_NOREPLY=" + s.noreply,
                "MILTER_NOCALLBACK=" + s.nocallback,
                std::string("MILTER_LEADSPC=") + (s.leadspc ? "1" : "0")},
            dir_.path + "/output.log", true);
        problem_ = wait_until(*child_, [&] { return fs::exists(ready); });
    }
    ~ScriptedMilter() { child_.reset(); }

    const std::string& problem() const { return problem_; }  // "" when it runs
    const Endpoint& endpoint() const { return endpoint_; }
    std::string output() const { return child_->output(); }
    bool stop() { return child_->stop(); }

    // The callbacks the milter saw, in order (each {"cb", "args", "macros"}).
    std::vector<json::object> callbacks() const {
        std::vector<json::object> out;
        std::istringstream in(read_file(log_));
        for (std::string line; std::getline(in, line);)
            if (!line.empty()) out.push_back(json::parse(line).as_object());
        return out;
    }
    std::string names() const {  // "connect helo mail ..."
        std::string s;
        for (const auto& c : callbacks())
            s += (s.empty() ? "" : " ") + std::string(c.at("cb").as_string());
        return s;
    }
    // Waits (bounded) until the milter logged `cb`: it runs apart from the client.
    bool saw(std::string_view cb, std::chrono::milliseconds limit = 5s) const {
        const auto end = std::chrono::steady_clock::now() + limit;
        for (;;) {
            if (first(cb)) return true;
            if (std::chrono::steady_clock::now() >= end) return false;
            std::this_thread::sleep_for(20ms);
        }
    }
    std::optional<json::object> first(std::string_view cb) const {
        for (const auto& c : callbacks())
            if (c.at("cb").as_string() == cb) return c;
        return std::nullopt;
    }

  private:
    TempDir dir_;
    std::string log_;
    Endpoint endpoint_;
    std::optional<Child> child_;
    std::string problem_;
};

std::string arg(const json::object& cb, std::size_t i) {
    const auto& a = cb.at("args").as_array().at(i);
    if (a.is_string()) return std::string(a.as_string());
    return json::serialize(a);
}
std::string macro(const json::object& cb, std::string_view name) {
    const auto& m = cb.at("macros").as_object();
    const auto it = m.find(name);
    return it == m.end() ? "(unset)" : std::string(it->value().as_string());
}

// A body of 3 chunks (> 2 x 65535 bytes); our own Received: first.
std::string make_body() {
    std::string b;
    for (int i = 0; b.size() < 150000; ++i)
        b += "Line " + std::to_string(i) + " of a body long enough for three milter chunks.\r\n";
    return b;
}
const std::string kBody = make_body();
const std::string kMessage =
    "Received: from client.example (client.example [192.0.2.1])\r\n"
    "\tby mx2.example.test (backupmx) with ESMTP id 0123456789ABCDEF;\r\n"
    "\tSat, 21 Nov 2026 10:00:00 +0000\r\n"
    "From: Alice <alice@example.test>\r\n"
    "To: Bob <bob@example.test>\r\n"
    "Subject: milter test\r\n"
    "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
    "Message-ID: <test-1@example.test>\r\n"
    "X-Folded: first;\r\n\tsecond\r\n"
    "\r\n" +
    kBody;

struct Outcome {
    std::vector<Verdict> verdicts;  // connect helo mail rcpt... data message, until one stops
    EndOfMessage eom;
    Verdict after;  // mail() once more after the transaction: what the session answers then
    std::string error;
    std::uint32_t protocol = 0;
};

// As an SMTP server would: each step until one refuses (a refused recipient refuses only
// itself), abort() when the transaction ends, quit() at the end.
asio::awaitable<void> steps(Session& m, const std::vector<std::string>& rcpts, Outcome& r) {
    auto v = co_await m.connect("client.example", "192.0.2.1", 40000);
    r.verdicts.push_back(v);
    if (!v.proceed()) co_return;
    v = co_await m.helo("client.example");
    r.verdicts.push_back(v);
    if (!v.proceed()) co_return;
    const std::vector<std::string> mail_args{"SIZE=160000", "BODY=8BITMIME"};
    v = co_await m.mail("alice@example.test", mail_args);
    r.verdicts.push_back(v);
    if (!v.proceed()) co_return;
    bool any = false;
    const std::vector<std::string> no_args;
    for (const auto& rcpt : rcpts) {
        v = co_await m.rcpt(rcpt, no_args);
        r.verdicts.push_back(v);
        if (v.action == Verdict::Discard) co_return;
        any = any || v.proceed();
    }
    if (!any) co_return;
    v = co_await m.data();
    r.verdicts.push_back(v);
    if (!v.proceed()) co_return;
    r.eom = co_await m.message(kMessage);
    r.verdicts.push_back(r.eom.verdict);
}

asio::awaitable<void> converse(Session& m, const std::vector<std::string>& rcpts, Outcome& r) {
    m.set_macro("j", "mx2.example.test");
    m.set_macro("i", "0123456789ABCDEF");
    co_await steps(m, rcpts, r);
    co_await m.abort();
    const std::vector<std::string> no_args;
    r.after = co_await m.mail("next@example.test", no_args);
    co_await m.abort();
    r.protocol = m.protocol();
    r.error = m.error();
    co_await m.quit();
}

Outcome run(const Endpoint& ep, const Settings& s = {},
            const std::vector<std::string>& rcpts = {"bob@example.test"}) {
    asio::io_context io;
    Session m(io.get_executor(), ep, s);
    Outcome r;
    std::exception_ptr failure;
    asio::co_spawn(
        io, [&]() { return converse(m, rcpts, r); }, [&](std::exception_ptr e) { failure = e; });
    io.run_for(60s);
    EXPECT_FALSE(failure) << "the client coroutine threw";
    return r;
}

const Verdict kContinue{};
const Verdict kAccept{Verdict::Accept, ""};
const Verdict kDiscard{Verdict::Discard, ""};
const Verdict kReject{Verdict::Reject, "550 5.7.1 Command rejected"};
const Verdict kTempfail{Verdict::Tempfail, "451 4.7.1 Service unavailable - try again later"};

#define REQUIRE_PYMILTER()                                                                     \
    do {                                                                                       \
        if (!have_pymilter())                                                                  \
            GTEST_SKIP()                                                                       \
                << "/usr/bin/python3 has no Milter module (apt-get install python3-milter)";   \
        if (source_dir().empty()) GTEST_SKIP() << "tests/milter/scripted_milter.py not found"; \
    } while (0)

#define START(milter) ASSERT_EQ((milter).problem(), "") << "scripted milter did not start"

}  // namespace

TEST(MilterReal, ContinueSeesEveryStepAsPostfixSendsIt) {
    REQUIRE_PYMILTER();
    ScriptedMilter milter(Script{});
    START(milter);
    const Outcome r = run(milter.endpoint());
    EXPECT_EQ(r.verdicts, std::vector<Verdict>(6, kContinue)) << r.error;
    EXPECT_EQ(r.after, kContinue);
    EXPECT_TRUE(r.eom.modifications.empty());
    EXPECT_TRUE(milter.saw("close"));
    // libmilter makes nothing of the SMFIC_ABORT after a finished message; it does of the one
    // after the second MAIL.
    EXPECT_EQ(milter.names(),
              "connect helo mail rcpt data header header header header header header eoh eom "
              "mail abort close")
        << milter.output();

    auto c = milter.first("connect");
    ASSERT_TRUE(c);
    EXPECT_EQ(arg(*c, 0), "client.example");
    EXPECT_EQ(arg(*c, 2), "[\"192.0.2.1\",40000]");
    EXPECT_EQ(macro(*c, "j"), "mx2.example.test");
    EXPECT_EQ(macro(*c, "{daemon_name}"), "backupmx");
    EXPECT_EQ(macro(*c, "{client_addr}"), "192.0.2.1");
    EXPECT_EQ(macro(*c, "_"), "client.example [192.0.2.1]");
    EXPECT_EQ(arg(*milter.first("helo"), 0), "client.example");
    auto mail = milter.first("mail");
    ASSERT_TRUE(mail);
    EXPECT_EQ(arg(*mail, 0), "<alice@example.test>");
    EXPECT_EQ(arg(*mail, 1), "SIZE=160000");
    EXPECT_EQ(arg(*mail, 2), "BODY=8BITMIME");
    EXPECT_EQ(macro(*mail, "{mail_addr}"), "alice@example.test");
    EXPECT_EQ(macro(*mail, "i"), "0123456789ABCDEF");
    auto rcpt = milter.first("rcpt");
    ASSERT_TRUE(rcpt);
    EXPECT_EQ(arg(*rcpt, 0), "<bob@example.test>");
    EXPECT_EQ(macro(*rcpt, "{rcpt_addr}"), "bob@example.test");

    // Headers as the milter saw them: ours hidden, one space eaten, folds as LF.
    std::vector<std::string> headers;
    for (const auto& cb : milter.callbacks())
        if (cb.at("cb").as_string() == "header") headers.push_back(arg(cb, 0) + ":" + arg(cb, 1));
    EXPECT_EQ(headers, (std::vector<std::string>{
                           "From:Alice <alice@example.test>", "To:Bob <bob@example.test>",
                           "Subject:milter test", "Date:Sat, 21 Nov 2026 10:00:00 +0000",
                           "Message-ID:<test-1@example.test>", "X-Folded:first;\n\tsecond"}));
    auto eom = milter.first("eom");
    ASSERT_TRUE(eom);
    EXPECT_EQ(arg(*eom, 0), std::to_string(kBody.size()));  // every byte of the body
    EXPECT_EQ(arg(*eom, 1), "3");                           // in 65535-byte chunks
    EXPECT_TRUE(milter.stop()) << "the milter had to be killed";
}

TEST(MilterReal, EveryVerdictAtEveryStep) {
    REQUIRE_PYMILTER();
    const std::vector<std::string> stages = {"connect", "helo", "mail", "rcpt", "data",
                                             "header",  "eoh",  "body", "eom"};
    struct Action {
        std::string name, reply;
        Verdict verdict;
    };
    const std::vector<Action> actions = {
        {"accept", "", kAccept},
        {"reject", "", kReject},
        {"tempfail", "", kTempfail},
        {"discard", "", kDiscard},
        {"reply", "550 5.7.1 spam detected", {Verdict::ReplyCode, "550 5.7.1 spam detected"}},
        {"reply", "421 4.7.0 come back later", {Verdict::ReplyCode, "421 4.7.0 come back later"}},
    };
    const Verdict conf{Verdict::Tempfail,
                       "451 4.3.5 Server configuration problem - try again later"};
    for (const auto& stage : stages) {
        for (const auto& a : actions) {
            SCOPED_TRACE(a.name + " " + a.reply + " at " + stage);
            Script s;
            s.stage = stage;
            s.action = a.name;
            s.reply = a.reply;
            ScriptedMilter milter(s);
            START(milter);
            const Outcome r = run(milter.endpoint());
            // The step it answers at: connect 0, helo 1, mail 2, rcpt 3, data 4, content 5.
            const std::size_t at = std::min<std::size_t>(
                std::find(stages.begin(), stages.end(), stage) - stages.begin(), 5);
            const bool connection = at <= 1;
            std::vector<Verdict> expected(at, kContinue);
            if (a.name == "discard" && connection) {
                expected.push_back(conf);  // not allowed at connect or helo
                EXPECT_EQ(r.verdicts, expected) << r.error;
                EXPECT_EQ(r.after, conf);
                continue;
            }
            expected.push_back(a.verdict);
            if (a.name == "accept") expected.resize(6, kContinue);  // and the rest, unfiltered
            EXPECT_EQ(r.verdicts, expected) << r.error << "\n" << milter.output();
            EXPECT_EQ(r.error, "");
            // At connect or helo a decision holds for the session; else the next message is
            // filtered again.
            if (connection && a.name != "accept")
                EXPECT_EQ(r.after, a.verdict);
            else if (stage == "mail")
                EXPECT_EQ(r.after, a.verdict);  // the next MAIL too
            else
                EXPECT_EQ(r.after, kContinue);
            const std::string seen = milter.names();
            if (a.name == "accept" && connection) {  // nothing more was sent
                EXPECT_EQ(seen.find("mail"), std::string::npos) << seen;
            } else if (a.name == "accept" && at < 5) {  // no more of that message
                EXPECT_EQ(seen.find("eom"), std::string::npos) << seen;
                EXPECT_NE(seen.find("mail"), seen.rfind("mail")) << seen;  // the next MAIL
            }
        }
    }
}

TEST(MilterReal, RejectOneRecipientOfThree) {
    REQUIRE_PYMILTER();
    Script s;
    s.stage = "rcpt";
    s.action = "reply";
    s.reply = "550 5.1.1 no such user";
    s.match = "nobody";
    ScriptedMilter milter(s);
    START(milter);
    const Outcome r = run(milter.endpoint(), {},
                          {"bob@example.test", "nobody@example.test", "carol@example.test"});
    EXPECT_EQ(r.verdicts, (std::vector<Verdict>{kContinue,
                                                kContinue,
                                                kContinue,
                                                kContinue,
                                                {Verdict::ReplyCode, "550 5.1.1 no such user"},
                                                kContinue,
                                                kContinue,
                                                kContinue}))
        << r.error;
}

TEST(MilterReal, EveryEditAtTheEndOfTheMessage) {
    REQUIRE_PYMILTER();
    Script s;
    s.edits = R"([["add", "X-Spam-Flag", "YES"],
                  ["insert", 0, "X-Top", "above ours"],
                  ["insert", 2, "X-Second", "after ours"],
                  ["change", "Subject", 1, "[SPAM] milter test"],
                  ["delete", "X-Folded", 1],
                  ["add", "X-Multi", "a;\n\tb"],
                  ["quarantine", "held for review"],
                  ["progress"],
                  ["addrcpt", "<audit@example.test>"],
                  ["delrcpt", "<bob@example.test>"],
                  ["body", "Replaced.\r\n"]])";
    ScriptedMilter milter(s);
    START(milter);
    const Outcome r = run(milter.endpoint());
    ASSERT_EQ(r.verdicts, std::vector<Verdict>(6, kContinue)) << r.error;
    using T = Modification::Type;
    auto m = [](T t, std::string name, std::string value, std::uint32_t index = 0) {
        Modification x;
        x.type = t;
        x.name = std::move(name);
        x.value = std::move(value);
        x.index = index;
        return x;
    };
    // In the order made; values as they go after the colon (no SMFIP_HDR_LEADSPC: a space).
    const std::vector<Modification> expected = {
        m(T::AddHeader, "X-Spam-Flag", " YES"),
        m(T::InsertHeader, "X-Top", " above ours", 0),
        m(T::InsertHeader, "X-Second", " after ours", 2),
        m(T::ChangeHeader, "Subject", " [SPAM] milter test", 1),
        m(T::ChangeHeader, "X-Folded", "", 1),
        m(T::AddHeader, "X-Multi", " a;\r\n\tb"),
        m(T::Quarantine, "", "held for review"),
        m(T::AddRecipient, "", "<audit@example.test>"),
        m(T::DeleteRecipient, "", "<bob@example.test>"),
        m(T::ReplaceBody, "", "Replaced.\r\n"),
    };
    EXPECT_EQ(r.eom.modifications, expected);
    EXPECT_EQ(r.eom.quarantine(), "held for review");

    const std::string out = apply_modifications(kMessage, r.eom.modifications);
    EXPECT_EQ(out,
              "X-Top: above ours\r\n"
              "Received: from client.example (client.example [192.0.2.1])\r\n"
              "\tby mx2.example.test (backupmx) with ESMTP id 0123456789ABCDEF;\r\n"
              "\tSat, 21 Nov 2026 10:00:00 +0000\r\n"
              "X-Second: after ours\r\n"
              "From: Alice <alice@example.test>\r\n"
              "To: Bob <bob@example.test>\r\n"
              "Subject: [SPAM] milter test\r\n"
              "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
              "Message-ID: <test-1@example.test>\r\n"
              "X-Spam-Flag: YES\r\n"
              "X-Multi: a;\r\n\tb\r\n"
              "\r\n"
              "Replaced.\r\n");
}

TEST(MilterReal, ProgressOutlastsTheContentTimeoutAndSilenceDoesNot) {
    REQUIRE_PYMILTER();
    Settings fast;
    fast.content_timeout = 1500ms;
    {
        Script s;  // 2.4 s in all, never 1.5 s without a word
        s.edits = R"([["sleep", 0.8], ["progress"], ["sleep", 0.8], ["progress"],
                      ["sleep", 0.8], ["add", "X-Slow", "done"]])";
        ScriptedMilter milter(s);
        START(milter);
        const Outcome r = run(milter.endpoint(), fast);
        EXPECT_EQ(r.verdicts, std::vector<Verdict>(6, kContinue)) << r.error;
        ASSERT_EQ(r.eom.modifications.size(), 1u);
        EXPECT_EQ(r.eom.modifications[0].value, " done");
    }
    {
        Script s;
        s.edits = R"([["sleep", 3]])";
        ScriptedMilter milter(s);
        START(milter);
        const auto start = std::chrono::steady_clock::now();
        const Outcome r = run(milter.endpoint(), fast);
        EXPECT_LT(std::chrono::steady_clock::now() - start, 2900ms);
        std::vector<Verdict> expected(5, kContinue);
        expected.push_back(kTempfail);  // milter_default_action = tempfail
        EXPECT_EQ(r.verdicts, expected);
        EXPECT_EQ(r.after, kTempfail);  // and for the rest of the session
        EXPECT_NE(r.error.find("after SMFIC_BODYEOB: timeout"), std::string::npos) << r.error;
    }
}

TEST(MilterReal, StepsAndRepliesTheMilterDoesNotWant) {
    REQUIRE_PYMILTER();
    Script s;
    s.noreply = "connect,rcpt,header,eoh";
    s.nocallback = "helo,body";
    ScriptedMilter milter(s);
    START(milter);
    Settings strict;  // a wait for a reply that never comes would show as a timeout
    strict.command_timeout = strict.content_timeout = 3s;
    const Outcome r = run(milter.endpoint(), strict);
    EXPECT_EQ(r.verdicts, std::vector<Verdict>(6, kContinue)) << r.error;
    EXPECT_EQ(r.protocol & (smfip::NrConn | smfip::NrRcpt | smfip::NrHdr | smfip::NrEoh |
                            smfip::NoHelo | smfip::NoBody),
              smfip::NrConn | smfip::NrRcpt | smfip::NrHdr | smfip::NrEoh | smfip::NoHelo |
                  smfip::NoBody);
    const std::string seen = milter.names();
    EXPECT_EQ(seen.find("helo"), std::string::npos) << seen;
    auto eom = milter.first("eom");
    ASSERT_TRUE(eom);
    EXPECT_EQ(arg(*eom, 0), "0");  // no body was sent
    EXPECT_NE(seen.find("header"), std::string::npos);
}

TEST(MilterReal, LeadingSpaceWhenTheMilterAsksForIt) {
    REQUIRE_PYMILTER();
    Script s;
    s.leadspc = true;
    s.edits = R"([["add", "X-Raw", " kept"], ["add", "X-Tight", "tight"]])";
    ScriptedMilter milter(s);
    START(milter);
    const Outcome r = run(milter.endpoint());
    EXPECT_EQ(r.verdicts, std::vector<Verdict>(6, kContinue)) << r.error;
    EXPECT_TRUE(r.protocol & smfip::HdrLeadSpc);
    auto h = milter.first("header");
    ASSERT_TRUE(h);
    EXPECT_EQ(arg(*h, 1), " Alice <alice@example.test>");
    ASSERT_EQ(r.eom.modifications.size(), 2u);
    EXPECT_EQ(r.eom.modifications[0].value, " kept");  // as sent: the milter owns the space
    EXPECT_EQ(r.eom.modifications[1].value, "tight");
}

TEST(MilterReal, OverTcpAndGoneAfterward) {
    REQUIRE_PYMILTER();
    Script s;
    s.inet = true;
    s.stage = "rcpt";
    s.action = "tempfail";
    ScriptedMilter milter(s);
    START(milter);
    const Outcome r = run(milter.endpoint());
    EXPECT_EQ(r.verdicts, (std::vector<Verdict>{kContinue, kContinue, kContinue, kTempfail}))
        << r.error;
    const auto port = milter.endpoint().port;
    EXPECT_TRUE(milter.stop());
    EXPECT_FALSE(can_connect(port));  // nothing left listening
    // A milter that is not there: milter_default_action.
    const Outcome gone = run(milter.endpoint());
    EXPECT_EQ(gone.verdicts, (std::vector<Verdict>{kTempfail}));
    EXPECT_NE(gone.error.find("connect"), std::string::npos) << gone.error;
}

// ---- opendkim

namespace {

struct OpenDkim {
    TempDir dir;
    std::uint16_t port = 0;
    std::optional<Child> child;
    std::string problem;

    OpenDkim() {
        const std::string genkey = "/usr/sbin/opendkim-genkey -b 2048 -D " + dir.path +
                                   " -d example.test -s test >" + dir.path + "/genkey.log 2>&1";
        if (std::system(genkey.c_str()) != 0) {
            problem = "opendkim-genkey failed: " + read_file(dir.path + "/genkey.log");
            return;
        }
        // test.txt is a zone file line: join its quoted strings into the TXT record.
        const std::string zone = read_file(dir.path + "/test.txt");
        std::string txt;
        for (std::size_t q = zone.find('"'); q != std::string::npos; q = zone.find('"', q + 1)) {
            const auto end = zone.find('"', q + 1);
            if (end == std::string::npos) break;
            txt += zone.substr(q + 1, end - q - 1);
            q = end;
        }
        std::ofstream(dir.path + "/keys") << "test._domainkey.example.test " << txt << "\n";
        port = free_port();
        std::ofstream(dir.path + "/opendkim.conf")
            << "Syslog no\n"
            << "Background no\n"
            << "Mode sv\n"
            << "Domain example.test\n"
            << "Selector test\n"
            << "KeyFile " << dir.path << "/test.private\n"
            << "TestPublicKeys " << dir.path << "/keys\n"
            << "Canonicalization relaxed/simple\n"
            << "RequireSafeKeys no\n"  // the key sits under /tmp, which others can write
            << "AuthservID verifier.example.test\n"
            << "Socket inet:" << port << "@127.0.0.1\n";
        child.emplace(
            std::vector<std::string>{"/usr/sbin/opendkim", "-f", "-x", dir.path + "/opendkim.conf"},
            std::vector<std::string>{}, dir.path + "/output.log", false);
        const auto p = port;
        problem = wait_until(*child, [p] { return can_connect(p); });
    }
    Endpoint endpoint() const { return *parse_endpoint("inet:127.0.0.1:" + std::to_string(port)); }
};

// One message through opendkim: connect from `ip` (127.0.0.1 is internal: sign; else verify).
EndOfMessage through(const Endpoint& ep, std::string_view ip, const std::string& message,
                     std::string& error) {
    asio::io_context io;
    Session m(io.get_executor(), ep);
    EndOfMessage eom;
    std::exception_ptr failure;
    auto work = [&]() -> asio::awaitable<void> {
        m.set_macro("j", "mx2.example.test");
        m.set_macro("i", "0123456789ABCDEF");
        const std::vector<std::string> none;
        co_await m.connect("client.example", ip, 40000);
        co_await m.helo("client.example");
        co_await m.mail("alice@example.test", none);
        co_await m.rcpt("bob@example.test", none);
        co_await m.data();
        eom = co_await m.message(message);
        co_await m.abort();
        error = m.error();
        co_await m.quit();
    };
    asio::co_spawn(io, work, [&](std::exception_ptr e) { failure = e; });
    io.run_for(60s);
    EXPECT_FALSE(failure);
    return eom;
}

const Modification* header_edit(const EndOfMessage& eom, std::string_view name) {
    for (const auto& m : eom.modifications)
        if ((m.type == Modification::Type::AddHeader ||
             m.type == Modification::Type::InsertHeader) &&
            bmx::iequals(m.name, name))
            return &m;
    return nullptr;
}

}  // namespace

TEST(MilterReal, OpenDkimSignsAndTheSignatureVerifies) {
    if (!fs::exists("/usr/sbin/opendkim") || !fs::exists("/usr/sbin/opendkim-genkey"))
        GTEST_SKIP() << "opendkim is not installed (apt-get install opendkim opendkim-tools)";
    OpenDkim dkim;
    ASSERT_EQ(dkim.problem, "") << "opendkim did not start";

    std::string error;
    const EndOfMessage signed_eom = through(dkim.endpoint(), "127.0.0.1", kMessage, error);
    // opendkim answers SMFIR_ACCEPT at the end of the message, its edits before it.
    EXPECT_TRUE(signed_eom.verdict.proceed()) << error << dkim.child->output();
    const Modification* sig = header_edit(signed_eom, "DKIM-Signature");
    ASSERT_TRUE(sig) << "no DKIM-Signature edit: " << error << dkim.child->output();
    EXPECT_NE(sig->value.find("d=example.test"), std::string::npos) << sig->value;
    EXPECT_NE(sig->value.find("s=test"), std::string::npos) << sig->value;
    EXPECT_NE(sig->value.find("c=relaxed/simple"), std::string::npos) << sig->value;
    for (std::size_t i = sig->value.find('\n'); i != std::string::npos;
         i = sig->value.find('\n', i + 1))
        EXPECT_TRUE(i > 0 && sig->value[i - 1] == '\r') << "a fold not made CRLF";
    const std::string signed_message = apply_modifications(kMessage, signed_eom.modifications);
    EXPECT_NE(signed_message.find("DKIM-Signature:"), std::string::npos);
    EXPECT_TRUE(signed_message.ends_with(kBody));

    // The next hop adds its own Received: and has the same opendkim verify what we stored:
    // every signed header byte and every body byte went through intact.
    const std::string relayed =
        "Received: from mx2.example.test by next.example.test\r\n" + signed_message;
    const EndOfMessage verified = through(dkim.endpoint(), "192.0.2.1", relayed, error);
    EXPECT_TRUE(verified.verdict.proceed()) << error;
    const Modification* ar = header_edit(verified, "Authentication-Results");
    ASSERT_TRUE(ar) << "no Authentication-Results: " << error << dkim.child->output();
    EXPECT_NE(ar->value.find("verifier.example.test"), std::string::npos) << ar->value;
    EXPECT_NE(ar->value.find("dkim=pass"), std::string::npos) << ar->value;

    // A byte changed in the body after signing: opendkim says so.
    std::string tampered = relayed;
    tampered[tampered.size() - 10] ^= 1;
    const EndOfMessage bad = through(dkim.endpoint(), "192.0.2.1", tampered, error);
    const Modification* bad_ar = header_edit(bad, "Authentication-Results");
    ASSERT_TRUE(bad_ar) << error;
    EXPECT_NE(bad_ar->value.find("dkim=fail"), std::string::npos) << bad_ar->value;

    EXPECT_TRUE(dkim.child->stop()) << "opendkim did not stop on SIGTERM";  // no SIGKILL
    EXPECT_FALSE(can_connect(dkim.port));
}
