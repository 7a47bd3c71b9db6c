// util/json: the one way backupmx writes JSON (API replies, `--json` output, alert payloads).
// Boost.JSON's serializer copies string bytes as they are, so a stored address or reply that is
// not UTF-8 (a sender's bytes, a primary's reply) would make the whole document invalid: every
// string here is made valid UTF-8 first (each bad byte becomes U+FFFD). It must never emit
// anything a strict JSON parser refuses, whatever it is given.
#pragma once

#include <boost/json/value.hpp>
#include <string>
#include <string_view>

namespace bmx {

// `s` with every byte that does not start a valid UTF-8 sequence replaced by U+FFFD.
std::string valid_utf8_or_replaced(std::string_view s);

// serialize(v), with every string (keys too) made valid UTF-8.
std::string json_text(const boost::json::value& v);

}  // namespace bmx
