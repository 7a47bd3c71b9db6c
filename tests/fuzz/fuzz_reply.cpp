// libFuzzer target: the SMTP reply parser used by the delivery client, and dot-stuffing.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "delivery/reply.hpp"

using namespace bmx::delivery;

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
    std::string stuffed = stuff_body(input);
    if (!stuffed.ends_with(".\r\n")) std::abort();
    return 0;
}
