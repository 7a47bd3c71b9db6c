// What the net tests share: a temporary directory, milter wire helpers, and gtest printing.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <ostream>
#include <string>
#include <string_view>

#include "milter/milter.hpp"

namespace bmx::milter {
inline void PrintTo(const Verdict& v, std::ostream* os) {  // for gtest's failure messages
    static const char* names[] = {"Continue", "Accept",  "Reject",
                                  "Tempfail", "Discard", "ReplyCode"};
    *os << names[v.action] << (v.reply.empty() ? "" : " \"" + v.reply + "\"");
}
}  // namespace bmx::milter

namespace bmx::test {

// A fresh directory under /tmp, removed with everything in it at the end of the scope.
struct TempDir {
    TempDir() {
        char tmpl[] = "/tmp/bmx-test-XXXXXX";
        path = mkdtemp(tmpl);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string path;
};

// Milter wire encodings: a 32-bit network-order integer, a NUL-terminated string.
inline std::string u32(std::uint32_t v) {
    std::string s;
    for (int shift = 24; shift >= 0; shift -= 8) s += static_cast<char>((v >> shift) & 0xff);
    return s;
}
inline std::string z(std::string_view s) {
    return std::string(s) + '\0';
}

}  // namespace bmx::test
