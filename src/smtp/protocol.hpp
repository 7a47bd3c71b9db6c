// smtp/protocol: the sans-I/O halves of the SMTP server — command line framing, command and address
// parsing, and the DATA stream scanner (dot-unstuffing, end-of-data, bare CR/LF, line and size
// limits). Bytes in, decisions out. It must never touch a socket, a clock or the store, so every
// behaviour here is testable (and fuzzable) byte by byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bmx::smtp {

inline constexpr std::size_t kMaxCommandLine = 512;  // RFC 5321 4.5.3.1.4, CRLF included
inline constexpr std::size_t kMaxTextLine = 1000;    // RFC 5321 4.5.3.1.6, CRLF included

// Frames command lines out of a byte buffer. A line longer than the limit is reported once as
// `too_long` and its bytes are discarded up to the next LF, never buffered.
class CommandReader {
  public:
    struct Line {
        std::string text;  // without CRLF
        bool too_long = false;
    };
    explicit CommandReader(std::size_t max = kMaxCommandLine) : max_(max) {}
    // Takes what it can from `buf` (erasing it); returns one line when one is complete.
    std::optional<Line> next(std::string& buf);

  private:
    std::size_t max_;
    bool discarding_ = false;
};

enum class Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Bdat,
    Auth,
    Etrn,
    Unknown,
    Empty
};

struct Command {
    Verb verb = Verb::Unknown;
    std::string verb_text;  // as sent, for replies and logs
    std::string arg;        // everything after the verb and one space
};
Command parse_command(std::string_view line);

// A parsed forward-path or reverse-path.
struct Address {
    std::string local;   // local part as sent (quoted form kept)
    std::string domain;  // lower-cased; empty only for the null sender
    bool null_sender() const { return local.empty() && domain.empty(); }
    bool utf8 = false;  // contains octets >= 0x80
    std::string str() const { return null_sender() ? std::string() : local + "@" + domain; }
};

struct PathResult {
    std::optional<Address> addr;
    std::vector<std::pair<std::string, std::string>> params;  // ESMTP keyword=value, keyword upper
    std::string error;                                        // reply text when !addr
};
// `arg` is what follows "MAIL" / "RCPT": "FROM:<a@b> SIZE=10". `reverse` allows "<>".
PathResult parse_path_arg(std::string_view arg, std::string_view keyword, bool reverse);

// Scans the DATA stream. The only end of data is CRLF "." CRLF; a bare LF or CR never ends a line
// for dot handling (SMTP smuggling defence), it is only recorded so the message can be refused.
class DataScanner {
  public:
    explicit DataScanner(std::uint64_t max_size) : max_size_(max_size) {}
    // Consumes bytes from `in`, appending unstuffed body to `out` unless the message is already
    // refused. Returns the number of bytes consumed; stops right after the end-of-data marker.
    std::size_t feed(std::string_view in, std::string& out);
    bool done() const { return state_ == State::End; }
    bool bare_lf() const { return bare_lf_; }
    bool bare_cr() const { return bare_cr_; }
    // A NUL byte: refused like bare CR/LF, since a primary that drops NULs would read
    // "<CR><LF>NUL.<CR><LF>" as the end of data (a second message smuggled in).
    bool nul() const { return nul_; }
    bool line_too_long() const { return too_long_; }
    bool too_big() const { return size_ > max_size_; }
    bool refused() const { return bare_lf_ || bare_cr_ || nul_ || too_long_ || too_big(); }
    std::uint64_t size() const { return size_; }  // unstuffed body bytes seen

  private:
    enum class State { Bol, Mid, Cr, Dot, DotCr, End };
    void emit(char c, std::string& out);
    State state_ = State::Bol;
    std::uint64_t max_size_;
    std::uint64_t size_ = 0;
    std::size_t line_len_ = 0;
    bool bare_lf_ = false, bare_cr_ = false, nul_ = false, too_long_ = false;
};

}  // namespace bmx::smtp
