#include "alerts/alerts.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/serialize.hpp>

#include "util/json.hpp"

namespace bmx {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using asio::ip::tcp;

Alerts::Alerts(asio::io_context& io, const Config& cfg, Queue& queue)
    : io_(io), cfg_(cfg), queue_(queue) {}

void Alerts::primary_down(const std::string& domain, const std::string& error, std::size_t queued) {
    raise("primary_down", domain, {{"error", error}, {"queued", queued}},
          "primary for " + domain + " is down",
          "The primary mail server for " + domain + " is not answering: " + error +
              "\r\n\r\nbackupmx on " + cfg_.hostname + " keeps the domain's mail (" +
              std::to_string(queued) + " messages now) and sends it when the primary is back.");
}

void Alerts::primary_up(const std::string& domain, Seconds down_for, std::size_t queued) {
    raise("primary_up", domain, {{"down_seconds", down_for.count()}, {"queued", queued}},
          "primary for " + domain + " is back",
          "The primary mail server for " + domain + " answers again after " +
              format_duration(down_for) + " down.\r\n\r\nbackupmx on " + cfg_.hostname +
              " is sending it the " + std::to_string(queued) + " messages it kept.");
}

void Alerts::queue_over(const std::string& domain, std::size_t queued) {
    raise("queue_threshold", domain,
          {{"queued", queued}, {"threshold", cfg_.alert_queue_threshold}},
          "queue for " + domain + " holds " + std::to_string(queued) + " messages",
          "backupmx on " + cfg_.hostname + " holds " + std::to_string(queued) + " messages for " +
              domain + " (alert threshold " + std::to_string(cfg_.alert_queue_threshold) + ").");
}

void Alerts::raise(const std::string& event, const std::string& domain, boost::json::object fields,
                   const std::string& subject, const std::string& text) {
    spdlog::warn("alert {}: {}", event, subject);
    if (!cfg_.alert_webhook.empty()) {
        fields["event"] = event;
        fields["domain"] = domain;
        fields["node"] = cfg_.hostname;
        fields["time"] = to_unix(now());
        std::string json = json_text(fields);
        asio::co_spawn(io_, post(std::move(json)), asio::detached);
    }
    if (cfg_.alert_email.empty()) return;
    const std::string to_domain =
        to_lower(cfg_.alert_email.substr(cfg_.alert_email.rfind('@') + 1));
    if (to_domain == domain) {  // it would wait behind the very primary it is about
        spdlog::warn("alert {}: not mailed to {}: its domain is the one whose primary it is about",
                     event, cfg_.alert_email);
        return;
    }
    NewMessage m;
    m.id = new_queue_id();
    m.domain = to_domain;
    m.recipients = {cfg_.alert_email};  // from <>: nothing bounces back to us about an alert
    m.received_at = m.next_attempt_at = now();
    m.client = "alerts [127.0.0.1]";
    m.body = "From: backupmx <postmaster@" + cfg_.hostname + ">\r\nTo: <" + cfg_.alert_email +
             ">\r\nSubject: backupmx: " + subject + "\r\nDate: " + rfc5322_date(now()) +
             "\r\nMessage-ID: <" + m.id + "@" + cfg_.hostname +
             ">\r\nAuto-Submitted: auto-generated\r\nX-Backupmx-Alert: " + event +
             "\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + text + "\r\n";
    asio::co_spawn(io_, mail(std::move(m)), asio::detached);
}

asio::awaitable<void> Alerts::mail(NewMessage m) {
    const std::vector<NewMessage> msgs{std::move(m)};
    try {
        co_await queue_.submit(msgs);
    } catch (const std::exception& e) {
        spdlog::error("alert mail to {} not queued: {}", cfg_.alert_email, e.what());
        co_return;
    }
}

asio::awaitable<void> Alerts::post(std::string body) {
    const auto url = parse_http_url(cfg_.alert_webhook);  // checked by config already
    auto failed = [this](const boost::system::error_code& ec) {
        if (ec) spdlog::error("alert webhook {}: {}", cfg_.alert_webhook, ec.message());
        return bool(ec);
    };
    auto ex = co_await asio::this_coro::executor;
    tcp::resolver resolver(ex);
    auto [rec, endpoints] = co_await resolver.async_resolve(url->host, std::to_string(url->port),
                                                            asio::as_tuple(asio::use_awaitable));
    if (failed(rec)) co_return;
    boost::beast::tcp_stream stream(ex);
    stream.expires_after(std::chrono::seconds(10));  // one try, bounded: alerts never pile up
    auto [cec, ep] = co_await stream.async_connect(endpoints, asio::as_tuple(asio::use_awaitable));
    if (failed(cec)) co_return;
    http::request<http::string_body> req{http::verb::post, url->target, 11};
    req.set(http::field::host, url->host);
    req.set(http::field::user_agent, "backupmx");
    req.set(http::field::content_type, "application/json");
    req.body() = std::move(body);
    req.prepare_payload();
    auto [wec, wn] = co_await http::async_write(stream, req, asio::as_tuple(asio::use_awaitable));
    if (failed(wec)) co_return;
    boost::beast::flat_buffer buf;
    http::response<http::string_body> res;
    auto [rdec, rn] =
        co_await http::async_read(stream, buf, res, asio::as_tuple(asio::use_awaitable));
    if (failed(rdec)) co_return;
    if (res.result_int() / 100 != 2)
        spdlog::error("alert webhook {}: HTTP {}", cfg_.alert_webhook, res.result_int());
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
}

}  // namespace bmx
