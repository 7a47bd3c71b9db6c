#include "admin/admin.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <map>

#include "admin/panel.hpp"
#include "bounce/dsn.hpp"
#include "delivery/route.hpp"
#include "metrics/metrics.hpp"
#include "util/json.hpp"
#include "util/util.hpp"

namespace bmx::admin {

namespace asio = boost::asio;
namespace json = boost::json;
using accounts::Role;

struct Admin::Caller {
    std::string user;
    Role role = Role::Customer;
    std::vector<std::string> domains;  // a customer's own
    std::string csrf;                  // a browser session's; empty for a token
    std::string session;               // the session id (cookie), empty for a token
    bool may(const std::string& domain) const {
        if (role == Role::Operator) return true;
        for (const auto& d : domains)
            if (iequals(d, domain)) return true;
        return false;
    }
};

struct Admin::Ctx {
    const Request& req;
    const Peer& peer;
    std::string path;
    std::map<std::string, std::string> query;
    std::vector<std::string> segs;  // path split at '/', after "/api/v1/"
    Caller caller;
};

namespace {

std::string url_decode(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '+') {
            out += ' ';
        } else if (s[i] == '%' && i + 2 < s.size() &&
                   std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
                   std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
            out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

std::map<std::string, std::string> parse_form(std::string_view s) {
    std::map<std::string, std::string> out;
    while (!s.empty()) {
        auto amp = s.find('&');
        auto pair = s.substr(0, amp);
        auto eq = pair.find('=');
        if (!pair.empty())
            out[url_decode(pair.substr(0, eq))] =
                eq == std::string_view::npos ? "" : url_decode(pair.substr(eq + 1));
        if (amp == std::string_view::npos) break;
        s.remove_prefix(amp + 1);
    }
    return out;
}

std::string cookie(const Request& req, std::string_view name) {
    auto it = req.find(http::field::cookie);
    if (it == req.end()) return "";
    std::string_view all = it->value();
    while (!all.empty()) {
        auto semi = all.find(';');
        auto one = all.substr(0, semi);
        while (!one.empty() && one.front() == ' ') one.remove_prefix(1);
        auto eq = one.find('=');
        if (eq != std::string_view::npos && one.substr(0, eq) == name)
            return std::string(one.substr(eq + 1));
        if (semi == std::string_view::npos) break;
        all.remove_prefix(semi + 1);
    }
    return "";
}

std::string html_escape(std::string_view s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '&':
                out += "&amp;";
                break;
            case '"':
                out += "&quot;";
                break;
            case '\'':
                out += "&#39;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
    for (auto pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
        s.replace(pos, from.size(), to);
}

void secure_headers(Response& r) {
    r.set(http::field::cache_control, "no-store");
    r.set("X-Content-Type-Options", "nosniff");
    r.set("X-Frame-Options", "DENY");
    r.set("Referrer-Policy", "no-referrer");
    // The panel is one self-contained page: nothing may load from anywhere else.
    r.set("Content-Security-Policy",
          "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
          "img-src data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
          "base-uri 'none'");
}

Response reply(http::status st, std::string body, std::string_view type) {
    Response r{st, 11};
    r.set(http::field::content_type, type);
    r.body() = std::move(body);
    secure_headers(r);
    return r;
}

Response json_reply(http::status st, const json::value& v) {
    return reply(st, json_text(v) + "\n", "application/json");
}

Response error(http::status st, std::string_view msg) {
    return json_reply(st, json::object{{"error", msg}});
}

Response not_found() {
    return error(http::status::not_found, "not found");
}

Response redirect(std::string_view to) {
    Response r = reply(http::status::see_other, "", "text/plain");
    r.set(http::field::location, to);
    return r;
}

json::value opt_time(const std::optional<TimePoint>& t) {
    return t ? json::value(to_unix(*t)) : json::value(nullptr);
}

std::optional<json::object> body_object(const Request& req) {
    boost::system::error_code ec;
    auto v = json::parse(req.body(), ec);
    if (ec || !v.is_object()) return std::nullopt;
    return v.as_object();
}

std::optional<std::string> str_field(const json::object& o, std::string_view key) {
    auto* v = o.if_contains(key);
    if (!v || !v->is_string()) return std::nullopt;
    return std::string(v->as_string());
}

json::object message_json(const QueueRow& r, TimePoint t) {
    json::array rc;
    for (const auto& a : r.recipients) rc.emplace_back(a);
    return json::object{{"id", r.id},
                        {"domain", r.domain},
                        {"sender", r.sender},
                        {"recipients", rc},
                        {"size", r.size},
                        {"received_at", to_unix(r.received_at)},
                        {"age", std::chrono::duration_cast<Seconds>(t - r.received_at).count()},
                        {"attempts", r.attempts},
                        {"next_attempt_at", to_unix(r.next_attempt_at)},
                        {"last_error", r.last_error},
                        {"state", r.held.empty() ? "queued" : "held"},
                        {"held_reason", r.held}};
}

}  // namespace

json::object primary_json(const Scheduler::PrimaryStatus& st) {
    return json::object{{"state", st.state},
                        {"since", opt_time(st.since)},
                        {"last_probe", opt_time(st.last_probe)},
                        {"last_result", st.last_result}};
}

Admin::Admin(asio::io_context& io, Parts parts)
    : io_(io),
      p_(std::move(parts)),
      logins_(io, {p_.cfg.admin_login_threads, p_.cfg.admin_login_queue,
                   p_.cfg.admin_login_queue_per_address}),
      claims_timer_(io) {}

Admin::~Admin() = default;

void Admin::start() {
    const ListenerLimits limits{p_.cfg.admin_max_connections,
                                p_.cfg.admin_max_connections_per_address,
                                p_.cfg.admin_header_timeout, p_.cfg.admin_idle_timeout};
    listener_ = std::make_unique<Listener>(
        io_, p_.cfg.admin_listen, p_.cfg.admin_tls_cert, p_.cfg.admin_tls_key,
        [this](const Request& req, const Peer& peer) { return handle(req, peer); }, limits);
    listener_->start();
    asio::co_spawn(io_, claims_loop(), asio::detached);
}

void Admin::stop() {
    if (listener_) listener_->stop();
    claims_timer_.cancel();
}

bool Admin::exists(const std::string& name) const {
    return p_.cfg.find_domain(name) != nullptr;
}

asio::awaitable<void> Admin::audit(const Ctx& c, const std::string& action,
                                   const std::string& target, const std::string& detail) {
    // Not a coroutine itself: the strings (often temporaries of the caller's co_await) are copied
    // into the entry before anything waits (GCC 12 may destroy by-value temporaries twice).
    AuditEntry e{now(), c.caller.user, action, target, detail, c.peer.ip};
    spdlog::info("admin: user={} action={} target={} client={}{}", e.user, e.action, e.target,
                 e.client, e.detail.empty() ? "" : " detail=\"" + e.detail + "\"");
    return store_audit(std::move(e));
}

asio::awaitable<void> Admin::store_audit(AuditEntry e) {
    const std::function<bool(Store&)> write = [&e](Store& s) {
        s.audit(e);
        return true;
    };
    try {
        co_await p_.queue.call(write);
    } catch (const std::exception& ex) {
        spdlog::error("admin: audit entry not stored: {}", ex.what());
    }
}

asio::awaitable<std::optional<Admin::Caller>> Admin::authenticate(const Request& req) {
    std::optional<std::string> user;
    Caller c;
    auto auth = req.find(http::field::authorization);
    if (auth != req.end()) {
        std::string_view v = auth->value();
        if (!v.starts_with("Bearer ")) co_return std::nullopt;
        const std::string hash = accounts::token_hash(v.substr(7));
        const std::function<std::optional<std::string>(Store&)> find = [&hash](Store& s) {
            return s.token_user(hash);
        };
        user = co_await p_.queue.call(find);
    } else if (auto id = cookie(req, "bmx_session"); !id.empty()) {
        const std::string key = accounts::session_key(id);
        const std::function<std::optional<std::string>(Store&)> use = [&key](Store& s) {
            const auto t = now();
            return s.use_session(key, t, t - accounts::kSessionIdle);
        };
        user = co_await p_.queue.call(use);
        if (user) {
            c.csrf = accounts::csrf_token(id);
            c.session = id;
        }
    }
    if (!user) co_return std::nullopt;
    const std::function<std::optional<Account>(Store&)> load = [&user](Store& s) {
        return s.account(*user);
    };
    auto account = co_await p_.queue.call(load);
    if (!account) co_return std::nullopt;
    auto role = accounts::parse_role(account->role);
    if (!role) co_return std::nullopt;
    c.user = account->name;
    c.role = *role;
    c.domains = account->domains;
    co_return c;
}

asio::awaitable<Response> Admin::handle(const Request& req, const Peer& peer) {
    static auto& requests =
        metrics::counter("backupmx_admin_requests_total", "Requests to the admin listener");
    requests.inc();
    std::string_view target = req.target();
    auto qpos = target.find('?');
    Ctx c{req,
          peer,
          std::string(target.substr(0, qpos)),
          qpos == std::string_view::npos ? std::map<std::string, std::string>{}
                                         : parse_form(target.substr(qpos + 1)),
          {},
          {}};
    try {
        Response r = co_await route(c);
        spdlog::debug("admin: {} {} -> {} user={} client={}", std::string(req.method_string()),
                      c.path, r.result_int(), c.caller.user, peer.ip);
        co_return r;
    } catch (const std::exception& e) {
        spdlog::error("admin: {} {}: {}", std::string(req.method_string()), c.path, e.what());
        co_return error(http::status::service_unavailable,
                        "the store cannot answer now; try again");
    }
}

Response Admin::login_page(const Request& req, unsigned status, const std::string& err) {
    std::string token = cookie(req, "bmx_login");
    if (token.size() < 20) token = accounts::random_token();
    std::string page(panel_file("login.html"));
    replace_all(page, "{{csrf}}", html_escape(token));
    replace_all(page, "{{error}}", html_escape(err));
    Response r =
        reply(static_cast<http::status>(status), std::move(page), "text/html; charset=utf-8");
    r.set(http::field::set_cookie, "bmx_login=" + token +
                                       "; HttpOnly; SameSite=Strict; Path=/login" +
                                       (listener_->tls() ? "; Secure" : ""));
    return r;
}

// Every password check slot is taken: the try is not counted, and the client may come back soon.
Response Admin::busy(const Ctx& c, const std::string& user) {
    spdlog::info(
        "admin: login of user={} client={} not checked: every password check slot is "
        "taken ([admin] login_queue, login_queue_per_address)",
        printable(user), c.peer.ip);
    Response r = login_page(c.req, 429, "Too many logins at once; try again in a moment.");
    r.set(http::field::retry_after, "2");
    return r;
}

asio::awaitable<Response> Admin::login(Ctx& c) {
    if (c.req.method() == http::verb::get) co_return login_page(c.req, 200, "");
    if (c.req.method() != http::verb::post)
        co_return error(http::status::method_not_allowed, "GET or POST");
    auto form = parse_form(c.req.body());
    const std::string user = form["user"].substr(0, 64);
    const std::string& password = form["password"];
    const std::string expected = cookie(c.req, "bmx_login");
    if (!accounts::same_secret(form["csrf"], expected))
        co_return login_page(c.req, 403, "Your session expired; please try again.");
    const auto t = now();
    c.caller.user = user;
    const auto keys = accounts::login_keys(c.peer.ip, user);
    // Whether this address has failed lately decides its place in the password checks' queue;
    // a check that would find no room is turned away before anything is written for it.
    const auto since = t - accounts::kLoginWindow;
    const std::function<bool(Store&)> clean_address = [&keys, since](Store& s) {
        return s.login_failures(keys.ip, since) == 0;
    };
    const bool clean = co_await p_.queue.read(clean_address);
    if (!logins_.has_room(c.peer.ip, clean)) co_return busy(c, user);
    // The attempt is reserved (counted as a failure) before its password is checked, in one
    // store transaction with the count: parallel tries, on any node, cannot all pass the limit.
    const std::function<bool(Store&)> reserve = [&keys, t, since](Store& s) {
        return s.reserve_login_attempt({keys.ip, keys.user}, t, since, accounts::kLoginMaxFailures);
    };
    if (!co_await p_.queue.call(reserve)) {
        co_await audit(c, "login-refused", user, "too many failed logins");
        co_return login_page(c.req, 429, "Too many failed logins; wait a few minutes.");
    }
    const std::function<bool(Store&)> release = [&keys, t](Store& s) {
        s.release_login_attempt({keys.ip, keys.user}, t);
        return true;
    };
    const std::function<std::optional<Account>(Store&)> load = [&user](Store& s) {
        return s.account(user);
    };
    auto account = co_await p_.queue.call(load);
    const std::string hash = account ? account->pwhash : "";
    const auto verdict = co_await logins_.check(c.peer.ip, clean, hash, password);
    if (verdict == LoginPool::Verdict::Busy) {  // not checked: not a failure
        co_await p_.queue.call(release);
        co_return busy(c, user);
    }
    if (verdict == LoginPool::Verdict::Wrong) {  // the reservation stays: it is the failure
        co_await audit(c, "login-failed", user, "");
        co_return login_page(c.req, 401, "Wrong user name or password.");
    }
    const std::function<bool(Store&)> succeeded = [&keys, t](Store& s) {
        s.release_login_attempt({keys.ip, keys.user}, t);
        s.clear_login_failures(keys.user);
        return true;
    };
    co_await p_.queue.call(succeeded);
    const std::string id = accounts::random_token();
    const std::string key = accounts::session_key(id);
    const std::function<bool(Store&)> put = [&key, &user, t](Store& s) {
        s.put_session(key, user, t, t - accounts::kSessionIdle);
        return true;
    };
    co_await p_.queue.call(put);
    co_await audit(c, "login", user, "");
    Response r = redirect("/");
    r.set(http::field::set_cookie, "bmx_session=" + id + "; HttpOnly; SameSite=Strict; Path=/" +
                                       (listener_->tls() ? "; Secure" : ""));
    co_return r;
}

asio::awaitable<Response> Admin::route(Ctx& c) {
    const auto method = c.req.method();
    if (c.path == "/healthz") co_return reply(http::status::ok, "ok\n", "text/plain");
    if (c.path == "/login") co_return co_await login(c);

    auto caller = co_await authenticate(c.req);
    const bool api = c.path.starts_with("/api/") || c.path == "/metrics";
    if (!caller) {
        if (api) co_return error(http::status::unauthorized, "log in, or send a bearer token");
        co_return redirect("/login");
    }
    c.caller = std::move(*caller);
    const bool changes = method != http::verb::get && method != http::verb::head;
    if (changes && !c.caller.session.empty()) {
        auto h = c.req.find("X-CSRF-Token");
        if (h == c.req.end() || !accounts::same_secret(h->value(), c.caller.csrf))
            co_return error(http::status::forbidden, "missing or wrong X-CSRF-Token");
    }

    if (c.path == "/" || c.path == "/index.html") {
        if (method != http::verb::get) co_return error(http::status::method_not_allowed, "GET");
        co_return reply(http::status::ok, std::string(panel_file("app.html")),
                        "text/html; charset=utf-8");
    }
    if (c.path == "/logout" && method == http::verb::post) {
        const std::string key = accounts::session_key(c.caller.session);
        const std::function<bool(Store&)> end = [&key](Store& s) {
            s.end_session(key);
            return true;
        };
        co_await p_.queue.call(end);
        co_await audit(c, "logout", c.caller.user, "");
        Response r = redirect("/login");
        r.set(http::field::set_cookie,
              "bmx_session=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/");
        co_return r;
    }
    if (c.path == "/metrics") co_return co_await metrics(c);
    if (!c.path.starts_with("/api/v1/")) co_return not_found();

    std::string_view rest = std::string_view(c.path).substr(8);
    while (!rest.empty()) {
        auto slash = rest.find('/');
        c.segs.push_back(url_decode(rest.substr(0, slash)));
        if (slash == std::string_view::npos) break;
        rest.remove_prefix(slash + 1);
    }
    if (c.segs.empty()) co_return not_found();
    const std::string& what = c.segs[0];
    if (what == "me" && c.segs.size() == 1) {
        json::array ds;
        if (c.caller.role == Role::Customer)
            for (const auto& d : c.caller.domains) ds.emplace_back(d);
        co_return json_reply(http::status::ok,
                             json::object{{"user", c.caller.user},
                                          {"role", accounts::to_string(c.caller.role)},
                                          {"domains", ds},
                                          {"csrf", c.caller.csrf}});
    }
    if (what == "domains") co_return co_await domains_api(c);
    if (what == "queue") co_return co_await queue_api(c);
    if (what == "messages") co_return co_await message_api(c);
    if (what == "tokens") co_return co_await tokens_api(c);
    if (what == "audit" && c.segs.size() == 1 && method == http::verb::get) {
        if (c.caller.role != Role::Operator)
            co_return error(http::status::forbidden, "operators only");
        std::size_t limit = 100;
        if (auto it = c.query.find("limit"); it != c.query.end())
            limit = std::clamp<std::size_t>(std::strtoul(it->second.c_str(), nullptr, 10), 1, 1000);
        const std::function<std::vector<AuditEntry>(Store&)> read = [limit](Store& s) {
            return s.audit_log(limit);
        };
        auto entries = co_await p_.queue.call(read);
        json::array arr;
        for (const auto& e : entries)
            arr.emplace_back(json::object{{"at", to_unix(e.at)},
                                          {"user", e.user},
                                          {"action", e.action},
                                          {"target", e.target},
                                          {"detail", e.detail},
                                          {"client", e.client}});
        co_return json_reply(http::status::ok, json::object{{"entries", arr}});
    }
    co_return not_found();
}

asio::awaitable<std::vector<QueueSummary>> Admin::summaries() {
    const std::function<std::vector<QueueSummary>(Store&)> read = [](Store& s) {
        return s.queue_summary();
    };
    co_return co_await p_.queue.call(read);
}

json::object Admin::domain_json(const std::string& name,
                                const std::vector<QueueSummary>& sums) const {
    json::object o;
    o["name"] = name;
    const StoredDomain* sd = p_.domains.stored(name);
    const DomainConfig* dc = p_.cfg.find_domain(name);
    o["primary"] = sd ? sd->primary : dc && dc->primary ? dc->primary->text() : "(MX records)";
    o["source"] = sd ? "store" : "config";
    o["readonly"] = sd == nullptr;
    o["recipients"] = dc && dc->policy.recipients == RecipientCheck::Verify ? "verify"
                      : dc && dc->policy.recipients == RecipientCheck::List ? "list"
                                                                            : "any";
    json::array warnings;
    if (dc)
        if (auto w = backscatter_warning(*dc); !w.empty()) warnings.emplace_back(w);
    o["warnings"] = warnings;
    o["greylisting"] = dc && dc->policy.greylisting;
    o["max_message_size"] =
        dc && dc->policy.max_message_size ? dc->policy.max_message_size : p_.cfg.max_message_size;
    o["primary_state"] = primary_json(p_.scheduler.status(name));
    json::object q{{"messages", 0},
                   {"bytes", 0},
                   {"held", 0},
                   {"oldest", nullptr},
                   {"oldest_age", nullptr},
                   {"next_attempt", nullptr},
                   {"last_error", ""}};
    for (const auto& s : sums) {
        if (s.domain != name) continue;
        q["messages"] = s.messages;
        q["bytes"] = s.bytes;
        q["held"] = s.held;
        q["oldest"] = opt_time(s.oldest);
        if (s.oldest)
            q["oldest_age"] = std::chrono::duration_cast<Seconds>(now() - *s.oldest).count();
        q["next_attempt"] = opt_time(s.next_attempt);
        q["last_error"] = s.last_error;
    }
    o["queue"] = q;
    return o;
}

asio::awaitable<std::optional<dnscheck::Report>> Admin::dns_check(const std::string& domain) {
    struct State {
        explicit State(asio::io_context& io) : timer(io) {}
        std::optional<dnscheck::Report> report;
        asio::steady_timer timer;
    };
    auto st = std::make_shared<State>(io_);
    dnscheck::Options opt;
    opt.hostname = p_.cfg.hostname;
    opt.our_names = p_.cfg.our_names();
    opt.config = &p_.cfg;
    opt.smtp_port = p_.cfg.delivery_port;
    // A slow DNS must not hold the answer: after 5 s the panel gets the rest by asking again.
    st->timer.expires_after(std::chrono::seconds(5));
    asio::co_spawn(
        io_,
        [](std::shared_ptr<State> st, dns::Resolver& r, std::string d,
           dnscheck::Options opt) -> asio::awaitable<void> {
            try {
                auto rep = co_await dnscheck::check(r, d, opt);
                st->report = std::move(rep);
            } catch (const std::exception& e) {
                spdlog::warn("dns-check {}: {}", d, e.what());
            }
            st->timer.cancel();
        }(st, p_.resolver, domain, opt),
        asio::detached);
    co_await st->timer.async_wait(asio::as_tuple(asio::use_awaitable));
    co_return st->report;
}

namespace {
json::value report_json(const std::optional<dnscheck::Report>& r) {
    if (!r) return json::object{{"pending", true}};
    boost::system::error_code ec;
    auto v = json::parse(r->json(), ec);
    return ec ? json::value(nullptr) : v;
}
std::string mx_record(const Config& cfg, const std::string& domain,
                      const std::optional<dnscheck::Report>& r) {
    if (r && !r->publish.empty()) return r->publish;
    return domain + ". 3600 IN MX 20 " + cfg.hostname + ".";
}
}  // namespace

namespace {

// Loopback, RFC 1918 / 6598 private, link-local, unique-local, unspecified or multicast.
bool private_address(boost::asio::ip::address a) {
    if (a.is_v6() && a.to_v6().is_v4_mapped())
        a = boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6());
    if (a.is_loopback() || a.is_unspecified() || a.is_multicast()) return true;
    if (a.is_v4()) {
        const auto b = a.to_v4().to_bytes();
        return b[0] == 10 || b[0] == 0 || (b[0] == 172 && (b[1] & 0xf0) == 16) ||
               (b[0] == 192 && b[1] == 168) || (b[0] == 169 && b[1] == 254) ||
               (b[0] == 100 && (b[1] & 0xc0) == 64);
    }
    const auto b = a.to_v6().to_bytes();
    return (b[0] & 0xfe) == 0xfc || (b[0] == 0xfe && (b[1] & 0xc0) == 0x80);
}

// The strings of a TXT record's rdata, joined (RFC 1035 3.3.14).
std::string txt_text(std::string_view rd) {
    std::string out;
    while (!rd.empty()) {
        const auto n = static_cast<unsigned char>(rd[0]);
        if (n + 1u > rd.size()) break;
        out.append(rd.substr(1, n));
        rd.remove_prefix(n + 1u);
    }
    return out;
}

json::object claim_json(const DomainClaim& cl, const Config& cfg) {
    return json::object{
        {"name", cl.domain},
        {"state", "pending"},
        {"primary", cl.primary},
        {"created", to_unix(cl.created)},
        {"verify",
         json::object{{"txt_name", "_backupmx." + cl.domain},
                      {"txt_value", cl.token},
                      {"or_mx", cl.domain + ". 3600 IN MX 20 " + cfg.hostname + "."},
                      {"note", "no mail is accepted for " + cl.domain +
                                   " until its DNS shows it is yours: the TXT record, or (while "
                                   "nobody is served it here) the MX record naming this backup"}}}};
}

}  // namespace

asio::awaitable<Response> Admin::domains_api(Ctx& c) {
    const auto method = c.req.method();
    if (c.segs.size() == 1) {
        if (method == http::verb::post) co_return co_await add_domain(c);
        if (method != http::verb::get)
            co_return error(http::status::method_not_allowed, "GET or POST");
        auto sums = co_await summaries();
        std::vector<std::string> names;
        for (const auto& d : p_.cfg.domains) names.push_back(d.name);
        for (const auto& d : p_.domains.all()) names.push_back(d.name);
        std::sort(names.begin(), names.end());
        json::array arr;
        for (const auto& n : names)
            if (c.caller.may(n)) arr.emplace_back(domain_json(n, sums));
        const std::function<std::vector<DomainClaim>(Store&)> read = [](Store& s) {
            return s.claims();
        };
        json::array pending;  // a customer's own claims; every claim for an operator
        for (const auto& cl : co_await p_.queue.call(read))
            if (c.caller.role == Role::Operator || cl.account == c.caller.user) {
                auto o = claim_json(cl, p_.cfg);
                if (c.caller.role == Role::Operator) o["account"] = cl.account;
                pending.emplace_back(std::move(o));
            }
        co_return json_reply(http::status::ok, json::object{{"domains", arr}, {"claims", pending}});
    }
    const std::string name = to_lower(c.segs[1]);
    {
        // A claim: its account sees it (and may withdraw it); an operator may approve it.
        const std::function<std::vector<DomainClaim>(Store&)> read = [](Store& s) {
            return s.claims();
        };
        std::vector<DomainClaim> mine;
        for (auto& cl : co_await p_.queue.call(read))
            if (cl.domain == name &&
                (c.caller.role == Role::Operator || cl.account == c.caller.user))
                mine.push_back(std::move(cl));
        const bool owner = exists(name) && c.caller.may(name);
        if (!mine.empty() && c.segs.size() == 3 && c.segs[2] == "approve" &&
            method == http::verb::post) {
            if (c.caller.role != Role::Operator)
                co_return error(http::status::forbidden, "an operator approves claims");
            for (const auto& cl : mine) {
                co_await activate(cl, "approved by " + c.caller.user);
                co_await audit(c, "domain.approve", name, "claimed by " + cl.account);
            }
            co_return json_reply(http::status::ok,
                                 json::object{{"name", name}, {"state", "active"}});
        }
        if (!mine.empty() && !owner && c.segs.size() == 2) {
            if (method == http::verb::get)
                co_return json_reply(http::status::ok, claim_json(mine.front(), p_.cfg));
            if (method == http::verb::delete_) {
                const std::string account = mine.front().account;
                const std::function<int(Store&)> remove = [&name, &account](Store& s) {
                    s.remove_claim(name, account);
                    return 0;
                };
                co_await p_.queue.call(remove);
                co_await audit(c, "domain.unclaim", name, "");
                co_return reply(http::status::no_content, "", "text/plain");
            }
        }
    }
    if (!exists(name) || !c.caller.may(name)) co_return not_found();
    if (c.segs.size() == 2) {
        if (method == http::verb::get) {
            auto sums = co_await summaries();
            auto o = domain_json(name, sums);
            const std::function<std::vector<Outage>(Store&)> read = [&name](Store& s) {
                return s.outages(name, 50);
            };
            auto outages = co_await p_.queue.call(read);
            const auto queued = o["queue"].as_object()["messages"].to_number<std::int64_t>();
            json::array arr;
            for (const auto& x : outages)
                arr.emplace_back(json::object{
                    {"start", to_unix(x.start)},
                    {"end", opt_time(x.end)},
                    // an outage still open holds at least what is queued now
                    {"messages_held", x.end ? x.messages_held : std::max(x.messages_held, queued)},
                    {"drain_seconds",
                     x.drain_seconds ? json::value(*x.drain_seconds) : json::value(nullptr)}});
            o["outages"] = arr;
            co_return json_reply(http::status::ok, o);
        }
        co_return co_await change_domain(c, name);
    }
    if (c.segs.size() == 3 && c.segs[2] == "dns-check" && method == http::verb::get) {
        auto r = co_await dns_check(name);
        auto v = report_json(r);
        if (v.is_object()) v.as_object()["mx_record"] = mx_record(p_.cfg, name, r);
        co_return json_reply(http::status::ok, v);
    }
    if (c.segs.size() == 3 && c.segs[2] == "flush" && method == http::verb::post) {
        const auto n = p_.scheduler.flush(name);
        co_await audit(c, "queue.flush", name, std::to_string(n) + " messages");
        co_return json_reply(http::status::ok, json::object{{"flushed", n}});
    }
    co_return not_found();
}

asio::awaitable<Response> Admin::add_domain(Ctx& c) {
    auto body = body_object(c.req);
    if (!body) co_return error(http::status::bad_request, "send a JSON object");
    auto name = str_field(*body, "name");
    auto primary = str_field(*body, "primary");
    if (!name || !primary)
        co_return error(http::status::bad_request, "give \"name\" and \"primary\" as strings");
    if (auto e = Domains::check_name(*name); !e.empty())
        co_return error(http::status::bad_request, e);
    if (auto e = Domains::check_primary(*primary); !e.empty())
        co_return error(http::status::bad_request, e);
    if (c.caller.role == Role::Customer) {
        // Named first: GCC 12 destroys temporaries of a ?: inside co_await/co_return twice.
        std::string domain = to_lower(*name);
        if (domain.ends_with('.')) domain.pop_back();
        const std::string host = *primary;
        co_return co_await claim_domain(c, domain, host);
    }
    if (auto hp = parse_host_port(*primary, 25)) {  // a primary that is this server loops
        const std::string domain = *name;
        auto r = co_await delivery::route_via(p_.resolver, p_.cfg, domain, *hp);
        if (r.self_loop) co_return error(http::status::bad_request, "refused: " + r.error);
    }
    std::string owner = c.caller.role == Role::Customer ? c.caller.user : "";
    if (auto o = str_field(*body, "owner"); o && c.caller.role == Role::Operator) owner = *o;
    if (exists(*name)) co_return error(http::status::conflict, *name + " is already served here");
    StoredDomain d;
    d.name = *name;
    d.primary = *primary;
    if (auto r = str_field(*body, "recipients")) {  // default "verify": no backscatter
        if (*r != "verify" && *r != "any")
            co_return error(http::status::bad_request, "recipients: \"verify\" or \"any\"");
        d.recipients = *r;
    }
    d.created_by = c.caller.user;
    d.created = now();
    const std::function<int(Store&)> write = [&d, &owner](Store& s) {
        if (!owner.empty() && !s.account(owner)) return 2;
        if (!s.add_domain(d)) return 1;
        if (!owner.empty()) s.add_owner(owner, d.name);
        return 0;
    };
    const int r = co_await p_.queue.call(write);
    if (r == 2) co_return error(http::status::bad_request, "no account " + owner);
    if (r == 1) co_return error(http::status::conflict, *name + " is already served here");
    p_.domains.put(d);  // mail for it is accepted from now on
    if (c.caller.role == Role::Customer) c.caller.domains.push_back(d.name);
    co_await audit(c, "domain.add", d.name, "primary " + d.primary);
    p_.scheduler.check(d.name);  // its primary's state is known at once
    auto report = co_await dns_check(d.name);
    auto sums = co_await summaries();
    co_return json_reply(http::status::created,
                         json::object{{"domain", domain_json(d.name, sums)},
                                      {"mx_record", mx_record(p_.cfg, d.name, report)},
                                      {"dns_check", report_json(report)}});
}

asio::awaitable<std::string> Admin::private_primary(const std::string& primary) {
    if (p_.cfg.admin_customer_private_primaries) co_return "";
    auto hp = parse_host_port(primary, 25);
    if (!hp) co_return "";
    boost::system::error_code ec;
    auto ip = asio::ip::make_address(hp->host, ec);
    std::vector<asio::ip::address> addrs;
    if (!ec) {
        addrs.push_back(ip);
    } else {
        const std::string host = hp->host;
        addrs = (co_await p_.resolver.addresses(host)).addresses;
    }
    for (const auto& a : addrs)
        if (private_address(a))
            co_return "the primary " + primary + (ec ? " resolves to " : " is ") + a.to_string() +
                ", a loopback, private or link-local address: not allowed for a customer's "
                "domain (an operator may allow it: [admin] customer_private_primaries)";
    co_return "";
}

asio::awaitable<Response> Admin::claim_domain(Ctx& c, const std::string& name,
                                              const std::string& primary) {
    if (auto why = co_await private_primary(primary); !why.empty())
        co_return error(http::status::bad_request, why);
    if (exists(name) && c.caller.may(name))
        co_return error(http::status::conflict, name + " is already yours");
    DomainClaim cl{name, c.caller.user, primary, accounts::random_token(18), now()};
    const std::function<DomainClaim(Store&)> write = [cl](Store& s) {
        if (s.add_claim(cl)) return cl;
        for (auto& have : s.claims())  // claimed before by this account: the same answer
            if (have.domain == cl.domain && have.account == cl.account) return have;
        return cl;
    };
    cl = co_await p_.queue.call(write);
    co_await audit(c, "domain.claim", cl.domain, "primary " + cl.primary);
    asio::co_spawn(io_, check_claims(), asio::detached);  // proven already? served at once
    // The same answer whether or not the domain is served here (for someone else): no oracle.
    co_return json_reply(http::status::created,
                         json::object{{"domain", claim_json(cl, p_.cfg)},
                                      {"mx_record", mx_record(p_.cfg, cl.domain, std::nullopt)}});
}

asio::awaitable<void> Admin::claims_loop() {
    for (;;) {
        claims_timer_.expires_after(p_.cfg.admin_claim_check_interval);
        auto [ec] = co_await claims_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
        if (ec) co_return;
        try {
            co_await check_claims();
        } catch (const std::exception& e) {
            spdlog::warn("admin: checking domain claims: {}", e.what());
        }
    }
}

asio::awaitable<void> Admin::check_claims() {
    const std::function<std::vector<DomainClaim>(Store&)> read = [](Store& s) {
        return s.claims();
    };
    const auto claims = co_await p_.queue.call(read);
    const auto ours = p_.cfg.our_names();
    for (const auto& cl : claims) {
        std::string how;
        const std::string txt_name = "_backupmx." + cl.domain;
        auto txt = co_await p_.resolver.query(txt_name, 16);
        if (txt.status == dns::Status::Ok)
            for (const auto& rd : txt.rdata)
                if (txt_text(rd) == cl.token) how = "TXT " + txt_name + " holds its token";
        if (how.empty() && !exists(cl.domain)) {  // nobody is served it yet: the MX set will do
            const std::string domain = cl.domain;
            auto mx = co_await p_.resolver.mx(domain);
            if (mx.status == dns::Status::Ok)
                for (const auto& r : mx.records)
                    for (const auto& n : ours)
                        if (iequals(r.host, n)) how = "its MX set names " + n;
        }
        if (!how.empty()) co_await activate(cl, how);
    }
}

asio::awaitable<void> Admin::activate(const DomainClaim& cl, const std::string& how) {
    StoredDomain d;
    d.name = cl.domain;
    d.primary = cl.primary;
    d.created_by = cl.account;
    d.created = now();
    const bool served = exists(cl.domain);
    const std::function<bool(Store&)> write = [&d, &cl, served](Store& s) {
        const bool added = !served && s.add_domain(d);
        s.add_owner(cl.account, cl.domain);
        s.remove_claim(cl.domain, cl.account);
        return added;
    };
    const bool added = co_await p_.queue.call(write);
    if (added) {
        p_.domains.put(d);  // mail for it is accepted from now on
        p_.scheduler.check(d.name);
    }
    spdlog::info("admin: claim of {} by {} proven ({}): {}", cl.domain, cl.account, how,
                 added ? "served from now on" : "an owner from now on");
    AuditEntry e{now(), cl.account, "domain.claim-proven", cl.domain, how, ""};
    co_await store_audit(std::move(e));
}

asio::awaitable<Response> Admin::change_domain(Ctx& c, const std::string& name) {
    const auto method = c.req.method();
    const StoredDomain* sd = p_.domains.stored(name);
    if (method != http::verb::patch && method != http::verb::delete_)
        co_return error(http::status::method_not_allowed, "GET, PATCH or DELETE");
    if (!sd)
        co_return error(http::status::conflict,
                        name + " is set in the config file: change it there (read-only here)");
    if (method == http::verb::delete_) {
        const std::function<std::int64_t(Store&)> remove = [&name](Store& s) {
            return s.remove_domain(name);
        };
        const auto queued = co_await p_.queue.call(remove);
        if (queued > 0)
            co_return error(http::status::conflict,
                            std::to_string(queued) + " messages are queued for " + name +
                                ": deliver, bounce or delete them first (nothing is dropped by a "
                                "click)");
        p_.domains.remove(name);
        co_await audit(c, "domain.delete", name, "");
        co_return reply(http::status::no_content, "", "text/plain");
    }
    auto body = body_object(c.req);
    if (!body) co_return error(http::status::bad_request, "send a JSON object");
    StoredDomain d = *sd;
    std::string changed;
    for (const auto& [k, v] : *body) {
        if (k == "primary" && v.is_string()) {
            d.primary = std::string(v.as_string());
            if (auto e = Domains::check_primary(d.primary); !e.empty())
                co_return error(http::status::bad_request, e);
            if (c.caller.role == Role::Customer) {
                const std::string primary = d.primary;
                if (auto why = co_await private_primary(primary); !why.empty())
                    co_return error(http::status::bad_request, why);
            }
        } else if (k == "recipients" && v.is_string() &&
                   (v.as_string() == "any" || v.as_string() == "verify")) {
            d.recipients = std::string(v.as_string());
        } else if (k == "greylisting" && v.is_bool()) {
            d.greylisting = v.as_bool();
        } else if (k == "max_message_size" && v.is_int64() && v.as_int64() >= 0 &&
                   static_cast<std::uint64_t>(v.as_int64()) <= p_.cfg.max_message_size) {
            d.max_message_size = v.as_int64();
        } else {
            co_return error(http::status::bad_request,
                            "unknown or bad field " + std::string(k) +
                                " (primary: string, recipients: \"any\"|\"verify\", "
                                "greylisting: bool, max_message_size: bytes, 0 to " +
                                std::to_string(p_.cfg.max_message_size) + ")");
        }
        changed += (changed.empty() ? "" : ", ") + std::string(k) + "=" + json::serialize(v);
    }
    const std::function<bool(Store&)> write = [&d](Store& s) {
        s.update_domain(d);
        return true;
    };
    co_await p_.queue.call(write);
    p_.domains.put(d);
    co_await audit(c, "domain.update", name, changed);
    auto sums = co_await summaries();
    co_return json_reply(http::status::ok, json::object{{"domain", domain_json(name, sums)}});
}

asio::awaitable<Response> Admin::queue_api(Ctx& c) {
    if (c.segs.size() != 1 || c.req.method() != http::verb::get) co_return not_found();
    QueueFilter f;
    auto q = [&](const char* k) {
        auto it = c.query.find(k);
        return it == c.query.end() ? std::string() : it->second;
    };
    if (auto d = to_lower(q("domain")); !d.empty()) {
        if (!c.caller.may(d))
            co_return json_reply(http::status::ok,
                                 json::object{{"messages", json::array{}}, {"next", nullptr}});
        f.domains.push_back(d);
    } else if (c.caller.role == Role::Customer) {
        f.domains = c.caller.domains;
        if (f.domains.empty())
            co_return json_reply(http::status::ok,
                                 json::object{{"messages", json::array{}}, {"next", nullptr}});
    }
    f.sender = q("sender");
    f.recipient = q("recipient");
    f.state = q("state");
    f.after = q("after");
    if (auto a = q("min_age"); !a.empty())
        f.received_before = now() - Seconds(std::strtoll(a.c_str(), nullptr, 10));
    if (auto l = q("limit"); !l.empty())
        f.limit = std::clamp<std::size_t>(std::strtoul(l.c_str(), nullptr, 10), 1, 500);
    const std::function<std::vector<QueueRow>(Store&)> read = [&f](Store& s) {
        return s.queue_page(f);
    };
    auto rows = co_await p_.queue.call(read);
    const auto t = now();
    json::array arr;
    for (const auto& r : rows) arr.emplace_back(message_json(r, t));
    json::value next = rows.size() == f.limit ? json::value(rows.back().id) : json::value(nullptr);
    co_return json_reply(http::status::ok, json::object{{"messages", arr}, {"next", next}});
}

asio::awaitable<Response> Admin::message_api(Ctx& c) {
    if (c.segs.size() < 2) co_return not_found();
    const std::string id = c.segs[1];
    const auto method = c.req.method();
    struct Found {
        std::optional<StoredMessage> msg;
        std::string held;
        std::vector<AttemptRecord> history;
        std::int64_t size = 0;
    };
    const bool with_body = c.query.count("body") && c.caller.role == Role::Operator;
    const std::function<Found(Store&)> read = [&id, with_body](Store& s) {
        Found f;
        f.msg = with_body ? s.load(id) : s.load_head(id);
        if (!f.msg) return f;
        f.held = f.msg->held;
        f.history = s.history(id);
        return f;
    };
    auto found = co_await p_.queue.call(read);
    // Another customer's message looks exactly like one that does not exist.
    if (!found.msg || !c.caller.may(found.msg->domain)) co_return not_found();
    auto& m = *found.msg;
    if (c.segs.size() == 2 && method == http::verb::get) {
        QueueRow row{m.id,          m.domain,          m.sender,   {},           m.size,
                     m.received_at, m.next_attempt_at, m.attempts, m.last_error, found.held};
        json::array states;
        for (const auto& r : m.recipients) {
            if (r.status == RcptStatus::Pending) row.recipients.push_back(r.address);
            states.emplace_back(json::object{{"address", r.address},
                                             {"status", to_string(r.status)},
                                             {"last_reply", r.last_reply}});
        }
        auto o = message_json(row, now());
        o["recipients_state"] = states;
        const auto end = m.body.find("\r\n\r\n");
        o["headers"] = m.body.substr(0, end == std::string::npos ? m.body.size() : end + 2);
        json::array hist;
        for (const auto& h : found.history)
            hist.emplace_back(json::object{{"at", to_unix(h.at)}, {"result", h.result}});
        o["history"] = hist;
        if (with_body) o["body"] = m.body;
        co_return json_reply(http::status::ok, o);
    }
    // Delete, hold and bounce let the scheduler go of the message first: an attempt in flight
    // stops before its final dot (or, past it, records what the primary said), and the action
    // then works on what is still pending — never a delivery and a DSN for one recipient.
    const auto settle = [&]() -> asio::awaitable<std::optional<Response>> {
        const bool settled = co_await p_.scheduler.settle(id, std::chrono::seconds(30));
        if (!settled)
            co_return error(http::status::conflict,
                            "an attempt to deliver " + id + " is still in flight; try again");
        const std::function<std::optional<StoredMessage>(Store&)> reload = [&id](Store& s) {
            return s.load_head(id);
        };
        auto again = co_await p_.queue.call(reload);
        if (!again)
            co_return error(http::status::conflict,
                            id + " was delivered while the action was asked for");
        m = std::move(*again);
        co_return std::nullopt;
    };
    if (c.segs.size() == 2 && method == http::verb::delete_) {
        if (auto refused = co_await settle()) co_return std::move(*refused);
        const std::function<bool(Store&)> remove = [&id](Store& s) { return s.remove(id); };
        co_await p_.queue.call(remove);
        co_await audit(c, "message.delete", id, "domain " + m.domain + " from <" + m.sender + ">");
        co_return reply(http::status::no_content, "", "text/plain");
    }
    if (c.segs.size() != 3 || method != http::verb::post) co_return not_found();
    const std::string& action = c.segs[2];
    if (action == "hold" || action == "bounce")
        if (auto refused = co_await settle()) co_return std::move(*refused);
    if (action == "hold" || action == "release") {
        const std::string reason = action == "hold" ? "held by " + c.caller.user : "";
        const std::function<bool(Store&)> write = [&id, &reason](Store& s) {
            return s.set_held(id, reason);
        };
        co_await p_.queue.call(write);
        if (action == "release" && !found.held.empty())
            p_.scheduler.release(id, m.domain, m.received_at, m.attempts);
        co_await audit(c, "message." + action, id, "domain " + m.domain);
        const char* state = action == "hold" ? "held" : "queued";
        co_return json_reply(http::status::ok, json::object{{"id", id}, {"state", state}});
    }
    if (action == "bounce") {
        auto u = bounce::return_to_sender(m, p_.cfg.hostname,
                                          "returned to the sender by the operator of the backup MX",
                                          now(), p_.cfg.dsn_max_headers);
        co_await p_.queue.record(u);  // commits the DSN and hands it to the scheduler
        // Named first: GCC 12 destroys temporaries of a ?: inside co_await/co_return twice.
        json::value dsn_id = nullptr;
        std::string detail = "domain " + m.domain + " (null sender: no DSN)";
        if (u.dsn) {
            dsn_id = u.dsn->id;
            detail = "domain " + m.domain + " dsn " + u.dsn->id;
        }
        co_await audit(c, "message.bounce", id, detail);
        json::object out{{"id", id}, {"dsn", dsn_id}};
        co_return json_reply(http::status::ok, out);
    }
    co_return not_found();
}

asio::awaitable<Response> Admin::tokens_api(Ctx& c) {
    const auto method = c.req.method();
    const std::string user = c.caller.user;
    if (c.segs.size() == 1 && method == http::verb::get) {
        const std::function<std::vector<ApiToken>(Store&)> read = [&user](Store& s) {
            return s.tokens(user);
        };
        auto ts = co_await p_.queue.call(read);
        json::array arr;
        for (const auto& t : ts)
            arr.emplace_back(
                json::object{{"id", t.id}, {"label", t.label}, {"created", to_unix(t.created)}});
        co_return json_reply(http::status::ok, json::object{{"tokens", arr}});
    }
    if (c.segs.size() == 1 && method == http::verb::post) {
        auto body = body_object(c.req);
        std::string label = body ? str_field(*body, "label").value_or("") : "";
        label = label.substr(0, 100);
        ApiToken t{accounts::random_token(9), user, label, now()};
        const std::string token = "bmx_" + accounts::random_token();
        const std::string hash = accounts::token_hash(token);
        const std::function<bool(Store&)> write = [&t, &hash](Store& s) {
            s.add_token(t, hash);
            return true;
        };
        co_await p_.queue.call(write);
        co_await audit(c, "token.create", t.id, label);
        co_return json_reply(http::status::created, json::object{{"id", t.id}, {"token", token}});
    }
    if (c.segs.size() == 2 && method == http::verb::delete_) {
        const std::string id = c.segs[1];
        const std::function<bool(Store&)> remove = [&user, &id](Store& s) {
            return s.remove_token(user, id);
        };
        const bool gone = co_await p_.queue.call(remove);
        if (!gone) co_return not_found();
        co_await audit(c, "token.revoke", id, "");
        co_return reply(http::status::no_content, "", "text/plain");
    }
    co_return not_found();
}

asio::awaitable<Response> Admin::metrics(Ctx& c) {
    if (c.caller.role != Role::Operator) co_return error(http::status::forbidden, "operators only");
    auto sums = co_await summaries();
    std::vector<metrics::Gauge> messages, bytes, oldest, up;
    const auto t = now();
    std::vector<std::string> names;
    for (const auto& d : p_.cfg.domains) names.push_back(d.name);
    for (const auto& d : p_.domains.all()) names.push_back(d.name);
    for (const auto& n : names) {
        const std::string l = "domain=" + metrics::label_value(n);
        double m = 0, b = 0, age = 0;
        for (const auto& s : sums)
            if (s.domain == n) {
                m = static_cast<double>(s.messages);
                b = static_cast<double>(s.bytes);
                if (s.oldest)
                    age = static_cast<double>(
                        std::chrono::duration_cast<Seconds>(t - *s.oldest).count());
            }
        messages.push_back({l, m});
        bytes.push_back({l, b});
        oldest.push_back({l, age});
        const auto st = p_.scheduler.status(n);
        if (std::string_view(st.state) != "unknown")
            up.push_back({l, std::string_view(st.state) == "up" ? 1.0 : 0.0});
    }
    std::string out = metrics::render();
    out +=
        metrics::render_gauge("backupmx_queue_messages", "Messages queued, per domain", messages);
    out += metrics::render_gauge("backupmx_queue_bytes", "Bytes queued, per domain", bytes);
    out += metrics::render_gauge("backupmx_queue_oldest_age_seconds",
                                 "Age of the oldest queued message, per domain (0: none)", oldest);
    out += metrics::render_gauge(
        "backupmx_primary_up", "1 when the domain's primary answered last, 0 when it did not", up);
    out += metrics::render_gauge(
        "backupmx_smtp_sessions", "Open SMTP sessions",
        {{"", static_cast<double>(p_.smtp_sessions ? p_.smtp_sessions() : 0)}});
    co_return reply(http::status::ok, std::move(out), "text/plain; version=0.0.4; charset=utf-8");
}

}  // namespace bmx::admin
