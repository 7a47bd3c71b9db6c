// alerts: tells the operator when a primary goes down (after [alerts] down_after failed tries in a
// row), when it is back, and when a domain's queue passes [alerts] queue_threshold — an HTTP POST
// of JSON to a webhook and/or an email, queued and delivered like any other message.
// It must never block the event loop or delivery (a webhook gets one try, bounded in time) and
// never send an alert email through the primary the alert is about.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json/object.hpp>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "queue/queue.hpp"

namespace bmx {

class Alerts {
  public:
    // Alert mail goes through queue.submit(): committed, then scheduled.
    Alerts(boost::asio::io_context& io, const Config& cfg, Queue& queue);
    bool enabled() const { return !cfg_.alert_webhook.empty() || !cfg_.alert_email.empty(); }

    void primary_down(const std::string& domain, const std::string& error, std::size_t queued);
    void primary_up(const std::string& domain, Seconds down_for, std::size_t queued);
    void queue_over(const std::string& domain, std::size_t queued);

  private:
    void raise(const std::string& event, const std::string& domain, boost::json::object fields,
               const std::string& subject, const std::string& text);
    boost::asio::awaitable<void> post(std::string body);
    boost::asio::awaitable<void> mail(NewMessage m);

    boost::asio::io_context& io_;
    const Config& cfg_;
    Queue& queue_;
};

}  // namespace bmx
