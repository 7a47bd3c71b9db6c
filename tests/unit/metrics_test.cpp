#include "metrics/metrics.hpp"

#include <gtest/gtest.h>

using namespace bmx;

TEST(Metrics, RendersCountersHistogramsAndGauges) {
    metrics::counter("t_requests_total", "Requests", "kind=\"a\"").inc(2);
    metrics::counter("t_requests_total", "Requests", "kind=\"b\"").inc();
    auto& h = metrics::histogram("t_latency_seconds", "Latency", {0.1, 1});
    h.observe(0.05);
    h.observe(0.5);
    h.observe(5);
    const auto out = metrics::render();
    EXPECT_NE(out.find("# TYPE t_requests_total counter\n"), std::string::npos);
    EXPECT_NE(out.find("t_requests_total{kind=\"a\"} 2\n"), std::string::npos);
    EXPECT_NE(out.find("t_requests_total{kind=\"b\"} 1\n"), std::string::npos);
    EXPECT_NE(out.find("t_latency_seconds_bucket{le=\"0.1\"} 1\n"), std::string::npos);
    EXPECT_NE(out.find("t_latency_seconds_bucket{le=\"1\"} 2\n"), std::string::npos);
    EXPECT_NE(out.find("t_latency_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos);
    EXPECT_NE(out.find("t_latency_seconds_count 3\n"), std::string::npos);
    EXPECT_NE(out.find("t_latency_seconds_sum 5.55\n"), std::string::npos);
    EXPECT_EQ(metrics::label_value("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    const auto g = metrics::render_gauge("t_up", "Up", {{"d=\"x\"", 1}, {"d=\"y\"", 0.5}});
    EXPECT_EQ(g, "# HELP t_up Up\n# TYPE t_up gauge\nt_up{d=\"x\"} 1\nt_up{d=\"y\"} 0.5\n");
}
