// metrics: the counters and histograms that the parts bump as things happen (messages accepted,
// rejected by reason, delivered, store commit latency...), rendered in Prometheus text format
// (exposition format 0.0.4) by the admin listener together with the gauges it reads at scrape
// time. It must never block: a bump is one atomic add once the series exists.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bmx::metrics {

struct Counter {
    std::atomic<std::uint64_t> value{0};
    void inc(std::uint64_t n = 1) { value.fetch_add(n, std::memory_order_relaxed); }
};

struct Histogram {
    std::vector<double> bounds;                       // upper bounds, ascending; +Inf is implied
    std::vector<std::atomic<std::uint64_t>> buckets;  // per bound, not cumulative; last: +Inf
    std::atomic<std::uint64_t> count{0};
    std::atomic<std::uint64_t> sum_micros{0};  // sum of observations × 1e6
    explicit Histogram(std::vector<double> b);
    void observe(double v);
};

// The series `family{labels}` (labels like `reason="spf"`, already escaped; "" for none),
// created on first use and kept for the process's life: callers may keep the reference.
Counter& counter(std::string_view family, std::string_view help, std::string_view labels = "");
Histogram& histogram(std::string_view family, std::string_view help, std::vector<double> bounds);

// Every registered series, one family after another with its HELP and TYPE lines.
std::string render();

// Helpers for gauges written by the scraper: a label value escaped (\\, \", \n) and a gauge family.
std::string label_value(std::string_view v);
struct Gauge {
    std::string labels;  // `domain="a.test"`
    double value = 0;
};
std::string render_gauge(std::string_view family, std::string_view help,
                         const std::vector<Gauge>& series);

}  // namespace bmx::metrics
