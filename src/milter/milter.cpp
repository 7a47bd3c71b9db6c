#include "milter/milter.hpp"

#include <spdlog/spdlog.h>
#include <sys/un.h>

#include <fmt/format.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cctype>
#include <charconv>

#include "netio/netio.hpp"
#include "util/util.hpp"

namespace bmx::milter {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using generic_stream = asio::generic::stream_protocol;

// ---- Endpoints ----

std::string Endpoint::text() const {
    if (kind == Kind::Unix) return "unix:" + path;
    const bool v6 = host.find(':') != std::string::npos;
    return "inet:" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

namespace {

bool host_name_ok(std::string_view h) {
    if (h.empty() || h.size() > 253) return false;
    for (char c : h)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_'))
            return false;
    return true;
}

}  // namespace

std::optional<Endpoint> parse_endpoint(std::string_view spec) {
    const auto colon = spec.find(':');
    if (colon == std::string_view::npos) return std::nullopt;
    const std::string_view transport = spec.substr(0, colon), rest = spec.substr(colon + 1);
    Endpoint e;
    if (transport == "unix" || transport == "local") {
        if (rest.empty() || rest.find('\0') != std::string_view::npos) return std::nullopt;
        if (rest.size() >= sizeof(sockaddr_un{}.sun_path)) return std::nullopt;
        e.kind = Endpoint::Kind::Unix;
        e.path = std::string(rest);
        return e;
    }
    if (transport != "inet") return std::nullopt;
    std::string_view host, port;
    if (!rest.empty() && rest.front() == '[') {
        const auto close = rest.find(']');
        if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
            return std::nullopt;
        host = rest.substr(1, close - 1);
        port = rest.substr(close + 2);
        boost::system::error_code ec;
        (void)asio::ip::make_address_v6(std::string(host), ec);
        if (ec) return std::nullopt;
    } else {
        const auto c = rest.rfind(':');
        if (c == std::string_view::npos) return std::nullopt;
        host = rest.substr(0, c);
        port = rest.substr(c + 1);
        if (!host_name_ok(host)) return std::nullopt;  // a v6 literal needs its brackets
    }
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc() || end != port.data() + port.size() || port.empty() || value == 0 ||
        value > 65535)
        return std::nullopt;
    e.host = std::string(host);
    e.port = static_cast<std::uint16_t>(value);
    return e;
}

// ---- Codec ----

void Decoder::feed(std::string_view bytes) {
    if (failed()) return;
    if (pos_ == buf_.size()) {
        buf_.clear();
        pos_ = 0;
    } else if (pos_ > 65536) {
        buf_.erase(0, pos_);
        pos_ = 0;
    }
    buf_.append(bytes);
}

std::optional<Packet> Decoder::next() {
    if (failed() || buffered() < 4) return std::nullopt;
    std::uint32_t len = 0;
    for (int i = 0; i < 4; ++i) len = (len << 8) | static_cast<unsigned char>(buf_[pos_ + i]);
    if (len == 0) {
        error_ = "packet length 0";
        return std::nullopt;
    }
    if (len > max_) {
        error_ = "packet length " + std::to_string(len) + " over the limit of " +
                 std::to_string(max_);
        return std::nullopt;
    }
    if (buffered() < 4 + static_cast<std::size_t>(len)) return std::nullopt;
    Packet p;
    p.command = buf_[pos_ + 4];
    p.data.assign(buf_, pos_ + 5, len - 1);
    pos_ += 4 + static_cast<std::size_t>(len);
    if (pos_ == buf_.size()) {
        buf_.clear();
        pos_ = 0;
    }
    return p;
}

namespace {

void put_u32(std::string& out, std::uint32_t v) {
    out += static_cast<char>((v >> 24) & 0xff);
    out += static_cast<char>((v >> 16) & 0xff);
    out += static_cast<char>((v >> 8) & 0xff);
    out += static_cast<char>(v & 0xff);
}

void put_cstr(std::string& out, std::string_view s) {
    for (char c : s)
        if (c != '\0') out += c;
    out += '\0';
}

std::string angle(std::string_view address) {
    if (!address.empty() && address.front() == '<') return std::string(address);
    return "<" + std::string(address) + ">";
}

// Reads NUL-terminated strings and network longs out of a packet's data.
class Reader {
  public:
    explicit Reader(std::string_view d) : d_(d) {}
    bool u32(std::uint32_t& v) {
        if (d_.size() - pos_ < 4) return false;
        v = 0;
        for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(d_[pos_ + i]);
        pos_ += 4;
        return true;
    }
    bool cstr(std::string& s) {
        const auto nul = d_.find('\0', pos_);
        if (nul == std::string_view::npos) return false;
        s.assign(d_.substr(pos_, nul - pos_));
        pos_ = nul + 1;
        return true;
    }
    bool done() const { return pos_ == d_.size(); }

  private:
    std::string_view d_;
    std::size_t pos_ = 0;
};

bool header_name_ok(std::string_view name) {
    if (name.empty()) return false;
    for (char c : name) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 33 || u > 126 || c == ':') return false;
    }
    return true;
}

std::string reply_name(char c) {
    switch (c) {
        case smfir::AddRcpt: return "SMFIR_ADDRCPT";
        case smfir::DelRcpt: return "SMFIR_DELRCPT";
        case smfir::AddRcptPar: return "SMFIR_ADDRCPT_PAR";
        case smfir::Shutdown: return "SMFIR_SHUTDOWN";
        case smfir::Accept: return "SMFIR_ACCEPT";
        case smfir::ReplBody: return "SMFIR_REPLBODY";
        case smfir::Continue: return "SMFIR_CONTINUE";
        case smfir::Discard: return "SMFIR_DISCARD";
        case smfir::ChgFrom: return "SMFIR_CHGFROM";
        case smfir::ConnFail: return "SMFIR_CONN_FAIL";
        case smfir::AddHeader: return "SMFIR_ADDHEADER";
        case smfir::InsHeader: return "SMFIR_INSHEADER";
        case smfir::SetSymList: return "SMFIR_SETSYMLIST";
        case smfir::ChgHeader: return "SMFIR_CHGHEADER";
        case smfir::Progress: return "SMFIR_PROGRESS";
        case smfir::Quarantine: return "SMFIR_QUARANTINE";
        case smfir::Reject: return "SMFIR_REJECT";
        case smfir::Skip: return "SMFIR_SKIP";
        case smfir::Tempfail: return "SMFIR_TEMPFAIL";
        case smfir::ReplyCode: return "SMFIR_REPLYCODE";
        case smfic::OptNeg: return "SMFIC_OPTNEG";
    }
    const auto u = static_cast<unsigned char>(c);
    return u >= 32 && u < 127 ? std::string("reply '") + c + "'"
                              : "reply 0x" + fmt::format("{:02x}", u);
}

std::string command_name(char c) {
    switch (c) {
        case smfic::Abort: return "SMFIC_ABORT";
        case smfic::Body: return "SMFIC_BODY";
        case smfic::Connect: return "SMFIC_CONNECT";
        case smfic::BodyEob: return "SMFIC_BODYEOB";
        case smfic::Helo: return "SMFIC_HELO";
        case smfic::Header: return "SMFIC_HEADER";
        case smfic::Mail: return "SMFIC_MAIL";
        case smfic::Eoh: return "SMFIC_EOH";
        case smfic::OptNeg: return "SMFIC_OPTNEG";
        case smfic::Quit: return "SMFIC_QUIT";
        case smfic::Rcpt: return "SMFIC_RCPT";
        case smfic::Data: return "SMFIC_DATA";
    }
    return std::string("command '") + c + "'";
}

// "550 5.7.1 text", or lines "550-5.7.1 a\r\n550 5.7.1 b": a 4xx/5xx code, the same on every
// line. Sendmail treats the text as a format: "%%" is "%", a lone "%" goes (as Postfix does).
std::optional<std::string> check_reply_code(std::string_view raw) {
    std::string s;
    for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] != '%') {
            s += raw[i];
        } else if (i + 1 < raw.size() && raw[i + 1] == '%') {
            s += '%';
            ++i;
        }
    }
    while (s.size() >= 2 && s.ends_with("\r\n")) s.resize(s.size() - 2);
    if (s.size() < 3 || (s[0] != '4' && s[0] != '5') || !std::isdigit((unsigned char)s[1]) ||
        !std::isdigit((unsigned char)s[2]))
        return std::nullopt;
    const std::string code = s.substr(0, 3);
    std::size_t pos = 0;
    for (;;) {
        const auto eol = s.find("\r\n", pos);
        const std::string_view line =
            std::string_view(s).substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
        if (line.substr(0, 3) != code) return std::nullopt;
        if (line.size() > 3 && line[3] != ' ' && line[3] != '-') return std::nullopt;
        if (line.find_first_of("\r\n") != std::string_view::npos) return std::nullopt;
        if (eol == std::string::npos) break;
        pos = eol + 2;
    }
    return s;
}

}  // namespace

std::string frame(char command, std::string_view data) {
    std::string out;
    out.reserve(5 + data.size());
    put_u32(out, static_cast<std::uint32_t>(data.size() + 1));
    out += command;
    out.append(data);
    return out;
}

std::string encode_optneg(std::uint32_t version, std::uint32_t actions, std::uint32_t protocol) {
    std::string d;
    put_u32(d, version);
    put_u32(d, actions);
    put_u32(d, protocol);
    return frame(smfic::OptNeg, d);
}

std::string encode_macros(char for_command,
                          const std::vector<std::pair<std::string, std::string>>& macros) {
    std::string d(1, for_command);
    for (const auto& [name, value] : macros) {
        put_cstr(d, name);
        put_cstr(d, value);
    }
    return frame(smfic::Macro, d);
}

std::string encode_connect(std::string_view hostname, Family family, std::uint16_t port,
                           std::string_view address) {
    std::string d;
    put_cstr(d, hostname);
    d += static_cast<char>(family);
    if (family != Family::Unknown) {
        d += static_cast<char>((port >> 8) & 0xff);
        d += static_cast<char>(port & 0xff);
        put_cstr(d, address);
    }
    return frame(smfic::Connect, d);
}

std::string encode_helo(std::string_view name) {
    std::string d;
    put_cstr(d, name);
    return frame(smfic::Helo, d);
}

namespace {
std::string encode_envelope(char command, std::string_view address,
                            const std::vector<std::string>& args) {
    std::string d;
    put_cstr(d, angle(address));
    for (const auto& a : args) put_cstr(d, a);
    return frame(command, d);
}
}  // namespace

std::string encode_mail(std::string_view sender, const std::vector<std::string>& args) {
    return encode_envelope(smfic::Mail, sender, args);
}

std::string encode_rcpt(std::string_view recipient, const std::vector<std::string>& args) {
    return encode_envelope(smfic::Rcpt, recipient, args);
}

std::string encode_header(std::string_view name, std::string_view value) {
    std::string d;
    put_cstr(d, name);
    put_cstr(d, value);
    return frame(smfic::Header, d);
}

std::string encode_body(std::string_view chunk) { return frame(smfic::Body, chunk); }

std::optional<Response> parse_response(const Packet& p, std::string& error) {
    Response r;
    Reader in(p.data);
    auto bare = [&](Response::Kind k) -> std::optional<Response> {
        if (!p.data.empty()) {
            error = reply_name(p.command) + " followed by " + std::to_string(p.data.size()) +
                    " data bytes";
            return std::nullopt;
        }
        r.kind = k;
        return r;
    };
    auto bad = [&](std::string why) -> std::optional<Response> {
        error = reply_name(p.command) + ": " + why;
        return std::nullopt;
    };
    auto mod = [&](Modification::Type t) -> std::optional<Response> {
        r.kind = Response::Kind::Modify;
        r.mod.type = t;
        return r;
    };
    using K = Response::Kind;
    using T = Modification::Type;
    switch (p.command) {
        case smfir::Continue: return bare(K::Continue);
        case smfir::Accept: return bare(K::Accept);
        case smfir::Reject: return bare(K::Reject);
        case smfir::Tempfail: return bare(K::Tempfail);
        case smfir::Discard: return bare(K::Discard);
        case smfir::Shutdown: return bare(K::Shutdown);
        case smfir::ConnFail: return bare(K::ConnFail);
        case smfir::Progress: return bare(K::Progress);
        case smfir::Skip: return bare(K::Skip);
        case smfir::ReplyCode: {
            std::string raw;
            if (!in.cstr(raw) || !in.done()) return bad("not one NUL-terminated string");
            auto checked = check_reply_code(raw);
            if (!checked) return bad("malformed reply \"" + raw.substr(0, 100) + "\"");
            r.kind = K::ReplyCode;
            r.text = std::move(*checked);
            return r;
        }
        case smfir::AddHeader:
        case smfir::InsHeader:
        case smfir::ChgHeader: {
            if (p.command != smfir::AddHeader && !in.u32(r.mod.index)) return bad("no index");
            if (!in.cstr(r.mod.name) || !in.cstr(r.mod.value) || !in.done())
                return bad("not a name and a value, NUL-terminated");
            if (!header_name_ok(r.mod.name))
                return bad("bad header name \"" + r.mod.name.substr(0, 100) + "\"");
            return mod(p.command == smfir::AddHeader   ? T::AddHeader
                       : p.command == smfir::InsHeader ? T::InsertHeader
                                                       : T::ChangeHeader);
        }
        case smfir::Quarantine:
            if (!in.cstr(r.mod.value) || !in.done()) return bad("not one NUL-terminated reason");
            return mod(T::Quarantine);
        case smfir::ReplBody:
            r.mod.value = p.data;
            return mod(T::ReplaceBody);
        case smfir::AddRcpt:
        case smfir::DelRcpt:
            if (!in.cstr(r.mod.value) || !in.done()) return bad("not one NUL-terminated address");
            return mod(p.command == smfir::AddRcpt ? T::AddRecipient : T::DeleteRecipient);
        case smfir::AddRcptPar:
        case smfir::ChgFrom:  // address, then optional ESMTP arguments
            if (!in.cstr(r.mod.value)) return bad("no NUL-terminated address");
            if (!in.done() && (!in.cstr(r.mod.args) || !in.done()))
                return bad("not an address and arguments, NUL-terminated");
            return mod(p.command == smfir::ChgFrom ? T::ChangeSender : T::AddRecipient);
        case smfic::OptNeg: {
            auto& n = r.neg;
            if (!in.u32(n.version) || !in.u32(n.actions) || !in.u32(n.protocol))
                return bad("shorter than version, actions and protocol");
            while (!in.done()) {
                std::uint32_t stage = 0;
                std::string names;
                if (!in.u32(stage) || !in.cstr(names)) return bad("malformed macro list");
                if (stage >= kStages) return bad("macro list for unknown stage");
                n.macros[stage] = std::move(names);
            }
            r.kind = K::Negotiate;
            return r;
        }
    }
    error = "unknown " + reply_name(p.command);
    return std::nullopt;
}

std::string normalize_header_value(std::string_view raw, bool leading_space_negotiated) {
    if (raw.empty()) return {};
    std::string out = leading_space_negotiated ? "" : " ";
    for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '\r' || raw[i] == '\n') {
            if (raw[i] == '\r' && i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
            out += "\r\n";
        } else {
            out += raw[i];
        }
    }
    return out;
}

std::optional<std::string> EndOfMessage::quarantine() const {
    std::optional<std::string> reason;
    for (const auto& m : modifications)
        if (m.type == Modification::Type::Quarantine) reason = m.value;
    return reason;
}

std::optional<DefaultAction> parse_default_action(std::string_view text) {
    if (iequals(text, "accept")) return DefaultAction::Accept;
    if (iequals(text, "tempfail")) return DefaultAction::Tempfail;
    if (iequals(text, "reject")) return DefaultAction::Reject;
    return std::nullopt;
}

// ---- Messages as stored: header fields, then the body ----

namespace {

struct Field {
    std::size_t begin = 0, colon = 0, end = 0;  // end: after the field's last line break
    std::size_t name_len = 0;
};

struct Split {
    std::vector<Field> fields;
    std::size_t header_end = 0;  // where the empty line (or the first non-header line) starts
    std::size_t body = 0;        // after the empty line
};

// Length of "Name" when `line` starts "Name:" or "Name :" (is_header in Postfix), else 0.
std::size_t header_label(std::string_view line, std::size_t& colon) {
    std::size_t i = 0;
    while (i < line.size()) {
        const auto u = static_cast<unsigned char>(line[i]);
        if (u < 33 || u > 126 || line[i] == ':') break;
        ++i;
    }
    const std::size_t len = i;
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    if (len == 0 || i >= line.size() || line[i] != ':') return 0;
    colon = i;
    return len;
}

Split split_message(std::string_view m) {
    Split s;
    std::size_t pos = 0;
    while (pos < m.size()) {
        const auto nl = m.find('\n', pos);
        const std::size_t next = nl == std::string_view::npos ? m.size() : nl + 1;
        std::string_view line = m.substr(pos, next - pos);
        while (!line.empty() && (line.back() == '\n' || line.back() == '\r'))
            line.remove_suffix(1);
        if (line.empty()) {
            s.header_end = pos;
            s.body = next;
            return s;
        }
        if ((line[0] == ' ' || line[0] == '\t') && !s.fields.empty()) {
            s.fields.back().end = next;
            pos = next;
            continue;
        }
        std::size_t colon = 0;
        const std::size_t len = header_label(line, colon);
        if (len == 0) break;  // not a header: the body starts here, without an empty line
        s.fields.push_back(Field{pos, pos + colon, next, len});
        pos = next;
    }
    s.header_end = s.body = pos;
    return s;
}

// The value between the colon and the field's final line break.
std::string_view field_value(std::string_view m, const Field& f) {
    std::size_t end = f.end;
    if (end > f.colon + 1 && m[end - 1] == '\n') --end;
    if (end > f.colon + 1 && m[end - 1] == '\r') --end;
    return m.substr(f.colon + 1, end - f.colon - 1);
}

}  // namespace

// ---- Session ----

struct detail::Step {
    char command;
    std::optional<Stage> macros;
    std::uint32_t skip_flag;     // SMFIP_NO*: the milter does not want this step
    std::uint32_t noreply_flag;  // SMFIP_NR_*: it does not answer it
    bool content;                // content_timeout rather than command_timeout
    bool connection;             // connect/helo: a decision holds for the whole connection
    bool message;                // a step of the message: nothing to say once it was accepted
};

namespace {

using detail::Step;
const Step kConnect{smfic::Connect, Stage::Connect, smfip::NoConnect, smfip::NrConn, false, true,
                    false};
const Step kHelo{smfic::Helo, Stage::Helo, smfip::NoHelo, smfip::NrHelo, false, true, false};
const Step kMail{smfic::Mail, Stage::EnvFrom, smfip::NoMail, smfip::NrMail, false, false, false};
const Step kRcpt{smfic::Rcpt, Stage::EnvRcpt, smfip::NoRcpt, smfip::NrRcpt, false, false, true};
const Step kData{smfic::Data, Stage::Data, smfip::NoData, smfip::NrData, false, false, true};
const Step kHeader{smfic::Header, std::nullopt, smfip::NoHdrs, smfip::NrHdr, true, false, true};
const Step kEoh{smfic::Eoh, Stage::Eoh, smfip::NoEoh, smfip::NrEoh, true, false, true};
const Step kBody{smfic::Body, std::nullopt, smfip::NoBody, smfip::NrBody, true, false, true};
const Step kEom{smfic::BodyEob, Stage::Eom, 0, 0, true, false, true};

// Postfix's milter_*_macros defaults, and the client's own (which milters ask for by name).
constexpr std::array<std::string_view, kStages> kDefaultMacros{
    "j {daemon_name} {daemon_addr} v _ {client_addr} {client_name} {client_port}",  // connect
    "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",            // helo
    "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
    "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",  // rcpt
    "i",                                        // data
    "i",                                        // end of message
    "i",                                        // end of headers
};

// "j" and "{j}" are one macro; so are "daemon_name" and "{daemon_name}". libmilter looks both up.
std::string canonical_macro(std::string_view name) {
    if (name.size() >= 2 && name.front() == '{' && name.back() == '}')
        name = name.substr(1, name.size() - 2);
    if (name.size() == 1) return std::string(name);
    return "{" + std::string(name) + "}";
}

// A header value as a milter gets it: one leading space gone (unless it asked to keep it), the
// line breaks of folded lines as bare LF (Sendmail's habit, which Postfix follows).
std::string value_for_milter(std::string_view value, bool keep_space) {
    if (!keep_space && !value.empty() && value.front() == ' ') value.remove_prefix(1);
    std::string out;
    out.reserve(value.size());
    for (std::size_t i = 0; i < value.size(); ++i) {
        if (value[i] == '\r' && i + 1 < value.size() && value[i + 1] == '\n') continue;
        out += value[i];
    }
    return out;
}

std::uint32_t action_needed(const Modification& m) {
    switch (m.type) {
        case Modification::Type::AddHeader:
        case Modification::Type::InsertHeader: return smfif::AddHdrs;
        case Modification::Type::ChangeHeader: return smfif::ChgHdrs;
        case Modification::Type::Quarantine: return smfif::Quarantine;
        case Modification::Type::ReplaceBody: return smfif::ChgBody;
        case Modification::Type::AddRecipient:
            return m.args.empty() ? smfif::AddRcpt : smfif::AddRcptPar;
        case Modification::Type::DeleteRecipient: return smfif::DelRcpt;
        case Modification::Type::ChangeSender: return smfif::ChgFrom;
    }
    return ~0u;
}

}  // namespace

Session::Session(asio::any_io_executor ex, Endpoint endpoint, Settings settings)
    : ex_(ex),
      endpoint_(std::move(endpoint)),
      settings_(settings),
      deadline_(ex),
      decoder_(settings.max_packet) {
    macros_["v"] = "backupmx";
    macros_["{daemon_name}"] = "backupmx";
}

Session::~Session() { close(); }

void Session::set_macro(std::string name, std::string value) {
    macros_[canonical_macro(name)] = std::move(value);
}

void Session::clear_macro(const std::string& name) { macros_.erase(canonical_macro(name)); }

bool Session::failed() const { return state_ == State::Error; }

void Session::close() {
    if (sock_) {
        boost::system::error_code ec;
        sock_->close(ec);
        sock_.reset();
    }
}

Verdict Session::comm_error(std::string why) {
    error_ = "milter " + endpoint_.text() + ": " + why;
    spdlog::warn("{}", error_);
    close();
    state_ = State::Error;
    switch (settings_.default_action) {
        case DefaultAction::Accept: sticky_ = Verdict{}; break;
        case DefaultAction::Reject:
            sticky_ = Verdict{Verdict::Reject, "550 5.5.0 Service unavailable"};
            break;
        case DefaultAction::Tempfail:
            sticky_ = Verdict{Verdict::Tempfail, "451 4.7.1 Service unavailable - try again later"};
            break;
    }
    return sticky_;
}

Verdict Session::conf_error(std::string why) {
    comm_error(std::move(why));
    if (settings_.default_action != DefaultAction::Accept)
        sticky_ = Verdict{Verdict::Tempfail,
                          "451 4.3.5 Server configuration problem - try again later"};
    return sticky_;
}

Verdict Session::reject_connection(Verdict v) {
    close();  // libmilter forgets a connection it refused; so do we
    state_ = State::RejectCon;
    sticky_ = v;
    return v;
}

asio::awaitable<bool> Session::write_all(const std::string& bytes) {
    auto [ec, n] = co_await asio::async_write(*sock_, asio::buffer(bytes),
                                              asio::as_tuple(asio::use_awaitable));
    if (ec) error_ = "write: " + ec.message();
    co_return !ec;
}

asio::awaitable<std::optional<Packet>> Session::read_packet() {
    for (;;) {
        auto p = decoder_.next();
        if (p) co_return p;
        if (decoder_.failed()) {
            error_ = decoder_.error();
            co_return std::nullopt;
        }
        auto [ec, n] = co_await sock_->async_read_some(asio::buffer(inbuf_),
                                                       asio::as_tuple(asio::use_awaitable));
        if (ec || n == 0) {
            error_ = ec && ec != asio::error::eof ? "read: " + ec.message()
                                                  : "connection closed by the milter";
            co_return std::nullopt;
        }
        decoder_.feed(std::string_view(inbuf_.data(), n));
    }
}

asio::awaitable<bool> Session::send(const std::string& bytes, std::chrono::milliseconds limit) {
    if (!sock_) {
        error_ = "not connected";
        co_return false;
    }
    deadline_.expires_after(limit);
    auto r = co_await (write_all(bytes) || netio::watchdog(deadline_));
    if (r.index() == 1) {
        error_ = "timeout (" + std::to_string(limit.count()) + " ms) sending";
        co_return false;
    }
    co_return std::get<0>(r);
}

asio::awaitable<std::optional<Packet>> Session::receive(std::chrono::milliseconds limit) {
    if (!sock_) {
        error_ = "not connected";
        co_return std::nullopt;
    }
    deadline_.expires_after(limit);
    auto r = co_await (read_packet() || netio::watchdog(deadline_));
    if (r.index() == 1) {
        error_ = "timeout (" + std::to_string(limit.count()) + " ms) waiting for a reply";
        co_return std::nullopt;
    }
    co_return std::get<0>(std::move(r));
}

namespace {

asio::awaitable<bool> connect_to(generic_stream::socket& s, const generic_stream::endpoint& ep,
                                 std::string& error) {
    auto [ec] = co_await s.async_connect(ep, asio::as_tuple(asio::use_awaitable));
    if (ec) error = ec.message();
    co_return !ec;
}

}  // namespace

asio::awaitable<bool> Session::dial(std::string& why) {
    if (endpoint_.kind == Endpoint::Kind::Unix) {
        generic_stream::socket s(ex_);
        const generic_stream::endpoint ep{asio::local::stream_protocol::endpoint(endpoint_.path)};
        const bool ok = co_await connect_to(s, ep, why);
        if (ok) sock_.emplace(std::move(s));
        co_return ok;
    }
    asio::ip::tcp::resolver resolver(ex_);
    const std::string port = std::to_string(endpoint_.port);
    auto [ec, results] = co_await resolver.async_resolve(endpoint_.host, port,
                                                         asio::as_tuple(asio::use_awaitable));
    if (ec) {
        why = "resolve " + endpoint_.host + ": " + ec.message();
        co_return false;
    }
    for (const auto& r : results) {  // every address of the name, in order
        generic_stream::socket s(ex_);
        const generic_stream::endpoint ep{r.endpoint()};
        const bool ok = co_await connect_to(s, ep, why);
        if (ok) {
            sock_.emplace(std::move(s));
            co_return true;
        }
    }
    co_return false;
}

asio::awaitable<bool> Session::open() {
    deadline_.expires_after(settings_.connect_timeout);
    std::string why;
    auto r = co_await (dial(why) || netio::watchdog(deadline_));
    if (r.index() == 1) {
        error_ = "timeout (" + std::to_string(settings_.connect_timeout.count()) +
                 " ms) connecting";
        close();
        co_return false;
    }
    if (!std::get<0>(r)) {
        error_ = "connect: " + why;
        co_return false;
    }
    co_return true;
}

asio::awaitable<Verdict> Session::negotiate() {
    if (tried_) co_return state_ == State::Error ? sticky_ : Verdict{};
    tried_ = true;
    const bool opened = co_await open();
    if (!opened) co_return comm_error(error_);
    const std::string optneg = encode_optneg(kVersion, settings_.actions, settings_.protocol);
    const bool sent = co_await send(optneg, settings_.command_timeout);
    if (!sent) co_return comm_error("negotiation: " + error_);
    auto pkt = co_await receive(settings_.command_timeout);
    if (!pkt) co_return comm_error("negotiation: " + error_);
    std::string why;
    auto r = parse_response(*pkt, why);
    if (!r) co_return comm_error("negotiation: " + why);
    if (r->kind != Response::Kind::Negotiate)
        co_return comm_error("negotiation: unexpected " + reply_name(pkt->command));
    const Negotiation& n = r->neg;
    if (n.version < 2 || n.version > kVersion)
        co_return comm_error("protocol version " + std::to_string(n.version) + ", we speak 2 to " +
                             std::to_string(kVersion));
    if ((n.actions & ~settings_.actions) != 0)
        co_return comm_error(fmt::format("actions 0x{:x} beyond the 0x{:x} offered", n.actions,
                                         settings_.actions));
    if ((n.protocol & ~settings_.protocol) != 0)
        co_return comm_error(fmt::format("protocol flags 0x{:x} beyond the 0x{:x} offered",
                                         n.protocol, settings_.protocol));
    actions_ = n.actions;
    protocol_ = n.protocol;
    // Steps that do not exist in an older protocol are never sent (Postfix's np_mask).
    if (n.version < 4) protocol_ |= smfip::NoData;
    if (n.version < 3) protocol_ |= smfip::NoUnknown;
    wanted_macros_ = n.macros;
    state_ = State::Ready;
    error_.clear();
    co_return Verdict{};
}

std::string Session::macros_for(Stage stage, char command) const {
    const auto i = static_cast<std::size_t>(stage);
    const std::string_view names = wanted_macros_[i] ? std::string_view(*wanted_macros_[i])
                                                     : kDefaultMacros[i];
    std::vector<std::pair<std::string, std::string>> list;
    std::size_t pos = 0;
    while (pos < names.size()) {
        const auto end = std::min(names.find_first_of(" ,\t", pos), names.size());
        if (end > pos) {
            const std::string name = canonical_macro(names.substr(pos, end - pos));
            const auto it = macros_.find(name);
            const bool seen = std::any_of(list.begin(), list.end(),
                                          [&](const auto& p) { return p.first == name; });
            if (it != macros_.end() && !seen) list.emplace_back(name, it->second);
        }
        pos = end + 1;
    }
    if (list.empty()) return {};
    return encode_macros(command, list);
}

asio::awaitable<Verdict> Session::event(const Step& step, const std::string& payload,
                                        EndOfMessage* eom) {
    switch (state_) {
        case State::Error:
        case State::RejectCon: co_return sticky_;
        case State::Closed:
        case State::AcceptCon: co_return Verdict{};
        case State::AcceptMsg:
            if (step.message) co_return Verdict{};
            break;
        case State::Ready:
            if (step.command != smfic::Connect)
                co_return comm_error(command_name(step.command) + " before SMFIC_CONNECT");
            state_ = State::Envelope;
            break;
        case State::Envelope:
        case State::Message: break;
    }
    if (step.content) state_ = State::Message;

    std::string out = step.macros ? macros_for(*step.macros, step.command) : std::string();
    const bool skipped = (protocol_ & step.skip_flag) != 0;
    if (!skipped) out += payload;
    if (out.empty()) co_return Verdict{};
    const auto limit = step.content ? settings_.content_timeout : settings_.command_timeout;
    const bool sent = co_await send(out, limit);
    if (!sent) co_return comm_error(command_name(step.command) + ": " + error_);
    if (skipped || (protocol_ & step.noreply_flag) != 0) co_return Verdict{};

    std::size_t edit_bytes = 0;
    for (;;) {
        auto pkt = co_await receive(limit);  // each reply, SMFIR_PROGRESS too, gets a full limit
        if (!pkt) co_return comm_error("after " + command_name(step.command) + ": " + error_);
        std::string why;
        auto r = parse_response(*pkt, why);
        if (!r) co_return comm_error("after " + command_name(step.command) + ": " + why);
        using K = Response::Kind;
        switch (r->kind) {
            case K::Progress: continue;
            case K::Continue: co_return Verdict{};
            case K::Accept:
                if (step.connection) {
                    close();
                    state_ = State::AcceptCon;
                } else {
                    state_ = State::AcceptMsg;
                }
                co_return Verdict{Verdict::Accept, ""};
            case K::Discard:
                if (step.connection)
                    co_return conf_error("SMFIR_DISCARD is not allowed after " +
                                         command_name(step.command));
                state_ = State::AcceptMsg;
                co_return Verdict{Verdict::Discard, ""};
            case K::Reject:
            case K::Tempfail:
            case K::ReplyCode: {
                Verdict v = r->kind == K::Reject ? Verdict{Verdict::Reject,
                                                           "550 5.7.1 Command rejected"}
                            : r->kind == K::Tempfail
                                ? Verdict{Verdict::Tempfail,
                                          "451 4.7.1 Service unavailable - try again later"}
                                : Verdict{Verdict::ReplyCode, r->text};
                if (step.connection) co_return reject_connection(v);
                co_return v;
            }
            case K::Shutdown:
            case K::ConnFail:
                co_return reject_connection(
                    Verdict{Verdict::ReplyCode, "421 4.7.0 Server closing connection"});
            case K::Skip:
                if (step.command != smfic::Body || (protocol_ & smfip::Skip) == 0)
                    co_return comm_error("unexpected SMFIR_SKIP after " +
                                         command_name(step.command));
                body_skipped_ = true;
                co_return Verdict{};
            case K::Modify: {
                Modification& m = r->mod;
                if (!eom)
                    co_return comm_error("unexpected " + reply_name(pkt->command) + " after " +
                                         command_name(step.command));
                if ((actions_ & action_needed(m)) == 0)
                    co_return comm_error(reply_name(pkt->command) +
                                         " without having negotiated it");
                edit_bytes += m.name.size() + m.value.size() + m.args.size();
                if (edit_bytes > settings_.max_edit_size)
                    co_return comm_error("edits over max_edit_size (" +
                                         std::to_string(settings_.max_edit_size) + " bytes)");
                using T = Modification::Type;
                if (m.type == T::AddHeader || m.type == T::InsertHeader ||
                    m.type == T::ChangeHeader)
                    m.value =
                        normalize_header_value(m.value, (protocol_ & smfip::HdrLeadSpc) != 0);
                auto& mods = eom->modifications;
                auto replaced = std::find_if(mods.begin(), mods.end(), [](const auto& x) {
                    return x.type == T::ReplaceBody;
                });
                if (m.type == T::ReplaceBody && replaced != mods.end())
                    replaced->value += m.value;  // the body comes in chunks
                else
                    mods.push_back(std::move(m));
                continue;
            }
            case K::Negotiate:
                co_return comm_error("unexpected SMFIC_OPTNEG after " +
                                     command_name(step.command));
        }
    }
}

asio::awaitable<Verdict> Session::connect(std::string_view hostname, std::string_view ip,
                                          std::uint16_t port) {
    if (!tried_) {
        auto v = co_await negotiate();
        if (state_ == State::Error) co_return v;
    }
    Family family = Family::Unknown;
    std::string addr(ip);
    boost::system::error_code ec;
    auto a = asio::ip::make_address(addr, ec);
    if (!ec && a.is_v6() && a.to_v6().is_v4_mapped())
        a = asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
    if (!ec) {
        family = a.is_v4() ? Family::Inet : Family::Inet6;
        addr = a.to_string();
    }
    const std::string name = hostname.empty() ? std::string("unknown") : std::string(hostname);
    set_macro("{client_name}", name);
    set_macro("{client_addr}", addr);
    set_macro("{client_port}", std::to_string(port));
    set_macro("_", name + " [" + addr + "]");
    const std::string payload = encode_connect(name, family, port, addr);
    co_return co_await event(kConnect, payload, nullptr);
}

asio::awaitable<Verdict> Session::helo(std::string_view name) {
    const std::string payload = encode_helo(name);
    co_return co_await event(kHelo, payload, nullptr);
}

asio::awaitable<Verdict> Session::mail(std::string_view sender,
                                       const std::vector<std::string>& esmtp_args) {
    if (transaction_) co_await abort();  // a new transaction starts clean
    transaction_ = true;
    body_skipped_ = false;
    std::string bare(sender);
    if (bare.size() >= 2 && bare.front() == '<' && bare.back() == '>')
        bare = bare.substr(1, bare.size() - 2);
    set_macro("{mail_addr}", bare);
    clear_macro("{rcpt_addr}");
    const std::string payload = encode_mail(sender, esmtp_args);
    co_return co_await event(kMail, payload, nullptr);
}

asio::awaitable<Verdict> Session::rcpt(std::string_view recipient,
                                       const std::vector<std::string>& esmtp_args) {
    std::string bare(recipient);
    if (bare.size() >= 2 && bare.front() == '<' && bare.back() == '>')
        bare = bare.substr(1, bare.size() - 2);
    set_macro("{rcpt_addr}", bare);
    const std::string payload = encode_rcpt(recipient, esmtp_args);
    co_return co_await event(kRcpt, payload, nullptr);
}

asio::awaitable<Verdict> Session::data() {
    const std::string payload = frame(smfic::Data, "");
    co_return co_await event(kData, payload, nullptr);
}

asio::awaitable<Verdict> Session::header(std::string_view name, std::string_view value) {
    const std::string v = value_for_milter(value, (protocol_ & smfip::HdrLeadSpc) != 0);
    const std::string payload = encode_header(name, v);
    co_return co_await event(kHeader, payload, nullptr);
}

asio::awaitable<Verdict> Session::end_of_headers() {
    const std::string payload = frame(smfic::Eoh, "");
    co_return co_await event(kEoh, payload, nullptr);
}

asio::awaitable<Verdict> Session::body(std::string_view chunk) {
    Verdict v;
    for (std::size_t pos = 0; pos < chunk.size() && v.action == Verdict::Continue;
         pos += kChunkSize) {
        if (body_skipped_) break;
        const std::string payload = encode_body(chunk.substr(pos, kChunkSize));
        v = co_await event(kBody, payload, nullptr);
    }
    co_return v;
}

asio::awaitable<EndOfMessage> Session::end_of_message() {
    EndOfMessage out;
    const std::string payload = frame(smfic::BodyEob, "");
    out.verdict = co_await event(kEom, payload, &out);
    if (!out.verdict.proceed()) out.modifications.clear();
    co_return out;
}

asio::awaitable<EndOfMessage> Session::message(std::string_view stored, bool first_is_ours) {
    const Split s = split_message(stored);
    EndOfMessage out;
    for (std::size_t i = first_is_ours ? 1 : 0; i < s.fields.size(); ++i) {
        const Field& f = s.fields[i];
        const std::string_view name = stored.substr(f.begin, f.name_len);
        const std::string_view value = field_value(stored, f);
        out.verdict = co_await header(name, value);
        if (out.verdict.action != Verdict::Continue) co_return out;
    }
    out.verdict = co_await end_of_headers();
    if (out.verdict.action != Verdict::Continue) co_return out;
    out.verdict = co_await body(stored.substr(s.body));
    if (out.verdict.action != Verdict::Continue) co_return out;
    co_return co_await end_of_message();
}

asio::awaitable<void> Session::abort() {
    const bool open_transaction = transaction_;
    transaction_ = false;
    body_skipped_ = false;
    if (!open_transaction) co_return;
    if (state_ != State::Envelope && state_ != State::Message && state_ != State::AcceptMsg)
        co_return;
    const std::string packet = frame(smfic::Abort, "");
    const bool sent = co_await send(packet, settings_.command_timeout);
    if (!sent) {
        comm_error("SMFIC_ABORT: " + error_);
        co_return;
    }
    state_ = State::Envelope;
}

asio::awaitable<void> Session::quit() {
    if (sock_ && state_ != State::Error) {
        const std::string packet = frame(smfic::Quit, "");
        co_await send(packet, settings_.command_timeout);  // nothing to do if it does not go
    }
    close();
    if (state_ != State::Error && state_ != State::RejectCon) state_ = State::Closed;
}

// ---- Carrying out the edits ----

namespace {

// A header value made safe to store: CRLF line breaks, every continuation line starting with
// white space, no empty line (which would end the header section).
std::string fold_value(std::string_view value) {
    std::string out;
    std::size_t pos = 0;
    bool first = true;
    while (pos <= value.size()) {
        std::size_t end = value.find_first_of("\r\n", pos);
        if (end == std::string_view::npos) end = value.size();
        const std::string_view line = value.substr(pos, end - pos);
        if (first) {
            out.append(line);
            first = false;
        } else if (line.find_first_not_of(" \t") != std::string_view::npos) {
            out += (line[0] == ' ' || line[0] == '\t') ? "\r\n" : "\r\n\t";
            out.append(line);
        }
        if (end == value.size()) break;
        pos = end + ((value[end] == '\r' && end + 1 < value.size() && value[end + 1] == '\n') ? 2 : 1);
    }
    return out;
}

std::string crlf_body(std::string_view body) {
    std::string out;
    out.reserve(body.size() + body.size() / 32);
    for (std::size_t i = 0; i < body.size(); ++i) {
        const char c = body[i];
        if (c == '\r') {
            out += "\r\n";
            if (i + 1 < body.size() && body[i + 1] == '\n') ++i;
        } else if (c == '\n') {
            out += "\r\n";
        } else {
            out += c;
        }
    }
    if (!out.empty() && !out.ends_with("\r\n")) out += "\r\n";
    return out;
}

}  // namespace

std::string apply_modifications(std::string_view message, const std::vector<Modification>& mods,
                                bool first_is_ours) {
    struct Header {
        std::string text;  // the whole field, CRLF-terminated
        std::string name;
        bool ours = false;
    };
    const Split s = split_message(message);
    std::vector<Header> headers;
    for (std::size_t i = 0; i < s.fields.size(); ++i) {
        const Field& f = s.fields[i];
        Header h{std::string(message.substr(f.begin, f.end - f.begin)),
                 std::string(message.substr(f.begin, f.name_len)), first_is_ours && i == 0};
        if (!h.text.ends_with("\n")) h.text += "\r\n";
        headers.push_back(std::move(h));
    }
    std::optional<std::string> new_body;
    using T = Modification::Type;
    for (const auto& m : mods) {
        if (m.type == T::ReplaceBody) {
            new_body = crlf_body(m.value);
            continue;
        }
        if (m.type != T::AddHeader && m.type != T::InsertHeader && m.type != T::ChangeHeader)
            continue;
        if (!header_name_ok(m.name)) continue;
        Header h{m.name + ":" + fold_value(m.value) + "\r\n", m.name, false};
        if (m.type == T::AddHeader) {
            headers.push_back(std::move(h));
        } else if (m.type == T::InsertHeader) {
            const std::size_t at = std::min<std::size_t>(m.index, headers.size());
            headers.insert(headers.begin() + static_cast<std::ptrdiff_t>(at), std::move(h));
        } else {
            // Counted as the milter saw the headers: without our own first one (while it is
            // still first); index 0 is Sendmail's way of saying 1.
            std::uint32_t n = std::max<std::uint32_t>(m.index, 1);
            std::size_t i = !headers.empty() && headers[0].ours ? 1 : 0;
            for (; i < headers.size(); ++i)
                if (iequals(headers[i].name, m.name) && --n == 0) break;
            const bool found = i < headers.size();
            if (m.value.empty()) {
                if (found) headers.erase(headers.begin() + static_cast<std::ptrdiff_t>(i));
            } else if (found) {
                headers[i] = std::move(h);
            } else {
                headers.push_back(std::move(h));  // Sendmail and Postfix add it
            }
        }
    }
    std::string out;
    out.reserve(message.size() + 1024);
    for (const auto& h : headers) out += h.text;
    if (new_body) {
        out += "\r\n";
        out += *new_body;
    } else {
        out.append(message.substr(s.header_end));
    }
    return out;
}

}  // namespace bmx::milter
