// delivery/reply: sans-I/O parser of SMTP replies (RFC 5321 4.2), single and multi-line, and the
// dot-stuffing of a stored body for sending. Bytes in, replies out; it must never touch a socket.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bmx::delivery {

struct Reply {
    int code = 0;                    // 0 = malformed
    std::vector<std::string> lines;  // text after "250-" / "250 "
    std::string text() const;        // "250 first line / second line" on one line, for logs/DSNs
    bool positive() const { return code >= 200 && code < 300; }      // 2xx: done
    bool intermediate() const { return code >= 300 && code < 400; }  // 3xx: go on
    bool transient() const { return code >= 400 && code < 500; }
    bool permanent() const { return code >= 500 && code < 600; }
};

// The command a reply answers, for matching replies to commands strictly.
enum class Step { Mail, Rcpt, Data, EndOfData };

// Whether `r` can be the reply to `step` (RFC 5321 4.3.2): 354, 4xx or 5xx for DATA; 2xx, 4xx or
// 5xx for the others. A reply that does not fit (250 to DATA, 354 to MAIL, 3xx after the final
// dot) means the client and the server no longer agree on which reply answers which command —
// a broken server or proxy, or a reply that belongs to something else: nothing may be counted
// delivered on it, and the connection must end.
bool fits(Step step, const Reply& r);

class ReplyParser {
  public:
    // Takes complete lines from `buf`; returns a reply when its last line has arrived.
    // A line over 2048 octets or a reply over 100 lines is malformed (code 0), never buffered
    // whole.
    std::optional<Reply> next(std::string& buf);

  private:
    Reply partial_;
};

// Dot-stuffs a CRLF body for DATA a piece at a time, whatever the piece boundaries: feed() each
// piece in order, then finish() gives the end (a CRLF if the body lacks one, and ".\r\n").
class Stuffer {
  public:
    void feed(std::string_view piece, std::string& out);
    void finish(std::string& out);

  private:
    bool bol_ = true;        // at the start of a line
    char last_[2] = {0, 0};  // the body's last two bytes
    bool empty_ = true;
};

// The whole body at once: stuffed, with the end added.
std::string stuff_body(std::string_view body);

}  // namespace bmx::delivery
