#include "smtp/protocol.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

using namespace bmx::smtp;

namespace {

// ---------------------------------------------------------------------------------------------
// CommandReader helpers

struct Framed {
    std::vector<CommandReader::Line> lines;
    std::size_t max_buffered = 0;  // largest buffer left behind by next()
};

// Appends `input` to the buffer `piece` octets at a time, taking every line after each append.
Framed frame(std::string_view input, std::size_t piece, std::size_t max = kMaxCommandLine) {
    CommandReader reader(max);
    Framed f;
    std::string buf;
    for (std::size_t i = 0; i < input.size(); i += piece) {
        buf.append(input.substr(i, piece));
        while (auto line = reader.next(buf)) f.lines.push_back(*line);
        f.max_buffered = std::max(f.max_buffered, buf.size());
    }
    return f;
}

std::vector<std::pair<std::string, bool>> flat(const Framed& f) {
    std::vector<std::pair<std::string, bool>> out;
    for (const auto& l : f.lines) out.emplace_back(l.text, l.too_long);
    return out;
}

using Lines = std::vector<std::pair<std::string, bool>>;

// ---------------------------------------------------------------------------------------------
// DataScanner helpers

struct Scan {
    std::string out;
    std::size_t consumed = 0;
    bool done = false, bare_lf = false, bare_cr = false, too_long = false, too_big = false,
         refused = false;
    std::uint64_t size = 0;
    bool operator==(const Scan&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Scan& s) {
    return os << "{out.size=" << s.out.size() << " consumed=" << s.consumed << " done=" << s.done
              << " bare_lf=" << s.bare_lf << " bare_cr=" << s.bare_cr << " too_long=" << s.too_long
              << " too_big=" << s.too_big << " refused=" << s.refused << " size=" << s.size << "}";
}

Scan finish(const DataScanner& d, std::string out, std::size_t consumed) {
    return Scan{std::move(out),    consumed,    d.done(),    d.bare_lf(), d.bare_cr(),
                d.line_too_long(), d.too_big(), d.refused(), d.size()};
}

// Feeds `in` in pieces whose boundaries are `cuts` (ascending offsets).
Scan scan_cut(std::string_view in, std::uint64_t max, const std::vector<std::size_t>& cuts) {
    DataScanner d(max);
    std::string out;
    std::size_t consumed = 0, from = 0;
    auto feed = [&](std::size_t to) {
        std::size_t used = d.feed(in.substr(from, to - from), out);
        EXPECT_LE(used, to - from);
        consumed += used;
        from = to;
    };
    for (std::size_t c : cuts) feed(c);
    feed(in.size());
    return finish(d, std::move(out), consumed);
}

// Scans `in` whole, one byte at a time and (for short inputs) split in two at every offset, and
// checks that every way of feeding it gives the same result. Returns the whole-buffer result.
Scan scan(std::string_view in, std::uint64_t max = 1 << 20) {
    Scan whole = scan_cut(in, max, {});
    std::vector<std::size_t> every;
    for (std::size_t i = 1; i < in.size(); ++i) every.push_back(i);
    EXPECT_EQ(scan_cut(in, max, every), whole) << "byte by byte differs from whole";
    if (in.size() <= 300) {
        for (std::size_t i = 1; i < in.size(); ++i) {
            EXPECT_EQ(scan_cut(in, max, {i}), whole) << "split at " << i << " differs";
        }
    }
    return whole;
}

}  // namespace

// =============================================================================================
// CommandReader

TEST(CommandReader, CrlfLine) {
    CommandReader r;
    std::string buf = "EHLO client.test\r\n";
    auto line = r.next(buf);
    ASSERT_TRUE(line);
    EXPECT_EQ(line->text, "EHLO client.test");
    EXPECT_FALSE(line->too_long);
    EXPECT_TRUE(buf.empty());
}

TEST(CommandReader, BareLfLine) {
    CommandReader r;
    std::string buf = "NOOP\n";
    auto line = r.next(buf);
    ASSERT_TRUE(line);
    EXPECT_EQ(line->text, "NOOP");
    EXPECT_FALSE(line->too_long);
    EXPECT_TRUE(buf.empty());
}

TEST(CommandReader, EmptyLineIsNotTooLong) {
    CommandReader r;
    std::string buf = "\r\n";
    auto line = r.next(buf);
    ASSERT_TRUE(line);
    EXPECT_EQ(line->text, "");
    EXPECT_FALSE(line->too_long);
}

TEST(CommandReader, IncompleteLineStaysBuffered) {
    CommandReader r;
    std::string buf = "MAIL FROM:<a@b";
    EXPECT_FALSE(r.next(buf));
    EXPECT_EQ(buf, "MAIL FROM:<a@b");
    buf += ".test>\r\n";
    auto line = r.next(buf);
    ASSERT_TRUE(line);
    EXPECT_EQ(line->text, "MAIL FROM:<a@b.test>");
}

TEST(CommandReader, CrSplitFromLf) {
    EXPECT_EQ(flat(frame("NOOP\r\n", 5)), (Lines{{"NOOP", false}}));
}

TEST(CommandReader, OnlyTheFinalCrIsStripped) {
    EXPECT_EQ(flat(frame("A\rB\r\r\n", 100)), (Lines{{"A\rB\r", false}}));
}

TEST(CommandReader, LineOfExactly512OctetsWithCrlfAccepted) {
    std::string text(510, 'x');
    auto f = frame(text + "\r\n", 1 << 20);
    ASSERT_EQ(f.lines.size(), 1u);
    EXPECT_FALSE(f.lines[0].too_long);
    EXPECT_EQ(f.lines[0].text, text);
}

TEST(CommandReader, LineOfExactly512OctetsWithBareLfAccepted) {
    std::string text(511, 'x');
    EXPECT_EQ(flat(frame(text + "\n", 1 << 20)), (Lines{{text, false}}));
}

TEST(CommandReader, LineOf512OctetsAcceptedInAnyPieces) {
    std::string text(510, 'y');
    for (std::size_t piece : {1u, 2u, 7u, 100u, 511u, 512u}) {
        auto f = frame(text + "\r\n", piece);
        EXPECT_EQ(flat(f), (Lines{{text, false}})) << "piece " << piece;
    }
}

TEST(CommandReader, LineOf513OctetsReportedOnceAsTooLong) {
    auto f = frame(std::string(511, 'x') + "\r\nNOOP\r\n", 1 << 20);
    EXPECT_EQ(flat(f), (Lines{{"", true}, {"NOOP", false}}));
}

TEST(CommandReader, LineOf513OctetsInSmallPiecesReportedOnceAndNotBuffered) {
    std::string input = std::string(511, 'x') + "\r\nQUIT\r\n";
    for (std::size_t piece : {1u, 3u, 10u, 64u, 500u}) {
        auto f = frame(input, piece);
        EXPECT_EQ(flat(f), (Lines{{"", true}, {"QUIT", false}})) << "piece " << piece;
        EXPECT_LT(f.max_buffered, kMaxCommandLine) << "piece " << piece;
    }
}

TEST(CommandReader, HugeLineWithoutLfIsDiscardedNotBuffered) {
    CommandReader r;
    std::string buf(100 * 1024, 'A');
    EXPECT_FALSE(r.next(buf));
    EXPECT_TRUE(buf.empty());
    // More of the same line keeps being dropped.
    for (int i = 0; i < 100; ++i) {
        buf.append(1000, 'B');
        EXPECT_FALSE(r.next(buf));
        EXPECT_TRUE(buf.empty());
    }
    buf += "tail\r\nQUIT\r\n";
    auto first = r.next(buf);
    ASSERT_TRUE(first);
    EXPECT_TRUE(first->too_long);
    EXPECT_EQ(first->text, "");
    auto second = r.next(buf);
    ASSERT_TRUE(second);
    EXPECT_FALSE(second->too_long);
    EXPECT_EQ(second->text, "QUIT");
    EXPECT_FALSE(r.next(buf));
}

TEST(CommandReader, HugeLineInPiecesReportedExactlyOnce) {
    std::string input = std::string(100 * 1024, 'z') + "\r\nRSET\r\n";
    auto f = frame(input, 4096);
    EXPECT_EQ(flat(f), (Lines{{"", true}, {"RSET", false}}));
    EXPECT_LT(f.max_buffered, kMaxCommandLine);
}

TEST(CommandReader, LineSplitAcrossManyFeeds) {
    CommandReader r;
    std::string input = "RCPT TO:<someone@example.test>\r\n";
    std::string buf;
    for (std::size_t i = 0; i + 1 < input.size(); ++i) {
        buf += input[i];
        EXPECT_FALSE(r.next(buf)) << "at " << i;
    }
    buf += input.back();
    auto line = r.next(buf);
    ASSERT_TRUE(line);
    EXPECT_EQ(line->text, "RCPT TO:<someone@example.test>");
    EXPECT_TRUE(buf.empty());
}

TEST(CommandReader, PipelinedLinesInOneBuffer) {
    CommandReader r;
    std::string buf =
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\nRCPT TO:<e@d.test>\r\nDATA\r\nQU";
    std::vector<std::string> got;
    while (auto line = r.next(buf)) {
        EXPECT_FALSE(line->too_long);
        got.push_back(line->text);
    }
    EXPECT_EQ(got, (std::vector<std::string>{"MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>",
                                             "RCPT TO:<e@d.test>", "DATA"}));
    EXPECT_EQ(buf, "QU");
}

TEST(CommandReader, TooLongLineBetweenPipelinedLines) {
    std::string input = "NOOP\r\n" + std::string(600, 'q') + "\r\nHELP\r\n";
    for (std::size_t piece : {1u, 13u, 1u << 20}) {
        EXPECT_EQ(flat(frame(input, piece)), (Lines{{"NOOP", false}, {"", true}, {"HELP", false}}))
            << "piece " << piece;
    }
}

TEST(CommandReader, CustomLimit) {
    EXPECT_EQ(flat(frame("123456789012345\nabcdefghijklmnop\nok\n", 1 << 20, 16)),
              (Lines{{"123456789012345", false}, {"", true}, {"ok", false}}));
}

// =============================================================================================
// parse_command

TEST(ParseCommand, EveryVerb) {
    const std::pair<const char*, Verb> cases[] = {
        {"HELO", Verb::Helo}, {"EHLO", Verb::Ehlo}, {"MAIL", Verb::Mail},
        {"RCPT", Verb::Rcpt}, {"DATA", Verb::Data}, {"RSET", Verb::Rset},
        {"NOOP", Verb::Noop}, {"QUIT", Verb::Quit}, {"VRFY", Verb::Vrfy},
        {"EXPN", Verb::Expn}, {"HELP", Verb::Help}, {"STARTTLS", Verb::StartTls},
        {"BDAT", Verb::Bdat}, {"AUTH", Verb::Auth}};
    for (auto [name, verb] : cases) {
        auto c = parse_command(name);
        EXPECT_EQ(c.verb, verb) << name;
        EXPECT_EQ(c.verb_text, name);
        EXPECT_EQ(c.arg, "");
    }
}

TEST(ParseCommand, VerbsAreCaseInsensitiveAndKeptAsSent) {
    auto c = parse_command("eHlO client.test");
    EXPECT_EQ(c.verb, Verb::Ehlo);
    EXPECT_EQ(c.verb_text, "eHlO");
    EXPECT_EQ(c.arg, "client.test");
    EXPECT_EQ(parse_command("quit").verb, Verb::Quit);
    EXPECT_EQ(parse_command("StartTLS").verb, Verb::StartTls);
    EXPECT_EQ(parse_command("mail FROM:<>").verb, Verb::Mail);
}

TEST(ParseCommand, ArgumentIsEverythingAfterOneSpace) {
    auto c = parse_command("MAIL FROM:<a@b.test> SIZE=10  BODY=8BITMIME");
    EXPECT_EQ(c.verb, Verb::Mail);
    EXPECT_EQ(c.arg, "FROM:<a@b.test> SIZE=10  BODY=8BITMIME");
    EXPECT_EQ(parse_command("NOOP  x").arg, " x");
    EXPECT_EQ(parse_command("QUIT ").arg, "");
}

TEST(ParseCommand, EmptyLine) {
    auto c = parse_command("");
    EXPECT_EQ(c.verb, Verb::Empty);
    EXPECT_EQ(c.verb_text, "");
    EXPECT_EQ(c.arg, "");
}

TEST(ParseCommand, Unknown) {
    auto c = parse_command("XFOO bar baz");
    EXPECT_EQ(c.verb, Verb::Unknown);
    EXPECT_EQ(c.verb_text, "XFOO");
    EXPECT_EQ(c.arg, "bar baz");
    EXPECT_EQ(parse_command("HELOX").verb, Verb::Unknown);
    EXPECT_EQ(parse_command("HEL").verb, Verb::Unknown);
    EXPECT_EQ(parse_command(" HELO x").verb, Verb::Unknown);
    EXPECT_EQ(parse_command("MAIL:FROM").verb, Verb::Unknown);
}

// =============================================================================================
// parse_path_arg

TEST(ParsePath, SimpleMailFrom) {
    auto r = parse_path_arg("FROM:<a@b>", "FROM", true);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_EQ(r.addr->local, "a");
    EXPECT_EQ(r.addr->domain, "b");
    EXPECT_EQ(r.addr->str(), "a@b");
    EXPECT_FALSE(r.addr->null_sender());
    EXPECT_FALSE(r.addr->utf8);
    EXPECT_TRUE(r.params.empty());
    EXPECT_TRUE(r.error.empty());
}

TEST(ParsePath, KeywordIsCaseInsensitive) {
    auto r = parse_path_arg("to:<user@example.test>", "TO", false);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_EQ(r.addr->str(), "user@example.test");
}

TEST(ParsePath, WrongOrMissingKeyword) {
    for (const char* bad : {"TO:<a@b.test>", "FROM<a@b.test>", "FRO:<a@b.test>", "", "FROM"}) {
        auto r = parse_path_arg(bad, "FROM", true);
        EXPECT_FALSE(r.addr) << bad;
        EXPECT_TRUE(r.error.starts_with("501 5.5.4")) << bad << ": " << r.error;
    }
}

TEST(ParsePath, NullSenderOnlyWhenReverse) {
    auto mail = parse_path_arg("FROM:<>", "FROM", true);
    ASSERT_TRUE(mail.addr) << mail.error;
    EXPECT_TRUE(mail.addr->null_sender());
    EXPECT_EQ(mail.addr->str(), "");

    auto rcpt = parse_path_arg("TO:<>", "TO", false);
    EXPECT_FALSE(rcpt.addr);
    EXPECT_TRUE(rcpt.error.starts_with("501 5.1.3")) << rcpt.error;
}

TEST(ParsePath, NullSenderWithParams) {
    auto r = parse_path_arg("FROM:<> SIZE=2048", "FROM", true);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_TRUE(r.addr->null_sender());
    ASSERT_EQ(r.params.size(), 1u);
    EXPECT_EQ(r.params[0], (std::pair<std::string, std::string>{"SIZE", "2048"}));
}

TEST(ParsePath, SpaceAfterColonTolerated) {
    auto r = parse_path_arg("FROM: <a@b.test>", "FROM", true);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_EQ(r.addr->str(), "a@b.test");
    auto r2 = parse_path_arg("TO:   <c@d.test>", "TO", false);
    ASSERT_TRUE(r2.addr) << r2.error;
    EXPECT_EQ(r2.addr->str(), "c@d.test");
}

TEST(ParsePath, MissingBrackets) {
    for (const char* bad : {"TO:a@b.test", "TO:", "TO: ", "TO:a@b.test>"}) {
        auto r = parse_path_arg(bad, "TO", false);
        EXPECT_FALSE(r.addr) << bad;
        EXPECT_TRUE(r.error.starts_with("501 5.1.7")) << bad << ": " << r.error;
    }
}

TEST(ParsePath, UnterminatedAddress) {
    auto r = parse_path_arg("TO:<a@b.test", "TO", false);
    EXPECT_FALSE(r.addr);
    EXPECT_TRUE(r.error.starts_with("501 5.1.7")) << r.error;
}

TEST(ParsePath, QuotedLocalPartWithSpace) {
    auto r = parse_path_arg("TO:<\"a b\"@x.test>", "TO", false);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_EQ(r.addr->local, "\"a b\"");
    EXPECT_EQ(r.addr->domain, "x.test");
    EXPECT_EQ(r.addr->str(), "\"a b\"@x.test");
}

TEST(ParsePath, QuotedLocalPartWithEscapedQuoteAndBracket) {
    auto r = parse_path_arg(R"(TO:<"a\"b>c"@x.test> NOTIFY=NEVER)", "TO", false);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_EQ(r.addr->local, R"("a\"b>c")");
    EXPECT_EQ(r.addr->domain, "x.test");
    ASSERT_EQ(r.params.size(), 1u);
    EXPECT_EQ(r.params[0].first, "NOTIFY");
}

TEST(ParsePath, UnterminatedQuotedLocalPart) {
    EXPECT_FALSE(parse_path_arg("TO:<\"ab@x.test>", "TO", false).addr);
    EXPECT_FALSE(parse_path_arg(R"(TO:<"ab\"@x.test>)", "TO", false).addr);
}

TEST(ParsePath, SourceRouteIsDropped) {
    auto r = parse_path_arg("TO:<@a.test,@b.test:u@d.test>", "TO", false);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_EQ(r.addr->local, "u");
    EXPECT_EQ(r.addr->domain, "d.test");
    EXPECT_EQ(r.addr->str(), "u@d.test");
}

TEST(ParsePath, BadSourceRoute) {
    for (const char* bad : {"TO:<@a.test>", "TO:<@a.test:>", "TO:<@>"}) {
        auto r = parse_path_arg(bad, "TO", false);
        EXPECT_FALSE(r.addr) << bad;
        EXPECT_TRUE(r.error.starts_with("501 5.1.3")) << bad << ": " << r.error;
    }
}

TEST(ParsePath, DomainLowerCasedLocalKept) {
    auto r = parse_path_arg("TO:<John.Doe@EXAMPLE.Test>", "TO", false);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_EQ(r.addr->local, "John.Doe");
    EXPECT_EQ(r.addr->domain, "example.test");
}

TEST(ParsePath, TrailingDotDropped) {
    auto r = parse_path_arg("TO:<u@Example.Test.>", "TO", false);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_EQ(r.addr->domain, "example.test");
    EXPECT_FALSE(parse_path_arg("TO:<u@example.test..>", "TO", false).addr);
    EXPECT_FALSE(parse_path_arg("TO:<u@.>", "TO", false).addr);
}

TEST(ParsePath, AddressLiteral) {
    auto r = parse_path_arg("TO:<postmaster@[1.2.3.4]>", "TO", false);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_EQ(r.addr->local, "postmaster");
    EXPECT_EQ(r.addr->domain, "[1.2.3.4]");
    auto v6 = parse_path_arg("TO:<u@[IPv6:2001:DB8::1]>", "TO", false);
    ASSERT_TRUE(v6.addr) << v6.error;
    EXPECT_EQ(v6.addr->domain, "[ipv6:2001:db8::1]");
}

TEST(ParsePath, BadAddressLiteral) {
    for (const char* bad : {"TO:<u@[1.2.3.4>", "TO:<u@[]>", "TO:<u@[1.2 3.4]>", "TO:<u@[a_b]>"})
        EXPECT_FALSE(parse_path_arg(bad, "TO", false).addr) << bad;
}

TEST(ParsePath, BadDomains) {
    for (const char* d : {"a..b", "-a.test", "a-.test", "a.-b.test", ".a.test", "a_b.test",
                          "a b.test", "", "a.test-"}) {
        std::string arg = std::string("TO:<u@") + d + ">";
        auto r = parse_path_arg(arg, "TO", false);
        EXPECT_FALSE(r.addr) << arg;
        EXPECT_TRUE(r.error.starts_with("501 5.1.3")) << arg << ": " << r.error;
    }
}

TEST(ParsePath, DomainLabelLimits) {
    std::string ok63(63, 'a'), bad64(64, 'a');
    EXPECT_TRUE(parse_path_arg("TO:<u@" + ok63 + ".test>", "TO", false).addr);
    EXPECT_FALSE(parse_path_arg("TO:<u@" + bad64 + ".test>", "TO", false).addr);
    EXPECT_TRUE(parse_path_arg("TO:<u@a-b.c-d.test>", "TO", false).addr);
}

TEST(ParsePath, BadLocalParts) {
    for (const char* bad : {"TO:<.u@x.test>", "TO:<u.@x.test>", "TO:<u..v@x.test>", "TO:<@x.test>",
                            "TO:<u>", "TO:<u@>", "TO:<u v@x.test>", "TO:<u(x)@x.test>"}) {
        auto r = parse_path_arg(bad, "TO", false);
        EXPECT_FALSE(r.addr) << bad;
        EXPECT_FALSE(r.error.empty()) << bad;
    }
}

TEST(ParsePath, LocalPartLength) {
    EXPECT_TRUE(parse_path_arg("TO:<" + std::string(64, 'l') + "@x.test>", "TO", false).addr);
    EXPECT_FALSE(parse_path_arg("TO:<" + std::string(100, 'l') + "@x.test>", "TO", false).addr);
}

TEST(ParsePath, EsmtpParamsUpperCasedKeys) {
    auto r = parse_path_arg("FROM:<a@b.test> size=10 Body=8BITMIME SMTPUTF8", "FROM", true);
    ASSERT_TRUE(r.addr) << r.error;
    using P = std::pair<std::string, std::string>;
    EXPECT_EQ(r.params, (std::vector<P>{{"SIZE", "10"}, {"BODY", "8BITMIME"}, {"SMTPUTF8", ""}}));
}

TEST(ParsePath, EsmtpParamValuesKeptAsSentAndExtraSpacesSkipped) {
    auto r = parse_path_arg("TO:<a@b.test>  ORCPT=rfc822;Someone@B.test   NOTIFY=FAILURE,DELAY ",
                            "TO", false);
    ASSERT_TRUE(r.addr) << r.error;
    using P = std::pair<std::string, std::string>;
    EXPECT_EQ(r.params,
              (std::vector<P>{{"ORCPT", "rfc822;Someone@B.test"}, {"NOTIFY", "FAILURE,DELAY"}}));
}

TEST(ParsePath, EmptyParamKeywordRejected) {
    auto r = parse_path_arg("FROM:<a@b.test> =10", "FROM", true);
    EXPECT_FALSE(r.addr);
    EXPECT_TRUE(r.error.starts_with("501 5.5.4")) << r.error;
}

TEST(ParsePath, Utf8LocalPartSetsFlag) {
    auto r = parse_path_arg("TO:<j\xc3\xb6rg@example.test>", "TO", false);
    ASSERT_TRUE(r.addr) << r.error;
    EXPECT_TRUE(r.addr->utf8);
    EXPECT_EQ(r.addr->local, "j\xc3\xb6rg");
    auto ascii = parse_path_arg("TO:<jorg@example.test>", "TO", false);
    ASSERT_TRUE(ascii.addr);
    EXPECT_FALSE(ascii.addr->utf8);
}

// =============================================================================================
// DataScanner

TEST(DataScanner, SimpleMessage) {
    std::string in = "Subject: hi\r\n\r\nHello.\r\n.\r\n";
    auto s = scan(in);
    EXPECT_TRUE(s.done);
    EXPECT_EQ(s.out, "Subject: hi\r\n\r\nHello.\r\n");
    EXPECT_EQ(s.consumed, in.size());
    EXPECT_EQ(s.size, s.out.size());
    EXPECT_FALSE(s.refused);
}

TEST(DataScanner, EmptyMessage) {
    auto s = scan(".\r\n");
    EXPECT_TRUE(s.done);
    EXPECT_EQ(s.out, "");
    EXPECT_EQ(s.size, 0u);
    EXPECT_EQ(s.consumed, 3u);
}

TEST(DataScanner, NotDoneWithoutEndMarker) {
    for (const char* in : {"a\r\n", "a\r\n.", "a\r\n.\r", "a.\r\n", "a\r\nb.\r\n"}) {
        auto s = scan(in);
        EXPECT_FALSE(s.done) << in;
        EXPECT_EQ(s.consumed, std::string_view(in).size()) << in;
    }
}

TEST(DataScanner, DotUnstuffing) {
    auto s = scan("..x\r\nmid.dle\r\n...\r\n..\r\n.\r\n");
    EXPECT_TRUE(s.done);
    EXPECT_EQ(s.out, ".x\r\nmid.dle\r\n..\r\n.\r\n");
    EXPECT_EQ(s.size, s.out.size());
    EXPECT_FALSE(s.refused);
}

TEST(DataScanner, LeadingDotOfUnstuffedLineDropped) {
    auto s = scan(".x\r\n.\r\n");
    EXPECT_EQ(s.out, "x\r\n");
    EXPECT_TRUE(s.done);
}

TEST(DataScanner, BytesAfterEndMarkerNotConsumed) {
    std::string in = "body\r\n.\r\nQUIT\r\n";
    auto s = scan(in);
    EXPECT_TRUE(s.done);
    EXPECT_EQ(s.consumed, in.size() - std::string("QUIT\r\n").size());
    EXPECT_EQ(s.out, "body\r\n");
}

TEST(DataScanner, FeedAfterDoneConsumesNothing) {
    DataScanner d(1000);
    std::string out;
    EXPECT_EQ(d.feed("x\r\n.\r\n", out), 6u);
    ASSERT_TRUE(d.done());
    EXPECT_EQ(d.feed("MAIL FROM:<>\r\n", out), 0u);
    EXPECT_EQ(out, "x\r\n");
}

// The SMTP smuggling variants: none of them ends the data; each one is recorded.
struct Smuggle {
    const char* seq;
    bool bare_lf, bare_cr;
};

TEST(DataScanner, SmugglingSequencesDoNotEndDataAndAreRecorded) {
    const Smuggle cases[] = {{"\n.\n", true, false},       {"\r.\r", false, true},
                             {"\n.\r\n", true, false},     {"\r.\n", true, true},
                             {"\r\n.\n", true, false},     {"\r\n.\rx", false, true},
                             {"\r\n.\r\r\n", false, true}, {"\n\r\n.\n", true, false}};
    for (const auto& c : cases) {
        std::string partial = std::string("Subject: x\r\n\r\nA") + c.seq + "MAIL FROM:<evil@x>\r\n";
        auto p = scan(partial);
        EXPECT_FALSE(p.done) << "ended at " << testing::PrintToString(c.seq);
        EXPECT_EQ(p.consumed, partial.size());

        std::string full = partial + "more\r\n.\r\nQUIT\r\n";
        auto s = scan(full);
        SCOPED_TRACE(testing::PrintToString(c.seq));
        EXPECT_TRUE(s.done);
        EXPECT_EQ(s.consumed, full.size() - 6) << "must end only at the real CRLF.CRLF";
        EXPECT_EQ(s.bare_lf, c.bare_lf);
        EXPECT_EQ(s.bare_cr, c.bare_cr);
        EXPECT_TRUE(s.refused);
        EXPECT_FALSE(s.too_long);
        EXPECT_FALSE(s.too_big);
    }
}

TEST(DataScanner, NulIsRecordedAndRefusedButDoesNotEndData) {
    // A primary that drops NULs would read CRLF NUL "." CRLF as the end of data.
    const std::string in = std::string("Subject: x\r\n\r\nA\r\n\0.\r\nMAIL FROM:<e@x>\r\n", 38);
    DataScanner d(1000);
    std::string out;
    EXPECT_EQ(d.feed(in, out), in.size());
    EXPECT_FALSE(d.done());
    EXPECT_TRUE(d.nul());
    EXPECT_TRUE(d.refused());
    EXPECT_FALSE(d.bare_cr() || d.bare_lf());
    std::string end = "\r\n.\r\n";
    EXPECT_EQ(d.feed(end, out), end.size());
    EXPECT_TRUE(d.done());

    DataScanner clean(1000);
    std::string o2;
    clean.feed("Subject: x\r\n\r\nA\r\n.\r\n", o2);
    EXPECT_FALSE(clean.nul());
    EXPECT_FALSE(clean.refused());
}

TEST(DataScanner, BareLfThenRealEndMarker) {
    std::string in = "a\n.\r\nb\r\n.\r\n";
    auto s = scan(in);
    EXPECT_TRUE(s.done);
    EXPECT_EQ(s.consumed, in.size());
    EXPECT_TRUE(s.bare_lf);
    EXPECT_FALSE(s.bare_cr);
}

TEST(DataScanner, CleanCrlfDataHasNoFlags) {
    auto s = scan("a\r\n\r\n\r\nb\r\n.\r\n");
    EXPECT_TRUE(s.done);
    EXPECT_FALSE(s.bare_lf);
    EXPECT_FALSE(s.bare_cr);
    EXPECT_FALSE(s.refused);
    EXPECT_EQ(s.out, "a\r\n\r\n\r\nb\r\n");
}

TEST(DataScanner, OutputStopsGrowingAfterBareLf) {
    std::string in = "ok line\r\nbad\nline" + std::string(100000, 'x') + "\r\n.\r\n";
    auto s = scan(in);
    EXPECT_TRUE(s.done);
    EXPECT_TRUE(s.bare_lf);
    EXPECT_EQ(s.out, "ok line\r\nbad");
    EXPECT_EQ(s.size, in.size() - 3);
}

TEST(DataScanner, LineOfExactly1000OctetsAccepted) {
    std::string line(998, 'x');
    auto s = scan(line + "\r\n" + line + "\r\n.\r\n");
    EXPECT_TRUE(s.done);
    EXPECT_FALSE(s.too_long);
    EXPECT_FALSE(s.refused);
    EXPECT_EQ(s.out, line + "\r\n" + line + "\r\n");
}

TEST(DataScanner, LineOf1001OctetsTooLong) {
    std::string in = "short\r\n" + std::string(999, 'x') + "\r\nshort\r\n.\r\n";
    auto s = scan(in);
    EXPECT_TRUE(s.done);
    EXPECT_TRUE(s.too_long);
    EXPECT_TRUE(s.refused);
    EXPECT_EQ(s.consumed, in.size());
}

TEST(DataScanner, StuffingDotNotCountedInLineLength) {
    // RFC 5321 4.5.3.1.6: 1000 octets "not counting the leading dot duplicated for transparency".
    auto ok = scan(".." + std::string(997, 'x') + "\r\n.\r\n");
    EXPECT_TRUE(ok.done);
    EXPECT_FALSE(ok.too_long);
    EXPECT_EQ(ok.out, "." + std::string(997, 'x') + "\r\n");
    auto bad = scan(".." + std::string(998, 'x') + "\r\n.\r\n");
    EXPECT_TRUE(bad.too_long);
}

TEST(DataScanner, LongLineWithoutCrlfTooLong) {
    auto s = scan(std::string(5000, 'y'));
    EXPECT_FALSE(s.done);
    EXPECT_TRUE(s.too_long);
    EXPECT_LE(s.out.size(), kMaxTextLine);
}

TEST(DataScanner, BodyAtLimitAccepted) {
    std::string body = std::string(8, 'a') + "\r\n";  // 10 octets
    auto s = scan(body + ".\r\n", 10);
    EXPECT_TRUE(s.done);
    EXPECT_FALSE(s.too_big);
    EXPECT_FALSE(s.refused);
    EXPECT_EQ(s.out, body);
    EXPECT_EQ(s.size, 10u);
}

TEST(DataScanner, BodyOverLimitTooBig) {
    std::string body = std::string(9, 'a') + "\r\n";  // 11 octets
    auto s = scan(body + ".\r\n", 10);
    EXPECT_TRUE(s.done);
    EXPECT_TRUE(s.too_big);
    EXPECT_TRUE(s.refused);
    EXPECT_EQ(s.size, 11u);
    EXPECT_LE(s.out.size(), 10u);
}

TEST(DataScanner, OutputStopsGrowingOnceTooBig) {
    DataScanner d(1000);
    std::string out;
    std::string chunk = std::string(98, 'b') + "\r\n";  // 100 octets a line
    for (int i = 0; i < 10; ++i) d.feed(chunk, out);
    EXPECT_FALSE(d.too_big());
    EXPECT_EQ(out.size(), 1000u);
    for (int i = 0; i < 10000; ++i) d.feed(chunk, out);  // 1 MB more
    EXPECT_TRUE(d.too_big());
    EXPECT_LE(out.size(), 1000u);
    EXPECT_EQ(d.size(), 10010u * 100u);
    EXPECT_FALSE(d.done());
    EXPECT_EQ(d.feed(".\r\n", out), 3u);
    EXPECT_TRUE(d.done());
    EXPECT_LE(out.size(), 1000u);
}

TEST(DataScanner, SizeCountsUnstuffedOctets) {
    auto s = scan("..a\r\n.\r\n");
    EXPECT_EQ(s.size, 4u);  // ".a\r\n"
}

TEST(DataScanner, EightBitPassesThroughAndNulIsRefused) {
    std::string body("caf\xc3\xa9\xff\r\n", 8);
    auto s = scan(body + ".\r\n");
    EXPECT_TRUE(s.done);
    EXPECT_EQ(s.out, body);
    EXPECT_FALSE(s.refused);
    std::string nul("caf\xc3\xa9\0\xff\r\n", 9);
    auto n = scan(nul + ".\r\n");
    EXPECT_TRUE(n.done);
    EXPECT_TRUE(n.refused);
}

TEST(DataScanner, ByteByByteMatchesWholeOnMixedInput) {
    // A grab bag of every state transition, checked by the scan() helper in all feedings.
    std::string in = ".\r.\n..\r\r\n\r\r.\r\n" + std::string(1200, 'z') + "\r\n\n.\r\n.\r\nX";
    auto s = scan(in, 100);
    EXPECT_TRUE(s.done);
    EXPECT_TRUE(s.bare_lf);
    EXPECT_TRUE(s.bare_cr);
    EXPECT_TRUE(s.too_long);
    EXPECT_TRUE(s.too_big);
    EXPECT_EQ(s.consumed, in.size() - 1);
}
