// util: small helpers every part shares — the one clock, duration text, queue ids, address case
// rules. Must never do I/O or hold state beyond what a test can replace (the clock is injectable).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace bmx {

using Clock = std::chrono::system_clock;
using TimePoint = Clock::time_point;
using Seconds = std::chrono::seconds;

// Time comes from here so tests can move it: BACKUPMX_TIME_OFFSET (seconds, may be negative) is
// added to the system clock. Set once at start; reading it is cheap.
TimePoint now();
void set_time_offset(Seconds offset);
std::int64_t to_unix(TimePoint t);
TimePoint from_unix(std::int64_t s);

// "90", "30s", "5m", "2h", "14d" -> seconds. nullopt on anything else (no silent guessing).
std::optional<Seconds> parse_duration(std::string_view text);
std::string format_duration(Seconds s);  // 3725 -> "1h2m5s"

// Queue ids: 16 hex characters, time-ordered prefix plus randomness, unique across restarts.
std::string new_queue_id();
// An LDH domain or host name in A-label form: labels of 1-63 letters, digits and hyphens.
bool valid_domain_name(std::string_view d);

// The length of the UTF-8 sequence of a non-ASCII character at the start of `s` (RFC 3629: no
// overlong forms, surrogates or C1 controls), 0 when there is none.
std::size_t utf8_sequence(std::string_view s);
// Text a peer sent, made safe to echo in a reply or a log line: control bytes (CR, LF, ESC, ...),
// bytes that are not UTF-8, and the C1 controls become "\xNN"; '\\' and '"' are escaped too, so a
// quoted log value cannot be ended early. Printable ASCII and valid UTF-8 stay as they are.
std::string printable(std::string_view s);

std::string to_lower(std::string_view s);
bool iequals(std::string_view a, std::string_view b);
// RFC 5322 date for headers, e.g. "Sun, 22 Nov 2026 20:04:51 +0000".
std::string rfc5322_date(TimePoint t);

}  // namespace bmx
