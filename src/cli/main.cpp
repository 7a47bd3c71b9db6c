// cli: the `backupmx` command — `serve` wires the parts together on one event loop; `queue
// list|flush|delete` and `check-config` are the operator's tools. It must never hold protocol or
// queue logic of its own: it only parses arguments, prints, and calls the parts.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json.hpp>
#include <cstdlib>
#include <iostream>

#include "config/config.hpp"
#include "control/control.hpp"
#include "dns/resolver.hpp"
#include "dnscheck/dnscheck.hpp"
#include "queue/queue.hpp"
#include "scheduler/scheduler.hpp"
#include "smtp/server.hpp"
#include "store/store.hpp"
#include "util/util.hpp"

namespace asio = boost::asio;
using namespace bmx;

namespace {

void setup_logging(const std::string& level) {
    auto logger = spdlog::stderr_color_mt("backupmx");
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %l %v");
    logger->set_level(spdlog::level::from_str(level));
    logger->flush_on(spdlog::level::trace);
    spdlog::set_default_logger(logger);
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

int serve(const Config& cfg) {
    setup_logging(cfg.log_level);
    apply_time_offset();
    raise_fd_limit();
    asio::io_context io(1);
    auto queue = std::make_unique<Queue>(open_sqlite_store(cfg.store_path()));
    dns::Resolver resolver(io,
                           dns::Settings{cfg.dns_resolver, cfg.dns_trust_anchor, cfg.dns_timeout});
    Scheduler scheduler(io, cfg, *queue, resolver);
    policy::Checker checker(
        cfg, *queue, resolver,
        [&scheduler](const std::string& domain,
                     const std::string& rcpt) -> asio::awaitable<policy::Verification> {
            co_return co_await scheduler.verify(domain, rcpt);
        });
    smtp::Server smtp(io, cfg, *queue, checker,
                      [&](const std::vector<NewMessage>& m) { scheduler.add(m); });
    Alerts alerts(io, cfg, *queue, [&](const std::vector<NewMessage>& m) { scheduler.add(m); });
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
    control::Server ctl(io, cfg.control_socket, [&](const std::string& line) -> std::string {
        if (line == "ping") return "pong";
        if (line == "flush" || line.starts_with("flush ")) {
            std::string domain = line.size() > 6 ? line.substr(6) : "";
            auto n = scheduler.flush(domain);
            spdlog::info("flush requested{}: {} messages due now",
                         domain.empty() ? "" : " for " + domain, n);
            return "ok " + std::to_string(n);
        }
        if (line.starts_with("forget ")) {
            scheduler.forget(line.substr(7));
            return "ok";
        }
        return "error unknown command";
    });
    smtp.start();
    ctl.start();
    asio::co_spawn(io, scheduler.run(), asio::detached);
    spdlog::info("backupmx ready: hostname={} domains={} store={} control={}", cfg.hostname,
                 cfg.domains.size(), cfg.store, cfg.control_socket);

    bool hard_stop = false;
    asio::steady_timer grace(io);
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code& ec, int sig) {
        if (ec) return;
        spdlog::info("signal {}: stopping (no new sessions; queued mail stays queued)", sig);
        smtp.stop();
        ctl.stop();
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

int queue_list(const Config& cfg, bool json) {
    auto store = open_sqlite_store(cfg.store_path());
    auto rows = store->list();
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
        std::cout << boost::json::serialize(arr) << "\n";
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

}  // namespace

int main(int argc, char** argv) {
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

    std::string check_domain, check_hostname;
    bool check_json = false;
    auto* dns_cmd = app.add_subcommand("dns-check", "check a domain's DNS for backup MX service");
    dns_cmd->add_option("domain", check_domain, "the mail domain")->required();
    dns_cmd->add_option("--config", config_path, "config file (resolver, hostname, domains)");
    dns_cmd->add_option("--hostname", check_hostname, "this backup's host name (default: config)");
    dns_cmd->add_flag("--json", check_json, "print JSON");

    CLI11_PARSE(app, argc, argv);
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
            std::cout << config_path << ": ok (" << cfg.domains.size() << " domains, store "
                      << cfg.store << ")\n";
            return 0;
        }
        if (*serve_cmd) return serve(cfg);
        if (*dns_cmd) return dns_check(check_domain, &cfg, check_hostname, check_json);
        if (*list_cmd) return queue_list(cfg, json);
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
            auto store = open_sqlite_store(cfg.store_path());
            if (!store->remove(delete_id)) {
                std::cerr << "no message " << delete_id << " in the queue\n";
                return 1;
            }
            control::request(cfg.control_socket, "forget " + delete_id);  // if it runs
            std::cout << "deleted " << delete_id << "\n";
            return 0;
        }
    } catch (const std::exception& e) {
        std::cerr << "backupmx: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
