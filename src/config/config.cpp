#include "config/config.hpp"

#include <toml++/toml.h>

#include <boost/asio/ip/address.hpp>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "util/util.hpp"

namespace bmx {

std::string HostPort::text() const {
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
}

std::optional<HostPort> parse_host_port(std::string_view text, std::uint16_t default_port) {
    HostPort hp;
    hp.port = default_port;
    std::string_view host = text, port;
    if (text.starts_with('[')) {
        auto close = text.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        host = text.substr(1, close - 1);
        auto rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest[0] != ':') return std::nullopt;
            port = rest.substr(1);
            if (port.empty()) return std::nullopt;
        }
    } else {
        auto colon = text.rfind(':');
        if (colon != std::string_view::npos) {
            if (text.find(':') != colon) return std::nullopt;  // bare IPv6 needs brackets
            host = text.substr(0, colon);
            port = text.substr(colon + 1);
            if (port.empty()) return std::nullopt;
        }
    }
    if (host.empty() || host.size() > 253) return std::nullopt;
    for (char c : host)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
              c == '_'))
            return std::nullopt;
    if (!port.empty()) {
        unsigned v = 0;
        auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
        if (ec != std::errc() || p != port.data() + port.size() || v == 0 || v > 65535)
            return std::nullopt;
        hp.port = static_cast<std::uint16_t>(v);
    }
    hp.host = to_lower(host);
    return hp;
}

const char* to_string(TlsPolicy p) {
    switch (p) {
        case TlsPolicy::May:
            return "may";
        case TlsPolicy::Encrypt:
            return "encrypt";
        case TlsPolicy::Verify:
            return "verify";
        case TlsPolicy::Dane:
            return "dane";
    }
    return "?";
}

std::vector<std::string> Config::our_names() const {
    std::vector<std::string> out{hostname};
    out.insert(out.end(), also_known_as.begin(), also_known_as.end());
    return out;
}

std::string Config::store_path() const {
    if (store.starts_with("sqlite:")) return store.substr(7);
    return "";  // PostgreSQL: no file
}

const DomainConfig* Config::find_domain(std::string_view domain) const {
    for (const auto& d : domains)
        if (iequals(d.name, domain)) return &d;
    return live_domains ? live_domains(domain) : nullptr;
}

namespace {

[[noreturn]] void fail(const std::string& key, const std::string& why) {
    throw ConfigError("config: " + key + ": " + why);
}

// "listen": a non-empty array of "ip:port" / "[v6]:port".
std::vector<HostPort> get_listen(const toml::table& t, const std::string& key) {
    auto* arr = t.get("listen")->as_array();
    if (!arr || arr->empty()) fail(key, "must be a non-empty array of \"ip:port\"");
    std::vector<HostPort> out;
    for (auto& el : *arr) {
        auto str = el.value<std::string>();
        auto hp = str ? parse_host_port(*str, 25) : std::nullopt;
        if (!hp) fail(key, "bad address (want \"ip:port\" or \"[v6]:port\")");
        out.push_back(*hp);
    }
    return out;
}

void check_keys(const toml::table& t, const std::string& where,
                const std::set<std::string>& allowed) {
    for (auto&& [k, v] : t) {
        std::string key(k.str());
        if (!allowed.count(key)) fail(where.empty() ? key : where + "." + key, "unknown key");
    }
}

std::string get_string(const toml::table& t, const std::string& where, const char* key,
                       std::string def) {
    auto node = t.get(key);
    if (!node) return def;
    auto v = node->value<std::string>();
    if (!v || node->type() != toml::node_type::string) fail(where + key, "must be a string");
    return *v;
}

// tls_cert and tls_key: both or neither.
void get_cert_pair(const toml::table& t, const std::string& where, std::string& cert,
                   std::string& key) {
    cert = get_string(t, where, "tls_cert", "");
    key = get_string(t, where, "tls_key", "");
    if (cert.empty() != key.empty())
        fail(where + (cert.empty() ? "tls_cert" : "tls_key"), "tls_cert and tls_key go together");
}

std::int64_t get_int(const toml::table& t, const std::string& where, const char* key,
                     std::int64_t def, std::int64_t min, std::int64_t max) {
    auto node = t.get(key);
    if (!node) return def;
    if (node->type() != toml::node_type::integer) fail(where + key, "must be an integer");
    auto v = *node->value<std::int64_t>();
    if (v < min || v > max)
        fail(where + key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
    return v;
}

std::chrono::seconds get_duration(const toml::table& t, const std::string& where, const char* key,
                                  std::chrono::seconds def) {
    auto node = t.get(key);
    if (!node) return def;
    std::optional<Seconds> d;
    if (node->type() == toml::node_type::string)
        d = parse_duration(*node->value<std::string>());
    else if (node->type() == toml::node_type::integer && *node->value<std::int64_t>() >= 0)
        d = Seconds(*node->value<std::int64_t>());
    if (!d) fail(where + key, "must be a duration such as \"30s\", \"5m\", \"2h\" or \"14d\"");
    if (d->count() <= 0) fail(where + key, "must be greater than zero");
    return *d;
}

const std::set<std::string> kDomainPolicyKeys{"recipients",     "recipient_list", "recipient_file",
                                              "verify_unknown", "greylisting",    "milters"};

// Reads the keys a [[domain]] may override, on top of `p` (the [policy] defaults).
void parse_domain_policy(const toml::table& t, const std::string& w, DomainPolicy& p) {
    if (t.get("recipients")) {
        std::string v = get_string(t, w, "recipients", "");
        if (v == "any")
            p.recipients = RecipientCheck::Any;
        else if (v == "list")
            p.recipients = RecipientCheck::List;
        else if (v == "verify")
            p.recipients = RecipientCheck::Verify;
        else
            fail(w + "recipients", "must be \"any\", \"list\" or \"verify\"");
    }
    auto add = [&](std::string a, const std::string& key) {
        a = to_lower(a);
        auto at = a.find('@');
        if (at == std::string::npos || at == 0 || at + 1 == a.size())
            fail(w + key, "\"" + a + "\" is not user@domain or *@domain");
        p.recipient_list.push_back(a);
    };
    if (auto node = t.get("recipient_list")) {
        auto* arr = node->as_array();
        if (!arr) fail(w + "recipient_list", "must be an array of addresses");
        p.recipient_list.clear();
        for (auto& el : *arr) {
            auto v = el.value<std::string>();
            if (!v) fail(w + "recipient_list", "must be an array of addresses");
            add(*v, "recipient_list");
        }
    }
    if (t.get("recipient_file")) {
        std::string path = get_string(t, w, "recipient_file", "");
        std::ifstream in(path);
        if (!in) fail(w + "recipient_file", "cannot read " + path);
        if (!t.get("recipient_list")) p.recipient_list.clear();
        std::string line;
        while (std::getline(in, line)) {
            auto hash = line.find('#');
            if (hash != std::string::npos) line.resize(hash);
            auto b = line.find_first_not_of(" \t\r");
            if (b == std::string::npos) continue;
            auto e = line.find_last_not_of(" \t\r");
            add(line.substr(b, e - b + 1), "recipient_file");
        }
    }
    if (t.get("verify_unknown")) {
        std::string v = get_string(t, w, "verify_unknown", "");
        if (v == "accept")
            p.verify_unknown_accept = true;
        else if (v == "tempfail")
            p.verify_unknown_accept = false;
        else
            fail(w + "verify_unknown", "must be \"accept\" or \"tempfail\"");
    }
    if (auto node = t.get("greylisting")) {
        if (!node->is_boolean()) fail(w + "greylisting", "must be true or false");
        p.greylisting = *node->value<bool>();
    }
    if (auto node = t.get("milters")) {
        auto* arr = node->as_array();
        if (!arr) fail(w + "milters", "must be an array like [\"inet:127.0.0.1:11332\"]");
        p.milters.clear();
        for (auto& el : *arr) {
            auto v = el.value<std::string>();
            bool ok = v && (v->starts_with("inet:") || v->starts_with("unix:") ||
                            v->starts_with("local:"));
            if (!ok) fail(w + "milters", "entries are \"inet:host:port\" or \"unix:/path\"");
            p.milters.push_back(*v);
        }
    }
    if (p.recipients == RecipientCheck::List && p.recipient_list.empty())
        fail(w + "recipients", "\"list\" needs recipient_list or recipient_file");
}

bool policy_network_ok(const std::string& cidr) {
    auto slash = cidr.find('/');
    std::string ip = cidr.substr(0, slash);
    boost::system::error_code ec;
    auto a = boost::asio::ip::make_address(ip, ec);
    if (ec) return false;
    if (slash == std::string::npos) return true;
    auto len = cidr.substr(slash + 1);
    if (len.empty() || len.size() > 3 || len.find_first_not_of("0123456789") != std::string::npos)
        return false;
    return std::stoi(len) <= (a.is_v4() ? 32 : 128);
}

// An array of networks at `key` (the last part of `name`, which errors print). Throws.
std::vector<std::string> get_networks(const toml::table& t, const std::string& name) {
    auto* arr = t.get(name.substr(name.rfind('.') + 1))->as_array();
    if (!arr) fail(name, "must be an array of networks");
    std::vector<std::string> out;
    for (auto& el : *arr) {
        auto v = el.value<std::string>();
        if (!v || !policy_network_ok(*v))
            fail(name, "bad network (want \"192.0.2.0/24\", \"::1/128\")");
        out.push_back(*v);
    }
    return out;
}

std::optional<Config::DnsList> parse_dns_list(std::string s) {
    // "zone", "zone*3", "zone*-5", "zone=127.0.0.2*2"
    Config::DnsList l;
    auto star = s.rfind('*');
    if (star != std::string::npos) {
        auto w = s.substr(star + 1);
        if (w.empty() || w.size() > 4 || w.find_first_not_of("-0123456789") != std::string::npos)
            return std::nullopt;
        auto [end, ec] = std::from_chars(w.data(), w.data() + w.size(), l.weight);
        if (ec != std::errc() || end != w.data() + w.size()) return std::nullopt;  // "zone*-"
        s.resize(star);
    }
    auto eq = s.find('=');
    if (eq != std::string::npos) {
        l.match = s.substr(eq + 1);
        s.resize(eq);
    }
    l.zone = to_lower(s);
    if (!valid_domain_name(l.zone)) return std::nullopt;
    return l;
}

}  // namespace

Config parse_config(std::string_view text) {
    toml::table root;
    try {
        root = toml::parse(text);
    } catch (const toml::parse_error& e) {
        std::ostringstream os;
        os << "config: TOML syntax error at line " << e.source().begin.line << ": "
           << e.description();
        throw ConfigError(os.str());
    }
    Config c;
    check_keys(root, "",
               {"hostname", "smtp", "queue", "delivery", "dns", "policy", "log", "admin", "alerts",
                "domain"});
    c.hostname = to_lower(get_string(root, "", "hostname", c.hostname));
    if (!valid_domain_name(c.hostname)) fail("hostname", "must be a host name");

    auto table_of = [&](const char* name) -> const toml::table* {
        auto node = root.get(name);
        if (!node) return nullptr;
        if (!node->is_table()) fail(name, "must be a table ([" + std::string(name) + "])");
        return node->as_table();
    };

    if (auto* s = table_of("smtp")) {
        const std::string w = "smtp.";
        check_keys(
            *s, "smtp",
            {"listen", "max_message_size", "max_recipients", "max_connections", "command_timeout",
             "data_timeout", "max_errors", "max_junk_commands", "min_data_rate", "also_known_as",
             "tls_cert", "tls_key", "max_hops", "stress_threshold", "first_command_timeout",
             "stress_timeout", "max_session_memory"});
        if (s->get("listen")) c.listen = get_listen(*s, "smtp.listen");
        c.max_message_size = static_cast<std::uint64_t>(
            get_int(*s, w, "max_message_size", static_cast<std::int64_t>(c.max_message_size), 1024,
                    4LL * 1024 * 1024 * 1024));
        c.max_recipients = static_cast<std::uint32_t>(
            get_int(*s, w, "max_recipients", c.max_recipients, 1, 100000));
        c.max_connections = static_cast<std::uint32_t>(
            get_int(*s, w, "max_connections", c.max_connections, 1, 1000000));
        c.max_errors =
            static_cast<std::uint32_t>(get_int(*s, w, "max_errors", c.max_errors, 1, 100000));
        c.command_timeout = get_duration(*s, w, "command_timeout", c.command_timeout);
        c.min_data_rate = static_cast<std::uint32_t>(
            get_int(*s, w, "min_data_rate", c.min_data_rate, 1, 1000000000));
        c.max_junk_commands = static_cast<std::uint32_t>(
            get_int(*s, w, "max_junk_commands", c.max_junk_commands, 1, 1000000));
        c.max_hops = static_cast<std::uint32_t>(get_int(*s, w, "max_hops", c.max_hops, 2, 1000));
        c.stress_threshold = static_cast<std::uint32_t>(
            get_int(*s, w, "stress_threshold", c.stress_threshold, 1, 100));
        c.first_command_timeout =
            get_duration(*s, w, "first_command_timeout", c.first_command_timeout);
        c.stress_timeout = get_duration(*s, w, "stress_timeout", c.stress_timeout);
        c.max_session_memory = static_cast<std::size_t>(
            get_int(*s, w, "max_session_memory", static_cast<std::int64_t>(c.max_session_memory),
                    1024 * 1024, 64LL * 1024 * 1024 * 1024));
        if (auto node = s->get("also_known_as")) {
            auto* arr = node->as_array();
            if (!arr) fail("smtp.also_known_as", "must be an array of host names");
            for (auto& el : *arr) {
                auto str = el.value<std::string>();
                std::string name = str ? to_lower(*str) : "";
                if (name.ends_with('.')) name.pop_back();
                if (!valid_domain_name(name)) fail("smtp.also_known_as", "bad host name");
                c.also_known_as.push_back(name);
            }
        }
        get_cert_pair(*s, "smtp.", c.tls_cert, c.tls_key);
        c.data_timeout = get_duration(*s, w, "data_timeout", c.data_timeout);
    }
    if (auto* q = table_of("queue")) {
        const std::string w = "queue.";
        check_keys(*q, "queue",
                   {"store", "max_age", "retry_min", "retry_max", "probe_interval",
                    "max_concurrency", "initial_concurrency", "control_socket", "relayhost", "node",
                    "lease", "state_dir", "spool_dir", "pg_synchronous_commit", "dsn_max_headers"});
        c.store = get_string(*q, w, "store", c.store);
        const bool pg = c.store.starts_with("postgresql://") || c.store.starts_with("postgres://");
        if (!pg && (!c.store.starts_with("sqlite:") || c.store.size() <= 7))
            fail("queue.store", "must be \"sqlite:PATH\" or a \"postgresql://...\" URI");
        if (q->get("node")) {
            c.node = get_string(*q, w, "node", "");
            if (c.node.empty() || c.node.size() > 100)
                fail("queue.node", "must be 1-100 characters");
        }
        c.lease = get_duration(*q, w, "lease", c.lease);
        if (c.lease < Seconds(5)) fail("queue.lease", "must be at least 5s");
        c.max_age = get_duration(*q, w, "max_age", c.max_age);
        c.dsn_max_headers = static_cast<std::size_t>(get_int(
            *q, w, "dsn_max_headers", static_cast<std::int64_t>(c.dsn_max_headers), 512, 1 << 20));
        c.retry_min = get_duration(*q, w, "retry_min", c.retry_min);
        c.retry_max = get_duration(*q, w, "retry_max", c.retry_max);
        if (c.retry_max < c.retry_min) fail("queue.retry_max", "must not be less than retry_min");
        c.probe_interval = get_duration(*q, w, "probe_interval", c.probe_interval);
        c.max_concurrency = static_cast<std::uint32_t>(
            get_int(*q, w, "max_concurrency", c.max_concurrency, 1, 1000));
        c.initial_concurrency = static_cast<std::uint32_t>(
            get_int(*q, w, "initial_concurrency", c.initial_concurrency, 1, 1000));
        if (c.initial_concurrency > c.max_concurrency) c.initial_concurrency = c.max_concurrency;
        c.control_socket = get_string(*q, w, "control_socket", "");
        c.state_dir = get_string(*q, w, "state_dir", "");
        c.spool_dir = get_string(*q, w, "spool_dir", "");
        c.pg_synchronous_commit =
            get_string(*q, w, "pg_synchronous_commit", c.pg_synchronous_commit);
        // "off" and "local" would make a 250 a promise the database may not keep.
        if (c.pg_synchronous_commit != "on" && c.pg_synchronous_commit != "remote_write" &&
            c.pg_synchronous_commit != "remote_apply")
            fail("queue.pg_synchronous_commit",
                 "must be \"on\", \"remote_write\" or \"remote_apply\" (a 250 needs a flushed "
                 "commit)");
        if (q->get("relayhost")) {
            auto hp = parse_host_port(get_string(*q, w, "relayhost", ""), 25);
            if (!hp) fail("queue.relayhost", "must be \"host:port\"");
            c.relayhost = hp;
        }
    }
    if (auto* d = table_of("delivery")) {
        const std::string w = "delivery.";
        check_keys(*d, "delivery", {"connect_timeout", "reply_timeout", "port"});
        c.delivery_port = static_cast<std::uint16_t>(get_int(*d, w, "port", 25, 1, 65535));
        c.connect_timeout = get_duration(*d, w, "connect_timeout", c.connect_timeout);
        c.reply_timeout = get_duration(*d, w, "reply_timeout", c.reply_timeout);
    }
    if (auto* d = table_of("dns")) {
        const std::string w = "dns.";
        check_keys(*d, "dns", {"resolver", "trust_anchor", "timeout"});
        c.dns_resolver = get_string(*d, w, "resolver", "");
        if (!c.dns_resolver.empty()) {
            auto at = c.dns_resolver.find('@');
            auto ip = c.dns_resolver.substr(0, at);
            bool ok = !ip.empty() &&
                      ip.find_first_not_of("0123456789abcdefABCDEF.:") == std::string::npos;
            if (ok && at != std::string::npos) {
                auto port = c.dns_resolver.substr(at + 1);
                ok = !port.empty() && port.size() <= 5 &&
                     port.find_first_not_of("0123456789") == std::string::npos &&
                     std::stoi(port) > 0 && std::stoi(port) < 65536;
            }
            if (!ok) fail("dns.resolver", "must be \"ip\" or \"ip@port\", e.g. \"127.0.0.1@5353\"");
        }
        c.dns_trust_anchor = get_string(*d, w, "trust_anchor", "");
        c.dns_timeout = get_duration(*d, w, "timeout", c.dns_timeout);
    }
    if (auto* p = table_of("policy")) {
        const std::string w = "policy.";
        std::set<std::string> keys = kDomainPolicyKeys;
        keys.insert({"verify_positive_ttl",
                     "verify_negative_ttl",
                     "verify_timeout",
                     "greylist_delay",
                     "greylist_expiry",
                     "greylist_allow_ttl",
                     "client_connections",
                     "subnet_connections",
                     "connection_rate",
                     "message_rate",
                     "recipient_rate",
                     "greet_pause",
                     "helo_syntax",
                     "dnsbl",
                     "dnsbl_threshold",
                     "dnswl_threshold",
                     "limit_exceptions",
                     "spf",
                     "milter_default_action",
                     "milter_connect_timeout",
                     "milter_command_timeout",
                     "milter_content_timeout"});
        check_keys(*p, "policy", keys);
        parse_domain_policy(*p, w, c.policy);
        c.verify_positive_ttl = get_duration(*p, w, "verify_positive_ttl", c.verify_positive_ttl);
        c.verify_negative_ttl = get_duration(*p, w, "verify_negative_ttl", c.verify_negative_ttl);
        c.verify_timeout = get_duration(*p, w, "verify_timeout", c.verify_timeout);
        c.greylist_delay = get_duration(*p, w, "greylist_delay", c.greylist_delay);
        c.greylist_expiry = get_duration(*p, w, "greylist_expiry", c.greylist_expiry);
        if (c.greylist_expiry <= c.greylist_delay)
            fail("policy.greylist_expiry", "must be longer than greylist_delay");
        c.greylist_allow_ttl = get_duration(*p, w, "greylist_allow_ttl", c.greylist_allow_ttl);
        auto count = [&](const char* key, std::uint32_t def) {
            return static_cast<std::uint32_t>(get_int(*p, w, key, def, 1, 1000000));
        };
        c.client_connections = count("client_connections", c.client_connections);
        c.subnet_connections = count("subnet_connections", c.subnet_connections);
        c.connection_rate = count("connection_rate", c.connection_rate);
        c.message_rate = count("message_rate", c.message_rate);
        c.recipient_rate = count("recipient_rate", c.recipient_rate);
        if (p->get("greet_pause")) {
            auto node = p->get("greet_pause");
            std::optional<Seconds> d;
            if (node->is_string()) d = parse_duration(*node->value<std::string>());
            if (!d || d->count() > 60) fail("policy.greet_pause", "must be a duration up to 60s");
            c.greet_pause = std::chrono::duration_cast<std::chrono::milliseconds>(*d);
        }
        c.milter_default_action = get_string(*p, w, "milter_default_action", "tempfail");
        if (c.milter_default_action != "accept" && c.milter_default_action != "tempfail" &&
            c.milter_default_action != "reject")
            fail("policy.milter_default_action", "must be \"accept\", \"tempfail\" or \"reject\"");
        c.milter_connect_timeout =
            get_duration(*p, w, "milter_connect_timeout", c.milter_connect_timeout);
        c.milter_command_timeout =
            get_duration(*p, w, "milter_command_timeout", c.milter_command_timeout);
        c.milter_content_timeout =
            get_duration(*p, w, "milter_content_timeout", c.milter_content_timeout);
        if (auto node = p->get("spf")) {
            if (!node->is_boolean()) fail("policy.spf", "must be true or false");
            c.spf = *node->value<bool>();
        }
        if (auto node = p->get("helo_syntax")) {
            if (!node->is_boolean()) fail("policy.helo_syntax", "must be true or false");
            c.helo_required_syntax = *node->value<bool>();
        }
        if (auto node = p->get("dnsbl")) {
            auto* arr = node->as_array();
            if (!arr) fail("policy.dnsbl", "must be an array like [\"zen.spamhaus.org*3\"]");
            for (auto& el : *arr) {
                auto v = el.value<std::string>();
                auto l = v ? parse_dns_list(*v) : std::nullopt;
                if (!l)
                    fail("policy.dnsbl",
                         "bad entry (want \"zone\", \"zone*weight\", \"zone=127.0.0.2*weight\")");
                c.dnsbl.push_back(*l);
            }
        }
        if (p->get("limit_exceptions"))
            c.limit_exceptions = get_networks(*p, "policy.limit_exceptions");
        c.dnsbl_threshold = static_cast<int>(get_int(*p, w, "dnsbl_threshold", 1, 1, 1000));
        c.dnswl_threshold = static_cast<int>(get_int(*p, w, "dnswl_threshold", -1, -1000, -1));
    }
    if (auto* l = table_of("log")) {
        check_keys(*l, "log", {"level", "format"});
        c.log_level = get_string(*l, "log.", "level", c.log_level);
        static const std::set<std::string> levels{"trace", "debug", "info", "warn", "error"};
        if (!levels.count(c.log_level))
            fail("log.level", "must be trace, debug, info, warn or error");
        c.log_format = get_string(*l, "log.", "format", c.log_format);
        if (c.log_format != "text" && c.log_format != "json")
            fail("log.format", "must be text or json");
    }
    if (auto* a = table_of("admin")) {
        check_keys(
            *a, "admin",
            {"listen", "tls_cert", "tls_key", "max_connections", "max_connections_per_address",
             "header_timeout", "idle_timeout", "login_threads", "login_queue",
             "login_queue_per_address", "customer_private_primaries", "claim_check_interval"});
        if (a->get("listen")) c.admin_listen = get_listen(*a, "admin.listen");
        get_cert_pair(*a, "admin.", c.admin_tls_cert, c.admin_tls_key);
        const std::string w = "admin.";
        auto u32 = [&](const char* key, std::uint32_t def, std::int64_t min, std::int64_t max) {
            return static_cast<std::uint32_t>(get_int(*a, w, key, def, min, max));
        };
        c.admin_max_connections = u32("max_connections", c.admin_max_connections, 1, 100000);
        c.admin_max_connections_per_address =
            u32("max_connections_per_address", c.admin_max_connections_per_address, 1, 100000);
        c.admin_header_timeout = get_duration(*a, w, "header_timeout", c.admin_header_timeout);
        c.admin_idle_timeout = get_duration(*a, w, "idle_timeout", c.admin_idle_timeout);
        c.admin_login_threads = u32("login_threads", c.admin_login_threads, 1, 64);
        c.admin_login_queue = u32("login_queue", c.admin_login_queue, 1, 10000);
        c.admin_login_queue_per_address =
            u32("login_queue_per_address", c.admin_login_queue_per_address, 1, 10000);
        if (auto node = a->get("customer_private_primaries")) {
            if (!node->is_boolean())
                fail("admin.customer_private_primaries", "must be true or false");
            c.admin_customer_private_primaries = *node->value<bool>();
        }
        c.admin_claim_check_interval =
            get_duration(*a, w, "claim_check_interval", c.admin_claim_check_interval);
    }
    if (auto* a = table_of("alerts")) {
        check_keys(*a, "alerts", {"webhook", "email", "down_after", "queue_threshold"});
        c.alert_webhook = get_string(*a, "alerts.", "webhook", "");
        if (!c.alert_webhook.empty() && !parse_http_url(c.alert_webhook))
            fail("alerts.webhook", "must be \"http://host[:port]/path\"");
        c.alert_email = get_string(*a, "alerts.", "email", "");
        auto at = c.alert_email.rfind('@');
        if (!c.alert_email.empty() && (at == 0 || at == std::string::npos ||
                                       !valid_domain_name(c.alert_email.substr(at + 1))))
            fail("alerts.email", "must be an address like \"ops@example.net\"");
        c.alert_down_after =
            static_cast<std::uint32_t>(get_int(*a, "alerts.", "down_after", 3, 1, 1000));
        c.alert_queue_threshold =
            static_cast<std::uint32_t>(get_int(*a, "alerts.", "queue_threshold", 0, 0, 100000000));
    }
    if (auto node = root.get("domain")) {
        auto* arr = node->as_array();
        if (!arr) fail("domain", "must be an array of tables ([[domain]])");
        for (std::size_t i = 0; i < arr->size(); ++i) {
            auto* t = (*arr)[i].as_table();
            std::string w = "domain[" + std::to_string(i) + "].";
            if (!t) fail("domain", "must be an array of tables ([[domain]])");
            std::set<std::string> keys = kDomainPolicyKeys;
            keys.insert(
                {"name", "primary", "tls", "tls_ca_file", "etrn_networks", "max_message_size"});
            check_keys(*t, w.substr(0, w.size() - 1), keys);
            DomainConfig dc;
            dc.policy = c.policy;
            parse_domain_policy(*t, w, dc.policy);
            dc.policy.max_message_size = static_cast<std::uint64_t>(get_int(
                *t, w, "max_message_size", 0, 1024, static_cast<std::int64_t>(c.max_message_size)));
            dc.name = to_lower(get_string(*t, w, "name", ""));
            if (dc.name.ends_with('.')) dc.name.pop_back();
            if (!valid_domain_name(dc.name)) fail(w + "name", "must be a domain name");
            if (c.find_domain(dc.name)) fail(w + "name", "domain " + dc.name + " listed twice");
            if (t->get("primary")) {
                auto hp = parse_host_port(get_string(*t, w, "primary", ""), 25);
                if (!hp)
                    fail(w + "primary",
                         "must be \"host\", \"host:port\", \"ip:port\" or \"[host]:port\"");
                dc.primary = *hp;
            }
            std::string tls = get_string(*t, w, "tls", "may");
            if (tls == "may")
                dc.tls = TlsPolicy::May;
            else if (tls == "encrypt")
                dc.tls = TlsPolicy::Encrypt;
            else if (tls == "verify")
                dc.tls = TlsPolicy::Verify;
            else if (tls == "dane")
                dc.tls = TlsPolicy::Dane;
            else
                fail(w + "tls", "must be \"may\", \"encrypt\", \"verify\" or \"dane\"");
            if (dc.tls == TlsPolicy::Dane && c.dns_trust_anchor.empty())
                fail(w + "tls", "\"dane\" needs DNSSEC: set [dns] trust_anchor");
            dc.tls_ca_file = get_string(*t, w, "tls_ca_file", "");
            if (t->get("etrn_networks")) dc.etrn_networks = get_networks(*t, w + "etrn_networks");
            c.domains.push_back(std::move(dc));
        }
    }
    if (c.node.empty()) c.node = c.hostname;
    if (c.state_dir.empty()) {
        if (c.store.starts_with("sqlite:")) {  // beside the SQLite file
            auto dir = std::filesystem::path(c.store_path()).parent_path();
            c.state_dir = dir.empty() ? "." : dir.string();
        } else {
            c.state_dir = "/var/lib/backupmx";
        }
    }
    if (c.spool_dir.empty()) c.spool_dir = c.state_dir + "/spool";
    if (c.control_socket.empty()) c.control_socket = c.state_dir + "/control.sock";
    return c;
}

std::optional<HttpUrl> parse_http_url(std::string_view url) {
    if (!url.starts_with("http://")) return std::nullopt;
    url.remove_prefix(7);
    auto slash = url.find('/');
    std::string_view authority = url.substr(0, slash);
    HttpUrl u;
    if (slash != std::string_view::npos) u.target = std::string(url.substr(slash));
    auto hp = parse_host_port(std::string(authority), 80);
    if (!hp || hp->host.empty()) return std::nullopt;
    u.host = hp->host;
    u.port = hp->port;
    return u;
}

std::string backscatter_warning(const DomainConfig& d) {
    if (d.policy.recipients != RecipientCheck::Any) return "";
    return "recipients = \"any\" accepts every address at " + d.name +
           ": mail to an unknown one gets 250 and later a bounce to its sender, usually forged "
           "(backscatter); use \"verify\" (asks the primary) or \"list\"";
}

std::vector<std::string> config_warnings(const Config& c) {
    std::vector<std::string> out;
    for (const auto& d : c.domains)
        if (auto w = backscatter_warning(d); !w.empty())
            out.push_back("domain " + d.name + ": " + w);
    return out;
}

Config load_config_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw ConfigError("config: cannot read " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_config(ss.str());
}

}  // namespace bmx
