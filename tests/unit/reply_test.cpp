#include "delivery/reply.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "smtp/protocol.hpp"

using namespace bmx::delivery;

namespace {

// Appends `input` `piece` octets at a time and collects every reply.
std::vector<Reply> parse_all(std::string_view input, std::size_t piece) {
    ReplyParser p;
    std::vector<Reply> out;
    std::string buf;
    for (std::size_t i = 0; i < input.size(); i += piece) {
        buf.append(input.substr(i, piece));
        while (auto r = p.next(buf)) out.push_back(*r);
    }
    return out;
}

}  // namespace

// =============================================================================================
// ReplyParser

TEST(ReplyParser, SingleLine) {
    ReplyParser p;
    std::string buf = "250 2.0.0 Ok: queued\r\n";
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, 250);
    EXPECT_EQ(r->lines, (std::vector<std::string>{"2.0.0 Ok: queued"}));
    EXPECT_TRUE(buf.empty());
}

TEST(ReplyParser, BareLfLine) {
    ReplyParser p;
    std::string buf = "220 mx.test ESMTP\n";
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, 220);
    EXPECT_EQ(r->lines, (std::vector<std::string>{"mx.test ESMTP"}));
}

TEST(ReplyParser, IncompleteLineWaits) {
    ReplyParser p;
    std::string buf = "250 O";
    EXPECT_FALSE(p.next(buf));
    EXPECT_EQ(buf, "250 O");
}

TEST(ReplyParser, MultiLine) {
    ReplyParser p;
    std::string buf = "250-mx.test Hello\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n";
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, 250);
    EXPECT_EQ(r->lines,
              (std::vector<std::string>{"mx.test Hello", "SIZE 1000", "8BITMIME", "SMTPUTF8"}));
    EXPECT_TRUE(buf.empty());
}

TEST(ReplyParser, MultiLineWaitsForLastLine) {
    ReplyParser p;
    std::string buf = "250-first\r\n250-second\r\n";
    EXPECT_FALSE(p.next(buf));
    EXPECT_TRUE(buf.empty());  // complete lines are taken, the reply is kept inside the parser
    buf = "250 third\r\n";
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->lines, (std::vector<std::string>{"first", "second", "third"}));
}

TEST(ReplyParser, SplitAcrossFeedsEveryPieceSize) {
    std::string input = "250-a\r\n250 b\r\n354 go ahead\r\n";
    for (std::size_t piece = 1; piece <= input.size(); ++piece) {
        auto replies = parse_all(input, piece);
        ASSERT_EQ(replies.size(), 2u) << "piece " << piece;
        EXPECT_EQ(replies[0].code, 250);
        EXPECT_EQ(replies[0].lines, (std::vector<std::string>{"a", "b"}));
        EXPECT_EQ(replies[1].code, 354);
        EXPECT_EQ(replies[1].lines, (std::vector<std::string>{"go ahead"}));
    }
}

TEST(ReplyParser, PipelinedRepliesReturnedOneAtATime) {
    ReplyParser p;
    std::string buf = "250 ok sender\r\n250 ok rcpt\r\n550 5.1.1 no\r\n";
    auto a = p.next(buf);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->code, 250);
    EXPECT_EQ(buf, "250 ok rcpt\r\n550 5.1.1 no\r\n");
    auto b = p.next(buf);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->lines, (std::vector<std::string>{"ok rcpt"}));
    auto c = p.next(buf);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->code, 550);
    EXPECT_FALSE(p.next(buf));
}

TEST(ReplyParser, BareCodeThreeChars) {
    ReplyParser p;
    std::string buf = "250\r\n";
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, 250);
    EXPECT_EQ(r->lines, (std::vector<std::string>{""}));
}

TEST(ReplyParser, CodeAndSpaceOnly) {
    ReplyParser p;
    std::string buf = "221 \r\n";
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, 221);
    EXPECT_EQ(r->lines, (std::vector<std::string>{""}));
}

TEST(ReplyParser, MalformedNonDigit) {
    for (const char* bad : {"25x ok\r\n", "hello\r\n", "2500 ok\r\n", "250x\r\n", "\r\n", "25\r\n",
                            " 250 ok\r\n", "abc-def\r\n"}) {
        ReplyParser p;
        std::string buf = bad;
        auto r = p.next(buf);
        ASSERT_TRUE(r) << bad;
        EXPECT_EQ(r->code, 0) << bad;
    }
}

TEST(ReplyParser, MismatchedCodesMalformed) {
    ReplyParser p;
    std::string buf = "250-a\r\n251 b\r\n";
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, 0);
}

TEST(ReplyParser, RecoversAfterMalformedReply) {
    ReplyParser p;
    std::string buf = "250-a\r\nxyz\r\n220 fresh\r\n";
    auto bad = p.next(buf);
    ASSERT_TRUE(bad);
    EXPECT_EQ(bad->code, 0);
    auto good = p.next(buf);
    ASSERT_TRUE(good);
    EXPECT_EQ(good->code, 220);
    EXPECT_EQ(good->lines, (std::vector<std::string>{"fresh"}));  // nothing left from before
}

TEST(ReplyParser, OverLongLineWithoutLfIsMalformedAndNotBuffered) {
    ReplyParser p;
    std::string buf = "250 " + std::string(3000, 'x');
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, 0);
    EXPECT_TRUE(r->lines.empty());
    EXPECT_TRUE(buf.empty());
}

TEST(ReplyParser, LineOf2048OctetsBeforeLfAccepted) {
    ReplyParser p;
    std::string buf = "250 " + std::string(2043, 'x') + "\r";  // 2048 octets, no LF yet
    EXPECT_FALSE(p.next(buf));
    EXPECT_EQ(buf.size(), 2048u);
    buf += "\n";
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, 250);
    EXPECT_EQ(r->lines[0].size(), 2043u);
}

TEST(ReplyParser, LineLimitSameWholeOrInPieces) {
    for (std::size_t n : {2043u, 2044u}) {  // octets of text: 2048 or 2049 before the LF
        std::string input = "250 " + std::string(n, 'x') + "\r\n";
        for (std::size_t piece : {1u, 100u, 2048u, 2049u, 4096u}) {
            auto replies = parse_all(input, piece);
            ASSERT_FALSE(replies.empty()) << n << " in pieces of " << piece;
            EXPECT_EQ(replies[0].code, n == 2043 ? 250 : 0) << n << " in pieces of " << piece;
        }
    }
}

TEST(ReplyParser, OverLongCompleteLineIsMalformedToo) {
    // The limit must not depend on whether the LF arrived in the same read.
    std::string input = "250 " + std::string(3000, 'x') + "\r\n";
    ReplyParser p;
    std::string buf = input;
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, 0);
    auto pieces = parse_all(input, 512);
    ASSERT_FALSE(pieces.empty());
    EXPECT_EQ(pieces[0].code, 0);
}

TEST(ReplyParser, OverLongContinuationInsideMultiLineReply) {
    ReplyParser p;
    std::string buf = "250-ok\r\n250-" + std::string(5000, 'y');
    auto r = p.next(buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, 0);
    EXPECT_TRUE(buf.empty());
    buf = "250 next\r\n";
    auto next = p.next(buf);
    ASSERT_TRUE(next);
    EXPECT_EQ(next->lines, (std::vector<std::string>{"next"}));  // the partial was dropped
}

TEST(ReplyParser, HundredLinesAccepted) {
    std::string input;
    for (int i = 0; i < 99; ++i) input += "250-line\r\n";
    input += "250 last\r\n";
    auto replies = parse_all(input, 1 << 20);
    ASSERT_EQ(replies.size(), 1u);
    EXPECT_EQ(replies[0].code, 250);
    EXPECT_EQ(replies[0].lines.size(), 100u);
}

TEST(ReplyParser, MoreThanHundredLinesMalformed) {
    std::string endless;
    for (int i = 0; i < 150; ++i) endless += "250-line\r\n";
    auto replies = parse_all(endless, 1 << 20);
    ASSERT_FALSE(replies.empty());
    EXPECT_EQ(replies[0].code, 0);

    std::string terminated;
    for (int i = 0; i < 100; ++i) terminated += "250-line\r\n";
    terminated += "250 last\r\n";  // 101 lines
    auto r = parse_all(terminated, 1 << 20);
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].code, 0);
}

// =============================================================================================
// Reply

TEST(Reply, TextSingleLine) {
    Reply r{250, {"2.0.0 Ok"}};
    EXPECT_EQ(r.text(), "250 2.0.0 Ok");
}

TEST(Reply, TextJoinsLines) {
    Reply r{550, {"5.1.1 <x@y.test>: no such user", "see https://help.test"}};
    EXPECT_EQ(r.text(), "550 5.1.1 <x@y.test>: no such user / see https://help.test");
}

TEST(Reply, TextOfMalformed) {
    EXPECT_EQ(Reply{}.text(), "0");
}

TEST(Reply, Classes) {
    EXPECT_TRUE((Reply{250, {}}).positive());
    EXPECT_FALSE((Reply{354, {}}).positive());  // "go on", not "done"
    EXPECT_TRUE((Reply{354, {}}).intermediate());
    EXPECT_FALSE((Reply{250, {}}).transient());
    EXPECT_TRUE((Reply{451, {}}).transient());
    EXPECT_FALSE((Reply{451, {}}).permanent());
    EXPECT_TRUE((Reply{550, {}}).permanent());
    EXPECT_FALSE((Reply{550, {}}).positive());
    Reply malformed;
    EXPECT_FALSE(malformed.positive());
    EXPECT_FALSE(malformed.transient());
    EXPECT_FALSE(malformed.permanent());
}

// =============================================================================================
// stuff_body

TEST(StuffBody, PlainBodyGetsTerminator) {
    EXPECT_EQ(stuff_body("Subject: x\r\n\r\nhi\r\n"), "Subject: x\r\n\r\nhi\r\n.\r\n");
}

TEST(StuffBody, LeadingDotsDoubledAtEveryLineStart) {
    EXPECT_EQ(stuff_body(".first\r\nmid.dle\r\n..two\r\n.\r\nend.\r\n"),
              "..first\r\nmid.dle\r\n...two\r\n..\r\nend.\r\n.\r\n");
}

TEST(StuffBody, MissingFinalCrlfAdded) {
    EXPECT_EQ(stuff_body("no newline"), "no newline\r\n.\r\n");
    EXPECT_EQ(stuff_body("a\r\n.b"), "a\r\n..b\r\n.\r\n");
}

TEST(StuffBody, EmptyBodyIsJustTerminator) {
    EXPECT_EQ(stuff_body(""), ".\r\n");
}

TEST(StuffBody, RoundTripsThroughDataScanner) {
    const std::string bodies[] = {"",
                                  "a\r\n",
                                  ".\r\n",
                                  "..\r\n.\r\n\r\n.x\r\n",
                                  "Subject: t\r\n\r\n.hidden\r\n.\r\nafter\r\n",
                                  std::string(".", 1) + std::string(997, 'p') + "\r\n"};
    for (const auto& body : bodies) {
        std::string wire = stuff_body(body);
        bmx::smtp::DataScanner d(1 << 20);
        std::string out;
        EXPECT_EQ(d.feed(wire, out), wire.size()) << testing::PrintToString(body);
        EXPECT_TRUE(d.done());
        EXPECT_FALSE(d.refused()) << testing::PrintToString(body);
        EXPECT_EQ(out, body);
    }
}

TEST(ReplyParserFirstDigit, OnlyTwoToFiveAreSmtpReplies) {  // found by fuzz_reply
    for (const char* bad : {"050 x\r\n", "199 x\r\n", "650 x\r\n", "999 x\r\n"}) {
        bmx::delivery::ReplyParser p;
        std::string buf = bad;
        auto r = p.next(buf);
        ASSERT_TRUE(r) << bad;
        EXPECT_EQ(r->code, 0) << bad;
    }
}

TEST(Stuffer, AnySplitIntoPiecesGivesTheSameBytesAsTheWhole) {
    const std::string bodies[] = {
        ".first\r\nmid.dle\r\n..two\r\n.\r\nend.\r\n", "a\r\n.b", "\r\n.\r\n.", "x\r", ".", ""};
    for (const auto& body : bodies) {
        const std::string whole = stuff_body(body);
        for (std::size_t a = 0; a <= body.size(); ++a)
            for (std::size_t b = a; b <= body.size(); ++b) {
                Stuffer s;
                std::string out;
                s.feed(std::string_view(body).substr(0, a), out);
                s.feed(std::string_view(body).substr(a, b - a), out);
                s.feed(std::string_view(body).substr(b), out);
                s.finish(out);
                EXPECT_EQ(out, whole) << "split at " << a << "," << b << " of " << body;
            }
    }
}

// =============================================================================================
// Matching replies to commands

TEST(ReplyFits, OnlyTwoHundredsArePositive) {
    EXPECT_TRUE((Reply{250, {"ok"}}.positive()));
    EXPECT_TRUE((Reply{251, {"ok"}}.positive()));
    EXPECT_FALSE((Reply{354, {"go"}}.positive())) << "3xx is 'go on', never 'done'";
    EXPECT_TRUE((Reply{354, {"go"}}.intermediate()));
    EXPECT_FALSE((Reply{421, {"bye"}}.positive()));
}

TEST(ReplyFits, DataTakesOnly354Or4xxOr5xx) {
    EXPECT_TRUE(fits(Step::Data, Reply{354, {"go"}}));
    EXPECT_TRUE(fits(Step::Data, Reply{451, {"later"}}));
    EXPECT_TRUE(fits(Step::Data, Reply{554, {"no"}}));
    EXPECT_FALSE(fits(Step::Data, Reply{250, {"ok"}})) << "250 to DATA: no body was sent";
    EXPECT_FALSE(fits(Step::Data, Reply{334, {"?"}}));
    EXPECT_FALSE(fits(Step::Data, Reply{221, {"bye"}}));
}

TEST(ReplyFits, MailRcptAndEndOfDataTake2xxOr4xxOr5xxButNever3xx) {
    for (Step s : {Step::Mail, Step::Rcpt, Step::EndOfData}) {
        EXPECT_TRUE(fits(s, Reply{250, {"ok"}}));
        EXPECT_TRUE(fits(s, Reply{421, {"closing"}}));
        EXPECT_TRUE(fits(s, Reply{550, {"no"}}));
        EXPECT_FALSE(fits(s, Reply{354, {"go"}}));
        EXPECT_FALSE(fits(s, Reply{300, {""}}));
    }
}

TEST(ReplyText, ControlBytesFromThePrimaryAreEscaped) {
    Reply r{550, {"no\x1b[31m such\ruser", "caf\xc3\xa9 \"quoted\""}};
    EXPECT_EQ(r.text(), "550 no\\x1B[31m such\\x0Duser / caf\xc3\xa9 \\\"quoted\\\"");
}
