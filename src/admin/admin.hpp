// admin: the operator console behind the admin listener — login and sessions, API tokens, the
// JSON API of src/admin/API.md (domains, queue, primaries, tokens, audit), the web panel's pages
// and /metrics. Every action is checked against the caller's role and domains, and every change
// is written to the log and to the store's audit table with who, what and when.
// It must never serve anything but the login page and /healthz without authentication, never
// show a customer another customer's domain, queue or message (not even whether it exists), and
// never write a password, token, session cookie or CSRF token to the log.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "accounts/accounts.hpp"
#include "admin/http.hpp"
#include "admin/login_pool.hpp"
#include "config/config.hpp"
#include "dnscheck/dnscheck.hpp"
#include "domains/domains.hpp"
#include "queue/queue.hpp"
#include "scheduler/scheduler.hpp"

namespace bmx::admin {

// A domain's primary as the API shows it (and the control socket's `status`): state, since,
// last_probe (Unix seconds, null for never), last_result.
boost::json::object primary_json(const Scheduler::PrimaryStatus& st);

struct Parts {
    const Config& cfg;
    Queue& queue;
    Scheduler& scheduler;
    Domains& domains;
    dns::Resolver& resolver;
    std::function<std::size_t()> smtp_sessions;  // open SMTP sessions, for /metrics
};

class Admin {
  public:
    Admin(boost::asio::io_context& io, Parts parts);
    ~Admin();
    void start();  // binds [admin] listen (throws when it cannot)
    void stop();

    struct Caller;
    struct Ctx;

  private:
    boost::asio::awaitable<Response> handle(const Request& req, const Peer& peer);
    boost::asio::awaitable<Response> route(Ctx& c);
    boost::asio::awaitable<Response> login(Ctx& c);
    boost::asio::awaitable<std::optional<Caller>> authenticate(const Request& req);
    boost::asio::awaitable<Response> domains_api(Ctx& c);
    boost::asio::awaitable<Response> add_domain(Ctx& c);
    boost::asio::awaitable<Response> change_domain(Ctx& c, const std::string& name);
    boost::asio::awaitable<Response> queue_api(Ctx& c);
    boost::asio::awaitable<Response> message_api(Ctx& c);
    boost::asio::awaitable<Response> tokens_api(Ctx& c);
    boost::asio::awaitable<Response> metrics(Ctx& c);
    boost::asio::awaitable<std::optional<dnscheck::Report>> dns_check(const std::string& domain);
    boost::asio::awaitable<void> audit(const Ctx& c, const std::string& action,
                                       const std::string& target, const std::string& detail);
    boost::asio::awaitable<void> store_audit(AuditEntry e);
    boost::json::object domain_json(const std::string& name,
                                    const std::vector<QueueSummary>& sums) const;
    boost::asio::awaitable<std::vector<QueueSummary>> summaries();
    Response login_page(const Request& req, unsigned status, const std::string& error);
    Response busy(const Ctx& c, const std::string& user);  // 429, Retry-After
    bool exists(const std::string& name) const;            // config file or store
    // Customers' domains: a claim, pending until DNS proves it or an operator approves it.
    boost::asio::awaitable<Response> claim_domain(Ctx& c, const std::string& name,
                                                  const std::string& primary);
    boost::asio::awaitable<void> check_claims();  // each pending claim against live DNS
    boost::asio::awaitable<void> claims_loop();   // check_claims every claim_check_interval
    // Serves the claimed domain (or adds its account as an owner); `how` says why.
    boost::asio::awaitable<void> activate(const DomainClaim& claim, const std::string& how);
    // Why `primary` may not be a customer's ("": it may): a loopback, private or link-local
    // address, given or resolved, unless [admin] customer_private_primaries.
    boost::asio::awaitable<std::string> private_primary(const std::string& primary);

    boost::asio::io_context& io_;
    Parts p_;
    LoginPool logins_;  // Argon2id off the event loop, bounded and fair
    std::unique_ptr<Listener> listener_;
    boost::asio::steady_timer claims_timer_;  // claims_loop's
};

}  // namespace bmx::admin
