// The milter protocol without I/O: endpoints, packet framing, commands, replies, and the edits
// carried out on a stored message. Everything here is a pure function of its input (fuzzable).
#include <fmt/format.h>
#include <sys/un.h>

#include <algorithm>
#include <boost/asio/ip/address.hpp>
#include <cctype>
#include <charconv>

#include "milter/milter.hpp"
#include "util/util.hpp"

namespace bmx::milter {

namespace asio = boost::asio;

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
        error_ =
            "packet length " + std::to_string(len) + " over the limit of " + std::to_string(max_);
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

struct Name {
    char code;
    const char* name;
};
constexpr Name kReplyNames[] = {
    {smfir::AddRcpt, "SMFIR_ADDRCPT"},        {smfir::DelRcpt, "SMFIR_DELRCPT"},
    {smfir::AddRcptPar, "SMFIR_ADDRCPT_PAR"}, {smfir::Shutdown, "SMFIR_SHUTDOWN"},
    {smfir::Accept, "SMFIR_ACCEPT"},          {smfir::ReplBody, "SMFIR_REPLBODY"},
    {smfir::Continue, "SMFIR_CONTINUE"},      {smfir::Discard, "SMFIR_DISCARD"},
    {smfir::ChgFrom, "SMFIR_CHGFROM"},        {smfir::ConnFail, "SMFIR_CONN_FAIL"},
    {smfir::AddHeader, "SMFIR_ADDHEADER"},    {smfir::InsHeader, "SMFIR_INSHEADER"},
    {smfir::SetSymList, "SMFIR_SETSYMLIST"},  {smfir::ChgHeader, "SMFIR_CHGHEADER"},
    {smfir::Progress, "SMFIR_PROGRESS"},      {smfir::Quarantine, "SMFIR_QUARANTINE"},
    {smfir::Reject, "SMFIR_REJECT"},          {smfir::Skip, "SMFIR_SKIP"},
    {smfir::Tempfail, "SMFIR_TEMPFAIL"},      {smfir::ReplyCode, "SMFIR_REPLYCODE"},
    {smfic::OptNeg, "SMFIC_OPTNEG"},
};
constexpr Name kCommandNames[] = {
    {smfic::Abort, "SMFIC_ABORT"},     {smfic::Body, "SMFIC_BODY"},
    {smfic::Connect, "SMFIC_CONNECT"}, {smfic::BodyEob, "SMFIC_BODYEOB"},
    {smfic::Helo, "SMFIC_HELO"},       {smfic::Header, "SMFIC_HEADER"},
    {smfic::Mail, "SMFIC_MAIL"},       {smfic::Eoh, "SMFIC_EOH"},
    {smfic::OptNeg, "SMFIC_OPTNEG"},   {smfic::Quit, "SMFIC_QUIT"},
    {smfic::Rcpt, "SMFIC_RCPT"},       {smfic::Data, "SMFIC_DATA"},
};

template <std::size_t N>
std::string lookup(const Name (&table)[N], char c, const char* what) {
    for (const auto& n : table)
        if (n.code == c) return n.name;
    const auto u = static_cast<unsigned char>(c);
    return u >= 32 && u < 127 ? fmt::format("{} '{}'", what, c)
                              : fmt::format("{} 0x{:02x}", what, u);
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
        const std::string_view line = std::string_view(s).substr(
            pos, eol == std::string::npos ? std::string::npos : eol - pos);
        if (line.substr(0, 3) != code) return std::nullopt;
        if (line.size() > 3 && line[3] != ' ' && line[3] != '-') return std::nullopt;
        if (line.find_first_of("\r\n") != std::string_view::npos) return std::nullopt;
        if (eol == std::string::npos) break;
        pos = eol + 2;
    }
    return s;
}

}  // namespace

std::string reply_name(char c) {
    return lookup(kReplyNames, c, "reply");
}
std::string command_name(char c) {
    return lookup(kCommandNames, c, "command");
}

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

std::string encode_body(std::string_view chunk) {
    return frame(smfic::Body, chunk);
}

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
        case smfir::Continue:
            return bare(K::Continue);
        case smfir::Accept:
            return bare(K::Accept);
        case smfir::Reject:
            return bare(K::Reject);
        case smfir::Tempfail:
            return bare(K::Tempfail);
        case smfir::Discard:
            return bare(K::Discard);
        case smfir::Shutdown:
            return bare(K::Shutdown);
        case smfir::ConnFail:
            return bare(K::ConnFail);
        case smfir::Progress:
            return bare(K::Progress);
        case smfir::Skip:
            return bare(K::Skip);
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

Split split_fields(std::string_view m) {
    Split s;
    std::size_t pos = 0;
    while (pos < m.size()) {
        const auto nl = m.find('\n', pos);
        const std::size_t next = nl == std::string_view::npos ? m.size() : nl + 1;
        std::string_view line = m.substr(pos, next - pos);
        while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
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

MessageParts split_message(std::string_view message) {
    const Split s = split_fields(message);
    MessageParts parts;
    for (const Field& f : s.fields)
        parts.headers.push_back({message.substr(f.begin, f.name_len), field_value(message, f)});
    parts.body = message.substr(s.body);
    return parts;
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
        pos = end +
              ((value[end] == '\r' && end + 1 < value.size() && value[end + 1] == '\n') ? 2 : 1);
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
    const Split s = split_fields(message);
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
