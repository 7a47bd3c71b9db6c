// The milter codec byte by byte — framing, commands, every reply a milter may send, malformed
// and oversized input — and apply_modifications on stored messages. No sockets.
#include <gtest/gtest.h>

#include <random>

#include "milter/milter.hpp"
#include "support.hpp"

using namespace bmx::milter;
using namespace bmx::test;
using T = Modification::Type;
using K = Response::Kind;

namespace {

Response parse(char command, std::string data) {
    std::string error;
    auto r = parse_response(Packet{command, std::move(data)}, error);
    EXPECT_TRUE(r) << error;
    return r ? *r : Response{};
}

std::string parse_error(char command, std::string data) {
    std::string error;
    auto r = parse_response(Packet{command, std::move(data)}, error);
    EXPECT_FALSE(r) << "parsed: " << command;
    return error;
}

std::vector<Packet> drain(Decoder& d) {
    std::vector<Packet> out;
    while (auto p = d.next()) out.push_back(*p);
    return out;
}

// Our own Received: first, as the SMTP session stores messages.
const std::string kMessage =
    "Received: from client (client [192.0.2.1])\r\n"
    "\tby mx2.example.test (backupmx) with ESMTP id ABC; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    "Received: from earlier.example\r\n"
    "From: Alice <alice@sender.test>\r\n"
    "To: bob@example.test\r\n"
    "Subject: hello\r\n"
    "X-Tag: one\r\n"
    "x-tag: two\r\n"
    "\r\n"
    "Body line 1\r\n"
    "Body line 2\r\n";

std::string headers_of(const std::string& m) {
    return m.substr(0, m.find("\r\n\r\n") + 2);
}
std::string body_of(const std::string& m) {
    return m.substr(m.find("\r\n\r\n") + 4);
}

Modification mod(T type, std::string name, std::string value, std::uint32_t index = 0) {
    Modification m;
    m.type = type;
    m.name = std::move(name);
    m.value = std::move(value);
    m.index = index;
    return m;
}

}  // namespace

// ---- Endpoints and settings

TEST(MilterEndpoint, PostfixSyntax) {
    auto e = parse_endpoint("inet:127.0.0.1:8891");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->kind, Endpoint::Kind::Inet);
    EXPECT_EQ(e->host, "127.0.0.1");
    EXPECT_EQ(e->port, 8891);
    EXPECT_EQ(e->text(), "inet:127.0.0.1:8891");
    e = parse_endpoint("inet:localhost:11332");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->host, "localhost");
    e = parse_endpoint("inet:[::1]:8891");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->host, "::1");
    EXPECT_EQ(e->text(), "inet:[::1]:8891");
    e = parse_endpoint("unix:/run/opendkim/opendkim.sock");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->kind, Endpoint::Kind::Unix);
    EXPECT_EQ(e->path, "/run/opendkim/opendkim.sock");
    EXPECT_TRUE(parse_endpoint("local:/var/run/milter.sock"));
}

TEST(MilterEndpoint, RefusesWhatPostfixRefuses) {
    for (const char* bad :
         {"", "inet:", "inet:host", "inet:host:", "inet::25", "inet:host:0", "inet:host:65536",
          "inet:host:12x", "inet:::1:25", "inet:[::1]25", "inet:[nothost]:25", "tcp:host:25",
          "unix:", "8891", "inet:bad host:25"})
        EXPECT_FALSE(parse_endpoint(bad)) << bad;
    EXPECT_FALSE(parse_endpoint("unix:/" + std::string(200, 'x')));  // longer than sun_path
}

TEST(MilterSettings, DefaultActionAndTimeouts) {
    EXPECT_EQ(parse_default_action("accept"), DefaultAction::Accept);
    EXPECT_EQ(parse_default_action("TEMPFAIL"), DefaultAction::Tempfail);
    EXPECT_EQ(parse_default_action("reject"), DefaultAction::Reject);
    EXPECT_FALSE(parse_default_action("quarantine"));
    Settings s;
    EXPECT_EQ(s.default_action, DefaultAction::Tempfail);  // Postfix's milter_default_action
    EXPECT_EQ(s.connect_timeout, std::chrono::seconds(30));
    EXPECT_EQ(s.command_timeout, std::chrono::seconds(30));
    EXPECT_EQ(s.content_timeout, std::chrono::seconds(300));
}

// ---- Framing

TEST(MilterDecoder, PacketsSplitAcrossFeedsByteByByte) {
    const std::string stream = frame('c', "") + frame('h', z("X-A") + z("1")) +
                               frame('b', std::string(70000, 'x')) + frame('a', "");
    Decoder whole;
    whole.feed(stream);
    const auto expected = drain(whole);
    ASSERT_EQ(expected.size(), 4u);
    EXPECT_EQ(expected[2].data.size(), 70000u);

    Decoder bytewise;
    std::vector<Packet> got;
    for (char c : stream) {
        bytewise.feed(std::string_view(&c, 1));
        for (auto& p : drain(bytewise)) got.push_back(p);
    }
    ASSERT_EQ(got.size(), expected.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].command, expected[i].command);
        EXPECT_EQ(got[i].data, expected[i].data);
    }
    EXPECT_FALSE(bytewise.failed());
    EXPECT_EQ(bytewise.buffered(), 0u);

    std::mt19937 rng(7);  // random cuts
    for (int round = 0; round < 50; ++round) {
        Decoder d;
        std::size_t pos = 0, n = 0;
        while (pos < stream.size()) {
            const std::size_t len = std::min<std::size_t>(rng() % 9000 + 1, stream.size() - pos);
            d.feed(std::string_view(stream).substr(pos, len));
            pos += len;
            n += drain(d).size();
        }
        EXPECT_EQ(n, 4u);
    }
}

TEST(MilterDecoder, ZeroLengthIsRefused) {
    Decoder d;
    d.feed(u32(0) + "c");
    EXPECT_FALSE(d.next());
    EXPECT_TRUE(d.failed());
    EXPECT_NE(d.error().find("length 0"), std::string::npos);
    d.feed(frame('c', ""));  // and it stays failed
    EXPECT_FALSE(d.next());
}

TEST(MilterDecoder, OversizedPacketRefusedFromItsLengthAlone) {
    Decoder d;
    d.feed(u32(0xffffffffu));  // 4 GiB announced, 4 bytes held: nothing allocated for it
    EXPECT_FALSE(d.next());
    EXPECT_TRUE(d.failed());
    EXPECT_LE(d.buffered(), 4u);

    Decoder edge(100);
    edge.feed(u32(101));
    EXPECT_FALSE(edge.next());
    EXPECT_TRUE(edge.failed());
    Decoder ok(100);
    ok.feed(frame('b', std::string(99, 'y')));  // exactly the limit
    auto p = ok.next();
    ASSERT_TRUE(p);
    EXPECT_EQ(p->data.size(), 99u);
    EXPECT_EQ(kMaxPacket, 2u * 65535u);  // Postfix's bound
}

TEST(MilterDecoder, RandomBytesNeverCrash) {
    std::mt19937 rng(42);
    for (int round = 0; round < 2000; ++round) {
        Decoder d(512);
        std::string junk(rng() % 64, '\0');
        for (auto& c : junk) c = static_cast<char>(rng() % (round % 2 ? 8 : 256));
        d.feed(junk);
        while (auto p = d.next()) {
            std::string error;
            (void)parse_response(*p, error);
        }
        EXPECT_LE(d.buffered(), junk.size());
    }
}

// ---- Commands

TEST(MilterEncode, OptNegAndFraming) {
    EXPECT_EQ(frame('Q', ""), std::string("\0\0\0\1Q", 5));
    const std::string o = encode_optneg(6, 0x1ff, 0x1fffff);
    EXPECT_EQ(o, u32(13) + "O" + u32(6) + u32(0x1ff) + u32(0x1fffff));
}

TEST(MilterEncode, ConnectHeloMailRcpt) {
    EXPECT_EQ(encode_connect("client.example", Family::Inet, 25, "192.0.2.1"),
              frame('C', z("client.example") + "4" + std::string("\0\x19", 2) + z("192.0.2.1")));
    EXPECT_EQ(encode_connect("c", Family::Inet6, 0x1234, "2001:db8::1"),
              frame('C', z("c") + "6" + std::string("\x12\x34", 2) + z("2001:db8::1")));
    EXPECT_EQ(encode_connect("unknown", Family::Unknown, 0, ""), frame('C', z("unknown") + "U"));
    EXPECT_EQ(encode_helo("mail.example"), frame('H', z("mail.example")));
    EXPECT_EQ(encode_mail("a@b.test", {"SIZE=100", "BODY=8BITMIME"}),
              frame('M', z("<a@b.test>") + z("SIZE=100") + z("BODY=8BITMIME")));
    EXPECT_EQ(encode_mail("", {}), frame('M', z("<>")));
    EXPECT_EQ(encode_rcpt("<c@d.test>", {}), frame('R', z("<c@d.test>")));
}

TEST(MilterEncode, HeaderBodyMacrosAndNulsInStrings) {
    EXPECT_EQ(encode_header("Subject", "hi"), frame('L', z("Subject") + z("hi")));
    // A NUL inside a string would end it early on the other side: it is dropped.
    EXPECT_EQ(encode_header(std::string("Sub\0ject", 8), "x"), frame('L', z("Subject") + z("x")));
    const std::string binary("a\0b", 3);
    EXPECT_EQ(encode_body(binary), frame('B', binary));  // a body chunk is raw bytes
    EXPECT_EQ(encode_macros('M', {{"i", "ABC"}, {"{mail_addr}", "a@b"}}),
              frame('D', "M" + z("i") + z("ABC") + z("{mail_addr}") + z("a@b")));
}

// ---- Replies

TEST(MilterReplies, Decisions) {
    EXPECT_EQ(parse('c', "").kind, K::Continue);
    EXPECT_EQ(parse('a', "").kind, K::Accept);
    EXPECT_EQ(parse('r', "").kind, K::Reject);
    EXPECT_EQ(parse('t', "").kind, K::Tempfail);
    EXPECT_EQ(parse('d', "").kind, K::Discard);
    EXPECT_EQ(parse('4', "").kind, K::Shutdown);
    EXPECT_EQ(parse('f', "").kind, K::ConnFail);
    EXPECT_EQ(parse('p', "").kind, K::Progress);
    EXPECT_EQ(parse('s', "").kind, K::Skip);
    EXPECT_NE(parse_error('c', "x").find("followed by 1 data bytes"), std::string::npos);
    EXPECT_NE(parse_error('Z', "").find("unknown"), std::string::npos);
}

TEST(MilterReplies, ReplyCode) {
    auto r = parse('y', z("550 5.7.1 spam detected"));
    EXPECT_EQ(r.kind, K::ReplyCode);
    EXPECT_EQ(r.text, "550 5.7.1 spam detected");
    EXPECT_EQ(parse('y', z("451 4.7.1 100%% busy")).text, "451 4.7.1 100% busy");
    EXPECT_EQ(parse('y', z("554-5.7.1 first\r\n554 5.7.1 second")).text,
              "554-5.7.1 first\r\n554 5.7.1 second");
    EXPECT_EQ(parse('y', z("550")).text, "550");
    for (const char* bad : {"250 2.0.0 ok", "55", "5x0 no", "550x", "550 a\r\n551 b",
                            "550 a\nInjected: yes", "550 a\rb", ""})
        parse_error('y', z(bad));
    parse_error('y', "550 no terminator");
    parse_error('y', z("550 a") + "junk");
}

TEST(MilterReplies, HeaderEdits) {
    auto add = parse('h', z("X-Spam") + z("yes"));
    EXPECT_EQ(add.kind, K::Modify);
    EXPECT_EQ(add.mod, mod(T::AddHeader, "X-Spam", "yes"));
    auto ins = parse('i', u32(3) + z("DKIM-Signature") + z("v=1; a=rsa-sha256"));
    EXPECT_EQ(ins.mod, mod(T::InsertHeader, "DKIM-Signature", "v=1; a=rsa-sha256", 3));
    auto chg = parse('m', u32(2) + z("Subject") + z("[SPAM] hi"));
    EXPECT_EQ(chg.mod, mod(T::ChangeHeader, "Subject", "[SPAM] hi", 2));
    auto del = parse('m', u32(1) + z("X-Old") + z(""));
    EXPECT_EQ(del.mod, mod(T::ChangeHeader, "X-Old", "", 1));
    parse_error('h', z("X-Spam"));                   // no value
    parse_error('h', z("X-Spam") + "yes");           // no NUL
    parse_error('h', z("X-Spam") + z("yes") + "x");  // stray bytes
    parse_error('h', z("") + z("v"));                // empty name
    parse_error('h', z("Bad Name") + z("v"));        // space in the name
    parse_error('h', z("Bad:Name") + z("v"));        // colon in the name
    parse_error('h', z("Evil\r\nX") + z("v"));       // line break in the name
    parse_error('i', std::string("\0\0", 2));        // short index
    parse_error('m', u32(1) + z("Subject"));         // no value
}

TEST(MilterReplies, OtherEdits) {
    EXPECT_EQ(parse('q', z("held for review")).mod, mod(T::Quarantine, "", "held for review"));
    const std::string chunk("new body\r\n\0binary", 17);
    EXPECT_EQ(parse('b', chunk).mod, mod(T::ReplaceBody, "", chunk));
    EXPECT_EQ(parse('+', z("<x@y.test>")).mod, mod(T::AddRecipient, "", "<x@y.test>"));
    EXPECT_EQ(parse('-', z("<x@y.test>")).mod, mod(T::DeleteRecipient, "", "<x@y.test>"));
    auto par = parse('2', z("<x@y.test>") + z("NOTIFY=NEVER"));
    EXPECT_EQ(par.mod.type, T::AddRecipient);
    EXPECT_EQ(par.mod.args, "NOTIFY=NEVER");
    auto from = parse('e', z("<new@sender.test>"));
    EXPECT_EQ(from.mod, mod(T::ChangeSender, "", "<new@sender.test>"));
    EXPECT_EQ(parse('e', z("<n@s>") + z("SIZE=1")).mod.args, "SIZE=1");
    parse_error('q', "no nul");
    parse_error('+', z("a") + z("b"));
}

TEST(MilterReplies, Negotiation) {
    auto r = parse('O', u32(6) + u32(0x21) + u32(0x80));
    EXPECT_EQ(r.kind, K::Negotiate);
    EXPECT_EQ(r.neg.version, 6u);
    EXPECT_EQ(r.neg.actions, 0x21u);
    EXPECT_EQ(r.neg.protocol, 0x80u);
    for (const auto& m : r.neg.macros) EXPECT_FALSE(m);
    auto lists = parse('O', u32(6) + u32(0x1) + u32(0) + u32(2) + z("{auth_authen} i") + u32(5) +
                                z("{rcpt_addr}"));
    EXPECT_EQ(lists.neg.macros[2], "{auth_authen} i");
    EXPECT_EQ(lists.neg.macros[5], "{rcpt_addr}");
    EXPECT_FALSE(lists.neg.macros[0]);
    parse_error('O', u32(6) + u32(1));                             // short
    parse_error('O', u32(6) + u32(1) + u32(0) + u32(9) + z("i"));  // unknown stage
    parse_error('O', u32(6) + u32(1) + u32(0) + u32(1) + "i");     // no NUL
}

TEST(MilterReplies, HeaderValuesAsTheyGoIntoTheMessage) {
    EXPECT_EQ(normalize_header_value("yes", false), " yes");
    EXPECT_EQ(normalize_header_value(" yes", true), " yes");
    EXPECT_EQ(normalize_header_value("a;\n\tb=c", false), " a;\r\n\tb=c");
    EXPECT_EQ(normalize_header_value("a;\r\n\tb", false), " a;\r\n\tb");
    EXPECT_EQ(normalize_header_value("", false), "");  // stays a delete
}

// ---- apply_modifications

TEST(MilterApply, NoEditsIsIdentity) {
    EXPECT_EQ(apply_modifications(kMessage, {}), kMessage);
    Modification q = mod(T::Quarantine, "", "why");
    Modification rcpt = mod(T::AddRecipient, "", "<x@y>");
    EXPECT_EQ(apply_modifications(kMessage, {q, rcpt}), kMessage);
}

TEST(MilterApply, AddHeaderGoesLast) {
    auto out = apply_modifications(kMessage, {mod(T::AddHeader, "X-Spam", " yes")});
    EXPECT_EQ(headers_of(out), headers_of(kMessage) + "X-Spam: yes\r\n");
    EXPECT_EQ(body_of(out), body_of(kMessage));
}

TEST(MilterApply, InsertCountsOurReceivedAsPostfixDoes) {
    const std::string ours =
        "Received: from client (client [192.0.2.1])\r\n"
        "\tby mx2.example.test (backupmx) with ESMTP id ABC; Thu, 1 Jan 2026 00:00:00 +0000\r\n";
    auto top = apply_modifications(kMessage, {mod(T::InsertHeader, "DKIM-Signature", " v=1", 0)});
    EXPECT_TRUE(top.starts_with("DKIM-Signature: v=1\r\n" + ours)) << top;
    auto second = apply_modifications(kMessage, {mod(T::InsertHeader, "X-A", " 1", 1)});
    EXPECT_TRUE(second.starts_with(ours + "X-A: 1\r\nReceived: from earlier")) << second;
    auto past = apply_modifications(kMessage, {mod(T::InsertHeader, "X-A", " 1", 99)});
    EXPECT_EQ(headers_of(past), headers_of(kMessage) + "X-A: 1\r\n");
}

TEST(MilterApply, ChangeCountsHeadersAsTheMilterSawThem) {
    // Received #1 is the one after ours: the milter never saw ours.
    auto out = apply_modifications(kMessage, {mod(T::ChangeHeader, "Received", " changed", 1)});
    EXPECT_NE(out.find("by mx2.example.test"), std::string::npos);  // ours untouched
    EXPECT_NE(out.find("Received: changed\r\nFrom:"), std::string::npos) << out;
    EXPECT_EQ(out.find("earlier.example"), std::string::npos);
    // Index 0 means 1 (Sendmail); names match without case; the n-th instance.
    auto zero = apply_modifications(kMessage, {mod(T::ChangeHeader, "subject", " new", 0)});
    EXPECT_NE(zero.find("subject: new\r\nX-Tag: one"), std::string::npos) << zero;
    auto second = apply_modifications(kMessage, {mod(T::ChangeHeader, "X-TAG", " 2", 2)});
    EXPECT_NE(second.find("X-Tag: one\r\nX-TAG: 2\r\n\r\n"), std::string::npos) << second;
}

TEST(MilterApply, DeleteAndMissingHeaders) {
    auto del = apply_modifications(kMessage, {mod(T::ChangeHeader, "X-Tag", "", 1)});
    EXPECT_EQ(del.find("X-Tag: one"), std::string::npos);
    EXPECT_NE(del.find("x-tag: two"), std::string::npos);
    // Deleting what is not there changes nothing; changing it adds it (Sendmail, Postfix).
    EXPECT_EQ(apply_modifications(kMessage, {mod(T::ChangeHeader, "X-None", "", 1)}), kMessage);
    auto add = apply_modifications(kMessage, {mod(T::ChangeHeader, "X-None", " v", 3)});
    EXPECT_EQ(headers_of(add), headers_of(kMessage) + "X-None: v\r\n");
    // Our own Received: cannot be deleted through the milter's numbering.
    auto rcv = apply_modifications(kMessage, {mod(T::ChangeHeader, "Received", "", 1),
                                              mod(T::ChangeHeader, "Received", "", 1)});
    EXPECT_TRUE(rcv.starts_with("Received: from client")) << rcv;
    EXPECT_EQ(rcv.find("earlier.example"), std::string::npos);
}

TEST(MilterApply, AfterAnInsertAboveOursOursIsLikeAnyOther) {
    auto out = apply_modifications(kMessage, {mod(T::InsertHeader, "X-Top", " 1", 0),
                                              mod(T::ChangeHeader, "Received", " first", 1)});
    EXPECT_TRUE(out.starts_with("X-Top: 1\r\nReceived: first\r\nReceived: from earlier")) << out;
}

TEST(MilterApply, EditsAreAppliedInOrder) {
    auto out = apply_modifications(
        kMessage, {mod(T::AddHeader, "X-A", " 1"), mod(T::ChangeHeader, "X-A", " 2", 1),
                   mod(T::AddHeader, "X-A", " 3"), mod(T::ChangeHeader, "X-A", "", 1)});
    EXPECT_EQ(headers_of(out), headers_of(kMessage) + "X-A: 3\r\n");
}

TEST(MilterApply, FoldedValuesCannotInjectHeadersOrEndTheHeader) {
    auto folded = apply_modifications(
        kMessage, {mod(T::AddHeader, "DKIM-Signature", " v=1; a=rsa-sha256;\r\n\tb=abc\r\n")});
    EXPECT_EQ(headers_of(folded),
              headers_of(kMessage) + "DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\n");
    auto evil = apply_modifications(
        kMessage, {mod(T::AddHeader, "X-A", " a\r\n\r\nBcc: victim@example\nX: y\r")});
    EXPECT_EQ(headers_of(evil),
              headers_of(kMessage) + "X-A: a\r\n\tBcc: victim@example\r\n\tX: y\r\n");
    EXPECT_EQ(body_of(evil), body_of(kMessage));
    // An invalid name (only apply's caller could make one) is ignored, not written.
    EXPECT_EQ(apply_modifications(kMessage, {mod(T::AddHeader, "Bad Name", " x")}), kMessage);
}

TEST(MilterApply, ReplaceBody) {
    auto out = apply_modifications(kMessage, {mod(T::ReplaceBody, "", "new\nbody")});
    EXPECT_EQ(headers_of(out), headers_of(kMessage));
    EXPECT_EQ(body_of(out), "new\r\nbody\r\n");
    auto empty = apply_modifications(kMessage, {mod(T::ReplaceBody, "", "")});
    EXPECT_EQ(empty, headers_of(kMessage) + "\r\n");
    // A message without a body gets its empty line before the new one.
    auto headers_only =
        apply_modifications("Received: x\r\nSubject: s\r\n", {mod(T::ReplaceBody, "", "b\r\n")});
    EXPECT_EQ(headers_only, "Received: x\r\nSubject: s\r\n\r\nb\r\n");
}

TEST(MilterApply, WithoutOurOwnFirstHeader) {
    const std::string m = "Subject: a\r\nSubject: b\r\n\r\nx\r\n";
    auto out = apply_modifications(m, {mod(T::ChangeHeader, "Subject", " A", 1)}, false);
    EXPECT_EQ(out, "Subject: A\r\nSubject: b\r\n\r\nx\r\n");
    auto ins = apply_modifications(m, {mod(T::InsertHeader, "X", " 0", 0)}, false);
    EXPECT_EQ(ins, "X: 0\r\n" + m);
}
