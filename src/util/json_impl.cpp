// Boost.JSON compiled once, header-only mode: Debian's libboost1.81-dev ships no libboost_json.
#include <boost/json/src.hpp>

#include "util/json.hpp"
#include "util/util.hpp"

namespace bmx {

std::string valid_utf8_or_replaced(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            out += static_cast<char>(c);
            ++i;
        } else if (std::size_t n = utf8_sequence(s.substr(i)); n > 0) {
            out.append(s.substr(i, n));
            i += n;
        } else if (c == 0xc2 && i + 1 < s.size() &&
                   (static_cast<unsigned char>(s[i + 1]) & 0xc0) == 0x80) {
            out.append(s.substr(i, 2));  // a C1 control is valid UTF-8: JSON escapes it fine
            i += 2;
        } else {
            out += "\xef\xbf\xbd";  // U+FFFD
            ++i;
        }
    }
    return out;
}

namespace {

bool needs_fix(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            ++i;
            continue;
        }
        std::size_t n = utf8_sequence(s.substr(i));
        if (n == 0 && c == 0xc2 && i + 1 < s.size() &&
            (static_cast<unsigned char>(s[i + 1]) & 0xc0) == 0x80)
            n = 2;
        if (n == 0) return true;
        i += n;
    }
    return false;
}

// Only what needs it is copied: a document of valid strings is serialized as it is.
bool fix(boost::json::value& v) {
    bool changed = false;
    if (auto* s = v.if_string()) {
        if (needs_fix(*s)) {
            *s = valid_utf8_or_replaced(*s);
            changed = true;
        }
    } else if (auto* a = v.if_array()) {
        for (auto& e : *a) changed |= fix(e);
    } else if (auto* o = v.if_object()) {
        boost::json::object fixed;
        bool keys = false;
        for (auto& kv : *o) {
            changed |= fix(kv.value());
            keys |= needs_fix(kv.key());
        }
        if (keys) {
            for (auto& kv : *o) fixed[valid_utf8_or_replaced(kv.key())] = kv.value();
            *o = std::move(fixed);
            changed = true;
        }
    }
    return changed;
}

bool any_fix(const boost::json::value& v) {
    if (auto* s = v.if_string()) return needs_fix(*s);
    if (auto* a = v.if_array()) {
        for (const auto& e : *a)
            if (any_fix(e)) return true;
    } else if (auto* o = v.if_object()) {
        for (const auto& kv : *o)
            if (needs_fix(kv.key()) || any_fix(kv.value())) return true;
    }
    return false;
}

}  // namespace

std::string json_text(const boost::json::value& v) {
    if (!any_fix(v)) return boost::json::serialize(v);
    boost::json::value copy = v;
    fix(copy);
    return boost::json::serialize(copy);
}

}  // namespace bmx
