#include "delivery/reply.hpp"

#include <algorithm>
#include <cctype>

#include "util/util.hpp"

namespace bmx::delivery {

std::string Reply::text() const {
    std::string out = std::to_string(code);
    for (std::size_t i = 0; i < lines.size(); ++i) {
        out += i == 0 ? " " : " / ";
        out += printable(lines[i]);  // a peer's text: safe for a log line or a DSN
    }
    return out;
}

bool fits(Step step, const Reply& r) {
    if (r.transient() || r.permanent()) return true;
    return step == Step::Data ? r.code == 354 : r.positive();
}

std::optional<Reply> ReplyParser::next(std::string& buf) {
    for (;;) {
        auto lf = buf.find('\n');
        if (lf == std::string::npos) {
            if (buf.size() > 2048) {  // hostile or broken peer: no reply line is this long
                buf.clear();
                partial_ = {};
                return Reply{};
            }
            return std::nullopt;
        }
        if (lf > 2048) {  // the same limit when the LF arrived in the same read
            buf.erase(0, lf + 1);
            partial_ = {};
            return Reply{};
        }
        std::string line = buf.substr(0, lf);
        buf.erase(0, lf + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        bool ok = line.size() >= 3 && line[0] >= '2' && line[0] <= '5' &&  // RFC 5321 4.2
                  std::isdigit(static_cast<unsigned char>(line[1])) &&
                  std::isdigit(static_cast<unsigned char>(line[2])) &&
                  (line.size() == 3 || line[3] == ' ' || line[3] == '-');
        if (!ok) {
            partial_ = {};
            return Reply{};
        }
        int code = std::stoi(line.substr(0, 3));
        if (partial_.code != 0 && partial_.code != code) {
            partial_ = {};
            return Reply{};
        }
        partial_.code = code;
        partial_.lines.push_back(line.size() > 4 ? line.substr(4) : "");
        bool last = line.size() == 3 || line[3] == ' ';
        bool too_many = partial_.lines.size() > 100;
        if (last || too_many) {
            Reply r = std::move(partial_);
            partial_ = {};
            if (too_many) r.code = 0;
            return r;
        }
    }
}

void Stuffer::feed(std::string_view piece, std::string& out) {
    out.reserve(out.size() + piece.size() + piece.size() / 64 + 8);
    for (std::size_t at = 0; at < piece.size();) {  // a line (or the rest) at a time
        if (bol_ && piece[at] == '.') out.push_back('.');
        const auto nl = piece.find('\n', at);
        const auto end = nl == std::string_view::npos ? piece.size() : nl + 1;
        out.append(piece.substr(at, end - at));
        bol_ = nl != std::string_view::npos;
        at = end;
    }
    for (char c : piece.substr(piece.size() - std::min<std::size_t>(piece.size(), 2))) {
        last_[0] = last_[1];
        last_[1] = c;
    }
    empty_ = empty_ && piece.empty();
}

void Stuffer::finish(std::string& out) {
    if (!empty_ && !(last_[0] == '\r' && last_[1] == '\n')) out += "\r\n";
    out += ".\r\n";
}

std::string stuff_body(std::string_view body) {
    std::string out;
    Stuffer s;
    s.feed(body, out);
    s.finish(out);
    return out;
}

}  // namespace bmx::delivery
