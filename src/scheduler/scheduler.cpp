#include "scheduler/scheduler.hpp"

#include <malloc.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "bounce/dsn.hpp"
#include "delivery/client.hpp"
#include "metrics/metrics.hpp"
#include "policy/policy.hpp"

namespace bmx {

namespace asio = boost::asio;
using namespace boost::asio::experimental::awaitable_operators;

namespace {

std::string angle_list(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& r : v) out += (out.empty() ? "<" : ",<") + r + ">";
    return out;
}

std::string age(TimePoint from, TimePoint to) {
    return format_duration(std::chrono::duration_cast<Seconds>(to - from));
}

// Per recipient: "delivered", "deferred", "bounced", "expired".
void count_result(const char* result, std::size_t n = 1) {
    metrics::counter("backupmx_delivery_results_total",
                     "Outcomes of delivery attempts, per recipient",
                     std::string("result=\"") + result + "\"")
        .inc(n);
}

}  // namespace

Scheduler::Scheduler(asio::io_context& io, const Config& cfg, Queue& queue, dns::Resolver& resolver)
    : io_(io),
      cfg_(cfg),
      queue_(queue),
      resolver_(resolver),
      timer_(io),
      fleet_(is_pg_url(cfg.store)) {}

Scheduler::Dest& Scheduler::dest(const std::string& domain) {
    auto [it, fresh] = dests_.try_emplace(domain);
    if (fresh) {
        it->second.limit = cfg_.initial_concurrency;
        it->second.id = index_.dest(domain);
    }
    return it->second;
}

const std::string& Scheduler::domain_of(const std::string& id) {
    return index_.domain(index_.find(*Index::key(id))->dest);
}

asio::awaitable<delivery::Route> Scheduler::route(const std::string& domain) {
    auto r = co_await delivery::route(resolver_, cfg_, domain);
    for (const auto& w : r.warnings) spdlog::warn("routing {}: {}", domain, w);
    co_return r;
}

delivery::Settings Scheduler::settings(const std::string& domain) {
    delivery::Settings s{cfg_.hostname, cfg_.connect_timeout, cfg_.reply_timeout};
    if (auto* d = cfg_.find_domain(domain)) {
        s.tls = d->tls;
        s.tls_ca_file = d->tls_ca_file;
    }
    s.contexts = &tls_;
    s.resolver = &resolver_;
    return s;
}

asio::awaitable<bool> Scheduler::etrn_allowed(const std::string& domain, const std::string& ip) {
    const auto* d = cfg_.find_domain(domain);
    if (!d) co_return false;
    if (policy::in_networks(ip, policy::parse_networks(d->etrn_networks))) co_return true;
    auto r = co_await route(domain);
    boost::system::error_code ec;
    const auto client = asio::ip::make_address(ip, ec);
    if (ec) co_return false;
    for (const auto& t : r.targets)
        if (t.address == client) co_return true;
    co_return false;
}

asio::awaitable<policy::Verification> Scheduler::verify(const std::string& domain,
                                                        const std::string& recipient) {
    using Kind = policy::Verification::Kind;
    auto it = dests_.find(domain);
    if (it != dests_.end() && !it->second.up)
        co_return policy::Verification{Kind::Unknown, "primary for " + domain + " is down"};
    auto r = co_await route(domain);
    if (r.kind != delivery::Route::Kind::Ok) co_return policy::Verification{Kind::Unknown, r.error};
    auto s = settings(domain);
    s.connect_timeout = s.reply_timeout = cfg_.verify_timeout;
    auto o = co_await delivery::verify(s, r.targets, recipient);
    if (o.rcpt.empty()) co_return policy::Verification{Kind::Unknown, o.error};
    const auto& rep = o.rcpt.front();
    if (rep.positive()) co_return policy::Verification{Kind::Exists, rep.text()};
    if (rep.permanent()) co_return policy::Verification{Kind::NoSuchUser, rep.text()};
    co_return policy::Verification{Kind::Unknown, rep.text()};
}

void Scheduler::index(const std::string& id, const std::string& domain, TimePoint received,
                      TimePoint next, int attempts) {
    dest(domain);
    auto k = Index::key(id);
    if (k && index_.find(*k)) return;  // accepted while the queue was loading: known already
    if (!index_.add(id, domain, received, next, attempts))
        spdlog::error("scheduler: cannot schedule id={} (not a queue id, or twice)", id);
}

asio::awaitable<void> Scheduler::run() {
    // A page at a time, so the event loop keeps serving SMTP while a large queue loads, and the
    // rows never sit in memory twice.
    std::int64_t after = 0;
    std::size_t loaded = 0;
    const auto t = now();
    for (;;) {
        struct Page {
            std::vector<IndexEntry> rows;
            bool more = false;
        };
        const std::function<Page(Store&)> load = [&after](Store& s) {
            Page p;
            p.more = s.load_index_page(after, 20000, p.rows);
            return p;
        };
        auto page = co_await queue_.call(load);
        for (auto& e : page.rows) {
            index(e.id, e.domain, e.received_at, e.next_attempt_at, e.attempts);
            auto& d = dest(e.domain);
            if (d.up) {  // state unknown after a restart: probe first, then send everything
                d.up = false;
                d.next_probe = t;
                d.down_since = t;
            }
        }
        loaded += page.rows.size();
        if (!page.more || stopping_) break;
    }
    if (is_pg_url(cfg_.store)) {
        spawn(fleet());
        spawn(follow());
    }
    malloc_trim(0);  // give the pages' transient memory back
    spdlog::info("scheduler: {} queued messages for {} destinations", loaded, dests_.size());
    while (!stopping_) {
        pump();
        co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    }
}

void Scheduler::wake() {
    timer_.cancel();
}

void Scheduler::add(const std::vector<NewMessage>& msgs) {
    for (const auto& m : msgs) {
        if (!m.held.empty()) continue;  // quarantined: scheduled when an operator releases it
        auto& d = dest(m.domain);
        // A down primary gets new mail with the next probe, not before.
        index(m.id, m.domain, m.received_at, d.up ? m.next_attempt_at : d.next_probe, 0);
        check_queue(m.domain);
    }
    wake();
}

std::size_t Scheduler::flush(const std::string& domain) {
    std::size_t n = 0;
    auto t = now();
    for (auto& [name, d] : dests_) {
        if (!domain.empty() && !iequals(name, domain)) continue;
        if (!d.up) d.next_probe = t;
        n += index_.due_all(d.id);
    }
    wake();
    return n;
}

// A fleet's node: keeps its messages its own (renews their lease), and takes over the messages
// of a node whose lease ran out (it died or lost the store), a page at a time.
asio::awaitable<void> Scheduler::fleet() {
    asio::steady_timer timer(io_);
    while (!stopping_) {
        timer.expires_after(
            std::chrono::duration_cast<std::chrono::steady_clock::duration>(cfg_.lease / 3));
        auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        if (ec || stopping_) co_return;
        const auto lease = cfg_.lease;
        struct Work {
            std::vector<IndexEntry> taken;
            std::vector<Store::PrimaryState> primaries;
        };
        const std::function<Work(Store&)> work = [lease](Store& s) {
            const auto t = now();
            s.renew_lease(t + lease);
            return Work{s.take_over(t, 1000), s.primaries(TimePoint{})};
        };
        try {
            auto w = co_await queue_.call(work);
            for (const auto& e : w.taken) {
                spdlog::info("took over id={} domain={}: its node's lease ran out", e.id, e.domain);
                index(e.id, e.domain, e.received_at, e.next_attempt_at, e.attempts);
            }
            for (const auto& p : w.primaries) adopt(p);
            if (!w.taken.empty()) wake();
        } catch (const std::exception& e) {
            spdlog::warn("fleet: lease not renewed: {}", e.what());
        }
    }
}

// A fleet's node waiting for a down primary that another node probes: it reads what changed in
// the shared state every second, so it sends its queue within a second of the primary's return,
// not at its next probe turn. (Nothing is read while every primary it has mail for is up.)
asio::awaitable<void> Scheduler::follow() {
    asio::steady_timer timer(io_);
    auto seen = now();
    while (!stopping_) {
        timer.expires_after(std::chrono::seconds(1));
        auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        if (ec || stopping_) co_return;
        const bool waiting = std::any_of(dests_.begin(), dests_.end(), [this](const auto& kv) {
            return !kv.second.up && index_.waiting(kv.second.id) > 0;
        });
        if (!waiting) continue;
        const auto since = seen - std::chrono::seconds(1);  // (whole seconds in the store)
        const std::function<std::vector<Store::PrimaryState>(Store&)> read = [since](Store& s) {
            return s.primaries(since);
        };
        try {
            const auto t = now();
            auto changed = co_await queue_.call(read);
            seen = t;
            for (const auto& p : changed) adopt(p);
        } catch (const std::exception& e) {
            spdlog::debug("fleet: shared primary state not read: {}", e.what());
        }
    }
}

void Scheduler::tried(Dest& d, bool reached, const std::string& result) {
    const auto t = now();
    if (!d.known || reached != d.up) d.since = t;
    d.known = true;
    d.last_probe = t;
    d.last_result = result;
}

void Scheduler::outage_event(const std::string& domain, int what) {
    auto& d = dest(domain);
    const auto held = static_cast<std::int64_t>(index_.waiting(d.id) + d.in_flight);
    const auto t = now();
    const auto start = d.down_since;
    spawn([](Queue& q, std::string domain, int what, TimePoint t, TimePoint start,
             std::int64_t held) -> asio::awaitable<void> {
        const std::function<bool(Store&)> write = [&](Store& s) {
            if (what == 0) s.outage_begin(domain, start, held);
            if (what == 1) s.outage_end(domain, t, held);
            if (what == 2) s.outage_drained(domain, t);
            return true;
        };
        try {
            co_await q.call(write);
        } catch (const std::exception& e) {
            spdlog::error("store failure recording an outage of {}: {}", domain, e.what());
        }
    }(queue_, domain, what, t, start, held));
}

Scheduler::PrimaryStatus Scheduler::status(const std::string& domain) const {
    PrimaryStatus s;
    auto it = dests_.find(domain);
    const Dest* d = it == dests_.end() ? nullptr : &it->second;
    if (d) {
        s.queued = index_.waiting(d->id);
        s.in_flight = d->in_flight;
    }
    // A fleet: another node may have probed it since (one probes for all): the newer view.
    auto sh = shared_.find(domain);
    if (sh != shared_.end() && sh->second.state != "unknown" &&
        (!d || !d->known || sh->second.last_probe > from_unix(to_unix(d->last_probe)))) {
        s.state = sh->second.state == "up" ? "up" : "down";
        s.since = sh->second.since;
        s.last_probe = sh->second.last_probe;
        s.last_result = sh->second.last_result;
        return s;
    }
    if (!d || !d->known) return s;
    s.state = d->up ? "up" : "down";
    s.since = d->up ? d->since : d->down_since;
    s.last_probe = d->last_probe;
    s.last_result = d->last_result;
    return s;
}

void Scheduler::check(const std::string& domain) {
    auto& d = dest(domain);
    if (d.probing || stopping_) return;
    d.probing = true;
    spawn(probe(domain));
}

void Scheduler::release(const std::string& id, const std::string& domain, TimePoint received,
                        int attempts) {
    auto& d = dest(domain);
    const auto t = now();
    index(id, domain, received, d.up ? t : std::max(t, d.next_probe), attempts);
    wake();
}

void Scheduler::forget(const std::string& id) {
    withdraw(id);
}

bool Scheduler::withdraw(const std::string& id) {
    const auto k = Index::key(id);
    if (!k) return true;
    auto* e = index_.find(*k);
    if (!e) return !withdrawn_.contains(id);
    if (!e->in_flight) {
        index_.remove(*k);
        return true;
    }
    index_.remove(*k, true);  // out of every order; the attempt in flight holds the entry
    if (!withdrawn_.contains(id))
        withdrawn_.emplace(
            id, std::make_shared<asio::steady_timer>(io_, asio::steady_timer::time_point::max()));
    spdlog::info("withdrawn id={}: an operator acts on it while an attempt is in flight", id);
    return false;
}

asio::awaitable<bool> Scheduler::settle(const std::string& id, std::chrono::milliseconds limit) {
    if (withdraw(id)) co_return true;
    auto it = withdrawn_.find(id);
    if (it == withdrawn_.end()) co_return true;
    auto timer = it->second;  // kept alive here: settled() erases it
    asio::steady_timer deadline(io_, limit);
    co_await (timer->async_wait(asio::as_tuple(asio::use_awaitable)) ||
              deadline.async_wait(asio::as_tuple(asio::use_awaitable)));
    co_return !withdrawn_.contains(id);
}

void Scheduler::settled(const std::string& id) {
    auto it = withdrawn_.find(id);
    if (it == withdrawn_.end()) return;
    if (auto k = Index::key(id)) index_.remove(*k);
    it->second->cancel();
    withdrawn_.erase(it);
    spdlog::info("withdrawn id={}: its attempt ended; the operator's action goes ahead", id);
}

void Scheduler::stop() {
    stopping_ = true;
    timer_.cancel();
    for (auto& s : signals_) s.emit(asio::cancellation_type::terminal);
}

void Scheduler::spawn(asio::awaitable<void> work) {
    auto sig = signals_.emplace(signals_.end());
    asio::co_spawn(
        io_,
        [this, sig, w = std::move(work)]() mutable -> asio::awaitable<void> {
            try {
                co_await std::move(w);
            } catch (const std::exception& e) {
                spdlog::error("scheduler: {}", e.what());
            }
            signals_.erase(sig);
            if (!stopping_) wake();
        },
        asio::bind_cancellation_slot(sig->slot(), asio::detached));
}

void Scheduler::pump() {
    if (stopping_) return;
    // An outcome the store could not record (disk full, database gone) is kept in memory and
    // only the record is retried: until the store takes it, nothing more is sent, or each
    // message would be delivered again at every retry.
    if (!unrecorded_.empty()) return;
    auto t = now();
    auto next = t + std::chrono::hours(1);
    // Expiry first: a message past max_age leaves with a DSN even while its primary is down.
    while (auto k = index_.take_expired(t - cfg_.max_age)) {
        std::string id = Index::id(*k);
        ++dest(domain_of(id)).in_flight;
        spawn(expire(id));
    }
    if (auto oldest = index_.oldest()) next = std::min(next, *oldest + cfg_.max_age);
    for (auto& [name, d] : dests_) {
        if (!d.up) {
            if (index_.waiting(d.id) == 0 && d.in_flight == 0) continue;
            if (!d.probing && d.next_probe <= t) {
                d.probing = true;
                spawn(probe(name));
            } else if (!d.probing) {
                next = std::min(next, d.next_probe);
            }
            continue;
        }
        if (d.slot_wait > t) {  // (not one refused try per due message)
            next = std::min(next, d.slot_wait);
            continue;
        }
        while (d.in_flight < d.limit) {  // one connection each; it carries on with more
            auto id = take_due(d, t);
            if (!id) break;
            ++d.in_flight;
            spawn(worker(name, *id));
        }
        auto earliest = index_.earliest(d.id);
        if (earliest && d.in_flight < d.limit) next = std::min(next, *earliest);
    }
    auto wait = std::max(next - t, TimePoint::duration::zero());
    timer_.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(wait) +
                         std::chrono::milliseconds(5));
}

void Scheduler::failed_try(const std::string& domain, const std::string& why) {
    auto& d = dest(domain);
    ++d.failures;
    if (alerts_ && !d.alerted_down && d.failures >= cfg_.alert_down_after) {
        d.alerted_down = true;
        alerts_->primary_down(domain, why, index_.waiting(d.id) + d.in_flight);
    }
}

void Scheduler::check_queue(const std::string& domain) {
    const auto limit = cfg_.alert_queue_threshold;
    if (!alerts_ || limit == 0) return;
    auto& d = dest(domain);
    const auto queued = index_.waiting(d.id) + d.in_flight;
    if (!d.alerted_queue && queued >= limit) {
        d.alerted_queue = true;
        alerts_->queue_over(domain, queued);
    } else if (d.alerted_queue && queued < limit / 2) {
        d.alerted_queue = false;
    }
}

void Scheduler::mark_down(const std::string& domain, const std::string& why) {
    auto& d = dest(domain);
    auto t = now();
    d.limit = std::max(1u, d.limit / 2);
    if (fleet_) spawn(window(domain, Store::Window::Halve));
    failed_try(domain, why);
    tried(d, false, why);
    if (!d.up) return;
    d.up = false;
    d.down_since = t;
    if (!d.outage_open) {
        d.outage_open = true;
        outage_event(domain, 0);
    }
    publish(domain);
    d.next_probe = t + cfg_.probe_interval;
    spdlog::warn("primary for {} is down: {}; probing every {}", domain, why,
                 format_duration(cfg_.probe_interval));
}

// The fleet's slow start for a primary (see Store::adjust_window); this node follows it.
asio::awaitable<void> Scheduler::window(std::string domain, Store::Window how) {
    const unsigned initial = cfg_.initial_concurrency, max = cfg_.max_concurrency;
    const std::function<unsigned(Store&)> adjust = [&domain, how, initial, max](Store& st) {
        return st.adjust_window(domain, how, initial, max);
    };
    try {
        const unsigned w = co_await queue_.call(adjust);
        if (stopping_ || w == 0) co_return;
        dest(domain).limit = w;
        wake();
    } catch (const std::exception& e) {
        spdlog::warn("fleet: connection window of {} not kept: {}", domain, e.what());
    }
}

asio::awaitable<void> Scheduler::release_slot(std::string domain) {
    const std::function<bool(Store&)> release = [&domain](Store& st) {
        st.release_slot(domain);
        return true;
    };
    try {
        co_await queue_.call(release);
    } catch (const std::exception& e) {  // the node's lease ends it if the store is gone
        spdlog::warn("fleet: connection slot for {} not released: {}", domain, e.what());
    }
}

// Another node found a primary back up: no need to wait for a probe of our own.
void Scheduler::adopt(const Store::PrimaryState& p) {
    shared_[p.domain] = p;
    auto it = dests_.find(p.domain);
    if (it == dests_.end() || p.state != "up") return;
    auto& d = it->second;
    // (the store keeps whole seconds: an "up" of the same second as our "down" counts)
    if (d.up || d.probing || p.since < from_unix(to_unix(d.down_since))) return;
    spdlog::info(
        "primary for {} is up (seen by another node of the fleet); sending {} queued "
        "messages",
        p.domain, index_.waiting(d.id));
    d.up = true;
    d.failures = 0;
    d.outage_open = false;  // the node that saw it back closes the outage
    d.limit = cfg_.initial_concurrency;
    tried(d, true, p.last_result);
    flush(p.domain);
}

void Scheduler::publish(const std::string& domain) {
    if (!fleet_) return;
    auto& d = dest(domain);
    Store::PrimaryState p{domain, d.up ? "up" : "down", d.up ? d.since : d.down_since, d.last_probe,
                          d.last_result};
    spawn([](Queue& q, Store::PrimaryState p) -> asio::awaitable<void> {
        const std::function<bool(Store&)> put = [&p](Store& st) {
            st.put_primary(p);
            return true;
        };
        try {
            co_await q.call(put);
        } catch (const std::exception& e) {
            spdlog::warn("fleet: state of {}'s primary not shared: {}", p.domain, e.what());
        }
    }(queue_, std::move(p)));
}

asio::awaitable<void> Scheduler::probe(std::string domain) {
    if (fleet_) {  // one node of the fleet probes a down primary; the others follow the store
        const auto until = now() + cfg_.probe_interval + std::chrono::seconds(10);
        struct Claim {
            bool mine = false;
            std::vector<Store::PrimaryState> shared;  // when another node probes: what it saw
        };
        const std::function<Claim(Store&)> claim = [&domain, until](Store& st) {
            Claim c{st.claim_probe(domain, until), {}};
            if (!c.mine)
                for (auto& p : st.primaries(TimePoint{}))
                    if (p.domain == domain) c.shared.push_back(std::move(p));
            return c;
        };
        Claim c;
        try {
            c = co_await queue_.call(claim);
        } catch (const std::exception& e) {
            spdlog::warn("fleet: cannot claim the probe of {}: {}", domain, e.what());
        }
        if (stopping_) co_return;
        if (!c.mine) {
            auto& d = dest(domain);
            d.probing = false;
            d.next_probe = now() + cfg_.probe_interval;
            for (const auto& p : c.shared) adopt(p);
            wake();
            co_return;
        }
    }
    auto r = co_await route(domain);
    const auto s = settings(domain);
    delivery::Outcome o;
    if (r.kind == delivery::Route::Kind::Ok)
        o = co_await delivery::probe(s, r.targets);
    else
        o.error = r.error;
    if (stopping_) co_return;
    auto& d = dest(domain);
    d.probing = false;
    auto t = now();
    if (!o.reached && d.up) {  // a check of a primary thought up
        mark_down(domain, o.error);
        co_return;
    }
    if (!o.reached) {
        d.next_probe = t + cfg_.probe_interval;
        spdlog::debug("probe of primary for {} failed: {}", domain, o.error);
        tried(d, false, o.error);
        publish(domain);  // a fleet: the others show when it was last probed
        if (!d.outage_open) {
            d.outage_open = true;
            outage_event(domain, 0);
        }
        failed_try(domain, o.error);
        co_return;
    }
    d.failures = 0;
    const bool was_up = d.up;
    tried(d, true, "reached " + o.remote);
    if (was_up) co_return;  // a check: nothing was waiting for it
    if (d.outage_open) {
        d.outage_open = false;
        d.draining = true;
        outage_event(domain, 1);
    }
    if (d.alerted_down && alerts_) {
        d.alerted_down = false;
        alerts_->primary_up(domain, std::chrono::duration_cast<Seconds>(t - d.down_since),
                            index_.waiting(d.id));
    }
    spdlog::info("primary for {} is up ({}) after {} down; sending {} queued messages", domain,
                 o.remote, age(d.down_since, t), index_.waiting(d.id));
    d.up = true;
    d.limit = cfg_.initial_concurrency;
    if (fleet_) spawn(window(domain, Store::Window::Reset));
    publish(domain);
    flush(domain);
}

std::optional<std::string> Scheduler::take_due(Dest& d, TimePoint t) {
    if (!unrecorded_.empty()) return std::nullopt;  // (see pump)
    auto k = index_.take_due(d.id, t);
    if (!k) return std::nullopt;
    return Index::id(*k);
}

namespace {
struct Slot {             // whatever happens, a destination's connection slot is given back
    unsigned& in_flight;  // a Dest's: std::map entries stay where they are
    ~Slot() { --in_flight; }
};
}  // namespace

asio::awaitable<void> Scheduler::expire(std::string id) {
    Slot slot{dest(domain_of(id)).in_flight};
    co_await attempt(id, nullptr, nullptr);
}

// One connection to a destination's primary, carrying due messages one after another (Postfix's
// connection cache does the same) until none is due, the primary falters, or the reuse limits.
asio::awaitable<void> Scheduler::worker(std::string domain, std::string first) {
    Slot slot{dest(domain).in_flight};
    // A fleet: the primary's connections are counted for all nodes together.
    struct FleetSlot {
        Scheduler* s = nullptr;
        std::string domain;
        ~FleetSlot() {
            if (s) s->spawn(s->release_slot(domain));
        }
    } fleet_slot;
    if (fleet_) {
        const unsigned initial = cfg_.initial_concurrency, max = cfg_.max_concurrency;
        const std::function<Store::SlotGrant(Store&)> acquire = [&domain, initial, max](Store& st) {
            return st.acquire_slot(domain, initial, max);
        };
        Store::SlotGrant grant{false, 0};
        try {
            grant = co_await queue_.call(acquire);
        } catch (const std::exception& e) {
            spdlog::warn("fleet: no connection slot for {}: {}", domain, e.what());
        }
        if (stopping_) co_return;
        if (grant.window > 0) dest(domain).limit = grant.window;  // this node opens no more
        if (!grant.granted) {  // the fleet has all the connections it may open: wait a moment
            auto& d = dest(domain);
            d.slot_wait = now() + std::chrono::seconds(1);
            index_.requeue(*Index::key(first), d.slot_wait, false);
            wake();
            co_return;
        }
        fleet_slot.domain = domain;  // (not a temporary FleetSlot: its end would release it)
        fleet_slot.s = this;
    }
    const auto r = co_await route(domain);
    if (stopping_) co_return;
    if (r.kind != delivery::Route::Kind::Ok) {
        co_await attempt(first, nullptr, &r);  // no connection: the route decides this one
        co_return;
    }
    const auto s = settings(domain);
    delivery::Session session(co_await asio::this_coro::executor, s);
    // When it does not open, the first attempt records why (and may mark the primary down).
    co_await session.open(r.targets);
    const auto started = std::chrono::steady_clock::now();
    std::string id = first;
    for (;;) {
        co_await attempt(id, &session, &r);
        if (stopping_ || !session.usable()) break;
        if (session.transactions() >= kReuseCount ||
            std::chrono::steady_clock::now() - started >= kReuseTime)
            break;
        auto& d = dest(domain);
        if (!d.up) break;
        auto next = take_due(d, now());
        if (!next) break;
        id = std::move(*next);
    }
    if (!stopping_) co_await session.close();
}

// Loads one message and tries it: over `session` when given (already open, or failed to open),
// else on a connection of its own; `route` when the worker already has it. Records the outcome.
asio::awaitable<void> Scheduler::attempt(std::string id, delivery::Session* session,
                                         const delivery::Route* known) {
    const std::string domain = domain_of(id);
    const Index::Key key = *Index::key(id);
    // The first body piece only (a DSN needs no more than the header, which it holds); the rest
    // is read while it is sent.
    // (nothing when another node of a fleet took it over)
    const std::function<std::optional<StoredMessage>(Store&)> load = [id](Store& s) {
        return s.load_owned(id);
    };
    std::optional<StoredMessage> msg;
    try {
        msg = co_await queue_.read(load);
    } catch (const std::exception& e) {
        // Not loaded (the store is out of reach): still queued as it was; tried again later.
        spdlog::error("store failure loading id={}: {}", id, e.what());
        if (withdrawn_.contains(id))
            settled(id);
        else if (index_.find(key))
            index_.requeue(key, now() + cfg_.retry_min, false);
        co_return;
    }
    // Deleted, held or otherwise withdrawn by an operator meanwhile: not ours to send.
    if (!msg || !index_.find(key) || !msg->held.empty() || withdrawn_.contains(id)) {
        index_.remove(key);
        settled(id);
        co_return;
    }
    std::vector<std::string> pending;
    for (auto& r : msg->recipients)
        if (r.status == RcptStatus::Pending) pending.push_back(r.address);
    auto t = now();

    if (msg->received_at + cfg_.max_age <= t || pending.empty()) {  // expired: DSN, then gone
        const std::string last =
            msg->last_error.empty() ? "no successful delivery" : msg->last_error;
        auto u = bounce::expire(*msg, cfg_.hostname, cfg_.max_age, t, cfg_.dsn_max_headers);
        const auto& dsn = u.dsn;
        spdlog::info(
            "expired id={} from=<{}> to={} domain={} age={} attempts={} last_error=\"{}\"{}", id,
            msg->sender, angle_list(pending), domain, age(msg->received_at, t), msg->attempts, last,
            dsn ? " dsn=" + dsn->id : " (null sender: no DSN)");
        count_result("expired", pending.size());
        co_await finish(id, std::move(u));
        co_return;
    }

    delivery::Route r;
    if (known)
        r = *known;
    else
        r = co_await route(domain);
    if (withdrawn_.contains(id)) {  // while the route was looked up: nothing sent
        settled(id);
        co_return;
    }
    delivery::Outcome o;
    if (r.kind == delivery::Route::Kind::Ok) {
        const delivery::Envelope env{msg->sender, pending, msg->smtputf8, msg->eightbit};
        std::size_t seq = 0;
        std::int64_t given = 0;
        const delivery::BodySource pieces = [&]() -> asio::awaitable<std::optional<std::string>> {
            // Asked for each piece, and once more before the final dot: a message withdrawn by
            // an operator until then never gets its dot, so the primary discards what it has.
            if (withdrawn_.contains(id))
                throw std::runtime_error("withdrawn by an operator before the end of data");
            if (given >= msg->size) co_return std::nullopt;  // all of it (spares a store call)
            std::optional<std::string> piece;
            if (seq == 0) {
                piece = msg->body;
            } else {
                const std::function<std::optional<std::string>(Store&)> read =
                    [&id, n = seq](Store& st) { return st.read_body(id, n); };
                piece = co_await queue_.read(read);
            }
            ++seq;
            if (piece) given += static_cast<std::int64_t>(piece->size());
            co_return piece;
        };
        const delivery::Body body{msg->size, &pieces};
        if (session) {
            o = co_await session->send(env, body);
        } else {
            const auto s = settings(domain);
            o = co_await delivery::deliver(s, r.targets, env, body);
        }
    } else if (r.kind == delivery::Route::Kind::NullMx) {
        o.reached = true;  // a final answer from DNS: every recipient bounces
        o.rcpt.assign(pending.size(), delivery::Reply{556, {"5.1.10 " + r.error}});
    } else {
        o.error = r.error;
    }
    if (stopping_) co_return;  // cancelled by shutdown: the message stays as it was
    if (!index_.find(key)) {
        settled(id);
        co_return;
    }
    t = now();
    auto delay = age(msg->received_at, t);
    std::string primary = !o.remote.empty()    ? o.remote
                          : !r.targets.empty() ? r.targets.front().text()
                                               : "none";

    AttemptUpdate u;
    u.id = id;
    int attempts = msg->attempts + 1;
    auto backoff = cfg_.retry_min;
    for (int i = 1; i < attempts && backoff < cfg_.retry_max; ++i) backoff *= 2;
    backoff = std::min(backoff, cfg_.retry_max);
    u.next_attempt_at = t + backoff;
    std::vector<bounce::Failure> failures;
    std::vector<std::string> delivered;
    if (o.rcpt.size() == pending.size()) {
        for (std::size_t i = 0; i < pending.size(); ++i) {
            const auto& rep = o.rcpt[i];
            std::string text = rep.text();
            if (rep.positive()) {
                u.outcomes.push_back({pending[i], RcptStatus::Delivered, text});
                delivered.push_back(pending[i]);
                spdlog::info(
                    "delivered id={} from=<{}> to=<{}> primary={} delay={} attempts={} "
                    "tls=\"{}\" reply=\"{}\"",
                    id, msg->sender, pending[i], primary, delay, attempts, o.tls, text);
                count_result("delivered");
            } else if (rep.permanent()) {
                u.outcomes.push_back({pending[i], RcptStatus::Failed, text});
                failures.push_back({pending[i], bounce::status_of(text), text});
                spdlog::info(
                    "bounced id={} from=<{}> to=<{}> primary={} delay={} attempts={} "
                    "reply=\"{}\"",
                    id, msg->sender, pending[i], primary, delay, attempts, text);
                count_result("bounced");
            } else {
                u.outcomes.push_back({pending[i], RcptStatus::Pending, text});
                u.last_error = text;
                spdlog::info(
                    "deferred id={} from=<{}> to=<{}> primary={} delay={} attempts={} "
                    "next={} reply=\"{}\"",
                    id, msg->sender, pending[i], primary, delay, attempts, format_duration(backoff),
                    text);
                count_result("deferred");
            }
        }
        if (o.reached) {
            auto& d = dest(domain);
            d.failures = 0;
            tried(d, true, "delivered to " + primary);
            if (d.limit < cfg_.max_concurrency) {  // slow start: it keeps up, one more may open
                if (fleet_) {
                    spawn(window(domain, Store::Window::Grow));  // (the fleet's window)
                } else {
                    ++d.limit;
                    wake();
                }
            }
        }
    } else {
        u.last_error = o.error;
        spdlog::info(
            "deferred id={} from=<{}> to={} primary={} delay={} attempts={} next={} "
            "error=\"{}\"",
            id, msg->sender, angle_list(pending), primary, delay, attempts,
            format_duration(backoff), o.error);
        count_result("deferred", pending.size());
        if (!o.reached) mark_down(domain, o.error);
    }
    std::optional<NewMessage> dsn;
    if (!failures.empty()) {
        // Remote-MTA names the host (RFC 3464 2.3.5: "dns; mail.example.it"); a null MX's
        // bounce had none.
        const std::string mta = r.kind != delivery::Route::Kind::Ok ? ""
                                : !o.remote_host.empty()            ? o.remote_host
                                : !r.targets.empty()                ? r.targets.front().host
                                                                    : "";
        dsn = bounce::make_dsn(*msg, failures, cfg_.hostname, mta, t, cfg_.dsn_max_headers);
        if (dsn) spdlog::info("dsn id={} for id={} to=<{}>", dsn->id, id, msg->sender);
    }
    u.dsn = dsn;
    // Recorded in the background: the connection goes on with the next message while the store
    // commits this outcome together with others (the message stays in flight until then).
    spawn(finish(id, std::move(u)));
}

asio::awaitable<void> Scheduler::finish(std::string id, AttemptUpdate u) {
    int left = 0;
    bool recorded = true;
    try {
        left = co_await queue_.record(u);
    } catch (const std::exception& e) {
        spdlog::error(
            "store failure recording attempt for id={}: {}; the outcome is kept in memory and "
            "delivery pauses until the store records it",
            id, e.what());
        recorded = false;
    }
    if (!recorded) {
        // The entry stays in flight: the message is not tried again before its record is in.
        unrecorded_.emplace(id, std::move(u));
        if (!recording_) spawn(record_later());
        co_return;
    }
    after_record(id, left, u.next_attempt_at);
}

asio::awaitable<void> Scheduler::record_later() {
    recording_ = true;
    struct Done {
        bool& flag;
        ~Done() { flag = false; }
    } done{recording_};
    auto wait = std::chrono::milliseconds(500);
    asio::steady_timer timer(io_);
    while (!unrecorded_.empty() && !stopping_) {
        timer.expires_after(wait);
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        wait = std::min(wait * 2, std::chrono::milliseconds(30000));
        while (!unrecorded_.empty()) {
            auto it = unrecorded_.begin();
            int left = 0;
            try {
                left = co_await queue_.record(it->second);
            } catch (const std::exception& e) {
                spdlog::warn("store still cannot record {} attempt outcomes ({}); retrying in {}",
                             unrecorded_.size(), e.what(),
                             format_duration(std::chrono::duration_cast<Seconds>(wait)));
                break;
            }
            const std::string id = it->first;
            const auto next = it->second.next_attempt_at;
            unrecorded_.erase(it);
            spdlog::info("recorded the outcome of id={} after a store failure", id);
            after_record(id, left, next);
        }
    }
    if (unrecorded_.empty()) {
        spdlog::info("the store records again: delivery resumes");
        wake();
    } else if (stopping_) {
        spdlog::warn(
            "stopping with {} attempt outcomes unrecorded: those messages will be "
            "delivered again (at least once, never lost)",
            unrecorded_.size());
    }
}

void Scheduler::after_record(const std::string& id, int left, TimePoint next) {
    const Index::Key key = *Index::key(id);
    if (withdrawn_.contains(id)) {
        settled(id);  // recorded: the operator's action goes ahead; never requeued
    } else if (auto* e = index_.find(key)) {
        if (left == 0) {
            const std::string domain = index_.domain(e->dest);
            index_.remove(key);
            spdlog::debug("removed id={} from the queue", id);
            check_queue(domain);
            auto& d = dest(domain);
            if (d.draining && d.up && index_.total(d.id) == 0) {
                d.draining = false;
                outage_event(domain, 2);
            }
        } else {
            auto& d = dest(index_.domain(e->dest));
            index_.requeue(key, d.up ? next : std::max(next, d.next_probe), true);
            if (index_.earliest(d.id) == TimePoint{}) wake();  // flushed while it was tried
        }
    }
}

}  // namespace bmx
