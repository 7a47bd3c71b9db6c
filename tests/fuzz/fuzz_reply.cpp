// libFuzzer target: the SMTP reply parser used by the delivery client, and dot-stuffing.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "delivery/reply.hpp"

using namespace bmx::delivery;

namespace {

// What a receiver does (RFC 5321 4.5.2): at the start of each line, a dot is taken away.
std::string unstuff(std::string_view s) {
    std::string out;
    bool bol = true;
    for (char c : s) {
        if (!(bol && c == '.')) out.push_back(c);
        bol = c == '\n';
    }
    return out;
}

// Dot-stuffing's oracle: the stuffed body ends with the lone "." line; no other line of it
// starts with a single dot (a line of the body starting with "." starts with ".." there);
// the receiver's unstuffing gives back the body exactly (with the CRLF added when it lacked
// one); and feeding it in pieces gives the same bytes as all at once.
void check_stuffing(const std::string& input, std::size_t chunk) {
    const std::string stuffed = stuff_body(input);
    if (!stuffed.ends_with(".\r\n")) std::abort();
    const std::string_view text(stuffed.data(), stuffed.size() - 3);  // before the final "."
    if (!text.empty() && !text.ends_with("\r\n")) std::abort();       // "." alone on its line
    if (input.empty() != text.empty()) std::abort();
    for (std::size_t at = 0; at < text.size();) {  // every line of it
        const auto nl = text.find('\n', at);
        const auto end = nl == std::string_view::npos ? text.size() : nl + 1;
        if (text[at] == '.' && (end - at < 2 || text[at + 1] != '.')) std::abort();
        at = end;
    }
    std::string body = unstuff(text);
    const bool added = !input.empty() && !input.ends_with("\r\n");
    if (added) {
        if (!body.ends_with("\r\n")) std::abort();
        body.resize(body.size() - 2);
    }
    if (body != input) std::abort();
    // Every line of the input that starts with a dot starts with two in the output.
    std::size_t dotted_in = 0, doubled_out = 0;
    for (std::size_t i = 0; i < input.size(); ++i)
        if (input[i] == '.' && (i == 0 || input[i - 1] == '\n')) ++dotted_in;
    for (std::size_t i = 0; i + 1 < text.size(); ++i)
        if (text[i] == '.' && text[i + 1] == '.' && (i == 0 || text[i - 1] == '\n')) ++doubled_out;
    if (dotted_in != doubled_out) std::abort();
    // The same in pieces of `chunk` bytes.
    Stuffer st;
    std::string pieces;
    for (std::size_t i = 0; i < input.size(); i += chunk)
        st.feed(std::string_view(input).substr(i, chunk), pieces);
    st.finish(pieces);
    if (pieces != stuffed) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::size_t chunk = 1 + data[0] % 32;
    std::string input(reinterpret_cast<const char*>(data + 1), size - 1);
    ReplyParser p;
    std::string buf;
    for (std::size_t i = 0; i < input.size(); i += chunk) {
        buf.append(input, i, chunk);
        while (auto r = p.next(buf)) {
            if (r->code != 0 && (r->code < 100 || r->code > 999)) std::abort();
            if (r->lines.size() > 101) std::abort();
        }
        if (buf.size() > 2048 + chunk + 1) std::abort();
    }
    check_stuffing(input, chunk);
    return 0;
}
