// scheduler: decides when each queued message is tried and against which primary — per-domain
// up/down state, probes of a down primary every probe_interval, exponential retry backoff, bounded
// and slowly growing concurrency per primary, expiry after max_age — and applies each attempt's
// per-recipient results through the queue (delivered, deferred, bounced with a DSN).
// It keeps only a small index in memory (id, domain, times), never message bodies at rest, and it
// must never remove a message whose DSN is owed but not committed in the same transaction.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <list>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "alerts/alerts.hpp"
#include "config/config.hpp"
#include "delivery/client.hpp"
#include "delivery/route.hpp"
#include "dns/resolver.hpp"
#include "policy/checker.hpp"
#include "queue/queue.hpp"
#include "scheduler/index.hpp"

namespace bmx {

class Scheduler {
  public:
    Scheduler(boost::asio::io_context& io, const Config& cfg, Queue& queue,
              dns::Resolver& resolver);
    // Loads the index from the store (every destination starts "unknown": probed at once) and runs.
    boost::asio::awaitable<void> run();
    void add(const std::vector<NewMessage>& msgs);  // newly committed messages
    // Everything (or one domain) due now; a down primary is probed now. Returns messages affected.
    std::size_t flush(const std::string& domain);
    void forget(const std::string& id);  // an operator deleted it from the store
    // An operator acts on a message (hold, delete, bounce): the scheduler lets go of it. An
    // attempt in flight sends nothing more — it stops before its final dot unless that is sent —
    // and is not retried; its outcome is still recorded. True when no attempt is in flight (any
    // more): what the store holds is then final until the operator acts.
    bool withdraw(const std::string& id);
    // withdraw(), then waits until the attempt in flight (if any) has recorded its outcome, at
    // most `limit`. True when it has (or there was none).
    boost::asio::awaitable<bool> settle(const std::string& id, std::chrono::milliseconds limit);
    void stop();                                 // cancels attempts in flight; they stay queued
    void set_alerts(Alerts* a) { alerts_ = a; }  // told of outages and full queues
    // A held message released by an operator: scheduled again, due now.
    void release(const std::string& id, const std::string& domain, TimePoint received,
                 int attempts);

    // What the admin panel shows of a domain's primary.
    struct PrimaryStatus {
        const char* state = "unknown";  // "up" | "down" | "unknown" (not tried since start)
        std::optional<TimePoint> since, last_probe;
        std::string last_result;
        std::size_t queued = 0, in_flight = 0;
    };
    PrimaryStatus status(const std::string& domain) const;
    // Probes a domain's primary now (a domain just added): its state is known without mail.
    void check(const std::string& domain);
    // ETRN (RFC 1985): may the client at `ip` ask for `domain`'s mail? Yes for the addresses its
    // mail goes to (the primary, or its MX hosts) and the domain's etrn_networks.
    boost::asio::awaitable<bool> etrn_allowed(const std::string& domain, const std::string& ip);
    // Recipient verification for policy/: asks the primary unless it is known to be down.
    boost::asio::awaitable<policy::Verification> verify(const std::string& domain,
                                                        const std::string& recipient);

  private:
    struct Dest {
        Index::Dest id = 0;
        bool up = true;  // unknown counts as up for fresh mail; restart marks it down
        bool probing = false;
        TimePoint next_probe{}, down_since{};
        unsigned in_flight = 0;
        unsigned limit = 1;
        unsigned failures = 0;       // tries in a row that did not reach the primary
        bool alerted_down = false;   // an outage alert went out: the recovery is told too
        bool alerted_queue = false;  // over the queue threshold (re-armed below half of it)
        bool known = false;          // reached, or tried, since start
        bool outage_open = false;    // an outage row in the store waits for its end
        bool draining = false;       // back up: its drain time is recorded when the queue empties
        TimePoint since{}, last_probe{};  // state since; last probe or attempt
        TimePoint slot_wait{};  // a fleet: no connection slot was free; ask again at this time
        std::string last_result;
    };
    void outage_event(const std::string& domain, int what);  // 0 begin, 1 end, 2 drained
    void tried(Dest& d, bool reached, const std::string& result);
    void failed_try(const std::string& domain, const std::string& why);
    void check_queue(const std::string& domain);

    void index(const std::string& id, const std::string& domain, TimePoint received, TimePoint next,
               int attempts);
    const std::string& domain_of(const std::string& id);
    void pump();
    void wake();
    Dest& dest(const std::string& domain);
    boost::asio::awaitable<delivery::Route> route(const std::string& domain);
    delivery::Settings settings(const std::string& domain);
    void mark_down(const std::string& domain, const std::string& why);
    void spawn(boost::asio::awaitable<void> work);
    std::optional<std::string> take_due(Dest& d, TimePoint t);  // marks it in flight
    boost::asio::awaitable<void> worker(std::string domain, std::string first);
    boost::asio::awaitable<void> expire(std::string id);
    boost::asio::awaitable<void> attempt(std::string id, delivery::Session* session,
                                         const delivery::Route* route);
    boost::asio::awaitable<void> probe(std::string domain);
    boost::asio::awaitable<void> fleet();
    boost::asio::awaitable<void> follow();
    boost::asio::awaitable<void> release_slot(std::string domain);
    boost::asio::awaitable<void> window(std::string domain, Store::Window how);
    void publish(const std::string& domain);   // a fleet: this primary's state, for every node
    void adopt(const Store::PrimaryState& p);  // ... and what another node saw of it
    // Records an outcome through the queue (which commits and schedules its DSN, if any).
    boost::asio::awaitable<void> finish(std::string id, AttemptUpdate u);
    // What a recorded outcome means for the index: gone, or due again at `next`.
    void after_record(const std::string& id, int left, TimePoint next);
    boost::asio::awaitable<void> record_later();  // retries unrecorded_ until the store takes them

    // A connection to a primary carries at most this many messages, for at most this long
    // (Postfix: smtp_connection_reuse_time_limit = 300s), then the worker reconnects.
    static constexpr std::size_t kReuseCount = 1000;
    static constexpr std::chrono::seconds kReuseTime{300};

    boost::asio::io_context& io_;
    const Config& cfg_;
    Queue& queue_;
    dns::Resolver& resolver_;
    delivery::TlsContexts tls_;
    boost::asio::steady_timer timer_;
    Index index_;
    std::map<std::string, Dest> dests_;
    std::list<boost::asio::cancellation_signal> signals_;
    bool stopping_ = false;
    Alerts* alerts_ = nullptr;
    bool fleet_ = false;  // a PostgreSQL store shared with other nodes
    std::map<std::string, Store::PrimaryState> shared_;  // a fleet: what all nodes saw last
    // Withdrawn by an operator while in flight, with the timer settle() waits on (cancelled when
    // the attempt's outcome is recorded).
    std::map<std::string, std::shared_ptr<boost::asio::steady_timer>, std::less<>> withdrawn_;
    void settled(const std::string& id);  // the withdrawn attempt ended: gone from the index
    // Outcomes of attempts (a delivery, most often) the store could not record: kept until it
    // can; while any is here no new attempt starts (see pump).
    std::map<std::string, AttemptUpdate> unrecorded_;
    bool recording_ = false;  // record_later() runs
};

}  // namespace bmx
