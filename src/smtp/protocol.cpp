#include "smtp/protocol.hpp"

#include <cctype>
#include <cstring>

#include "util/util.hpp"

namespace bmx::smtp {

std::optional<CommandReader::Line> CommandReader::next(std::string& buf) {
    auto lf = buf.find('\n');
    if (discarding_) {
        if (lf == std::string::npos) {
            buf.clear();
            return std::nullopt;
        }
        buf.erase(0, lf + 1);
        discarding_ = false;
        return Line{"", true};
    }
    if (lf == std::string::npos) {
        if (buf.size() >= max_) {  // no CRLF within the limit: refuse without buffering more
            buf.clear();
            discarding_ = true;
        }
        return std::nullopt;
    }
    std::size_t len = lf + 1;  // including LF
    if (len > max_) {
        buf.erase(0, len);
        return Line{"", true};
    }
    std::size_t text_len = lf;
    if (text_len > 0 && buf[text_len - 1] == '\r') --text_len;
    Line line{buf.substr(0, text_len), false};
    buf.erase(0, len);
    return line;
}

Command parse_command(std::string_view line) {
    Command c;
    auto sp = line.find(' ');
    c.verb_text = std::string(line.substr(0, sp));
    if (sp != std::string_view::npos) c.arg = std::string(line.substr(sp + 1));
    static const std::pair<const char*, Verb> verbs[] = {
        {"HELO", Verb::Helo}, {"EHLO", Verb::Ehlo}, {"MAIL", Verb::Mail},
        {"RCPT", Verb::Rcpt}, {"DATA", Verb::Data}, {"RSET", Verb::Rset},
        {"NOOP", Verb::Noop}, {"QUIT", Verb::Quit}, {"VRFY", Verb::Vrfy},
        {"EXPN", Verb::Expn}, {"HELP", Verb::Help}, {"STARTTLS", Verb::StartTls},
        {"BDAT", Verb::Bdat}, {"AUTH", Verb::Auth}, {"ETRN", Verb::Etrn}};
    if (line.empty()) {
        c.verb = Verb::Empty;
        return c;
    }
    for (auto [name, verb] : verbs)
        if (iequals(c.verb_text, name)) c.verb = verb;
    return c;
}

namespace {

bool is_atext(unsigned char c) {
    if (c >= 0x80) return true;  // UTF-8 (RFC 6531); checked against SMTPUTF8 by the caller
    if (std::isalnum(c)) return true;
    return std::strchr("!#$%&'*+-/=?^_`{|}~", c) != nullptr && c != 0;
}

// Dot-string or quoted-string local part. Returns length consumed or 0.
std::size_t scan_local(std::string_view s) {
    if (s.empty()) return 0;
    if (s[0] == '"') {
        for (std::size_t i = 1; i < s.size(); ++i) {
            unsigned char c = static_cast<unsigned char>(s[i]);
            if (c == '\\') {
                if (++i >= s.size()) return 0;
                unsigned char e = static_cast<unsigned char>(s[i]);
                if (e < 32 || e == 127) return 0;
                continue;
            }
            if (c == '"') return i + 1;
            if (c < 32 || c == 127) return 0;
        }
        return 0;
    }
    std::size_t i = 0;
    bool need_atom = true;
    for (; i < s.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '.') {
            if (need_atom) return 0;
            need_atom = true;
        } else if (is_atext(c)) {
            need_atom = false;
        } else {
            break;
        }
    }
    return need_atom ? 0 : i;
}

bool valid_domain(std::string_view d) {
    if (d.empty() || d.size() > 255) return false;
    if (d.front() == '[') {  // address literal: checked loosely here, policy decides on it
        if (d.back() != ']' || d.size() < 3) return false;
        for (char c : d.substr(1, d.size() - 2))
            if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == ':' || c == '-'))
                return false;
        return true;
    }
    std::size_t label = 0;
    for (std::size_t i = 0; i < d.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(d[i]);
        if (c == '.') {
            if (label == 0 || d[i - 1] == '-') return false;
            label = 0;
        } else if (std::isalnum(c) || c >= 0x80 || (c == '-' && label > 0)) {
            if (++label > 63) return false;
        } else {
            return false;
        }
    }
    return label > 0 && d.back() != '-';
}

}  // namespace

PathResult parse_path_arg(std::string_view arg, std::string_view keyword, bool reverse) {
    PathResult r;
    if (arg.size() < keyword.size() + 1 || !iequals(arg.substr(0, keyword.size()), keyword) ||
        arg[keyword.size()] != ':') {
        r.error = "501 5.5.4 Syntax: " + std::string(keyword) + ":<address>";
        return r;
    }
    std::string_view rest = arg.substr(keyword.size() + 1);
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);  // tolerated, common
    if (rest.empty() || rest.front() != '<') {
        r.error = "501 5.1.7 Address must be in angle brackets: <user@domain>";
        return r;
    }
    // Find the closing '>' outside a quoted local part.
    std::size_t close = std::string_view::npos;
    bool quoted = false;
    for (std::size_t i = 1; i < rest.size(); ++i) {
        if (quoted && rest[i] == '\\') {
            ++i;
            continue;
        }
        if (rest[i] == '"')
            quoted = !quoted;
        else if (!quoted && rest[i] == '>') {
            close = i;
            break;
        }
    }
    if (close == std::string_view::npos) {
        r.error = "501 5.1.7 Unterminated address";
        return r;
    }
    std::string_view path = rest.substr(1, close - 1);
    std::string_view params = rest.substr(close + 1);
    Address a;
    if (path.empty()) {
        if (!reverse) {
            r.error = "501 5.1.3 Empty recipient address";
            return r;
        }
    } else {
        // Source route "@a,@b:" is accepted and ignored (RFC 5321 4.1.1.3, Appendix C).
        if (path.front() == '@') {
            auto colon = path.find(':');
            if (colon == std::string_view::npos) {
                r.error = "501 5.1.3 Bad source route";
                return r;
            }
            path.remove_prefix(colon + 1);
        }
        std::size_t n = scan_local(path);
        if (n == 0 || n > 64 + 2 || n >= path.size() || path[n] != '@') {
            r.error = "501 5.1.3 Bad address syntax (want local-part@domain)";
            return r;
        }
        a.local = std::string(path.substr(0, n));
        std::string_view dom = path.substr(n + 1);
        if (!dom.empty() && dom.back() == '.') dom.remove_suffix(1);
        if (!valid_domain(dom)) {
            r.error = "501 5.1.3 Bad domain in address";
            return r;
        }
        a.domain = to_lower(dom);
        for (std::size_t i = 0; i < path.size();) {
            if (static_cast<unsigned char>(path[i]) < 0x80) {
                ++i;
                continue;
            }
            // RFC 6531 3.3 / RFC 3629: UTF-8, no overlong forms, no surrogates.
            const std::size_t n = utf8_sequence(path.substr(i));
            if (n == 0) {
                r.error = "553 5.6.7 Address is not valid UTF-8 (RFC 6531, RFC 3629)";
                return r;
            }
            a.utf8 = true;
            i += n;
        }
    }
    // ESMTP parameters: SP keyword[=value]
    std::size_t i = 0;
    while (i < params.size()) {
        if (params[i] == ' ') {
            ++i;
            continue;
        }
        auto end = params.find(' ', i);
        if (end == std::string_view::npos) end = params.size();
        std::string_view p = params.substr(i, end - i);
        auto eq = p.find('=');
        std::string key = std::string(p.substr(0, eq));
        for (auto& ch : key) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        std::string val = eq == std::string_view::npos ? "" : std::string(p.substr(eq + 1));
        if (key.empty()) {
            r.error = "501 5.5.4 Bad parameter syntax";
            return r;
        }
        r.params.emplace_back(std::move(key), std::move(val));
        i = end;
    }
    r.addr = std::move(a);
    return r;
}

void DataScanner::emit(char c, std::string& out) {
    ++size_;
    if (!refused()) out.push_back(c);
}

std::size_t DataScanner::feed(std::string_view in, std::string& out) {
    std::size_t i = 0;
    for (; i < in.size() && state_ != State::End; ++i) {
        char c = in[i];
        if (++line_len_ > kMaxTextLine) too_long_ = true;
        if (c == '\0') nul_ = true;
        switch (state_) {
            case State::Bol:
                if (c == '.') {
                    --line_len_;  // the dot added for transparency is not counted (4.5.3.1.6)
                    state_ = State::Dot;
                    continue;
                }
                [[fallthrough]];
            case State::Mid:
            mid:
                if (c == '\r') {
                    state_ = State::Cr;
                } else {
                    if (c == '\n') bare_lf_ = true;
                    emit(c, out);
                    state_ = State::Mid;
                }
                break;
            case State::Cr:
                if (c == '\n') {
                    emit('\r', out);
                    emit('\n', out);
                    line_len_ = 0;
                    state_ = State::Bol;
                } else {
                    bare_cr_ = true;
                    emit('\r', out);
                    goto mid;
                }
                break;
            case State::Dot:
                if (c == '\r') {
                    state_ = State::DotCr;
                } else {
                    goto mid;  // dot-stuffed line: the leading dot is dropped
                }
                break;
            case State::DotCr:
                if (c == '\n') {
                    state_ = State::End;
                } else {  // ".<CR>x": not an end marker; a bare CR inside a line
                    bare_cr_ = true;
                    emit('.', out);
                    emit('\r', out);
                    goto mid;
                }
                break;
            case State::End:
                break;
        }
    }
    return i;
}

}  // namespace bmx::smtp
