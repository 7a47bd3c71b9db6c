// logging: the one way a log line leaves the server. Every message passes through here, whatever
// part wrote it and whatever a peer put in its fields: control characters (CR, LF, ESC, ...), C1
// controls and bytes that are not UTF-8 come out as "\xNN", so no client, customer or primary can
// forge a line, hide one, or drive a terminal. Text lines look as they always did; JSON lines are
// one object each. It must never write a byte of a message unescaped, and never drop a message.
#pragma once

#include <spdlog/formatter.h>

#include <memory>
#include <string>
#include <string_view>

namespace bmx::logging {

enum class Format { Text, Json };

// "text" or "json"; nullopt-like false when neither.
bool parse_format(std::string_view name, Format& out);

// The escaped form of one message: printable ASCII and valid UTF-8 as they are, anything else
// "\xNN". Line breaks inside a message are escaped too: one event, one line.
std::string escape_message(std::string_view s);

// A formatter for spdlog: "2026-12-02 13:44:13.123 info <message>" or
// {"time":"2026-12-02T13:44:13.123Z","level":"info","message":"..."} .
std::unique_ptr<spdlog::formatter> make_formatter(Format f);

// The process's default logger, on stderr, at `level`, in format `f`.
void setup(const std::string& level, Format f = Format::Text);

}  // namespace bmx::logging
