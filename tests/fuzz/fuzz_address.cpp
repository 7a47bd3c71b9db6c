// libFuzzer target: MAIL FROM / RCPT TO argument parsing (paths, quoted local parts, source
// routes, address literals, ESMTP parameters). Never a crash; an accepted address is sane.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "smtp/protocol.hpp"

using namespace bmx::smtp;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string arg(reinterpret_cast<const char*>(data), size);
    for (bool reverse : {true, false}) {
        auto r = parse_path_arg(arg, reverse ? "FROM" : "TO", reverse);
        if (!r.addr) {
            if (r.error.empty() || r.error[0] != '5') std::abort();  // a refusal is a 5xx reply
            continue;
        }
        if (!reverse && r.addr->null_sender()) std::abort();  // RCPT TO:<> is never accepted
        if (!r.addr->null_sender() && (r.addr->local.empty() || r.addr->domain.empty()))
            std::abort();
        for (char c : r.addr->domain)
            if (c >= 'A' && c <= 'Z') std::abort();  // domains come back lower-cased
    }
    return 0;
}
