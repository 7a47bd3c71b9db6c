#include "config/config.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace bmx;
using std::chrono::seconds;

namespace {

const char* kFullExample = R"toml(
hostname = "MX2.Example.Test"

[smtp]
listen = ["127.0.0.1:2525", "[::1]:2525"]
max_message_size = 10485760
max_recipients = 50

[queue]
store = "sqlite:/var/spool/backupmx/queue.db"
max_age = "5d"
retry_min = "2m"
retry_max = "1h"
probe_interval = "45s"

[[domain]]
name = "example.test"
primary = "127.0.0.1:2526"

[[domain]]
name = "Other.Example.TEST."
primary = "[::1]:2526"
)toml";

// Expects parse_config to throw a ConfigError naming `key` ("config: KEY: why").
void expect_error(const std::string& toml, const std::string& key) {
    try {
        parse_config(toml);
        ADD_FAILURE() << "accepted, expected an error naming " << key << ":\n" << toml;
    } catch (const ConfigError& e) {
        std::string msg = e.what();
        EXPECT_TRUE(msg.starts_with("config: " + key + ": ")) << "message: " << msg;
    }
}

std::string with_domain(const std::string& primary) {
    return "[[domain]]\nname = \"example.test\"\nprimary = \"" + primary + "\"\n";
}

}  // namespace

// =============================================================================================
// parse_config: values

TEST(ConfigParse, FullExample) {
    Config c = parse_config(kFullExample);
    EXPECT_EQ(c.hostname, "mx2.example.test");
    ASSERT_EQ(c.listen.size(), 2u);
    EXPECT_EQ(c.listen[0].host, "127.0.0.1");
    EXPECT_EQ(c.listen[0].port, 2525);
    EXPECT_EQ(c.listen[1].host, "::1");
    EXPECT_EQ(c.listen[1].port, 2525);
    EXPECT_EQ(c.max_message_size, 10485760u);
    EXPECT_EQ(c.max_recipients, 50u);
    EXPECT_EQ(c.store, "sqlite:/var/spool/backupmx/queue.db");
    EXPECT_EQ(c.store_path(), "/var/spool/backupmx/queue.db");
    EXPECT_EQ(c.max_age, seconds(5 * 86400));
    EXPECT_EQ(c.retry_min, seconds(120));
    EXPECT_EQ(c.retry_max, seconds(3600));
    EXPECT_EQ(c.probe_interval, seconds(45));
    EXPECT_EQ(c.control_socket, "/var/spool/backupmx/control.sock");
    ASSERT_EQ(c.domains.size(), 2u);
    EXPECT_EQ(c.domains[0].name, "example.test");
    EXPECT_EQ(c.domains[0].primary->host, "127.0.0.1");
    EXPECT_EQ(c.domains[0].primary->port, 2526);
    EXPECT_EQ(c.domains[1].name, "other.example.test");
    EXPECT_EQ(c.domains[1].primary->host, "::1");
    EXPECT_EQ(c.domains[1].primary->port, 2526);
}

TEST(ConfigParse, EveryOptionalKey) {
    Config c = parse_config(R"toml(
[smtp]
max_connections = 77
command_timeout = "6m"
data_timeout = 900
max_errors = 5
[queue]
max_concurrency = 4
initial_concurrency = 3
control_socket = "/run/bmx.sock"
relayhost = "smarthost.test:587"
[delivery]
connect_timeout = "10s"
reply_timeout = "2m"
[log]
level = "debug"
)toml");
    EXPECT_EQ(c.max_connections, 77u);
    EXPECT_EQ(c.command_timeout, seconds(360));
    EXPECT_EQ(c.data_timeout, seconds(900));
    EXPECT_EQ(c.max_errors, 5u);
    EXPECT_EQ(c.max_concurrency, 4u);
    EXPECT_EQ(c.initial_concurrency, 3u);
    EXPECT_EQ(c.control_socket, "/run/bmx.sock");
    ASSERT_TRUE(c.relayhost);
    EXPECT_EQ(c.relayhost->host, "smarthost.test");
    EXPECT_EQ(c.relayhost->port, 587);
    EXPECT_EQ(c.connect_timeout, seconds(10));
    EXPECT_EQ(c.reply_timeout, seconds(120));
    EXPECT_EQ(c.log_level, "debug");
}

TEST(ConfigParse, DefaultsWhenEmpty) {
    Config c = parse_config("");
    EXPECT_EQ(c.hostname, "localhost");
    ASSERT_EQ(c.listen.size(), 1u);
    EXPECT_EQ(c.listen[0].host, "127.0.0.1");
    EXPECT_EQ(c.listen[0].port, 2525);
    EXPECT_EQ(c.max_message_size, 52428800u);
    EXPECT_EQ(c.max_recipients, 100u);
    EXPECT_EQ(c.max_connections, 2000u);
    EXPECT_EQ(c.command_timeout, seconds(300));
    EXPECT_EQ(c.data_timeout, seconds(600));
    EXPECT_EQ(c.max_errors, 20u);
    EXPECT_EQ(c.store, "sqlite:var/queue.db");
    EXPECT_EQ(c.store_path(), "var/queue.db");
    EXPECT_EQ(c.max_age, seconds(14 * 86400));
    EXPECT_EQ(c.retry_min, seconds(60));
    EXPECT_EQ(c.retry_max, seconds(1800));
    EXPECT_EQ(c.probe_interval, seconds(30));
    EXPECT_EQ(c.max_concurrency, 10u);
    EXPECT_EQ(c.initial_concurrency, 2u);
    EXPECT_EQ(c.control_socket, "var/control.sock");
    EXPECT_FALSE(c.relayhost);
    EXPECT_EQ(c.connect_timeout, seconds(30));
    EXPECT_EQ(c.reply_timeout, seconds(300));
    EXPECT_EQ(c.log_level, "info");
    EXPECT_TRUE(c.domains.empty());
}

TEST(ConfigParse, DefaultsForKeysMissingFromPresentTables) {
    Config c = parse_config("[smtp]\nmax_recipients = 5\n[queue]\nstore = \"sqlite:q.db\"\n");
    EXPECT_EQ(c.max_recipients, 5u);
    EXPECT_EQ(c.max_message_size, 52428800u);
    ASSERT_EQ(c.listen.size(), 1u);
    EXPECT_EQ(c.listen[0].port, 2525);
    EXPECT_EQ(c.max_age, seconds(14 * 86400));
    EXPECT_EQ(c.retry_min, seconds(60));
    EXPECT_EQ(c.retry_max, seconds(1800));
    EXPECT_EQ(c.probe_interval, seconds(30));
    EXPECT_EQ(c.control_socket, "./control.sock");
}

TEST(ConfigParse, AdminListenerAndLoginLimits) {
    Config d = parse_config("");
    EXPECT_EQ(d.admin_max_connections, 256u);
    EXPECT_EQ(d.admin_max_connections_per_address, 16u);
    EXPECT_EQ(d.admin_header_timeout, seconds(10));
    EXPECT_EQ(d.admin_idle_timeout, seconds(30));
    EXPECT_EQ(d.admin_login_threads, 2u);
    EXPECT_EQ(d.admin_login_queue, 32u);
    EXPECT_EQ(d.admin_login_queue_per_address, 4u);
    Config c = parse_config(R"toml(
[admin]
max_connections = 100
max_connections_per_address = 4
header_timeout = "5s"
idle_timeout = "1m"
login_threads = 1
login_queue = 8
login_queue_per_address = 2
)toml");
    EXPECT_EQ(c.admin_max_connections, 100u);
    EXPECT_EQ(c.admin_max_connections_per_address, 4u);
    EXPECT_EQ(c.admin_header_timeout, seconds(5));
    EXPECT_EQ(c.admin_idle_timeout, seconds(60));
    EXPECT_EQ(c.admin_login_threads, 1u);
    EXPECT_EQ(c.admin_login_queue, 8u);
    EXPECT_EQ(c.admin_login_queue_per_address, 2u);
    expect_error("[admin]\nlogin_threads = 0\n", "admin.login_threads");
    expect_error("[admin]\nmax_connections_per_address = -1\n",
                 "admin.max_connections_per_address");
    expect_error("[admin]\nheader_timeout = \"soon\"\n", "admin.header_timeout");
}

TEST(ConfigParse, DurationAsIntegerSeconds) {
    Config c = parse_config("[queue]\nmax_age = 3600\nretry_min = 30\nretry_max = 30\n");
    EXPECT_EQ(c.max_age, seconds(3600));
    EXPECT_EQ(c.retry_min, seconds(30));
    EXPECT_EQ(c.retry_max, seconds(30));
}

TEST(ConfigParse, InitialConcurrencyClampedToMax) {
    Config c = parse_config("[queue]\nmax_concurrency = 3\ninitial_concurrency = 8\n");
    EXPECT_EQ(c.initial_concurrency, 3u);
}

// =============================================================================================
// parse_config: errors name the key

TEST(ConfigErrors, UnknownKeyAtEveryLevel) {
    expect_error("bogus = 1\n", "bogus");
    expect_error("[smtp]\nbogus = 1\n", "smtp.bogus");
    expect_error("[queue]\nbogus = \"x\"\n", "queue.bogus");
    expect_error("[delivery]\nbogus = true\n", "delivery.bogus");
    expect_error("[log]\nbogus = 1\n", "log.bogus");
    expect_error("[[domain]]\nname = \"a.test\"\nprimary = \"h:25\"\nbogus = 1\n",
                 "domain[0].bogus");
    expect_error(
        with_domain("h:25") + "[[domain]]\nname = \"b.test\"\nprimary = \"h\"\nbogus = 1\n",
        "domain[1].bogus");
    expect_error("[smtp.tls]\ncert = \"x\"\n", "smtp.tls");
    expect_error("[bogus]\nx = 1\n", "bogus");
}

TEST(ConfigErrors, MisspelledKeyIsNotIgnored) {
    expect_error("[queue]\nmaxage = \"1d\"\n", "queue.maxage");
    expect_error("[smtp]\nmax_recipient = 5\n", "smtp.max_recipient");
}

TEST(ConfigErrors, BadDurationsNameTheKey) {
    const char* keys[][2] = {
        {"smtp", "command_timeout"},     {"smtp", "data_timeout"},     {"queue", "max_age"},
        {"queue", "retry_min"},          {"queue", "retry_max"},       {"queue", "probe_interval"},
        {"delivery", "connect_timeout"}, {"delivery", "reply_timeout"}};
    for (auto& [table, key] : keys) {
        std::string name = std::string(table) + "." + key;
        for (const char* bad : {"\"5x\"", "\"-1m\"", "-1", "\"\"", "\"0s\"", "0", "1.5", "true",
                                "\"1.5h\"", "\"5 m\""}) {
            SCOPED_TRACE(name + " = " + bad);
            expect_error("[" + std::string(table) + "]\n" + key + " = " + bad + "\n", name);
        }
    }
}

TEST(ConfigErrors, RetryMaxBelowRetryMin) {
    expect_error("[queue]\nretry_min = \"10m\"\nretry_max = \"5m\"\n", "queue.retry_max");
    expect_error("[queue]\nretry_min = \"1h\"\n", "queue.retry_max");  // default retry_max 30m
}

TEST(ConfigErrors, DomainListedTwice) {
    expect_error(with_domain("a:25") + "[[domain]]\nname = \"EXAMPLE.test.\"\nprimary = \"b:25\"\n",
                 "domain[1].name");
}

TEST(ConfigErrors, BadDomainEntries) {
    expect_error("[[domain]]\nprimary = \"h:25\"\n", "domain[0].name");
    expect_error("[[domain]]\nname = \"bad domain\"\nprimary = \"h:25\"\n", "domain[0].name");
    expect_error("[[domain]]\nname = \"a..test\"\nprimary = \"h:25\"\n", "domain[0].name");
    expect_error("[[domain]]\nname = \"example.test\"\nprimary = 25\n", "domain[0].primary");
    expect_error("domain = \"example.test\"\n", "domain");
}

TEST(ConfigErrors, BadPrimaryForms) {
    for (const char* bad : {"::1:25", "host:0", "host:99999", "", "host:", ":25", "[::1",
                            "[::1]:", "[::1]25", "host:25x", "ho st:25", "host:-1"}) {
        SCOPED_TRACE(bad);
        expect_error(with_domain(bad), "domain[0].primary");
    }
}

TEST(ConfigErrors, BadValuesNameTheKey) {
    expect_error("hostname = \"not a host\"\n", "hostname");
    expect_error("hostname = 5\n", "hostname");
    expect_error("[smtp]\nlisten = []\n", "smtp.listen");
    expect_error("[smtp]\nlisten = \"127.0.0.1:25\"\n", "smtp.listen");
    expect_error("[smtp]\nlisten = [\"::1:25\"]\n", "smtp.listen");
    expect_error("[smtp]\nlisten = [25]\n", "smtp.listen");
    expect_error("[smtp]\nmax_recipients = 0\n", "smtp.max_recipients");
    expect_error("[smtp]\nmax_recipients = \"10\"\n", "smtp.max_recipients");
    expect_error("[smtp]\nmax_message_size = 100\n", "smtp.max_message_size");
    expect_error("[queue]\nstore = \"mysql://x\"\n", "queue.store");
    expect_error("[queue]\nnode = \"\"\n", "queue.node");
    expect_error("[queue]\nlease = \"2s\"\n", "queue.lease");
    expect_error("[queue]\nstore = \"sqlite:\"\n", "queue.store");
    expect_error("[queue]\nrelayhost = \"::1:25\"\n", "queue.relayhost");
    expect_error("[log]\nlevel = \"loud\"\n", "log.level");
    expect_error("smtp = 5\n", "smtp");
}

TEST(ConfigErrors, TomlSyntaxError) {
    try {
        parse_config("[smtp\nlisten = 1\n");
        ADD_FAILURE() << "accepted broken TOML";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("TOML syntax error at line "), std::string::npos)
            << e.what();
    }
}

TEST(ConfigErrors, MissingFile) {
    EXPECT_THROW(load_config_file("/nonexistent/backupmx-test/config.toml"), ConfigError);
}

// =============================================================================================
// primary forms

TEST(ConfigParse, PrimaryForms) {
    struct Case {
        const char* text;
        const char* host;
        std::uint16_t port;
    };
    for (const Case& c :
         {Case{"127.0.0.1:2526", "127.0.0.1", 2526}, Case{"[::1]:2526", "::1", 2526},
          Case{"mail.example.test", "mail.example.test", 25},
          Case{"mail.example.test:2525", "mail.example.test", 2525},
          Case{"Mail.Example.Test:65535", "mail.example.test", 65535},
          Case{"[2001:db8::25]", "2001:db8::25", 25}}) {
        SCOPED_TRACE(c.text);
        Config cfg = parse_config(with_domain(c.text));
        ASSERT_EQ(cfg.domains.size(), 1u);
        EXPECT_EQ(cfg.domains[0].primary->host, c.host);
        EXPECT_EQ(cfg.domains[0].primary->port, c.port);
    }
}

// =============================================================================================
// find_domain

TEST(FindDomain, CaseInsensitive) {
    Config c = parse_config(kFullExample);
    auto* d = c.find_domain("EXAMPLE.Test");
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(d->name, "example.test");
    auto* o = c.find_domain("other.EXAMPLE.test");
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->name, "other.example.test");
}

TEST(FindDomain, ExactMatchOnly) {
    Config c = parse_config(with_domain("h:25"));
    EXPECT_NE(c.find_domain("example.test"), nullptr);
    EXPECT_EQ(c.find_domain("sub.example.test"), nullptr);
    EXPECT_EQ(c.find_domain("xexample.test"), nullptr);
    EXPECT_EQ(c.find_domain("example.test.evil"), nullptr);
    EXPECT_EQ(c.find_domain("test"), nullptr);
    EXPECT_EQ(c.find_domain(""), nullptr);
}

TEST(FindDomain, NoDomainsMatchesNothing) {
    Config c;
    EXPECT_EQ(c.find_domain("localhost"), nullptr);
}

// =============================================================================================
// parse_host_port

TEST(ParseHostPort, Forms) {
    auto a = parse_host_port("127.0.0.1:2526", 25);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->host, "127.0.0.1");
    EXPECT_EQ(a->port, 2526);

    auto b = parse_host_port("[::1]:2526", 25);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->host, "::1");
    EXPECT_EQ(b->port, 2526);

    auto c = parse_host_port("Mail.Example.Test", 587);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->host, "mail.example.test");
    EXPECT_EQ(c->port, 587);

    auto d = parse_host_port("[fe80::1]", 2525);
    ASSERT_TRUE(d);
    EXPECT_EQ(d->host, "fe80::1");
    EXPECT_EQ(d->port, 2525);

    auto e = parse_host_port("mail.example.test:1", 25);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->port, 1);
}

TEST(ParseHostPort, Rejects) {
    for (const char* bad :
         {"",       "::1:25",   "::1",      "host:0", "host:99999", "host:65536", "host:",
          ":25",    "[::1",     "[::1]:",   "[::1]x", "[]:25",      "[]",         "host:25x",
          "host:x", "host:+25", "host:-25", "ho st",  "host/x:25",  "a:b:c",      "host:25:26"}) {
        EXPECT_FALSE(parse_host_port(bad, 25).has_value()) << bad;
    }
}

TEST(ParseHostPort, HostTooLong) {
    EXPECT_TRUE(parse_host_port(std::string(253, 'a'), 25));
    EXPECT_FALSE(parse_host_port(std::string(254, 'a'), 25));
}

TEST(HostPortText, Format) {
    EXPECT_EQ((HostPort{"::1", 2526}).text(), "[::1]:2526");
    EXPECT_EQ((HostPort{"mail.example.test", 25}).text(), "mail.example.test:25");
    EXPECT_EQ((HostPort{"127.0.0.1", 2525}).text(), "127.0.0.1:2525");
    auto rt = parse_host_port((HostPort{"2001:db8::1", 587}).text(), 25);
    ASSERT_TRUE(rt);
    EXPECT_EQ(rt->host, "2001:db8::1");
    EXPECT_EQ(rt->port, 587);
}

TEST(ConfigRouting, DomainWithoutPrimaryRoutesByMx) {
    auto c = parse_config("[[domain]]\nname = \"example.test\"\n");
    ASSERT_EQ(c.domains.size(), 1u);
    EXPECT_FALSE(c.domains[0].primary.has_value());
    EXPECT_EQ(c.domains[0].tls, TlsPolicy::May);
}

TEST(ConfigRouting, TlsPoliciesDnsAndNames) {
    auto c = parse_config(
        "hostname = \"mx2.a.test\"\n[smtp]\nalso_known_as = [\"MX2.B.test.\"]\n"
        "[dns]\nresolver = \"127.0.0.1@5353\"\ntrust_anchor = \"/tmp/ta\"\ntimeout = \"3s\"\n"
        "[delivery]\nport = 2525\n"
        "[[domain]]\nname = \"a.test\"\ntls = \"verify\"\ntls_ca_file = \"/tmp/ca.pem\"\n"
        "[[domain]]\nname = \"b.test\"\nprimary = \"mail.b.test\"\ntls = \"dane\"\n");
    EXPECT_EQ(c.our_names(), (std::vector<std::string>{"mx2.a.test", "mx2.b.test"}));
    EXPECT_EQ(c.dns_resolver, "127.0.0.1@5353");
    EXPECT_EQ(c.dns_timeout, std::chrono::seconds(3));
    EXPECT_EQ(c.delivery_port, 2525);
    EXPECT_EQ(c.domains[0].tls, TlsPolicy::Verify);
    EXPECT_EQ(c.domains[0].tls_ca_file, "/tmp/ca.pem");
    EXPECT_EQ(c.domains[1].tls, TlsPolicy::Dane);
    EXPECT_EQ(c.domains[1].primary->host, "mail.b.test");
    EXPECT_EQ(c.domains[1].primary->port, 25);
}

TEST(ConfigRouting, BadRoutingValuesAreNamed) {
    auto expect = [](const std::string& toml, const std::string& key) {
        try {
            parse_config(toml);
            FAIL() << "accepted: " << toml;
        } catch (const ConfigError& e) {
            EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
        }
    };
    expect("[[domain]]\nname = \"a.test\"\ntls = \"always\"\n", "domain[0].tls");
    expect("[[domain]]\nname = \"a.test\"\ntls = \"dane\"\n", "trust_anchor");
    expect("[dns]\nresolver = \"localhost:53\"\n", "dns.resolver");
    expect("[dns]\nresolver = \"127.0.0.1@0\"\n", "dns.resolver");
    expect("[smtp]\ntls_cert = \"/x.pem\"\n", "smtp.tls_key");
    expect("[smtp]\nalso_known_as = [\"bad name\"]\n", "smtp.also_known_as");
    expect("[delivery]\nport = 0\n", "delivery.port");
}

TEST(ConfigParse, EtrnNetworksPerDomain) {
    auto c = parse_config(
        "[[domain]]\nname = \"example.test\"\nprimary = \"127.0.0.1:2526\"\n"
        "etrn_networks = [\"192.0.2.0/24\", \"2001:db8::1\"]\n");
    ASSERT_EQ(c.domains.size(), 1u);
    EXPECT_EQ(c.domains[0].etrn_networks,
              (std::vector<std::string>{"192.0.2.0/24", "2001:db8::1"}));
    expect_error("[[domain]]\nname = \"example.test\"\netrn_networks = [\"not-a-net\"]\n",
                 "domain[0].etrn_networks");
    expect_error("[[domain]]\nname = \"example.test\"\netrn_networks = \"192.0.2.0/24\"\n",
                 "domain[0].etrn_networks");
}

TEST(ConfigParse, Alerts) {
    auto c = parse_config(
        "[alerts]\nwebhook = \"http://[::1]:8080/hook\"\nemail = \"ops@example.net\"\n"
        "down_after = 5\nqueue_threshold = 1000\n");
    EXPECT_EQ(c.alert_webhook, "http://[::1]:8080/hook");
    EXPECT_EQ(c.alert_email, "ops@example.net");
    EXPECT_EQ(c.alert_down_after, 5u);
    EXPECT_EQ(c.alert_queue_threshold, 1000u);
    auto u = parse_http_url(c.alert_webhook);
    ASSERT_TRUE(u);
    EXPECT_EQ(u->host, "::1");
    EXPECT_EQ(u->port, 8080);
    EXPECT_EQ(u->target, "/hook");
    EXPECT_EQ(parse_http_url("http://hooks.example.net")->target, "/");
    EXPECT_FALSE(parse_http_url("https://hooks.example.net/x"));  // plain HTTP only, for now
    expect_error("[alerts]\nwebhook = \"ftp://x/\"\n", "alerts.webhook");
    expect_error("[alerts]\nemail = \"nobody\"\n", "alerts.email");
    expect_error("[alerts]\nemail = \"a@bad..domain\"\n", "alerts.email");
    expect_error("[alerts]\ndown_after = 0\n", "alerts.down_after");
    expect_error("[alerts]\nbogus = 1\n", "alerts.bogus");
}

TEST(ConfigParse, StateDirSpoolDirAndControlSocketDefaults) {
    Config sq = parse_config("[queue]\nstore = \"sqlite:/srv/bmx/queue.db\"\n");
    EXPECT_EQ(sq.state_dir, "/srv/bmx");  // beside the SQLite file
    EXPECT_EQ(sq.spool_dir, "/srv/bmx/spool");
    EXPECT_EQ(sq.control_socket, "/srv/bmx/control.sock");
    Config pg = parse_config("[queue]\nstore = \"postgresql://db/bmx\"\n");
    EXPECT_EQ(pg.state_dir, "/var/lib/backupmx");  // never the working directory
    EXPECT_EQ(pg.spool_dir, "/var/lib/backupmx/spool");
    EXPECT_EQ(pg.control_socket, "/var/lib/backupmx/control.sock");
    Config named = parse_config("[queue]\nstore = \"postgresql://db/bmx\"\nstate_dir = \"/st\"\n");
    EXPECT_EQ(named.spool_dir, "/st/spool");
    EXPECT_EQ(named.control_socket, "/st/control.sock");
    Config own = parse_config(
        "[queue]\nstore = \"postgresql://db/bmx\"\nstate_dir = \"/st\"\nspool_dir = \"/big\"\n"
        "control_socket = \"/run/b.sock\"\n");
    EXPECT_EQ(own.spool_dir, "/big");
    EXPECT_EQ(own.control_socket, "/run/b.sock");
}

TEST(ConfigParse, PgSynchronousCommitLevels) {
    EXPECT_EQ(parse_config("").pg_synchronous_commit, "on");
    for (const char* level : {"on", "remote_write", "remote_apply"}) {
        SCOPED_TRACE(level);
        auto c = parse_config(std::string("[queue]\npg_synchronous_commit = \"") + level + "\"\n");
        EXPECT_EQ(c.pg_synchronous_commit, level);
    }
    for (const char* bad : {"off", "local", "ON", "on'; DROP TABLE messages; --"}) {
        SCOPED_TRACE(bad);
        expect_error(std::string("[queue]\npg_synchronous_commit = \"") + bad + "\"\n",
                     "queue.pg_synchronous_commit");
    }
}

TEST(ConfigParse, MilterTimeoutsAndDefaultActionAreAccepted) {
    auto c = parse_config(
        "[policy]\nmilter_default_action = \"accept\"\nmilter_connect_timeout = \"5s\"\n"
        "milter_command_timeout = \"7s\"\nmilter_content_timeout = \"2m\"\n");
    EXPECT_EQ(c.milter_default_action, "accept");
    EXPECT_EQ(c.milter_connect_timeout, std::chrono::seconds(5));
    EXPECT_EQ(c.milter_command_timeout, std::chrono::seconds(7));
    EXPECT_EQ(c.milter_content_timeout, std::chrono::seconds(120));
    expect_error("[policy]\nmilter_default_action = \"maybe\"\n", "policy.milter_default_action");
}

TEST(ConfigErrors, BadDnsListWeightsNameTheKeyAndNeverThrowAnythingElse) {
    for (const char* bad :
         {"zone*-", "zone*", "zone*--1", "zone*1-", "zone*x", "zone*99999", "*3", "bad zone*1"}) {
        SCOPED_TRACE(bad);
        expect_error(std::string("[policy]\ndnsbl = [\"") + bad + "\"]\n", "policy.dnsbl");
    }
    auto c = parse_config("[policy]\ndnsbl = [\"list.dnswl.org*-5\", \"zen.example*3\"]\n");
    ASSERT_EQ(c.dnsbl.size(), 2u);
    EXPECT_EQ(c.dnsbl[0].weight, -5);
    EXPECT_EQ(c.dnsbl[1].weight, 3);
}
