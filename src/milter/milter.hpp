// milter: the MTA side of the Sendmail milter protocol (version 6, as Postfix speaks it to rspamd,
// opendkim, spamass-milter), so a backup MX runs the primary's own content filters. One Session
// per SMTP connection and milter reports each SMTP step and then the message; each step returns
// the milter's verdict, and the end of the message also the edits it asks for (headers added,
// inserted, changed or deleted, the body replaced, a quarantine), which apply_modifications()
// carries out on a stored message. The codec under it (codec.cpp) is sans-I/O and fuzzable:
// bytes in, packets out; Session (milter.cpp) is the coroutine shell with the deadlines.
// It must never decide what the SMTP session replies or stores (the caller does, from the
// verdict); never accept from a milter a reply or an edit the negotiation did not allow, or a
// packet beyond the size limit; and never let a dead, slow or confused milter hold a session past
// its timeouts — then default_action (Postfix's milter_default_action) answers for it, every
// step of the session, as Postfix does.
#pragma once

#include <array>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "store/spool.hpp"

namespace bmx::milter {

// ---- Where a milter listens: Postfix's "inet:host:port" (host may be [v6]) or "unix:/path".

struct Endpoint {
    enum class Kind { Inet, Unix };
    Kind kind = Kind::Inet;
    std::string host;  // Inet: a name or an IP literal (without brackets)
    std::uint16_t port = 0;
    std::string path;          // Unix
    std::string text() const;  // back to "inet:host:port" / "unix:/path", for logs
};
// Also takes "local:/path" (Postfix's synonym for unix:). nullopt for anything else.
std::optional<Endpoint> parse_endpoint(std::string_view spec);

// ---- Protocol constants (libmilter's mfdef.h).

inline constexpr std::uint32_t kVersion = 6;
inline constexpr std::size_t kChunkSize = 65535;  // MILTER_CHUNK_SIZE: largest body chunk we send
// Largest packet we take from a milter (length field, command byte included); Postfix's bound.
inline constexpr std::size_t kMaxPacket = 2 * kChunkSize;

namespace smfic {  // MTA -> milter
inline constexpr char Abort = 'A', Body = 'B', Connect = 'C', Macro = 'D', BodyEob = 'E',
                      Helo = 'H', QuitNc = 'K', Header = 'L', Mail = 'M', Eoh = 'N', OptNeg = 'O',
                      Quit = 'Q', Rcpt = 'R', Data = 'T', Unknown = 'U';
}
namespace smfir {  // milter -> MTA
inline constexpr char AddRcpt = '+', DelRcpt = '-', AddRcptPar = '2', Shutdown = '4', Accept = 'a',
                      ReplBody = 'b', Continue = 'c', Discard = 'd', ChgFrom = 'e', ConnFail = 'f',
                      AddHeader = 'h', InsHeader = 'i', SetSymList = 'l', ChgHeader = 'm',
                      Progress = 'p', Quarantine = 'q', Reject = 'r', Skip = 's', Tempfail = 't',
                      ReplyCode = 'y';
}
namespace smfif {  // actions a milter may take at the end of the message
inline constexpr std::uint32_t AddHdrs = 0x01, ChgBody = 0x02, AddRcpt = 0x04, DelRcpt = 0x08,
                               ChgHdrs = 0x10, Quarantine = 0x20, ChgFrom = 0x40, AddRcptPar = 0x80,
                               SetSymList = 0x100;
}
namespace smfip {  // steps a milter does not want (NO*), replies it will not send (NR_*)
inline constexpr std::uint32_t NoConnect = 0x1, NoHelo = 0x2, NoMail = 0x4, NoRcpt = 0x8,
                               NoBody = 0x10, NoHdrs = 0x20, NoEoh = 0x40, NrHdr = 0x80,
                               NoUnknown = 0x100, NoData = 0x200, Skip = 0x400, RcptRej = 0x800,
                               NrConn = 0x1000, NrHelo = 0x2000, NrMail = 0x4000, NrRcpt = 0x8000,
                               NrData = 0x10000, NrUnkn = 0x20000, NrEoh = 0x40000,
                               NrBody = 0x80000, HdrLeadSpc = 0x100000, Mds256K = 0x10000000,
                               Mds1M = 0x20000000;
}
// Macro stages of a milter's requested macro lists (SMFIM_*), in OPTNEG order.
enum class Stage : std::uint32_t { Connect = 0, Helo, EnvFrom, EnvRcpt, Data, Eom, Eoh };
inline constexpr std::size_t kStages = 7;

// What we offer: every action (envelope edits are reported, the caller decides) and every step
// a milter may skip or leave unanswered, SMFIR_SKIP and leading-space headers. Not RCPT_REJ (we
// never show refused recipients) nor the larger data sizes.
inline constexpr std::uint32_t kOfferedActions =
    smfif::AddHdrs | smfif::ChgBody | smfif::AddRcpt | smfif::DelRcpt | smfif::ChgHdrs |
    smfif::Quarantine | smfif::ChgFrom | smfif::AddRcptPar | smfif::SetSymList;
inline constexpr std::uint32_t kOfferedProtocol =
    smfip::NoConnect | smfip::NoHelo | smfip::NoMail | smfip::NoRcpt | smfip::NoBody |
    smfip::NoHdrs | smfip::NoEoh | smfip::NrHdr | smfip::NoUnknown | smfip::NoData | smfip::Skip |
    smfip::NrConn | smfip::NrHelo | smfip::NrMail | smfip::NrRcpt | smfip::NrData | smfip::NrUnkn |
    smfip::NrEoh | smfip::NrBody | smfip::HdrLeadSpc;

// ---- Codec: packets are a 4-byte big-endian length (command byte + data), the command, data.

struct Packet {
    char command = 0;
    std::string data;
};

// Frames packets out of a byte stream: feed() what arrived, then next() until it gives nullopt.
// A length of 0 or above `max_packet` fails the decoder for good (before any allocation for it).
class Decoder {
  public:
    explicit Decoder(std::size_t max_packet = kMaxPacket) : max_(max_packet) {}
    void feed(std::string_view bytes);
    std::optional<Packet> next();
    bool failed() const { return !error_.empty(); }
    const std::string& error() const { return error_; }
    std::size_t buffered() const { return buf_.size() - pos_; }

  private:
    std::size_t max_;
    std::string buf_;
    std::size_t pos_ = 0;
    std::string error_;
};

enum class Family : char { Unknown = 'U', Unix = 'L', Inet = '4', Inet6 = '6' };

// Commands, framed. Strings go NUL-terminated; a NUL inside one is dropped (it would end it).
std::string frame(char command, std::string_view data);
std::string encode_optneg(std::uint32_t version, std::uint32_t actions, std::uint32_t protocol);
// SMFIC_MACRO for the command `for_command` (e.g. smfic::Mail): name, value, name, value, ...
std::string encode_macros(char for_command,
                          const std::vector<std::pair<std::string, std::string>>& macros);
std::string encode_connect(std::string_view hostname, Family family, std::uint16_t port,
                           std::string_view address);
std::string encode_helo(std::string_view name);
// MAIL/RCPT: the address goes in angle brackets, then each ESMTP argument ("SIZE=123").
std::string encode_mail(std::string_view sender, const std::vector<std::string>& args);
std::string encode_rcpt(std::string_view recipient, const std::vector<std::string>& args);
std::string encode_header(std::string_view name, std::string_view value);
std::string encode_body(std::string_view chunk);  // one chunk, at most kChunkSize bytes

// One edit asked for at the end of the message.
struct Modification {
    enum class Type {
        AddHeader,        // SMFIR_ADDHEADER: append name: value to the header
        InsertHeader,     // SMFIR_INSHEADER: at `index` from the top, 0 = first (before ours)
        ChangeHeader,     // SMFIR_CHGHEADER: the index-th `name` header; value "" = delete it
        Quarantine,       // SMFIR_QUARANTINE: hold the message; value = reason
        ReplaceBody,      // SMFIR_REPLBODY: value = the new body (chunks joined)
        AddRecipient,     // SMFIR_ADDRCPT / _PAR: value = address, args = ESMTP args
        DeleteRecipient,  // SMFIR_DELRCPT: value = address
        ChangeSender,     // SMFIR_CHGFROM: value = address, args = ESMTP args
    };
    Type type = Type::AddHeader;
    std::uint32_t index = 0;
    std::string name;
    // Headers: the text after the colon as it goes into the message — leading space included,
    // CRLF line breaks. The codec gives it raw; Session normalizes (normalize_header_value).
    std::string value;
    std::string args;
    bool operator==(const Modification&) const = default;
};

struct Negotiation {
    std::uint32_t version = 0, actions = 0, protocol = 0;
    // Macro names the milter wants per Stage (space-separated), when it said.
    std::array<std::optional<std::string>, kStages> macros;
};

struct Response {
    enum class Kind {
        Continue,
        Accept,
        Reject,
        Tempfail,
        Discard,
        ReplyCode,
        Shutdown,
        ConnFail,
        Progress,  // still working: keep waiting
        Skip,      // no more body chunks, please
        Modify,    // an edit (end of message only)
        Negotiate  // the answer to SMFIC_OPTNEG
    };
    Kind kind = Kind::Continue;
    std::string text;  // ReplyCode: the SMTP reply, checked, "%%" undone, lines joined by CRLF
    Modification mod;
    Negotiation neg;
};

// Parses one packet from a milter. nullopt, with `error` saying why, when it is malformed:
// unknown command, missing NUL, bad name, a reply code that is not 4xx/5xx, stray bytes.
std::optional<Response> parse_response(const Packet& p, std::string& error);

// Names for logs: "SMFIC_RCPT", "SMFIR_ADDHEADER"; unknown ones as "reply 'Z'".
std::string command_name(char command);
std::string reply_name(char reply);

// A header value from a milter as it goes after "Name:": a space first unless the milter sends
// its own (SMFIP_HDR_LEADSPC), line breaks as CRLF. "" stays "" (a delete).
std::string normalize_header_value(std::string_view raw, bool leading_space_negotiated);

// ---- Verdicts.

struct Verdict {
    // Continue: go on. Accept: go on, and this milter has no more to say for the message (at
    // connect/helo: for the connection). Reject, Tempfail, ReplyCode: answer `reply` — for the
    // recipient at RCPT, the sender at MAIL, the message at DATA or later, every command when
    // it came at connect/helo (then each later step answers it again). Discard: accept the
    // message and drop it (final for the message; remember it).
    enum Action { Continue, Accept, Reject, Tempfail, Discard, ReplyCode };
    Action action = Continue;
    std::string reply;  // Reject/Tempfail/ReplyCode: "550 5.7.1 Command rejected"; CRLF between
                        // the lines of a multi-line reply; empty otherwise
    bool proceed() const { return action == Continue || action == Accept; }
    bool operator==(const Verdict&) const = default;
};

struct EndOfMessage {
    Verdict verdict;
    // In the order received; only when the verdict proceeds. SMFIR_REPLBODY chunks come joined
    // as one ReplaceBody.
    std::vector<Modification> modifications;
    std::optional<std::string> quarantine() const;  // the reason, when one was asked for
};

// ---- Settings (Postfix's names in the comments).

enum class DefaultAction { Accept, Tempfail, Reject };
std::optional<DefaultAction> parse_default_action(std::string_view text);  // accept|tempfail|reject

struct Settings {
    std::chrono::milliseconds connect_timeout{std::chrono::seconds(30)};   // milter_connect_timeout
    std::chrono::milliseconds command_timeout{std::chrono::seconds(30)};   // milter_command_timeout
    std::chrono::milliseconds content_timeout{std::chrono::seconds(300)};  // milter_content_timeout
    DefaultAction default_action = DefaultAction::Tempfail;                // milter_default_action
    std::size_t max_packet = kMaxPacket;
    std::size_t max_edit_size = 64u << 20;      // bytes of edits one end-of-message may carry
    std::uint32_t actions = kOfferedActions;    // offered; a milter asking more fails negotiation
    std::uint32_t protocol = kOfferedProtocol;  // offered
};

namespace detail {
struct Step;  // one SMTP step's protocol facts (milter.cpp)
}

// ---- One SMTP connection's conversation with one milter.
//
// Call in SMTP order: negotiate() (or let connect() do it), connect(), helo() per HELO/EHLO,
// then per transaction mail(), rcpt() per recipient, data(), and either message() with the
// stored message or header()... end_of_headers(), body()..., end_of_message(); abort() when a
// transaction ends (RSET, a refused MAIL, after end_of_message, a lost client), quit() at the
// end. Steps after the milter accepted, rejected at connect, or failed cost no I/O and answer
// what Postfix answers then. Set macros ("j", "{daemon_name}", "i" once the queue id is known,
// ...) with set_macro(); the client's and the envelope's are set by the steps themselves.
class Session {
  public:
    Session(boost::asio::any_io_executor ex, Endpoint endpoint, Settings settings = {});
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    void set_macro(std::string name, std::string value);  // "j", "{daemon_name}", "{auth_type}"
    void clear_macro(const std::string& name);

    boost::asio::awaitable<Verdict> negotiate();
    // ip "" = unknown family; hostname: the verified client name, or "unknown" (Postfix).
    boost::asio::awaitable<Verdict> connect(std::string_view hostname, std::string_view ip,
                                            std::uint16_t port);
    boost::asio::awaitable<Verdict> helo(std::string_view name);
    boost::asio::awaitable<Verdict> mail(std::string_view sender,
                                         const std::vector<std::string>& esmtp_args);
    boost::asio::awaitable<Verdict> rcpt(std::string_view recipient,
                                         const std::vector<std::string>& esmtp_args);
    boost::asio::awaitable<Verdict> data();
    // value: the text after the colon as in the message (leading space, CRLF folds).
    boost::asio::awaitable<Verdict> header(std::string_view name, std::string_view value);
    boost::asio::awaitable<Verdict> end_of_headers();
    boost::asio::awaitable<Verdict> body(std::string_view chunk);  // sent in <= 65535-byte parts
    boost::asio::awaitable<EndOfMessage> end_of_message();
    // The content steps for a stored message (CRLF lines): each header — but the first when
    // `first_is_ours` (our Received:, which Postfix does not show milters) — end of headers,
    // the body, end of message. Stops at the first verdict that does not proceed. With `rest`,
    // the body goes on in that spool after `stored` (which holds at least the whole header) and
    // is read from it a piece at a time.
    boost::asio::awaitable<EndOfMessage> message(std::string_view stored, bool first_is_ours = true,
                                                 const Spool* rest = nullptr);
    boost::asio::awaitable<void> abort();
    boost::asio::awaitable<void> quit();

    const Endpoint& endpoint() const { return endpoint_; }
    const std::string& error() const { return error_; }  // why it failed, for the log
    bool failed() const;
    std::uint32_t actions() const { return actions_; }    // negotiated
    std::uint32_t protocol() const { return protocol_; }  // negotiated

  private:
    enum class State { Closed, Ready, Envelope, Message, AcceptCon, AcceptMsg, RejectCon, Error };

    boost::asio::awaitable<Verdict> event(const detail::Step& step, const std::string& payload,
                                          EndOfMessage* eom);
    boost::asio::awaitable<bool> open();
    boost::asio::awaitable<bool> dial(std::string& why);
    boost::asio::awaitable<bool> send(const std::string& bytes, std::chrono::milliseconds limit);
    boost::asio::awaitable<std::optional<Packet>> receive(std::chrono::milliseconds limit);
    boost::asio::awaitable<bool> write_all(const std::string& bytes);
    boost::asio::awaitable<std::optional<Packet>> read_packet();
    std::string macros_for(Stage stage, char command) const;
    Verdict comm_error(std::string why);
    Verdict conf_error(std::string why);
    Verdict reject_connection(Verdict v);
    void close();

    boost::asio::any_io_executor ex_;
    Endpoint endpoint_;
    Settings settings_;
    std::optional<boost::asio::generic::stream_protocol::socket> sock_;
    boost::asio::steady_timer deadline_;
    Decoder decoder_;
    std::array<char, 8192> inbuf_{};
    State state_ = State::Closed;
    bool tried_ = false;         // negotiate() ran once: a session connects once
    bool transaction_ = false;   // MAIL sent since the last abort
    bool body_skipped_ = false;  // SMFIR_SKIP: no more body chunks for this message
    Verdict sticky_;             // what every step answers in RejectCon / Error
    std::string error_;
    std::uint32_t actions_ = 0, protocol_ = 0;
    std::array<std::optional<std::string>, kStages> wanted_macros_;
    std::map<std::string, std::string> macros_;
};

// ---- Messages as stored, and carrying out the edits.

// A stored message's header fields in order (the header ends at the first empty line, or at a
// line that is not a header field) and its body (after the empty line).
struct HeaderField {
    std::string_view name;   // as in the message, without white space before the colon
    std::string_view value;  // after the colon up to the field's last line break; folds kept
};
struct MessageParts {
    std::vector<HeaderField> headers;
    std::string_view body;
};
MessageParts split_message(std::string_view message);

// Applies header edits and a body replacement to a stored message (CRLF lines; the header ends
// at the first empty line). With `first_is_ours`, the first header is our own Received: and the
// indexes follow Postfix: SMFIR_CHGHEADER counts headers as the milter saw them (without ours;
// index 0 means 1; past the last, a change is an append, a delete nothing), SMFIR_INSHEADER
// counts the message as delivered (0 = above ours; past the end = append). Line breaks in
// values become CRLF followed by white space, so an edit cannot start a header or end the
// header section. Quarantine and envelope edits are not the message's business: ignored.
std::string apply_modifications(std::string_view message, const std::vector<Modification>& mods,
                                bool first_is_ours = true);

}  // namespace bmx::milter
