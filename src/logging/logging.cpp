#include "logging/logging.hpp"

#include <spdlog/details/log_msg.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>

#include "util/util.hpp"

namespace bmx::logging {

bool parse_format(std::string_view name, Format& out) {
    if (name == "text")
        out = Format::Text;
    else if (name == "json")
        out = Format::Json;
    else
        return false;
    return true;
}

std::string escape_message(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c < 0x7f) {
            out += static_cast<char>(c);
            ++i;
        } else if (std::size_t n = c >= 0x80 ? utf8_sequence(s.substr(i)) : 0; n > 0) {
            out.append(s.substr(i, n));
            i += n;
        } else {
            char hex[5];
            std::snprintf(hex, sizeof hex, "\\x%02X", c);
            out += hex;
            ++i;
        }
    }
    return out;
}

namespace {

// JSON string contents of text escape_message() made safe: only '"' and '\\' remain to escape.
void append_json_string(std::string& out, std::string_view escaped) {
    out += '"';
    for (char c : escaped) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    out += '"';
}

class Formatter final : public spdlog::formatter {
  public:
    explicit Formatter(Format f) : format_(f) {}

    void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
        using namespace std::chrono;
        const auto t = msg.time;
        const auto secs = system_clock::to_time_t(t);
        const auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count() % 1000;
        std::tm tm{};
        const auto lv = spdlog::level::to_string_view(msg.level);
        const std::string_view level(lv.data(), lv.size());
        const std::string text =
            escape_message(std::string_view(msg.payload.data(), msg.payload.size()));
        char stamp[40];
        std::string line;
        if (format_ == Format::Text) {
            ::localtime_r(&secs, &tm);
            std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
            line = std::string(stamp) + "." + three(ms) + " " + std::string(level) + " " + text;
        } else {
            ::gmtime_r(&secs, &tm);
            std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
            line = "{\"time\":\"" + std::string(stamp) + "." + three(ms) + "Z\",\"level\":\"" +
                   std::string(level) + "\",\"message\":";
            append_json_string(line, text);
            line += '}';
        }
        line += '\n';
        dest.append(line.data(), line.data() + line.size());
    }

    std::unique_ptr<spdlog::formatter> clone() const override {
        return std::make_unique<Formatter>(format_);
    }

  private:
    static std::string three(long long ms) {  // 0..999, zero-padded
        std::string b = std::to_string(ms % 1000);
        return std::string(3 - b.size(), '0') + b;
    }
    Format format_;
};

}  // namespace

std::unique_ptr<spdlog::formatter> make_formatter(Format f) {
    return std::make_unique<Formatter>(f);
}

void setup(const std::string& level, Format f) {
    auto logger = spdlog::get("backupmx");
    if (!logger) logger = spdlog::stderr_color_mt("backupmx");
    logger->set_formatter(make_formatter(f));
    logger->set_level(spdlog::level::from_str(level));
    logger->flush_on(spdlog::level::trace);
    spdlog::set_default_logger(logger);
}

}  // namespace bmx::logging
