// libFuzzer target: SMTP command framing and parsing (CommandReader, parse_command). Any bytes,
// split anywhere: never a crash, never a line longer than the limit, never unbounded buffering.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "smtp/protocol.hpp"

using namespace bmx::smtp;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    // First byte picks the chunk size, so the same bytes are tried split differently.
    const std::size_t chunk = 1 + data[0] % 64;
    std::string input(reinterpret_cast<const char*>(data + 1), size - 1);
    CommandReader reader;
    std::string buf;
    for (std::size_t i = 0; i < input.size(); i += chunk) {
        buf.append(input, i, chunk);
        while (auto line = reader.next(buf)) {
            if (line->text.size() > kMaxCommandLine) std::abort();
            Command c = parse_command(line->text);
            if (c.verb == Verb::Mail) (void)parse_path_arg(c.arg, "FROM", true);
            if (c.verb == Verb::Rcpt) (void)parse_path_arg(c.arg, "TO", false);
        }
        if (buf.size() > kMaxCommandLine + chunk) std::abort();  // buffered past the limit
    }
    return 0;
}
