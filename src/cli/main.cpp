// cli: the `backupmx` command — `serve` wires the parts together on one event loop (the queue's
// one door hands committed mail to the scheduler); the operator's tools are `check-config`,
// `queue list|show|summary|flush|delete|hold|release|bounce`, `dns-check`, `admin add-user`,
// `domain add|list|delete` and `store migrate|copy` (on the store directly; a running server is
// told through the control socket). It must never hold protocol or queue logic of its own: it
// only parses arguments, prints, and calls the parts.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json.hpp>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <thread>

#include "accounts/accounts.hpp"
#include "admin/admin.hpp"
#include "bounce/dsn.hpp"
#include "config/config.hpp"
#include "control/control.hpp"
#include "delivery/route.hpp"
#include "dns/resolver.hpp"
#include "dnscheck/dnscheck.hpp"
#include "domains/domains.hpp"
#include "logging/logging.hpp"
#include "queue/queue.hpp"
#include "scheduler/scheduler.hpp"
#include "smtp/server.hpp"
#include "store/spool.hpp"
#include "store/store.hpp"
#include "util/json.hpp"
#include "util/util.hpp"

namespace asio = boost::asio;
using namespace bmx;

namespace {

void setup_logging(const std::string& level, const std::string& format = "text") {
    logging::Format f = logging::Format::Text;
    logging::parse_format(format, f);
    logging::setup(level, f);
}

void apply_time_offset() {
    // Tests move the clock forward (expiry after max_age) without waiting days.
    if (const char* off = std::getenv("BACKUPMX_TIME_OFFSET"))
        set_time_offset(Seconds(std::atoll(off)));
}

// One descriptor per session: thousands of sessions need more than the usual soft limit of 1024.
void raise_fd_limit() {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

// The configured store, with the durability settings of the config.
std::unique_ptr<Store> store_of(const Config& cfg) {
    return open_store(cfg.store, cfg.node, cfg.lease, cfg.pg_synchronous_commit);
}

// The spool directory (and the state directory above it) exist and take files, or the server does
// not start: a large message would otherwise get 451 at every try. Throws naming the key.
void prepare_spool(const Config& cfg) {
    try {
        make_private_dirs(cfg.spool_dir);
    } catch (const StoreError& e) {
        throw std::runtime_error("queue.spool_dir = \"" + cfg.spool_dir + "\": " + e.what() +
                                 " (set [queue] spool_dir or state_dir)");
    }
    try {
        Spool::open(cfg.spool_dir);  // a nameless file, gone at once
    } catch (const StoreError& e) {
        throw std::runtime_error("queue.spool_dir = \"" + cfg.spool_dir + "\": not writable: " +
                                 e.what() + " (set [queue] spool_dir or state_dir)");
    }
}

// A fleet's node whose database cannot be reached at start waits for it, not listening (senders
// go to another MX or come back later), instead of exiting; SIGINT or SIGTERM still stop it
// (nullptr). An SQLite store that does not open is an error at once.
std::unique_ptr<Store> open_store_waiting(const Config& cfg) {
    if (!is_pg_url(cfg.store)) return store_of(cfg);
    sigset_t stop, old;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, &old);
    struct Restore {
        sigset_t* old;
        ~Restore() { pthread_sigmask(SIG_SETMASK, old, nullptr); }
    } restore{&old};
    Seconds wait{1};
    for (;;) {
        try {
            return store_of(cfg);
        } catch (const StoreUnsafe&) {
            throw;  // a setting of the database, not an outage: no use waiting
        } catch (const StoreError& e) {
            spdlog::error("{}; not accepting mail, trying again in {}", e.what(),
                          format_duration(wait));
        }
        const timespec ts{static_cast<time_t>(wait.count()), 0};
        if (sigtimedwait(&stop, nullptr, &ts) > 0) {
            spdlog::info("stopped while waiting for the store");
            return nullptr;
        }
        wait = std::min(wait * 2, Seconds(30));
    }
}

// The first of `domains` (name, primary) whose primary is this server itself, as "name: why"; ""
// when none. A primary that resolves to our own SMTP listener would take every message straight
// back, for ever. (DNS that does not answer now is no finding: delivery checks again.)
std::string self_loop(asio::io_context& io, dns::Resolver& resolver, const Config& cfg,
                      const std::vector<std::pair<std::string, HostPort>>& domains) {
    std::string found;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            for (const auto& [name, primary] : domains) {
                auto r = co_await delivery::route_via(resolver, cfg, name, primary);
                if (r.self_loop) {
                    found = name + ": " + r.error;
                    co_return;
                }
            }
        },
        asio::detached);
    io.run();
    io.restart();
    return found;
}

// `domain add`'s check: "" when `primary` does not loop back here.
std::string self_loop(const Config& cfg, const std::string& domain, const std::string& primary) {
    auto hp = parse_host_port(primary, 25);
    if (!hp) return "";
    asio::io_context io(1);
    dns::Resolver resolver(io,
                           dns::Settings{cfg.dns_resolver, cfg.dns_trust_anchor, cfg.dns_timeout});
    return self_loop(io, resolver, cfg, {{domain, *hp}});
}

int serve(Config cfg) {
    setup_logging(cfg.log_level, cfg.log_format);
    apply_time_offset();
    raise_fd_limit();
    // Queued mail, the state directory and the control socket are nobody else's: whatever umask
    // the server was started with, what it creates is 0600 / 0700 (the store and spool also say
    // so themselves, for the commands that open them).
    ::umask(077);
    prepare_spool(cfg);
    make_private_dirs(std::filesystem::path(cfg.control_socket).parent_path().string());
    asio::io_context io(1);
    auto store = open_store_waiting(cfg);
    if (!store) return 0;
    store->release_all_slots();
    // The domains added at run time, loaded before the first SMTP session can ask for them.
    Domains domains(cfg);
    domains.load(store->domains());
    cfg.live_domains = [&domains](std::string_view name) { return domains.find(name); };
    auto queue = std::make_unique<Queue>(std::move(store));
    dns::Resolver resolver(io,
                           dns::Settings{cfg.dns_resolver, cfg.dns_trust_anchor, cfg.dns_timeout});
    for (const auto& w : config_warnings(cfg)) spdlog::warn("{}", w);
    {
        std::vector<std::pair<std::string, HostPort>> configured, stored;
        for (const auto& d : cfg.domains)
            if (d.primary) configured.emplace_back(d.name, *d.primary);
        for (const auto& d : domains.all())
            if (auto hp = parse_host_port(d.primary, 25)) stored.emplace_back(d.name, *hp);
        if (auto loop = self_loop(io, resolver, cfg, configured); !loop.empty())
            throw std::runtime_error("domain " + loop + " (fix its primary in the config)");
        if (auto loop = self_loop(io, resolver, cfg, stored); !loop.empty())
            spdlog::error("domain {} (change it: backupmx domain add/delete, or the API)", loop);
    }
    Scheduler scheduler(io, cfg, *queue, resolver);
    policy::Checker checker(
        cfg, *queue, resolver,
        [&scheduler](const std::string& domain,
                     const std::string& rcpt) -> asio::awaitable<policy::Verification> {
            co_return co_await scheduler.verify(domain, rcpt);
        });
    // The queue's one door: whatever is committed (accepted mail, alerts, DSNs) is scheduled.
    queue->on_committed([&scheduler](const std::vector<NewMessage>& m) { scheduler.add(m); });
    smtp::Server smtp(io, cfg, *queue, checker);
    Alerts alerts(io, cfg, *queue);
    if (alerts.enabled()) scheduler.set_alerts(&alerts);
    smtp.on_etrn(
        [&](const std::string& node, const std::string& ip) -> asio::awaitable<smtp::EtrnAnswer> {
            using K = smtp::EtrnAnswer::Kind;
            if (!cfg.find_domain(node))
                co_return smtp::EtrnAnswer{K::UnknownNode, "no mail is kept here for it"};
            const bool allowed = co_await scheduler.etrn_allowed(node, ip);
            if (!allowed)
                co_return smtp::EtrnAnswer{K::NotAllowed, ip + " is not its primary nor in its "
                                                               "etrn_networks"};
            const auto n = scheduler.flush(node);
            co_return smtp::EtrnAnswer{n ? K::Started : K::NothingWaiting, ""};
        });
    // The store's domains, read again (the CLI or another node of a fleet changed them).
    auto reload_domains = [&]() -> asio::awaitable<void> {
        const std::function<std::vector<StoredDomain>(Store&)> read = [](Store& s) {
            return s.domains();
        };
        try {
            auto all = co_await queue->call(read);
            const auto before = domains.size();
            domains.load(all);
            if (domains.size() != before)
                spdlog::info("domains reloaded: {} added at run time", domains.size());
        } catch (const std::exception& e) {
            spdlog::error("domains not reloaded: {}", e.what());
        }
    };
    control::Server ctl(io, cfg.control_socket, [&](const std::string& line) -> std::string {
        if (line == "ping") return "pong";
        if (line == "flush" || line.starts_with("flush ")) {
            std::string domain = line.size() > 6 ? line.substr(6) : "";
            auto n = scheduler.flush(domain);
            spdlog::info("flush requested{}: {} messages due now",
                         domain.empty() ? "" : " for " + domain, n);
            return "ok " + std::to_string(n);
        }
        if (line.starts_with("forget ")) {  // "in-flight": ask again until "ok" (see withdraw)
            return scheduler.withdraw(line.substr(7)) ? "ok" : "in-flight";
        }
        if (line.starts_with("schedule ")) {  // released, or a DSN the CLI made
            asio::co_spawn(
                io,
                [&, id = line.substr(9)]() -> asio::awaitable<void> {
                    const std::function<std::optional<StoredMessage>(Store&)> load =
                        [&id](Store& s) { return s.load_head(id); };
                    try {
                        auto m = co_await queue->call(load);
                        if (m && m->held.empty())
                            scheduler.release(m->id, m->domain, m->received_at, m->attempts);
                    } catch (const std::exception& e) {
                        spdlog::error("cannot schedule {}: {}", id, e.what());
                    }
                },
                asio::detached);
            return "ok";
        }
        if (line == "status") {  // each domain's primary, as the scheduler sees it
            boost::json::object all;
            auto add = [&](const std::string& name) {
                all[name] = admin::primary_json(scheduler.status(name));
            };
            for (const auto& d : cfg.domains) add(d.name);
            for (const auto& d : domains.all()) add(d.name);
            return json_text(all);
        }
        if (line == "domains") {  // the CLI changed the store's domains: read them again
            asio::co_spawn(io, reload_domains(), asio::detached);
            return "ok";
        }
        return "error unknown command";
    });
    admin::Admin console(io, admin::Parts{cfg, *queue, scheduler, domains, resolver,
                                          [&smtp] { return smtp.sessions(); }});
    smtp.start();
    ctl.start();
    if (!cfg.admin_listen.empty()) console.start();
    asio::co_spawn(io, scheduler.run(), asio::detached);
    if (is_pg_url(cfg.store))  // a fleet: rate limits hold for all nodes together
        asio::co_spawn(io, checker.share(), asio::detached);
    asio::steady_timer domains_timer(io);
    if (is_pg_url(cfg.store))  // a fleet: what another node's operator adds is served here soon
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                for (;;) {
                    domains_timer.expires_after(std::chrono::seconds(5));
                    auto [ec] =
                        co_await domains_timer.async_wait(asio::as_tuple(asio::use_awaitable));
                    if (ec) co_return;
                    co_await reload_domains();
                }
            },
            asio::detached);
    spdlog::info("backupmx ready: hostname={} domains={} store={} control={}", cfg.hostname,
                 cfg.domains.size() + domains.size(), cfg.store, cfg.control_socket);

    bool hard_stop = false;
    asio::steady_timer grace(io);
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code& ec, int sig) {
        if (ec) return;
        spdlog::info("signal {}: stopping (no new sessions; queued mail stays queued)", sig);
        smtp.stop();
        ctl.stop();
        console.stop();
        domains_timer.cancel();
        checker.stop_sharing();
        scheduler.stop();
        resolver.stop();
        grace.expires_after(std::chrono::seconds(20));
        grace.async_wait([&](const boost::system::error_code& e) {
            if (e) return;
            spdlog::warn("shutdown grace period over, stopping hard");
            hard_stop = true;
            io.stop();
        });
        // When the last session and attempt end, nothing but the grace timer is left: drop it.
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                asio::steady_timer t(io);
                while (smtp.sessions() > 0) {
                    t.expires_after(std::chrono::milliseconds(50));
                    co_await t.async_wait(asio::use_awaitable);
                }
                t.expires_after(std::chrono::milliseconds(200));
                co_await t.async_wait(asio::use_awaitable);
                grace.cancel();
            },
            asio::detached);
    });
    io.run();
    queue.reset();  // drains: every commit in progress reaches the disk before we exit
    spdlog::info("backupmx stopped");
    if (hard_stop) std::_Exit(0);  // frames left in the loop refer to parts already gone
    return 0;
}

std::string age_text(TimePoint t) {
    return format_duration(std::chrono::duration_cast<Seconds>(now() - t));
}

int queue_list(const Config& cfg, bool json, const std::string& domain) {
    auto store = store_of(cfg);
    auto rows = store->list();
    if (!domain.empty())
        std::erase_if(rows, [&](const QueueRow& r) { return !iequals(r.domain, domain); });
    if (json) {
        boost::json::array arr;
        for (auto& r : rows) {
            boost::json::array rc;
            for (auto& a : r.recipients) rc.emplace_back(a);
            arr.emplace_back(boost::json::object{{"id", r.id},
                                                 {"domain", r.domain},
                                                 {"sender", r.sender},
                                                 {"recipients", rc},
                                                 {"size", r.size},
                                                 {"received_at", to_unix(r.received_at)},
                                                 {"attempts", r.attempts},
                                                 {"next_attempt_at", to_unix(r.next_attempt_at)},
                                                 {"last_error", r.last_error},
                                                 {"held", r.held}});
        }
        std::cout << json_text(arr) << "\n";
        return 0;
    }
    if (rows.empty()) {
        std::cout << "Mail queue is empty\n";
        return 0;
    }
    std::uint64_t bytes = 0;
    for (auto& r : rows) {
        bytes += static_cast<std::uint64_t>(r.size);
        std::string rc;
        for (auto& a : r.recipients) rc += (rc.empty() ? "<" : ",<") + a + ">";
        auto next = std::chrono::duration_cast<Seconds>(r.next_attempt_at - now());
        std::cout << r.id << " " << r.domain << " from=<" << r.sender << "> to=" << rc
                  << " size=" << r.size << " age=" << age_text(r.received_at)
                  << " attempts=" << r.attempts
                  << " next=" << (next.count() > 0 ? "in " + format_duration(next) : "now")
                  << " last_error=\"" << r.last_error << "\""
                  << (r.held.empty() ? "" : " held=\"" + r.held + "\"") << "\n";
    }
    std::cout << "-- " << bytes << " bytes in " << rows.size() << " messages\n";
    return 0;
}

int dns_check(const std::string& domain, const Config* cfg, std::string hostname, bool json) {
    Config defaults;
    const Config& c = cfg ? *cfg : defaults;
    if (hostname.empty()) hostname = cfg ? cfg->hostname : "";
    if (hostname.empty()) {
        char buf[256] = {};
        gethostname(buf, sizeof buf - 1);
        hostname = buf;
    }
    asio::io_context io(1);
    dns::Resolver resolver(io, dns::Settings{c.dns_resolver, c.dns_trust_anchor, c.dns_timeout});
    dnscheck::Options opt;
    opt.hostname = to_lower(hostname);
    opt.our_names = cfg ? cfg->our_names() : std::vector<std::string>{opt.hostname};
    if (cfg && !iequals(opt.hostname, cfg->hostname)) opt.our_names.push_back(opt.hostname);
    opt.config = cfg;
    opt.smtp_port = c.delivery_port;
    dnscheck::Report report;
    const std::string d = to_lower(domain);
    asio::co_spawn(
        io, [&]() -> asio::awaitable<void> { report = co_await dnscheck::check(resolver, d, opt); },
        asio::detached);
    io.run();
    std::cout << (json ? report.json() + "\n" : report.text());
    return report.ok() ? 0 : 1;
}

// The one who runs the CLI, for the audit table.
std::string cli_user() {
    const char* u = std::getenv("SUDO_USER");
    if (!u) u = std::getenv("USER");
    return std::string("cli:") + (u ? u : std::to_string(getuid()));
}

void cli_audit(Store& store, const std::string& action, const std::string& target,
               const std::string& detail) {
    store.audit(AuditEntry{now(), cli_user(), action, target, detail, "local"});
}

int add_user(const Config& cfg, const std::string& name, const std::string& role,
             std::vector<std::string> domains) {
    if (!accounts::parse_role(role)) {
        std::cerr << "--role must be operator or customer\n";
        return 2;
    }
    if (name.empty() || name.size() > 64 ||
        name.find_first_of(" \t\r\n:/\\\"'<>&") != std::string::npos) {
        std::cerr << "a user name is 1-64 characters without spaces, quotes or : / \\ < > &\n";
        return 2;
    }
    for (auto& d : domains) {
        if (auto e = Domains::check_name(d); !e.empty()) {
            std::cerr << "--domain: " << e << "\n";
            return 2;
        }
    }
    if (role == "customer" && domains.empty())
        std::cerr << "note: this customer owns no domain yet (it may add its own)\n";
    auto store = store_of(cfg);
    const std::string password = accounts::new_password();
    Account a{name, role, accounts::hash_password(password), domains, now()};
    if (!store->add_account(a)) {
        std::cerr << "there is already an account " << name << "\n";
        return 1;
    }
    std::string owned;
    for (const auto& d : domains) owned += " " + d;
    cli_audit(*store, "user.add", name,
              "role " + role + (owned.empty() ? "" : ", domains" + owned));
    std::cout << "user " << name << " (" << role << ") created; its one-time password follows\n"
              << "password: " << password << "\n";
    return 0;
}

int domain_add(const Config& cfg, std::string name, const std::string& primary,
               const std::string& owner, const std::string& recipients) {
    if (auto e = Domains::check_name(name); !e.empty()) {
        std::cerr << e << "\n";
        return 2;
    }
    if (auto e = Domains::check_primary(primary); !e.empty()) {
        std::cerr << e << "\n";
        return 2;
    }
    if (cfg.find_domain(name)) {
        std::cerr << name << " is in the config file already\n";
        return 1;
    }
    if (auto loop = self_loop(cfg, name, primary); !loop.empty()) {
        std::cerr << "refused: " << loop << "\n";
        return 2;
    }
    auto store = store_of(cfg);
    if (!owner.empty() && !store->account(owner)) {
        std::cerr << "no account " << owner << "\n";
        return 1;
    }
    StoredDomain d{name, primary, recipients, false, 0, cli_user(), now()};
    if (recipients == "any")
        std::cerr << "warning: " << name << ": recipients = \"any\" invites backscatter\n";
    if (!store->add_domain(d)) {
        std::cerr << name << " is served here already\n";
        return 1;
    }
    if (!owner.empty()) store->add_owner(owner, name);
    cli_audit(*store, "domain.add", name, "primary " + primary);
    control::request(cfg.control_socket, "domains");  // the running server takes it at once
    std::cout << "added " << name << " (primary " << primary << "); publish:\n"
              << name << ". 3600 IN MX 20 " << cfg.hostname << ".\n"
              << "then check it with: backupmx dns-check " << name << "\n";
    return 0;
}

int domain_list(const Config& cfg) {
    for (const auto& d : cfg.domains)
        std::cout << d.name << " primary=" << (d.primary ? d.primary->text() : "(MX records)")
                  << " source=config\n";
    auto store = store_of(cfg);
    for (const auto& d : store->domains())
        std::cout << d.name << " primary=" << d.primary << " source=store\n";
    return 0;
}

int domain_delete(const Config& cfg, std::string name) {
    name = to_lower(name);
    auto store = store_of(cfg);
    bool found = false;
    for (const auto& d : store->domains()) found = found || d.name == name;
    if (!found) {
        std::cerr << "no run-time domain " << name
                  << (cfg.find_domain(name) ? " (it is in the config file)" : "") << "\n";
        return 1;
    }
    if (auto n = store->remove_domain(name); n > 0) {
        std::cerr << n << " messages are queued for " << name
                  << ": deliver, bounce or delete them first\n";
        return 1;
    }
    cli_audit(*store, "domain.delete", name, "");
    control::request(cfg.control_socket, "domains");
    std::cout << "deleted " << name << "\n";
    return 0;
}

// What the running server says of each domain's primary (nothing when it does not run).
boost::json::object primary_states(const Config& cfg) {
    auto r = control::request(cfg.control_socket, "status");
    boost::system::error_code ec;
    auto v = r ? boost::json::parse(*r, ec) : boost::json::value();
    return !ec && v.is_object() ? v.as_object() : boost::json::object{};
}

int queue_summary(const Config& cfg, bool json) {
    auto sums = store_of(cfg)->queue_summary();
    const auto states = primary_states(cfg);
    const auto t = now();
    boost::json::array arr;
    for (const auto& q : sums) {
        boost::json::object o{{"domain", q.domain},
                              {"messages", q.messages},
                              {"bytes", q.bytes},
                              {"held", q.held},
                              {"oldest_age", q.oldest ? to_unix(t) - to_unix(*q.oldest) : 0},
                              {"last_error", q.last_error}};
        if (auto* st = states.if_contains(q.domain)) o["primary"] = *st;
        arr.push_back(o);
    }
    if (json) {
        std::cout << json_text(arr) << "\n";
        return 0;
    }
    if (sums.empty()) std::cout << "Mail queue is empty\n";
    for (const auto& v : arr) {
        const auto& o = v.as_object();
        std::string state = "primary unknown (server not running?)";
        if (auto* st = o.if_contains("primary"))
            state = "primary " + std::string(st->as_object().at("state").as_string());
        std::cout << o.at("domain").as_string().c_str() << " messages=" << o.at("messages")
                  << " bytes=" << o.at("bytes") << " held=" << o.at("held")
                  << " oldest=" << format_duration(Seconds(o.at("oldest_age").as_int64())) << " "
                  << state << " last_error=" << o.at("last_error") << "\n";
    }
    return 0;
}

int queue_show(const Config& cfg, const std::string& id) {
    auto store = store_of(cfg);
    auto m = store->load_head(id);
    if (!m) {
        std::cerr << "no message " << id << " in the queue\n";
        return 1;
    }
    std::cout << "id: " << m->id << "\ndomain: " << m->domain << "\nfrom: <" << m->sender
              << ">\nsize: " << m->size << "\nreceived: " << rfc5322_date(m->received_at) << " ("
              << age_text(m->received_at) << " ago)\nattempts: " << m->attempts
              << "\nnext attempt: " << rfc5322_date(m->next_attempt_at)
              << "\nstate: " << (m->held.empty() ? "queued" : "held (" + m->held + ")") << "\n";
    for (const auto& r : m->recipients)
        std::cout << "to: <" << r.address << "> " << to_string(r.status)
                  << (r.last_reply.empty() ? "" : " \"" + r.last_reply + "\"") << "\n";
    for (const auto& h : store->history(id))
        std::cout << "attempt: " << rfc5322_date(h.at) << " " << h.result << "\n";
    const auto end = m->body.find("\r\n\r\n");
    std::cout << "\n" << m->body.substr(0, end == std::string::npos ? m->body.size() : end + 2);
    return 0;
}

// The running server (if any) lets go of `id` and any attempt in flight ends (and is recorded)
// before the CLI acts on the store: never a delivery and a DSN for one recipient. False when
// the attempt has not ended after `limit`.
bool withdraw_from_server(const Config& cfg, const std::string& id,
                          std::chrono::milliseconds limit = std::chrono::seconds(30)) {
    const auto until = std::chrono::steady_clock::now() + limit;
    for (;;) {
        auto r = control::request(cfg.control_socket, "forget " + id);
        if (!r || *r != "in-flight") return true;  // not running, or let go
        if (std::chrono::steady_clock::now() >= until) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

// hold | release | bounce, on the store; then the running server is told (when it runs).
int queue_act(const Config& cfg, const std::string& action, const std::string& id) {
    if (action != "release" && !withdraw_from_server(cfg, id)) {
        std::cerr << "an attempt to deliver " << id << " is still in flight; try again\n";
        return 1;
    }
    auto store = store_of(cfg);
    auto m = store->load_head(id);
    if (!m) {
        std::cerr << "no message " << id << " in the queue\n";
        return 1;
    }
    std::string detail = "domain " + m->domain;
    if (action == "hold") {
        store->set_held(id, "held by " + cli_user());
    } else if (action == "release") {
        store->set_held(id, "");
        control::request(cfg.control_socket, "schedule " + id);
    } else {  // bounce
        auto u = bounce::return_to_sender(*m, cfg.hostname,
                                          "returned to the sender by the operator of the backup MX",
                                          now(), cfg.dsn_max_headers);
        store->record_attempt(u);
        if (u.dsn) {
            control::request(cfg.control_socket, "schedule " + u.dsn->id);
            detail += " dsn " + u.dsn->id;
        }
    }
    cli_audit(*store, "message." + action, id, detail);
    std::cout << action << " " << id << " (" << detail << ")\n";
    return 0;
}

// Moves a single node's queue (every message with its pending recipients, held or not, with its
// attempts), greylist, verification cache, run-time domains and accounts into another store — a
// fleet's PostgreSQL. Idempotent: what the target has already is skipped, so a copy cut short is
// run again. The source is left as it was (remove it once the fleet serves the mail).
int store_copy(const std::string& from, const std::string& to) {
    auto src = open_store(from, "", Seconds(60));
    auto dst = open_store(to, "", Seconds(60));  // no owner: the first node to load them claims
    std::size_t copied = 0, present = 0;
    const auto rows = src->list();
    for (const auto& row : rows) {
        if (dst->load_head(row.id)) {
            ++present;
            continue;
        }
        auto m = src->load(row.id);
        if (!m) continue;  // delivered meanwhile
        NewMessage n;
        n.id = m->id;
        n.domain = m->domain;
        n.sender = m->sender;
        for (const auto& r : m->recipients)
            if (r.status == RcptStatus::Pending) n.recipients.push_back(r.address);
        n.body = std::move(m->body);
        n.received_at = m->received_at;
        n.next_attempt_at = m->next_attempt_at;
        n.smtputf8 = m->smtputf8;
        n.eightbit = m->eightbit;
        n.held = m->held;
        n.attempts = m->attempts;
        n.last_error = m->last_error;
        dst->insert({&n});
        ++copied;
    }
    const auto tables = src->export_tables();
    dst->import_tables(tables);
    for (const auto& row : rows)
        if (!dst->load_head(row.id) && src->load_head(row.id))
            throw StoreError("message " + row.id + " did not reach the target");
    std::cout << "copied " << copied << " messages (" << present << " were there already), "
              << tables.greylist.size() << " greylist entries, " << tables.allowlist.size()
              << " allowlisted networks, " << tables.verify.size() << " verified addresses, "
              << tables.domains.size() << " domains, " << tables.accounts.size() << " accounts\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    setup_logging("info");  // what a command logs is escaped as the server's lines are
    CLI::App app{"backupmx: a backup MX that keeps your mail while the primary is down"};
    app.require_subcommand(1);
    std::string config_path = "/etc/backupmx/backupmx.toml";

    auto* serve_cmd = app.add_subcommand("serve", "run the server in the foreground");
    serve_cmd->add_option("--config", config_path, "config file")->required();

    auto* check_cmd = app.add_subcommand("check-config", "validate the config file and exit");
    check_cmd->add_option("--config", config_path, "config file")->required();

    auto* queue_cmd = app.add_subcommand("queue", "inspect and act on the queue");
    queue_cmd->require_subcommand(1);
    bool json = false;
    auto* list_cmd = queue_cmd->add_subcommand("list", "one line per queued message");
    list_cmd->add_option("--config", config_path, "config file")->required();
    list_cmd->add_flag("--json", json, "print a JSON array");
    std::string flush_domain;
    auto* flush_cmd = queue_cmd->add_subcommand("flush", "make the running server try now");
    flush_cmd->add_option("--config", config_path, "config file")->required();
    flush_cmd->add_option("domain", flush_domain, "only this domain");
    std::string delete_id;
    auto* delete_cmd = queue_cmd->add_subcommand("delete", "remove one message from the queue");
    delete_cmd->add_option("--config", config_path, "config file")->required();
    delete_cmd->add_option("id", delete_id, "queue id")->required();
    std::string list_domain;
    list_cmd->add_option("--domain", list_domain, "only this domain's messages");
    auto* summary_cmd =
        queue_cmd->add_subcommand("summary", "per domain: messages, bytes, oldest, primary state");
    summary_cmd->add_option("--config", config_path, "config file")->required();
    summary_cmd->add_flag("--json", json, "print a JSON array");
    std::string act_id;
    auto* show_cmd = queue_cmd->add_subcommand("show",
                                               "one message: envelope, recipients' state, "
                                               "delivery history and headers (no body)");
    show_cmd->add_option("--config", config_path, "config file")->required();
    show_cmd->add_option("id", act_id, "queue id")->required();
    std::map<std::string, CLI::App*> acts;
    for (const auto& [name, help] :
         {std::pair{"hold", "keep a message from delivery until released"},
          std::pair{"release", "let a held message be delivered again"},
          std::pair{"bounce", "return a message to its sender with a DSN, and remove it"}}) {
        auto* a = queue_cmd->add_subcommand(name, help);
        a->add_option("--config", config_path, "config file")->required();
        a->add_option("id", act_id, "queue id")->required();
        acts[name] = a;
    }

    std::string check_domain, check_hostname;
    bool check_json = false;
    auto* dns_cmd = app.add_subcommand("dns-check", "check a domain's DNS for backup MX service");
    dns_cmd->add_option("domain", check_domain, "the mail domain")->required();
    dns_cmd->add_option("--config", config_path, "config file (resolver, hostname, domains)");
    dns_cmd->add_option("--hostname", check_hostname, "this backup's host name (default: config)");
    dns_cmd->add_flag("--json", check_json, "print JSON");

    auto* admin_cmd = app.add_subcommand("admin", "admin accounts (web panel and HTTP API)");
    admin_cmd->require_subcommand(1);
    std::string user_name, user_role;
    std::vector<std::string> user_domains;
    auto* add_user_cmd = admin_cmd->add_subcommand("add-user",
                                                   "create an account; prints its "
                                                   "one-time password");
    add_user_cmd->add_option("--config", config_path, "config file")->required();
    add_user_cmd->add_option("name", user_name, "user name")->required();
    add_user_cmd->add_option("--role", user_role, "operator or customer")->required();
    add_user_cmd->add_option("--domain", user_domains, "a domain the customer owns (repeatable)");

    auto* domain_cmd =
        app.add_subcommand("domain", "domains added at run time (kept in the store)");
    domain_cmd->require_subcommand(1);
    std::string dom_name, dom_primary, dom_owner;
    auto* dom_add = domain_cmd->add_subcommand("add", "serve a domain: its name and its primary");
    dom_add->add_option("--config", config_path, "config file")->required();
    dom_add->add_option("name", dom_name, "the mail domain")->required();
    dom_add->add_option("primary", dom_primary, "host, host:port or [ip]:port")->required();
    dom_add->add_option("--owner", dom_owner, "the customer account that owns it");
    std::string dom_recipients = "verify";
    dom_add
        ->add_option("--recipients", dom_recipients,
                     "verify (ask the primary; the default) or any (invites backscatter)")
        ->check(CLI::IsMember({"verify", "any"}));
    auto* dom_list = domain_cmd->add_subcommand("list", "every domain served, and where it is set");
    dom_list->add_option("--config", config_path, "config file")->required();
    auto* dom_del = domain_cmd->add_subcommand("delete",
                                               "stop serving a run-time domain (refused "
                                               "while mail is queued for it)");
    dom_del->add_option("--config", config_path, "config file")->required();
    dom_del->add_option("name", dom_name, "the mail domain")->required();

    auto* store_cmd = app.add_subcommand("store", "the store itself");
    store_cmd->require_subcommand(1);
    auto* migrate_cmd = store_cmd->add_subcommand(
        "migrate", "create or bring the store's schema up to date (serve does it too)");
    migrate_cmd->add_option("--config", config_path, "config file")->required();
    std::string copy_from, copy_to;
    auto* copy_cmd = store_cmd->add_subcommand(
        "copy", "move a store's queue, greylist, caches, domains and accounts into another");
    copy_cmd->add_option("--from", copy_from, "sqlite:PATH or postgresql://...")->required();
    copy_cmd->add_option("--to", copy_to, "postgresql://... (or sqlite:PATH)")->required();

    CLI11_PARSE(app, argc, argv);
    if (*copy_cmd) {
        try {
            return store_copy(copy_from, copy_to);
        } catch (const std::exception& e) {
            std::cerr << "backupmx: store copy: " << e.what() << "\n";
            return 1;
        }
    }
    if (*dns_cmd && dns_cmd->count("--config") == 0) {
        try {
            return dns_check(check_domain, nullptr, check_hostname, check_json);
        } catch (const std::exception& e) {
            std::cerr << "backupmx: " << e.what() << "\n";
            return 2;
        }
    }

    Config cfg;
    try {
        cfg = load_config_file(config_path);
    } catch (const ConfigError& e) {
        std::cerr << config_path << ": " << e.what() << "\n";
        return 2;
    }
    try {
        if (*check_cmd) {
            for (const auto& w : config_warnings(cfg))
                std::cout << config_path << ": warning: " << w << "\n";
            std::cout << config_path << ": ok (" << cfg.domains.size() << " domains, store "
                      << cfg.store << ")\n";
            return 0;
        }
        if (*serve_cmd) return serve(cfg);
        if (*dns_cmd) {  // the domains added at run time count as configured too
            Domains live(cfg);
            try {
                live.load(store_of(cfg)->domains());
                cfg.live_domains = [&live](std::string_view name) { return live.find(name); };
            } catch (const StoreError& e) {
                std::cerr << "backupmx: domains added at run time not read: " << e.what() << "\n";
            }
            return dns_check(check_domain, &cfg, check_hostname, check_json);
        }
        if (*list_cmd) return queue_list(cfg, json, list_domain);
        if (*summary_cmd) return queue_summary(cfg, json);
        if (*show_cmd) return queue_show(cfg, act_id);
        for (const auto& [name, a] : acts)
            if (*a) return queue_act(cfg, name, act_id);
        if (*add_user_cmd) return add_user(cfg, user_name, user_role, user_domains);
        if (*migrate_cmd) {
            store_of(cfg);  // migrates as it opens
            std::cout << "store " << (is_pg_url(cfg.store) ? "(PostgreSQL)" : cfg.store)
                      << ": schema up to date\n";
            return 0;
        }
        if (*dom_add) return domain_add(cfg, dom_name, dom_primary, dom_owner, dom_recipients);
        if (*dom_list) return domain_list(cfg);
        if (*dom_del) return domain_delete(cfg, dom_name);
        if (*flush_cmd) {
            auto r = control::request(cfg.control_socket, flush_domain.empty()
                                                              ? "flush"
                                                              : "flush " + to_lower(flush_domain));
            if (!r) {
                std::cerr << "backupmx is not running (no answer on " << cfg.control_socket
                          << ")\n";
                return 1;
            }
            std::cout << *r << "\n";
            return r->starts_with("ok") ? 0 : 1;
        }
        if (*delete_cmd) {
            if (!withdraw_from_server(cfg, delete_id)) {
                std::cerr << "an attempt to deliver " << delete_id
                          << " is still in flight; try again\n";
                return 1;
            }
            auto store = store_of(cfg);
            if (!store->remove(delete_id)) {
                std::cerr << "no message " << delete_id << " in the queue\n";
                return 1;
            }
            std::cout << "deleted " << delete_id << "\n";
            return 0;
        }
    } catch (const std::exception& e) {
        std::cerr << "backupmx: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
