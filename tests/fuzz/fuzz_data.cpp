// libFuzzer target: the DATA stream scanner. The same bytes fed whole and in random pieces give
// the same result; output never exceeds the size limit; only CRLF.CRLF ends the data.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "smtp/protocol.hpp"

using namespace bmx::smtp;

namespace {
struct Run {
    std::string out;
    std::size_t consumed = 0;
    bool done = false, refused = false;
};

Run scan(std::string_view in, std::size_t chunk, std::uint64_t max) {
    DataScanner s(max);
    Run r;
    for (std::size_t i = 0; i < in.size() && !s.done(); i += chunk) {
        auto piece = in.substr(i, chunk);
        std::size_t used = s.feed(piece, r.out);
        r.consumed += used;
        if (used < piece.size() && !s.done()) std::abort();  // stopped early without an end
    }
    r.done = s.done();
    r.refused = s.refused();
    return r;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    const std::size_t chunk = 1 + data[0] % 17;
    const std::uint64_t max = 1 + data[1] * 16u;
    std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
    Run whole = scan(in, in.size() + 1, max);
    Run split = scan(in, chunk, max);
    if (whole.out != split.out || whole.done != split.done || whole.refused != split.refused ||
        whole.consumed != split.consumed)
        std::abort();
    if (whole.out.size() > max) std::abort();  // never holds more than the limit
    if (whole.done) {
        auto eaten = in.substr(0, whole.consumed);
        bool ends = eaten == ".\r\n" || eaten.ends_with("\r\n.\r\n");
        if (!ends) std::abort();  // the only end of data is CRLF . CRLF
    }
    return 0;
}
