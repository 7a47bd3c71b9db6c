// config: reads the TOML file into plain settings with their defaults, and validates every value.
// It is the one place a setting's name and default live. It must never start anything or touch the
// network: an unknown key or a bad value is an error that names the key, raised before serving.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace bmx {

struct HostPort {
    std::string host;  // name or IP literal (no brackets)
    std::uint16_t port = 25;
    std::string text() const;  // "host:port" / "[v6]:port"
};
// "host", "host:port", "1.2.3.4:25", "[::1]:2526"; nullopt on bad syntax.
std::optional<HostPort> parse_host_port(std::string_view text, std::uint16_t default_port);

enum class TlsPolicy { May, Encrypt, Verify, Dane };
const char* to_string(TlsPolicy p);

// Recipient validation (no backscatter): accept anyone, a list, or what the primary says.
enum class RecipientCheck { Any, List, Verify };

// The abuse rules that a [[domain]] may override; [policy] holds the global defaults.
struct DomainPolicy {
    RecipientCheck recipients = RecipientCheck::Any;
    std::vector<std::string> recipient_list;  // "user@domain" or "*@domain", lower case
    bool verify_unknown_accept = true;        // primary down, never seen: accept or 451
    bool greylisting = false;
    std::vector<std::string> milters;    // "inet:host:port" / "unix:/path", in order
    std::uint64_t max_message_size = 0;  // a domain's own, below [smtp]'s; 0: [smtp]'s
};

struct DomainConfig {
    std::string name;  // lower case, no trailing dot
    DomainPolicy policy;
    std::optional<HostPort> primary;  // none: route by the domain's MX records (RFC 5321 5.1)
    TlsPolicy tls = TlsPolicy::May;   // outbound STARTTLS to the primary
    std::string tls_ca_file;          // for "verify": CAs to trust instead of the system's
    // Clients that may ask for this domain's mail with ETRN (RFC 1985), besides the addresses
    // of its primary: "192.0.2.0/24", "2001:db8::/32".
    std::vector<std::string> etrn_networks;
};

struct Config {
    std::string hostname = "localhost";
    // [smtp]
    std::vector<HostPort> listen{{"127.0.0.1", 2525}};
    std::uint64_t max_message_size = 52428800;
    std::uint32_t max_recipients = 100;
    std::uint32_t max_connections = 2000;
    std::size_t max_session_memory = 32 * 1024 * 1024;  // message bytes in memory, all sessions
    std::uint32_t stress_threshold = 80;  // percent of max_connections: then stress timeouts
    std::chrono::seconds first_command_timeout{30};  // greeting to the first command
    std::chrono::seconds stress_timeout{10};         // every wait for a command, under stress
    std::chrono::seconds command_timeout{300};       // RFC 5321 4.5.3.2.7: at least 5 minutes
    std::chrono::seconds data_timeout{600};  // between DATA chunks (4.5.3.2.6 asks 3m client side)
    std::uint32_t max_errors = 20;           // protocol errors before the session is dropped
    std::uint32_t min_data_rate = 500;       // bytes/s that extend the DATA deadline (Postfix)
    std::uint32_t max_junk_commands = 100;   // NOOP/RSET/VRFY per session (Postfix: 100)
    std::uint32_t max_hops = 50;  // Received: headers, ours included, at which DATA gets 554 5.4.6
    std::vector<std::string> also_known_as;  // our other names, for MX self-recognition
    std::string tls_cert, tls_key;           // inbound STARTTLS; both or neither
    // [queue]
    std::string store = "sqlite:var/queue.db";
    std::chrono::seconds max_age{14 * 86400};
    std::size_t dsn_max_headers = 8192;  // bytes of the original's header a DSN returns
    std::chrono::seconds retry_min{60};
    std::chrono::seconds retry_max{1800};
    std::chrono::seconds probe_interval{30};
    std::uint32_t max_concurrency = 10;     // connections per primary at once
    std::uint32_t initial_concurrency = 2;  // slow start: grows while the primary keeps up
    // Files of the running server: the spool (bodies over 64 KiB while they arrive) and the
    // control socket default under it. Default: the SQLite file's directory; for PostgreSQL
    // /var/lib/backupmx (a packaged install's), never the working directory.
    std::string state_dir;
    std::string spool_dir;       // default: "<state_dir>/spool"
    std::string control_socket;  // default: "<state_dir>/control.sock"
    // PostgreSQL: synchronous_commit for every connection, so a 250 means the commit is flushed
    // ("on"), or applied on the synchronous standby too ("remote_apply").
    std::string pg_synchronous_commit = "on";
    // A fleet (PostgreSQL store): this node's name, owner of the messages it accepts (default:
    // hostname; keep it stable across restarts), and how long its messages stay its own without
    // a renewal before another node takes them over.
    std::string node;
    std::chrono::seconds lease{60};
    std::optional<HostPort> relayhost;  // where mail for other domains (DSNs) goes
    // [delivery]
    std::uint16_t delivery_port = 25;  // port for MX-routed delivery (Postfix: smtp_tcp_port)
    std::chrono::seconds connect_timeout{30};
    std::chrono::seconds reply_timeout{300};
    // [dns]
    std::string dns_resolver;      // "" = system; "ip" or "ip@port"
    std::string dns_trust_anchor;  // DS/DNSKEY file: DNSSEC validation (needed for tls = "dane")
    std::chrono::seconds dns_timeout{15};
    // [policy]
    DomainPolicy policy;  // defaults for every [[domain]]
    std::chrono::seconds verify_positive_ttl{28 * 86400};
    std::chrono::seconds verify_negative_ttl{3600};
    std::chrono::seconds verify_timeout{10};
    std::chrono::seconds greylist_delay{300};             // RFC 6647: retry not before this...
    std::chrono::seconds greylist_expiry{86400};          // ...nor after this
    std::chrono::seconds greylist_allow_ttl{35 * 86400};  // a client that retried is trusted
    std::uint32_t client_connections = 50;   // at once, per client address (Postfix: 50)
    std::uint32_t subnet_connections = 150;  // at once, per /24 (IPv4) or /48 (IPv6)
    std::uint32_t connection_rate = 120;     // new connections per minute per address
    std::uint32_t message_rate = 600;        // MAIL FROMs per minute per address
    std::uint32_t recipient_rate = 3000;     // RCPTs per minute per address
    // Clients the limits above do not apply to (Postfix: smtpd_client_event_limit_exceptions).
    std::vector<std::string> limit_exceptions{"127.0.0.0/8", "::1/128"};
    std::chrono::milliseconds greet_pause{0};  // wait before the banner; talkers are refused
    bool helo_required_syntax = true;
    bool spf = true;
    std::string milter_default_action = "tempfail";  // accept | tempfail | reject (Postfix's)
    std::chrono::seconds milter_connect_timeout{30}, milter_command_timeout{30},
        milter_content_timeout{300};  // check MAIL FROM (RFC 7208): "fail" is refused, every result
                                      // recorded // HELO must be a host name or [address literal]
    struct DnsList {
        std::string zone;   // "zen.spamhaus.org"
        int weight = 1;     // negative: an allowlist (postscreen's "list.dnswl.org*-5")
        std::string match;  // optional "=127.0.0.2": only that answer counts
    };
    std::vector<DnsList> dnsbl;
    int dnsbl_threshold = 1;
    int dnswl_threshold = -1;  // score at or below: allowlisted (skips greylisting)
    // [log]
    std::string log_level = "info";
    std::string log_format = "text";  // text | json (one object per line)
    // [admin]: the HTTP API, web panel and metrics (off when listen is empty); HTTPS with both.
    std::vector<HostPort> admin_listen;
    std::string admin_tls_cert, admin_tls_key;
    // Bounds of the admin listener against idle and slow clients, and of the login form's
    // password checks (Argon2id, ~0.1 s and 64 MiB each) against floods of them.
    std::uint32_t admin_max_connections = 256;             // at once; at it, the idlest goes
    std::uint32_t admin_max_connections_per_address = 16;  // at once, from one address
    std::chrono::seconds admin_header_timeout{10};         // a request's header, whole
    std::chrono::seconds admin_idle_timeout{30};           // keep-alive: wait for the next request
    std::uint32_t admin_login_threads = 2;                 // password checks at once
    std::uint32_t admin_login_queue = 32;                  // waiting for a thread; then 429
    std::uint32_t admin_login_queue_per_address = 4;       // of one address, waiting or running
    // A customer's primary may be a loopback, private or link-local address only when set.
    bool admin_customer_private_primaries = false;
    // How often customers' pending domain claims are checked against DNS.
    std::chrono::seconds admin_claim_check_interval{300};
    // [alerts]: a primary down (after `down_after` failed tries in a row), back up, or a domain's
    // queue past `queue_threshold` messages: an HTTP POST of JSON, and/or an email.
    std::string alert_webhook;  // "http://host:port/path"
    std::string alert_email;    // "ops@example.net"
    std::uint32_t alert_down_after = 3;
    std::uint32_t alert_queue_threshold = 0;  // 0: off

    std::vector<DomainConfig> domains;
    // Domains added at run time (kept in the store, see domains/): asked after the file's own.
    std::function<const DomainConfig*(std::string_view)> live_domains;

    std::string store_path() const;              // "sqlite:var/queue.db" -> "var/queue.db"
    std::vector<std::string> our_names() const;  // hostname + also_known_as
    const DomainConfig* find_domain(std::string_view domain) const;  // case-insensitive, exact
};

struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

Config load_config_file(const std::string& path);  // throws ConfigError

// "http://host[:port]/path" (IPv6 hosts in brackets); nullopt when it is not one.
struct HttpUrl {
    std::string host;
    std::uint16_t port = 80;
    std::string target = "/";
};
std::optional<HttpUrl> parse_http_url(std::string_view url);
Config parse_config(std::string_view toml_text);  // throws ConfigError

// Why a domain's recipient check invites backscatter ("" when it does not): with recipients =
// "any" an unknown address gets 250, and later a bounce to a sender that is usually forged.
std::string backscatter_warning(const DomainConfig& d);
// Every such warning of the config file's domains, one line each, naming the domain.
std::vector<std::string> config_warnings(const Config& c);

}  // namespace bmx
