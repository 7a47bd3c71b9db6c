#include "bounce/dsn.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace bmx;
using namespace bmx::bounce;

namespace {

const std::string kHeaders =
    "Received: from client.test ([192.0.2.1]) by mx2.test\r\n"
    "From: Alice <alice@sender.test>\r\n"
    "To: bob@example.test\r\n"
    "Subject: quarterly numbers\r\n";

StoredMessage original() {
    StoredMessage m;
    m.id = "0000000001ABCDEF";
    m.domain = "example.test";
    m.sender = "alice@sender.test";
    m.recipients = {{"bob@example.test", RcptStatus::Pending, ""},
                    {"carol@example.test", RcptStatus::Pending, ""}};
    m.body = kHeaders + "\r\nSECRET BODY LINE ONE\r\n\r\nSECRET BODY LINE TWO\r\n";
    m.received_at = from_unix(1700000000);
    m.next_attempt_at = m.received_at;
    m.smtputf8 = false;
    return m;
}

std::vector<Failure> failures() {
    return {{"bob@example.test", "5.1.1", "550 5.1.1 <bob@example.test>: Recipient unknown"},
            {"carol@example.test", "4.4.7", "delivery time expired after 14d in queue"}};
}

const TimePoint kNow = from_unix(1700086400);

NewMessage make(const StoredMessage& m = original(), const std::vector<Failure>& f = failures(),
                const std::string& remote = "primary.example.test") {
    auto dsn = make_dsn(m, f, "mx2.test", remote, kNow);
    EXPECT_TRUE(dsn.has_value());
    return dsn.value_or(NewMessage{});
}

std::string boundary_of(const std::string& body) {
    const std::string key = "boundary=\"";
    auto start = body.find(key);
    if (start == std::string::npos) return "";
    start += key.size();
    auto end = body.find('"', start);
    return end == std::string::npos ? "" : body.substr(start, end - start);
}

// The body parts between the boundaries, each "headers CRLF CRLF content".
std::vector<std::string> parts_of(const std::string& body) {
    std::string b = boundary_of(body);
    std::vector<std::string> parts;
    if (b.empty()) return parts;
    std::string delim = "\r\n--" + b;
    auto pos = body.find(delim);
    while (pos != std::string::npos) {
        auto start = body.find("\r\n", pos + delim.size());
        if (body.compare(pos + delim.size(), 2, "--") == 0) break;  // close delimiter
        auto next = body.find(delim, start);
        if (next == std::string::npos) break;
        parts.push_back(body.substr(start + 2, next - start - 2));
        pos = next;
    }
    return parts;
}

const std::string* part_with(const std::vector<std::string>& parts, const std::string& type) {
    for (const auto& p : parts)
        if (p.find("Content-Type: " + type) != std::string::npos) return &p;
    return nullptr;
}

std::string content_of(const std::string& part) {
    auto sep = part.find("\r\n\r\n");
    return sep == std::string::npos ? "" : part.substr(sep + 4);
}

std::size_t count(const std::string& hay, const std::string& needle) {
    std::size_t n = 0;
    for (auto pos = hay.find(needle); pos != std::string::npos; pos = hay.find(needle, pos + 1))
        ++n;
    return n;
}

// Every line ends in CRLF, no bare CR or LF, no line longer than 1000 octets with its CRLF.
void expect_clean_lines(const std::string& body) {
    ASSERT_TRUE(body.ends_with("\r\n"));
    std::size_t line_start = 0;
    for (std::size_t i = 0; i < body.size(); ++i) {
        if (body[i] == '\r') {
            ASSERT_TRUE(i + 1 < body.size() && body[i + 1] == '\n') << "bare CR at " << i;
        } else if (body[i] == '\n') {
            ASSERT_TRUE(i > 0 && body[i - 1] == '\r') << "bare LF at " << i;
            EXPECT_LE(i + 1 - line_start, 1000u) << "line at " << line_start;
            line_start = i + 1;
        }
    }
}

}  // namespace

// =============================================================================================
// make_dsn: when

TEST(MakeDsn, NoneForNullSender) {
    auto m = original();
    m.sender = "";
    EXPECT_FALSE(make_dsn(m, failures(), "mx2.test", "", kNow).has_value());
}

TEST(MakeDsn, NoneWithoutFailures) {
    EXPECT_FALSE(make_dsn(original(), {}, "mx2.test", "", kNow).has_value());
}

// =============================================================================================
// make_dsn: envelope

TEST(MakeDsn, EnvelopeFromNullSenderToOriginalSender) {
    auto dsn = make();
    EXPECT_EQ(dsn.sender, "");
    EXPECT_EQ(dsn.recipients, (std::vector<std::string>{"alice@sender.test"}));
    EXPECT_EQ(dsn.domain, "sender.test");
    EXPECT_EQ(dsn.received_at, kNow);
    EXPECT_EQ(dsn.next_attempt_at, kNow);
}

TEST(MakeDsn, HasItsOwnQueueId) {
    auto dsn = make();
    EXPECT_EQ(dsn.id.size(), 16u);
    EXPECT_NE(dsn.id, original().id);
    EXPECT_NE(make().id, dsn.id);
}

TEST(MakeDsn, KeepsSmtputf8OfOriginal) {
    auto m = original();
    m.smtputf8 = true;
    EXPECT_TRUE(make(m).smtputf8);
    EXPECT_FALSE(make().smtputf8);
}

// =============================================================================================
// make_dsn: body

TEST(MakeDsn, TopLevelHeaders) {
    auto dsn = make();
    auto head = dsn.body.substr(0, dsn.body.find("\r\n\r\n") + 2);
    EXPECT_NE(head.find("From: Mail Delivery System <MAILER-DAEMON@mx2.test>\r\n"),
              std::string::npos);
    EXPECT_NE(head.find("To: <alice@sender.test>\r\n"), std::string::npos);
    EXPECT_NE(head.find("Auto-Submitted: auto-replied\r\n"), std::string::npos);
    EXPECT_NE(head.find("MIME-Version: 1.0\r\n"), std::string::npos);
    EXPECT_NE(head.find("Message-ID: <" + dsn.id + "@mx2.test>\r\n"), std::string::npos);
    EXPECT_NE(head.find("Date: " + rfc5322_date(kNow) + "\r\n"), std::string::npos);
}

TEST(MakeDsn, IsMultipartReportOfDeliveryStatus) {
    auto dsn = make();
    EXPECT_NE(dsn.body.find("Content-Type: multipart/report; report-type=delivery-status;"),
              std::string::npos);
    std::string b = boundary_of(dsn.body);
    ASSERT_FALSE(b.empty());
    EXPECT_TRUE(dsn.body.ends_with("\r\n--" + b + "--\r\n"));
    auto parts = parts_of(dsn.body);
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_NE(parts[0].find("Content-Type: text/plain"), std::string::npos);
    EXPECT_NE(parts[1].find("Content-Type: message/delivery-status"), std::string::npos);
    EXPECT_NE(parts[2].find("Content-Type: text/rfc822-headers"), std::string::npos);
}

TEST(MakeDsn, DeliveryStatusPerMessageFields) {
    auto parts = parts_of(make().body);
    auto* ds = part_with(parts, "message/delivery-status");
    ASSERT_NE(ds, nullptr);
    auto c = content_of(*ds);
    EXPECT_TRUE(c.starts_with("Reporting-MTA: dns; mx2.test\r\n")) << c;
    EXPECT_NE(c.find("Arrival-Date: " + rfc5322_date(from_unix(1700000000)) + "\r\n"),
              std::string::npos);
}

TEST(MakeDsn, DeliveryStatusPerRecipientFields) {
    auto parts = parts_of(make().body);
    auto* ds = part_with(parts, "message/delivery-status");
    ASSERT_NE(ds, nullptr);
    auto c = content_of(*ds);
    EXPECT_EQ(count(c, "Final-Recipient: "), 2u);
    EXPECT_EQ(count(c, "Action: failed\r\n"), 2u);
    EXPECT_EQ(count(c, "Status: "), 2u);
    EXPECT_EQ(count(c, "Diagnostic-Code: "), 2u);
    EXPECT_EQ(count(c, "Remote-MTA: dns; primary.example.test\r\n"), 2u);

    // Each recipient's block, in order, separated by blank lines.
    auto bob = c.find("Final-Recipient: rfc822; bob@example.test\r\n");
    auto carol = c.find("Final-Recipient: rfc822; carol@example.test\r\n");
    ASSERT_NE(bob, std::string::npos);
    ASSERT_NE(carol, std::string::npos);
    ASSERT_LT(bob, carol);
    auto bob_block = c.substr(bob, carol - bob);
    auto carol_block = c.substr(carol);
    EXPECT_NE(bob_block.find("Status: 5.1.1\r\n"), std::string::npos);
    EXPECT_NE(bob_block.find(
                  "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.test>: Recipient unknown\r\n"),
              std::string::npos);
    EXPECT_NE(carol_block.find("Status: 4.4.7\r\n"), std::string::npos);
    EXPECT_NE(carol_block.find("Diagnostic-Code: smtp; delivery time expired after 14d in queue"),
              std::string::npos);
    EXPECT_EQ(c.substr(bob - 2, 2), "\r\n");  // blank line before each per-recipient block
    EXPECT_EQ(c.substr(bob - 4, 4), "\r\n\r\n");
}

TEST(MakeDsn, NoRemoteMtaFieldWhenUnknown) {
    auto dsn = make(original(), failures(), "");
    EXPECT_EQ(dsn.body.find("Remote-MTA:"), std::string::npos);
}

TEST(MakeDsn, HumanReadablePartNamesEachRecipient) {
    auto parts = parts_of(make().body);
    ASSERT_FALSE(parts.empty());
    EXPECT_NE(parts[0].find("<bob@example.test>: 550 5.1.1"), std::string::npos);
    EXPECT_NE(parts[0].find("<carol@example.test>: delivery time expired"), std::string::npos);
}

TEST(MakeDsn, HeadersPartIsExactlyTheOriginalHeaders) {
    auto dsn = make();
    auto parts = parts_of(dsn.body);
    auto* h = part_with(parts, "text/rfc822-headers");
    ASSERT_NE(h, nullptr);
    EXPECT_EQ(content_of(*h), kHeaders);
    EXPECT_EQ(dsn.body.find("SECRET BODY"), std::string::npos);
}

TEST(MakeDsn, HeadersOnlyOriginal) {
    auto m = original();
    m.body = "Subject: no body at all\r\n";
    auto parts = parts_of(make(m).body);
    auto* h = part_with(parts, "text/rfc822-headers");
    ASSERT_NE(h, nullptr);
    EXPECT_EQ(content_of(*h), "Subject: no body at all\r\n");
}

TEST(MakeDsn, LinesAreCrlfAndShortWithHugeDiagnostic) {
    std::vector<Failure> f{{"bob@example.test", "5.0.0", "550 " + std::string(5000, 'd')}};
    auto dsn = make(original(), f);
    expect_clean_lines(dsn.body);
    EXPECT_NE(dsn.body.find("Diagnostic-Code: smtp; 550 ddd"), std::string::npos);
}

TEST(MakeDsn, LinesStayShortWithLongRecipientAndHugeDiagnostic) {
    // A long but valid recipient (64-octet local part, 255-octet domain), with a long reply.
    std::string domain = std::string(63, 'a') + "." + std::string(63, 'b') + "." +
                         std::string(63, 'c') + "." + std::string(58, 'd') + ".test";
    ASSERT_EQ(domain.size(), 255u);
    std::string rcpt = std::string(64, 'r') + "@" + domain;
    std::vector<Failure> f{{rcpt, "5.1.1", "550 5.1.1 " + std::string(5000, 'e')}};
    auto dsn = make(original(), f);
    expect_clean_lines(dsn.body);
    EXPECT_NE(dsn.body.find("Final-Recipient: rfc822; " + rcpt + "\r\n"), std::string::npos);
}

TEST(MakeDsn, ControlCharactersInDiagnosticCannotBreakLines) {
    std::vector<Failure> f{
        {"bob@example.test", "5.1.1", "550 5.1.1 no\r\nX-Injected: yes\rmore\nstuff\ttab"}};
    auto dsn = make(original(), f);
    expect_clean_lines(dsn.body);
    EXPECT_EQ(dsn.body.find("\r\nX-Injected:"), std::string::npos);
}

TEST(MakeDsn, AllLinesCrlfInOrdinaryDsn) {
    expect_clean_lines(make().body);
}

// =============================================================================================
// status_of

TEST(StatusOf, EnhancedCodeFromReply) {
    EXPECT_EQ(status_of("550 5.1.1 x"), "5.1.1");
    EXPECT_EQ(status_of("550 5.1.1"), "5.1.1");
    EXPECT_EQ(status_of("452 4.2.2 mailbox full"), "4.2.2");
    EXPECT_EQ(status_of("554 5.7.130 policy"), "5.7.130");
    EXPECT_EQ(status_of("250 2.0.0 ok"), "2.0.0");
}

TEST(StatusOf, ClassWhenNoEnhancedCode) {
    EXPECT_EQ(status_of("450 busy"), "4.0.0");
    EXPECT_EQ(status_of("554 nope"), "5.0.0");
    EXPECT_EQ(status_of("421"), "4.0.0");
    EXPECT_EQ(status_of("550"), "5.0.0");
    EXPECT_EQ(status_of(""), "5.0.0");
    EXPECT_EQ(status_of("connection refused"), "5.0.0");
}

TEST(StatusOf, MalformedEnhancedCodesFallBackToClass) {
    for (const char* bad :
         {"550 5.1 x", "550 3.1.1 x", "550 5.1.1.1 x", "550 5.1.x y", "550 5..12 x", "550 5.12. x",
          "550 5.1.1000 x", "550 5.1234.1 x", "550 55.1.1 x", "550 .5.1.1 x"})
        EXPECT_EQ(status_of(bad), "5.0.0") << bad;
    EXPECT_EQ(status_of("451 4..1 x"), "4.0.0");
}

// =============================================================================================
// make_dsn: about an SMTPUTF8 message (RFC 6533)

TEST(MakeDsn, AboutAnSmtputf8MessageUsesTheGlobalTypes) {
    auto m = original();
    m.smtputf8 = true;
    m.sender = "j\xc3\xb6rg@sender.test";
    m.recipients = {{"b\xc3\xb6"
                     "b+x=y@example.test",
                     RcptStatus::Pending, ""},
                    {"carol@example.test", RcptStatus::Pending, ""}};
    std::vector<Failure> f{{"b\xc3\xb6"
                            "b+x=y@example.test",
                            "5.1.1", "550 5.1.1 no such user"},
                           {"carol@example.test", "5.1.1", "550 5.1.1 no such user"}};
    auto dsn = make(m, f);
    auto parts = parts_of(dsn.body);
    EXPECT_EQ(part_with(parts, "message/delivery-status"), nullptr);
    EXPECT_EQ(part_with(parts, "text/rfc822-headers"), nullptr);
    auto* ds = part_with(parts, "message/global-delivery-status\r\n");
    ASSERT_NE(ds, nullptr);
    ASSERT_NE(part_with(parts, "message/global-headers\r\n"), nullptr);
    ASSERT_NE(part_with(parts, "text/plain; charset=utf-8\r\n"), nullptr);
    EXPECT_NE(dsn.body.find("Content-Type: multipart/report; report-type=global-delivery-status;"),
              std::string::npos);
    auto c = content_of(*ds);
    // utf-8-addr-unitext: '+' and '=' escaped, the UTF-8 kept; an ASCII address stays rfc822
    EXPECT_NE(c.find("Final-Recipient: utf-8; b\xc3\xb6"
                     "b\\x{2B}x\\x{3D}y@example.test\r\n"),
              std::string::npos)
        << c;
    EXPECT_NE(c.find("Final-Recipient: rfc822; carol@example.test\r\n"), std::string::npos);
    EXPECT_NE(dsn.body.find("To: <j\xc3\xb6rg@sender.test>\r\n"), std::string::npos);
}

TEST(MakeDsn, AboutAnAsciiMessageKeepsTheRfc3464Types) {
    auto parts = parts_of(make().body);
    EXPECT_NE(part_with(parts, "message/delivery-status\r\n"), nullptr);
    EXPECT_NE(part_with(parts, "text/rfc822-headers\r\n"), nullptr);
    EXPECT_NE(part_with(parts, "text/plain; charset=us-ascii\r\n"), nullptr);
    EXPECT_EQ(make().body.find("global"), std::string::npos);
}

TEST(Dsn, ReturnedHeadersAreCutAtAFieldBoundaryToTheLimit) {
    std::string head;
    for (int i = 0; i < 2000; ++i) head += "X-Filler-" + std::to_string(i) + ": attacker text\r\n";
    head += "Subject: last\r\n\tfolded\r\n";
    const std::string body = head + "\r\nbody\r\n";
    const auto cut = returned_headers(body, kDsnMaxHeaders);
    EXPECT_LE(cut.size(), kDsnMaxHeaders);
    EXPECT_GT(cut.size(), kDsnMaxHeaders - 100);        // as much as fits
    EXPECT_TRUE(cut.ends_with(": attacker text\r\n"));  // whole fields only
    EXPECT_EQ(returned_headers("A: 1\r\nB: 2\r\n\r\nbody", 8192), "A: 1\r\nB: 2\r\n");  // short
    // a folded field is never split from its continuation
    EXPECT_EQ(returned_headers("A: 1\r\nB: 2\r\n three\r\nC: 4\r\n\r\n", 18), "A: 1\r\n");
}

TEST(Dsn, TheDsnCarriesAtMostDsnMaxHeadersOfTheOriginal) {
    auto m = original();
    std::string filler;
    for (int i = 0; i < 4000; ++i) filler += "X-Junk: " + std::string(60, 'j') + "\r\n";
    m.body = filler + m.body;  // 280 KB of forged header above the real ones
    auto dsn = make_dsn(m, failures(), "mx2.test", "", kNow, 4096);
    ASSERT_TRUE(dsn.has_value());
    EXPECT_LT(dsn->body.size(), 4096 + 4000);  // the report itself and at most 4 KiB returned
    auto big = make_dsn(m, failures(), "mx2.test", "", kNow, 1 << 20);
    EXPECT_GT(big->body.size(), 200000u);
}
