#include "bounce/dsn.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "util/util.hpp"

namespace bmx::bounce {

std::string status_of(std::string_view reply) {
    // "550 5.1.1 text": the second word, when it looks like class.subject.detail
    auto sp = reply.find(' ');
    if (sp != std::string_view::npos) {
        auto rest = reply.substr(sp + 1);
        auto end = rest.find(' ');
        auto word = rest.substr(0, end);
        // class "." 1*3digit "." 1*3digit (RFC 3463)
        int dots = 0;
        std::size_t digits = 0;
        bool ok = word.size() >= 5 && (word[0] == '2' || word[0] == '4' || word[0] == '5') &&
                  word[1] == '.';
        for (char c : word.substr(ok ? 2 : 0)) {
            if (c == '.' && digits > 0) {
                ++dots;
                digits = 0;
            } else if (!std::isdigit(static_cast<unsigned char>(c)) || ++digits > 3) {
                ok = false;
            }
        }
        if (ok && dots == 1 && digits > 0) return std::string(word);
    }
    if (!reply.empty() && reply[0] == '4') return "4.0.0";
    return "5.0.0";
}

namespace {

// Text from a remote reply or our own words, made safe for one line of a header field: control
// characters (a stray CR or LF would break or inject lines) become spaces, at most `max` octets.
std::string one_line(std::string_view text, std::size_t max) {
    std::string out(text.substr(0, max));
    for (auto& c : out)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
    return out;
}

// A recipient for Final-Recipient: "rfc822; a@b" in ASCII; for a message/global-delivery-status
// (RFC 6533 3) a UTF-8 address is "utf-8; " utf-8-addr-unitext, with '+', '=', '\', space and
// controls written as \x{2B}.
std::string final_recipient(const std::string& addr, bool global) {
    const bool ascii = std::all_of(addr.begin(), addr.end(),
                                   [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    if (!global || ascii) return "rfc822; " + addr;
    std::string out = "utf-8; ";
    for (char ch : addr) {
        const auto c = static_cast<unsigned char>(ch);
        if (c <= 0x20 || c == '+' || c == '=' || c == '\\' || c == 0x7f) {
            char esc[8];
            std::snprintf(esc, sizeof esc, "\\x{%02X}", c);
            out += esc;
        } else {
            out += ch;
        }
    }
    return out;
}

}  // namespace

std::string returned_headers(std::string_view body, std::size_t max_headers) {
    auto end = body.find("\r\n\r\n");
    std::string_view head = body.substr(0, end == std::string_view::npos ? body.size() : end + 2);
    if (head.size() > max_headers) {
        // the last whole field that fits: a line end not followed by a folded continuation
        std::size_t cut = 0;
        for (std::size_t at = head.find("\r\n");
             at != std::string_view::npos && at + 2 <= max_headers;
             at = head.find("\r\n", at + 2)) {
            const bool folded =
                at + 2 < head.size() && (head[at + 2] == ' ' || head[at + 2] == '\t');
            if (!folded) cut = at + 2;
        }
        head = head.substr(0, cut);
    }
    std::string out(head);
    if (!out.empty() && !out.ends_with("\r\n")) out += "\r\n";
    return out;
}

std::optional<NewMessage> make_dsn(const StoredMessage& original,
                                   const std::vector<Failure>& failures,
                                   const std::string& hostname, const std::string& remote_mta,
                                   TimePoint now, std::size_t max_headers) {
    if (original.sender.empty() || failures.empty()) return std::nullopt;
    NewMessage dsn;
    dsn.id = new_queue_id();
    dsn.sender = "";  // DSNs are sent from the null sender (RFC 5321 4.5.5)
    dsn.recipients = {original.sender};
    auto at = original.sender.rfind('@');
    dsn.domain = at == std::string::npos ? "" : original.sender.substr(at + 1);
    dsn.received_at = now;
    dsn.next_attempt_at = now;
    dsn.smtputf8 = original.smtputf8;
    dsn.client = "bounce";

    std::string boundary = dsn.id + "/" + hostname;
    const std::string headers_part = returned_headers(original.body, max_headers);

    std::string b;
    b += "From: Mail Delivery System <MAILER-DAEMON@" + hostname + ">\r\n";
    b += "To: <" + original.sender + ">\r\n";
    b += "Subject: Undelivered Mail Returned to Sender\r\n";
    b += "Date: " + rfc5322_date(now) + "\r\n";
    b += "Message-ID: <" + dsn.id + "@" + hostname + ">\r\n";
    b += "Auto-Submitted: auto-replied\r\n";
    b += "MIME-Version: 1.0\r\n";
    // An SMTPUTF8 message gets an internationalized DSN (RFC 6533): UTF-8 text, addresses and
    // headers, in message/global-delivery-status and message/global-headers parts; report-type
    // names the second part's subtype (RFC 6522 3).
    const bool global = original.smtputf8;
    b += std::string("Content-Type: multipart/report; report-type=") +
         (global ? "global-delivery-status" : "delivery-status") + ";\r\n";
    b += "\tboundary=\"" + boundary + "\"\r\n";
    b += "\r\nThis is a MIME-encapsulated message.\r\n\r\n";
    b += "--" + boundary + "\r\n";
    b += "Content-Description: Notification\r\n";
    b += std::string("Content-Type: text/plain; charset=") + (global ? "utf-8" : "us-ascii") +
         "\r\n\r\n";
    b += "This is the mail system at host " + hostname + ".\r\n\r\n";
    b += "I'm sorry to have to inform you that your message could not\r\n";
    b += "be delivered to one or more recipients. It's attached below.\r\n\r\n";
    for (const auto& f : failures) {  // each line within 1000 octets, whatever the recipient
        std::string head = "<" + f.recipient + ">: ";
        b += head + one_line(f.diagnostic, head.size() < 900 ? 900 - head.size() : 0) + "\r\n";
    }
    b += "\r\n--" + boundary + "\r\n";
    b += "Content-Description: Delivery report\r\n";
    b += std::string("Content-Type: message/") +
         (global ? "global-delivery-status" : "delivery-status") + "\r\n\r\n";
    b += "Reporting-MTA: dns; " + hostname + "\r\n";
    b += "X-Backupmx-Queue-ID: " + original.id + "\r\n";
    b += "Arrival-Date: " + rfc5322_date(original.received_at) + "\r\n";
    for (const auto& f : failures) {
        b += "\r\n";
        b += "Final-Recipient: " + final_recipient(f.recipient, global) + "\r\n";
        b += "Action: failed\r\n";
        b += "Status: " + f.status + "\r\n";
        if (!remote_mta.empty()) b += "Remote-MTA: dns; " + remote_mta + "\r\n";
        b += "Diagnostic-Code: smtp; " + one_line(f.diagnostic, 900) + "\r\n";
        b += "Last-Attempt-Date: " + rfc5322_date(now) + "\r\n";
    }
    b += "\r\n--" + boundary + "\r\n";
    b += "Content-Description: Undelivered Message Headers\r\n";
    b += std::string("Content-Type: ") +
         (global ? "message/global-headers" : "text/rfc822-headers") + "\r\n\r\n";
    b += headers_part;
    b += "\r\n--" + boundary + "--\r\n";
    dsn.body = std::move(b);
    return dsn;
}

namespace {

// Every pending recipient fails with `status` and `diagnostic` (recorded as `outcome`); the
// update removes the message in the transaction that commits its DSN.
AttemptUpdate fail_pending(const StoredMessage& m, const std::string& status,
                           const std::string& diagnostic, const std::string& outcome,
                           const std::string& hostname, TimePoint now, std::size_t max_headers) {
    AttemptUpdate u;
    u.id = m.id;
    u.next_attempt_at = now;
    u.last_error = outcome;
    u.count_attempt = false;
    u.remove = true;
    std::vector<Failure> failures;
    for (const auto& r : m.recipients) {
        if (r.status != RcptStatus::Pending) continue;
        failures.push_back({r.address, status, diagnostic});
        u.outcomes.push_back({r.address, RcptStatus::Failed, outcome});
    }
    u.dsn = make_dsn(m, failures, hostname, "", now, max_headers);
    return u;
}

}  // namespace

AttemptUpdate return_to_sender(const StoredMessage& m, const std::string& hostname,
                               const std::string& why, TimePoint now, std::size_t max_headers) {
    const std::string last = m.last_error.empty() ? "none" : m.last_error;
    return fail_pending(m, "5.0.0", why + "; last error: " + last, why, hostname, now, max_headers);
}

AttemptUpdate expire(const StoredMessage& m, const std::string& hostname, Seconds max_age,
                     TimePoint now, std::size_t max_headers) {
    const std::string last = m.last_error.empty() ? "no successful delivery" : m.last_error;
    return fail_pending(m, "4.4.7",
                        "delivery time expired after " + format_duration(max_age) +
                            " in queue; last error: " + last,
                        "expired", hostname, now, max_headers);
}

}  // namespace bmx::bounce
