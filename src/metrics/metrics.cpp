#include "metrics/metrics.hpp"

#include <fmt/format.h>

#include <map>
#include <memory>
#include <mutex>

namespace bmx::metrics {
namespace {

struct Family {
    std::string help, type;
    std::map<std::string, std::unique_ptr<Counter>> counters;  // by labels
    std::unique_ptr<Histogram> histogram;
};

std::mutex& mu() {
    static std::mutex m;
    return m;
}
std::map<std::string, Family, std::less<>>& families() {
    static std::map<std::string, Family, std::less<>> f;
    return f;
}

std::string number(double v) {
    if (v == static_cast<double>(static_cast<std::int64_t>(v)))
        return std::to_string(static_cast<std::int64_t>(v));
    return fmt::format("{}", v);
}

}  // namespace

Histogram::Histogram(std::vector<double> b) : bounds(std::move(b)), buckets(bounds.size() + 1) {}

void Histogram::observe(double v) {
    std::size_t i = 0;
    while (i < bounds.size() && v > bounds[i]) ++i;
    buckets[i].fetch_add(1, std::memory_order_relaxed);
    count.fetch_add(1, std::memory_order_relaxed);
    sum_micros.fetch_add(static_cast<std::uint64_t>(v * 1e6), std::memory_order_relaxed);
}

Counter& counter(std::string_view family, std::string_view help, std::string_view labels) {
    std::lock_guard lock(mu());
    auto& f = families()[std::string(family)];
    if (f.type.empty()) {
        f.type = "counter";
        f.help = help;
    }
    auto& c = f.counters[std::string(labels)];
    if (!c) c = std::make_unique<Counter>();
    return *c;
}

Histogram& histogram(std::string_view family, std::string_view help, std::vector<double> bounds) {
    std::lock_guard lock(mu());
    auto& f = families()[std::string(family)];
    if (!f.histogram) {
        f.type = "histogram";
        f.help = help;
        f.histogram = std::make_unique<Histogram>(std::move(bounds));
    }
    return *f.histogram;
}

std::string render() {
    std::lock_guard lock(mu());
    std::string out;
    for (const auto& [name, f] : families()) {
        out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, f.help, name, f.type);
        if (f.histogram) {
            const auto& h = *f.histogram;
            std::uint64_t cum = 0;
            for (std::size_t i = 0; i < h.bounds.size(); ++i) {
                cum += h.buckets[i].load();
                out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, number(h.bounds[i]), cum);
            }
            cum += h.buckets.back().load();
            out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, cum);
            out += fmt::format("{}_sum {}\n{}_count {}\n", name,
                               number(static_cast<double>(h.sum_micros.load()) / 1e6), name,
                               h.count.load());
            continue;
        }
        for (const auto& [labels, c] : f.counters)
            out += fmt::format("{}{} {}\n", name, labels.empty() ? "" : "{" + labels + "}",
                               c->value.load());
    }
    return out;
}

std::string label_value(std::string_view v) {
    std::string out = "\"";
    for (char c : v) {
        if (c == '\\' || c == '"')
            out += {'\\', c};
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out + "\"";
}

std::string render_gauge(std::string_view family, std::string_view help,
                         const std::vector<Gauge>& series) {
    std::string out = fmt::format("# HELP {} {}\n# TYPE {} gauge\n", family, help, family);
    for (const auto& g : series)
        out += fmt::format("{}{} {}\n", family, g.labels.empty() ? "" : "{" + g.labels + "}",
                           number(g.value));
    return out;
}

}  // namespace bmx::metrics
