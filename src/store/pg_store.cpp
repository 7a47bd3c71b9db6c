// PostgreSQL engine of the store, for a fleet of nodes sharing one queue. Same schema and the same
// behaviour as the SQLite engine; a batch of messages is one transaction, so one WAL flush (and,
// with a synchronous standby, one round trip to it) serves the whole group commit.
// Each message has an owner: the node that accepted it or took it over when the owner's lease ran
// out (SELECT ... FOR UPDATE SKIP LOCKED), so one node delivers it.
// Delivery reads on a second connection (reader()). A lost connection is reopened on the next call
// (libpq follows target_session_attrs to the promoted server); until then every call throws
// StoreError, and SMTP answers 451.
#include <libpq-fe.h>

#include <algorithm>
#include <map>
#include <set>
#include <span>
#include <utility>

#include "store/store.hpp"

namespace bmx {
namespace {

// Versioned migrations: version N is applied when the store is older than N, each in one
// transaction with the version bump. Never edit a released step; add one.
const char* const kMigrations[] = {
    // 1: the schema of the SQLite engine, in PostgreSQL's types
    R"sql(
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL UNIQUE,
    domain TEXT NOT NULL,
    sender TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    size BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    smtputf8 BOOLEAN NOT NULL DEFAULT FALSE,
    eightbit BOOLEAN NOT NULL DEFAULT FALSE,
    client TEXT NOT NULL DEFAULT '',
    held TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX messages_domain ON messages(domain);
CREATE INDEX messages_owner ON messages(owner, seq);
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    lease_until BIGINT NOT NULL
);
CREATE TABLE body_pieces (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (message_id, seq)
);
CREATE TABLE recipients (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    pos INTEGER NOT NULL,
    address TEXT NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,
    last_reply TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (message_id, address)
);
CREATE TABLE greylist (
    network TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    PRIMARY KEY (network, sender, recipient)
);
CREATE INDEX greylist_first_seen ON greylist(first_seen);
CREATE TABLE greylist_allow (network TEXT PRIMARY KEY, until BIGINT NOT NULL);
CREATE TABLE verify_cache (
    address TEXT PRIMARY KEY,
    exists_ BOOLEAN NOT NULL,
    expires BIGINT NOT NULL,
    reply TEXT NOT NULL DEFAULT ''
);
CREATE TABLE attempt_log (
    id BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX attempt_log_message ON attempt_log(message_id);
CREATE TABLE accounts (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    pwhash TEXT NOT NULL,
    created BIGINT NOT NULL
);
CREATE TABLE account_domains (
    name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    domain TEXT NOT NULL,
    PRIMARY KEY (name, domain)
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL,
    name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL DEFAULT '',
    created BIGINT NOT NULL
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    name TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT ''
);
CREATE TABLE domains (
    name TEXT PRIMARY KEY,
    primary_host TEXT NOT NULL,
    recipients TEXT NOT NULL DEFAULT 'any',
    greylisting BOOLEAN NOT NULL DEFAULT FALSE,
    max_size BIGINT NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL DEFAULT '',
    created BIGINT NOT NULL
);
CREATE TABLE outages (
    id BIGSERIAL PRIMARY KEY,
    domain TEXT NOT NULL,
    start BIGINT NOT NULL,
    end_ BIGINT,
    held BIGINT NOT NULL DEFAULT 0,
    drained BIGINT
);
CREATE INDEX outages_domain ON outages(domain, start);
)sql",
    // 2: the fleet's shared view of each primary, and its connections counted fleet-wide
    R"sql(
CREATE TABLE primaries (
    domain TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'unknown',
    since BIGINT NOT NULL DEFAULT 0,
    last_probe BIGINT NOT NULL DEFAULT 0,
    last_result TEXT NOT NULL DEFAULT '',
    prober TEXT NOT NULL DEFAULT '',
    probe_until BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE slots (
    domain TEXT NOT NULL,
    node TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (domain, node)
);
)sql",
    // 3: per-client rate counters shared by the fleet
    R"sql(
CREATE TABLE rates (
    key TEXT NOT NULL,
    minute BIGINT NOT NULL,
    node TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (key, minute, node)
);
CREATE INDEX rates_minute ON rates(minute);
)sql",
    // 4: slow start for the fleet: each primary's connection window (0: not started)
    R"sql(
ALTER TABLE primaries ADD COLUMN conn_window INTEGER NOT NULL DEFAULT 0;
)sql",
    // 5: admin browser sessions, valid on every node
    R"sql(
CREATE TABLE admin_sessions (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    last_used BIGINT NOT NULL
);
)sql",
    // 6: failed admin logins, counted for the fleet
    R"sql(
CREATE TABLE login_failures (
    key TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX login_failures_key ON login_failures(key, at);
)sql",
    // 7: customers' claims on domains, pending until proven or approved; bodies shared by the
    // per-domain copies of one DATA, removed with the last of them
    R"sql(
CREATE TABLE bodies (
    id TEXT PRIMARY KEY,
    refs INTEGER NOT NULL
);
CREATE TABLE body_shared (
    body_id TEXT NOT NULL REFERENCES bodies(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (body_id, seq)
);
ALTER TABLE messages ADD COLUMN body_id TEXT NOT NULL DEFAULT '';
CREATE FUNCTION release_body() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF OLD.body_id <> '' THEN
        UPDATE bodies SET refs = refs - 1 WHERE id = OLD.body_id;
        DELETE FROM bodies WHERE id = OLD.body_id AND refs <= 0;
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER messages_release_body AFTER DELETE ON messages FOR EACH ROW
    EXECUTE FUNCTION release_body();
CREATE TABLE domain_claims (
    domain TEXT NOT NULL,
    account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    primary_host TEXT NOT NULL,
    token TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (domain, account)
);
)sql",
};

// libpq's messages end in a newline and put their hints on lines of their own: one log line.
std::string one_line(std::string err) {
    while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
    for (char& c : err)
        if (c == '\n' || c == '\t') c = ' ';
    return err;
}

// One query parameter, sent as text (or as bytes, for bodies).
struct Param {
    Param(const std::string& s) : value(s) {}
    Param(const char* s) : value(s) {}
    Param(std::int64_t v) : value(std::to_string(v)) {}
    Param(int v) : value(std::to_string(v)) {}
    Param(bool v) : value(v ? "t" : "f") {}
    static Param bytes(std::string_view b) {
        Param p{std::string(b)};
        p.binary = true;
        return p;
    }
    // A one-dimensional array in PostgreSQL's text form, each element quoted: {"a","b\"c"}.
    static Param array(const std::vector<std::string>& elements) {
        std::string v = "{";
        for (const auto& e : elements) {
            v += v.size() > 1 ? ",\"" : "\"";
            for (char c : e) {
                if (c == '"' || c == '\\') v += '\\';
                v += c;
            }
            v += '"';
        }
        return Param{v + "}"};
    }
    static Param null() {
        Param p("");
        p.is_null = true;
        return p;
    }
    std::string value;
    bool binary = false, is_null = false;
};

class Result {
  public:
    explicit Result(PGresult* r) : r_(r) {}
    ~Result() { PQclear(r_); }
    Result(Result&& o) noexcept : r_(std::exchange(o.r_, nullptr)) {}
    Result(const Result&) = delete;
    Result& operator=(const Result&) = delete;
    const PGresult* get() const { return r_; }
    int rows() const { return PQntuples(r_); }
    bool null(int row, int col) const { return PQgetisnull(r_, row, col); }
    std::string text(int row, int col) const {
        return std::string(PQgetvalue(r_, row, col),
                           static_cast<std::size_t>(PQgetlength(r_, row, col)));
    }
    std::int64_t integer(int row, int col) const {
        return std::strtoll(PQgetvalue(r_, row, col), nullptr, 10);
    }
    bool boolean(int row, int col) const { return PQgetvalue(r_, row, col)[0] == 't'; }
    std::int64_t affected() const { return std::strtoll(PQcmdTuples(r_), nullptr, 10); }
    // Values of a result asked for in binary: integers of 2, 4 or 8 bytes (network order),
    // booleans, and one-dimensional arrays (their elements' bytes; empty for NULL or {}).
    std::string_view bytes(int row, int col) const {
        return {PQgetvalue(r_, row, col), static_cast<std::size_t>(PQgetlength(r_, row, col))};
    }
    std::int64_t bin_integer(int row, int col) const { return big_endian(bytes(row, col)); }
    bool bin_boolean(int row, int col) const {
        return bytes(row, col) == std::string_view("\1", 1);
    }
    std::vector<std::string_view> bin_array(int row, int col) const {
        std::vector<std::string_view> out;
        if (null(row, col)) return out;
        auto b = bytes(row, col);
        auto take = [&b](std::size_t n) {
            if (b.size() < n) throw StoreError("postgresql: a malformed array");
            auto v = b.substr(0, n);
            b.remove_prefix(n);
            return v;
        };
        const auto ndim = big_endian(take(4));
        take(8);  // has-nulls flag, element type
        if (ndim == 0) return out;
        if (ndim != 1) throw StoreError("postgresql: an array of more than one dimension");
        const auto n = big_endian(take(4));
        take(4);  // lower bound
        for (std::int64_t i = 0; i < n; ++i) {
            const auto len = big_endian(take(4));
            out.push_back(len < 0 ? std::string_view() : take(static_cast<std::size_t>(len)));
        }
        return out;
    }
    static std::int64_t big_endian(std::string_view b) {
        std::uint64_t v = 0;
        for (unsigned char c : b) v = v << 8 | c;
        // sign-extend from the value's width
        const unsigned shift = 64 - 8 * static_cast<unsigned>(b.size());
        return b.empty() ? 0 : static_cast<std::int64_t>(v << shift) >> shift;
    }

  private:
    PGresult* r_;
};

class PgStore final : public Store {
  public:
    PgStore(std::string url, std::string node, Seconds lease, std::string synchronous_commit)
        : url_(std::move(url)),
          node_(std::move(node)),
          lease_(lease),
          synchronous_commit_(std::move(synchronous_commit)) {
        try {
            connect();
            migrate();
            renew_lease(now() + lease_);  // this node's lease exists before its first message
        } catch (...) {                   // (no destructor runs for a constructor that throws)
            if (conn_) PQfinish(conn_);
            throw;
        }
    }
    ~PgStore() override {
        if (conn_) PQfinish(conn_);
    }

    std::unique_ptr<Store> reader() override {
        return std::unique_ptr<Store>(new PgStore(*this, Reader{}));
    }

    void insert(const std::vector<const NewMessage*>& batch) override {
        Tx tx(*this);
        for (const NewMessage* m : batch) insert_in_tx(*m);
        tx.commit();
    }

    bool load_index_page(std::int64_t& after, std::size_t limit,
                         std::vector<IndexEntry>& out) override {
        // This node's messages, and those nobody owns (a store copied from SQLite).
        auto r = exec(
            "SELECT id, domain, received_at, next_attempt_at, attempts, held, seq FROM messages "
            "WHERE seq > $1 AND (owner = $2 OR owner = '') ORDER BY seq LIMIT $3",
            {after, node_, static_cast<std::int64_t>(limit)});
        for (int i = 0; i < r.rows(); ++i) {
            after = r.integer(i, 6);
            if (!r.text(i, 5).empty()) continue;
            out.push_back({r.text(i, 0), r.text(i, 1), from_unix(r.integer(i, 2)),
                           from_unix(r.integer(i, 3)), static_cast<int>(r.integer(i, 4))});
        }
        if (r.rows() > 0)
            exec("UPDATE messages SET owner = $1 WHERE owner = '' AND seq <= $2", {node_, after});
        return r.rows() > 0;
    }

    std::optional<StoredMessage> load_head(const std::string& id) override {
        return load(id, false);
    }

    std::optional<StoredMessage> load_owned(const std::string& id) override {
        return load(id, true);
    }

    std::optional<std::string> read_body(const std::string& id, std::size_t seq) override {
        auto r = exec(
            "SELECT data FROM body_pieces WHERE message_id = $1 AND seq = $2 UNION ALL "
            "SELECT s.data FROM messages m JOIN body_shared s ON s.body_id = m.body_id "
            "WHERE m.id = $1 AND m.body_id <> '' AND s.seq = $2",
            {id, static_cast<std::int64_t>(seq)}, true);
        if (r.rows() == 0) return std::nullopt;
        return r.text(0, 0);
    }

    std::vector<int> record_attempts(const std::vector<const AttemptUpdate*>& batch) override {
        Tx tx(*this);
        // The batch's rows are found by key, however many: the planner, with its estimates of a
        // queue that filled since it last looked, would rather scan whole tables for a large one.
        exec(
            "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', "
            "'off', true)",
            {});
        std::vector<int> left;
        // A few statements for the whole batch; a message that comes again starts another round,
        // so its updates apply in order.
        for (auto from = batch.begin(); from != batch.end();) {
            std::set<std::string_view> ids;
            auto to = from;
            while (to != batch.end() && ids.insert((*to)->id).second) ++to;
            record_in_tx({from, to}, left);
            from = to;
        }
        tx.commit();
        return left;
    }

    std::vector<QueueRow> list() override {
        QueueFilter f;
        f.limit = 1u << 30;
        auto rows = queue_page(f);
        std::stable_sort(rows.begin(), rows.end(), [](const QueueRow& a, const QueueRow& b) {
            return a.received_at < b.received_at;
        });
        return rows;
    }

    bool remove(const std::string& id) override {
        return exec("DELETE FROM messages WHERE id = $1", {id}).affected() > 0;
    }

    GreyVerdict greylist(const std::string& network, const std::string& sender,
                         const std::string& recipient, TimePoint t_now,
                         const GreylistRule& rule) override {
        const std::int64_t t = to_unix(t_now);
        Tx tx(*this);
        auto a = exec("SELECT until FROM greylist_allow WHERE network = $1", {network});
        if (a.rows() && a.integer(0, 0) > t) return GreyVerdict::Allowlisted;
        // Two nodes may see the same triplet at once: the insert does nothing for the second.
        exec(
            "INSERT INTO greylist(network, sender, recipient, first_seen) VALUES($1,$2,$3,$4) "
            "ON CONFLICT DO NOTHING",
            {network, sender, recipient, t});
        auto g = exec(
            "SELECT first_seen FROM greylist WHERE network = $1 AND sender = $2 AND recipient = $3 "
            "FOR UPDATE",
            {network, sender, recipient});
        const std::int64_t first = g.integer(0, 0);
        GreyVerdict v;
        if (first == t || t - first > rule.expiry.count()) {
            exec(
                "UPDATE greylist SET first_seen = $4 WHERE network = $1 AND sender = $2 AND "
                "recipient = $3",
                {network, sender, recipient, t});
            v = GreyVerdict::FirstSeen;
        } else if (t - first < rule.delay.count()) {
            v = GreyVerdict::TooEarly;
        } else {
            exec(
                "INSERT INTO greylist_allow(network, until) VALUES($1,$2) ON CONFLICT (network) "
                "DO UPDATE SET until = EXCLUDED.until",
                {network, t + rule.allow_ttl.count()});
            v = GreyVerdict::Passed;
        }
        exec("DELETE FROM greylist WHERE first_seen < $1",
             {t - rule.expiry.count() - std::int64_t{86400}});
        tx.commit();
        return v;
    }

    std::optional<VerifyEntry> verify_get(const std::string& address, TimePoint t) override {
        auto r =
            exec("SELECT exists_, expires, reply FROM verify_cache WHERE address = $1", {address});
        if (!r.rows() || r.integer(0, 1) <= to_unix(t)) return std::nullopt;
        return VerifyEntry{r.boolean(0, 0), from_unix(r.integer(0, 1)), r.text(0, 2)};
    }

    void verify_put(const std::string& address, const VerifyEntry& e) override {
        exec(
            "INSERT INTO verify_cache(address, exists_, expires, reply) VALUES($1,$2,$3,$4) "
            "ON CONFLICT (address) DO UPDATE SET exists_ = EXCLUDED.exists_, expires = "
            "EXCLUDED.expires, reply = EXCLUDED.reply",
            {address, e.exists, to_unix(e.expires), e.reply});
    }

    std::vector<QueueRow> queue_page(const QueueFilter& f) override {
        std::string sql =
            "SELECT id, domain, sender, size, received_at, next_attempt_at, attempts, last_error, "
            "held FROM messages m WHERE id > $1";
        std::vector<Param> params{f.after};
        auto add = [&](Param p) {
            params.push_back(std::move(p));
            return "$" + std::to_string(params.size());
        };
        if (!f.domains.empty()) {
            sql += " AND domain IN (";
            for (std::size_t i = 0; i < f.domains.size(); ++i)
                sql += (i ? "," : "") + add(f.domains[i]);
            sql += ")";
        }
        if (!f.sender.empty())
            sql += " AND strpos(lower(sender), " + add(to_lower(f.sender)) + ") > 0";
        if (!f.recipient.empty())
            sql +=
                " AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.status = "
                "0 AND strpos(lower(r.address), " +
                add(to_lower(f.recipient)) + ") > 0)";
        if (f.received_before) sql += " AND received_at <= " + add(to_unix(*f.received_before));
        if (f.state == "held") sql += " AND held <> ''";
        if (f.state == "queued") sql += " AND held = ''";
        sql += " ORDER BY id LIMIT " + add(static_cast<std::int64_t>(f.limit));
        auto r = exec_once(sql, params);
        std::vector<QueueRow> out;
        std::map<std::string, std::size_t> at;
        for (int i = 0; i < r.rows(); ++i) {
            at[r.text(i, 0)] = out.size();
            out.push_back(QueueRow{r.text(i, 0),
                                   r.text(i, 1),
                                   r.text(i, 2),
                                   {},
                                   r.integer(i, 3),
                                   from_unix(r.integer(i, 4)),
                                   from_unix(r.integer(i, 5)),
                                   static_cast<int>(r.integer(i, 6)),
                                   r.text(i, 7),
                                   r.text(i, 8)});
        }
        if (out.empty()) return out;
        // The pending recipients of the page, in one query.
        std::string ids = "{";
        for (std::size_t i = 0; i < out.size(); ++i) ids += (i ? "," : "") + out[i].id;
        ids += "}";
        auto rc = exec(
            "SELECT message_id, address FROM recipients WHERE message_id = ANY($1::text[]) AND "
            "status = 0 ORDER BY message_id, pos",
            {ids});
        for (int i = 0; i < rc.rows(); ++i)
            out[at[rc.text(i, 0)]].recipients.push_back(rc.text(i, 1));
        return out;
    }

    std::vector<QueueSummary> queue_summary() override {
        auto r = exec(
            "SELECT domain, count(*), sum(size), sum(CASE WHEN held <> '' THEN 1 ELSE 0 END), "
            "min(received_at), min(CASE WHEN held = '' THEN next_attempt_at END), "
            "(SELECT last_error FROM messages l WHERE l.domain = m.domain AND last_error <> '' "
            "ORDER BY attempts DESC, seq DESC LIMIT 1) "
            "FROM messages m GROUP BY domain ORDER BY domain",
            {});
        std::vector<QueueSummary> out;
        for (int i = 0; i < r.rows(); ++i) {
            QueueSummary q{r.text(i, 0), r.integer(i, 1), r.integer(i, 2), r.integer(i, 3)};
            q.oldest = from_unix(r.integer(i, 4));
            if (!r.null(i, 5)) q.next_attempt = from_unix(r.integer(i, 5));
            q.last_error = r.text(i, 6);
            out.push_back(std::move(q));
        }
        return out;
    }

    std::vector<AttemptRecord> history(const std::string& id) override {
        auto r = exec("SELECT at, result FROM attempt_log WHERE message_id = $1 ORDER BY id", {id});
        std::vector<AttemptRecord> out;
        for (int i = 0; i < r.rows(); ++i)
            out.push_back({from_unix(r.integer(i, 0)), r.text(i, 1)});
        return out;
    }

    bool set_held(const std::string& id, const std::string& reason) override {
        return exec("UPDATE messages SET held = $1 WHERE id = $2", {reason, id}).affected() > 0;
    }

    bool add_account(const Account& a) override {
        Tx tx(*this);
        auto r = exec(
            "INSERT INTO accounts(name, role, pwhash, created) VALUES($1,$2,$3,$4) ON CONFLICT "
            "DO NOTHING",
            {a.name, a.role, a.pwhash, to_unix(a.created)});
        if (r.affected() == 0) return false;
        for (const auto& d : a.domains) add_owner(a.name, d);
        tx.commit();
        return true;
    }

    std::optional<Account> account(const std::string& name) override {
        auto r = exec("SELECT name, role, pwhash, created FROM accounts WHERE name = $1", {name});
        if (!r.rows()) return std::nullopt;
        Account a{r.text(0, 0), r.text(0, 1), r.text(0, 2), {}, from_unix(r.integer(0, 3))};
        auto d = exec("SELECT domain FROM account_domains WHERE name = $1 ORDER BY domain", {name});
        for (int i = 0; i < d.rows(); ++i) a.domains.push_back(d.text(i, 0));
        return a;
    }

    void add_owner(const std::string& user, const std::string& domain) override {
        exec("INSERT INTO account_domains(name, domain) VALUES($1,$2) ON CONFLICT DO NOTHING",
             {user, domain});
    }

    void add_token(const ApiToken& t, const std::string& token_hash) override {
        exec("INSERT INTO api_tokens(id, name, hash, label, created) VALUES($1,$2,$3,$4,$5)",
             {t.id, t.user, token_hash, t.label, to_unix(t.created)});
    }

    void put_session(const std::string& key, const std::string& user, TimePoint t,
                     TimePoint idle_before) override {
        exec("DELETE FROM admin_sessions WHERE last_used < $1", {to_unix(idle_before)});
        exec("INSERT INTO admin_sessions(key, name, last_used) VALUES($1,$2,$3)",
             {key, user, to_unix(t)});
    }

    std::optional<std::string> use_session(const std::string& key, TimePoint t,
                                           TimePoint idle_before) override {
        auto r =
            exec("SELECT name, last_used FROM admin_sessions WHERE key = $1 AND last_used >= $2",
                 {key, to_unix(idle_before)});
        if (!r.rows()) return std::nullopt;
        if (r.integer(0, 1) < to_unix(t) - 60)
            exec("UPDATE admin_sessions SET last_used = $1 WHERE key = $2", {to_unix(t), key});
        return r.text(0, 0);
    }

    void end_session(const std::string& key) override {
        exec("DELETE FROM admin_sessions WHERE key = $1", {key});
    }

    void add_login_failure(const std::vector<std::string>& keys, TimePoint t,
                           TimePoint forget_before) override {
        exec("DELETE FROM login_failures WHERE at < $1", {to_unix(forget_before)});
        for (const auto& k : keys)
            exec("INSERT INTO login_failures(key, at) VALUES($1,$2)", {k, to_unix(t)});
    }

    std::size_t login_failures(const std::string& key, TimePoint since) override {
        auto r = exec("SELECT count(*) FROM login_failures WHERE key = $1 AND at >= $2",
                      {key, to_unix(since)});
        return static_cast<std::size_t>(r.integer(0, 0));
    }

    void clear_login_failures(const std::string& key) override {
        exec("DELETE FROM login_failures WHERE key = $1", {key});
    }

    bool reserve_login_attempt(const std::vector<std::string>& keys, TimePoint t, TimePoint since,
                               std::size_t max) override {
        Tx tx(*this);
        // One lock for every node's reservations (a short transaction, and logins are few): the
        // count below then sees every attempt reserved before it, on any node. Per-key locks
        // would need an order that hash collisions cannot turn into a deadlock.
        exec("SELECT pg_advisory_xact_lock(724165002)", {});
        exec("DELETE FROM login_failures WHERE at < $1", {to_unix(since)});
        for (const auto& k : keys)
            if (login_failures(k, since) >= max) return false;
        for (const auto& k : keys)
            exec("INSERT INTO login_failures(key, at) VALUES($1,$2)", {k, to_unix(t)});
        tx.commit();
        return true;
    }

    void release_login_attempt(const std::vector<std::string>& keys, TimePoint t) override {
        for (const auto& k : keys)
            exec(
                "DELETE FROM login_failures WHERE ctid = (SELECT ctid FROM login_failures WHERE "
                "key = $1 AND at = $2 LIMIT 1)",
                {k, to_unix(t)});
    }

    std::optional<std::string> token_user(const std::string& token_hash) override {
        auto r = exec("SELECT name FROM api_tokens WHERE hash = $1", {token_hash});
        if (!r.rows()) return std::nullopt;
        return r.text(0, 0);
    }

    std::vector<ApiToken> tokens(const std::string& user) override {
        auto r = exec(
            "SELECT id, name, label, created FROM api_tokens WHERE name = $1 ORDER BY seq", {user});
        std::vector<ApiToken> out;
        for (int i = 0; i < r.rows(); ++i)
            out.push_back({r.text(i, 0), r.text(i, 1), r.text(i, 2), from_unix(r.integer(i, 3))});
        return out;
    }

    bool remove_token(const std::string& user, const std::string& id) override {
        return exec("DELETE FROM api_tokens WHERE name = $1 AND id = $2", {user, id}).affected() >
               0;
    }

    void audit(const AuditEntry& e) override {
        exec(
            "INSERT INTO audit(at, name, action, target, detail, client) VALUES($1,$2,$3,$4,$5,"
            "$6)",
            {to_unix(e.at), e.user, e.action, e.target, e.detail, e.client});
    }

    std::vector<AuditEntry> audit_log(std::size_t limit) override {
        auto r = exec(
            "SELECT at, name, action, target, detail, client FROM audit ORDER BY id DESC LIMIT $1",
            {static_cast<std::int64_t>(limit)});
        std::vector<AuditEntry> out;
        for (int i = 0; i < r.rows(); ++i)
            out.push_back({from_unix(r.integer(i, 0)), r.text(i, 1), r.text(i, 2), r.text(i, 3),
                           r.text(i, 4), r.text(i, 5)});
        return out;
    }

    bool add_domain(const StoredDomain& d) override {
        return exec(
                   "INSERT INTO domains(name, primary_host, recipients, greylisting, max_size, "
                   "created_by, created) VALUES($1,$2,$3,$4,$5,$6,$7) ON CONFLICT DO NOTHING",
                   {d.name, d.primary, d.recipients, d.greylisting, d.max_message_size,
                    d.created_by, to_unix(d.created)})
                   .affected() > 0;
    }

    void update_domain(const StoredDomain& d) override {
        exec(
            "UPDATE domains SET primary_host = $1, recipients = $2, greylisting = $3, max_size = "
            "$4 WHERE name = $5",
            {d.primary, d.recipients, d.greylisting, d.max_message_size, d.name});
    }

    std::int64_t remove_domain(const std::string& name) override {
        Tx tx(*this);
        // Locks the domain's row first: a message accepted meanwhile on another node is either
        // counted here or finds the domain gone.
        exec("SELECT 1 FROM domains WHERE name = $1 FOR UPDATE", {name});
        auto c = exec("SELECT count(*) FROM messages WHERE domain = $1", {name});
        if (const auto n = c.integer(0, 0); n > 0) return n;
        exec("DELETE FROM domains WHERE name = $1", {name});
        exec("DELETE FROM account_domains WHERE domain = $1", {name});
        tx.commit();
        return 0;
    }

    std::vector<StoredDomain> domains() override {
        auto r = exec(
            "SELECT name, primary_host, recipients, greylisting, max_size, created_by, created "
            "FROM domains ORDER BY name",
            {});
        std::vector<StoredDomain> out;
        for (int i = 0; i < r.rows(); ++i)
            out.push_back({r.text(i, 0), r.text(i, 1), r.text(i, 2), r.boolean(i, 3),
                           r.integer(i, 4), r.text(i, 5), from_unix(r.integer(i, 6))});
        return out;
    }

    bool add_claim(const DomainClaim& c) override {
        return exec(
                   "INSERT INTO domain_claims(domain, account, primary_host, token, created) "
                   "VALUES($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING",
                   {c.domain, c.account, c.primary, c.token, to_unix(c.created)})
                   .affected() > 0;
    }

    std::vector<DomainClaim> claims() override {
        auto r = exec(
            "SELECT domain, account, primary_host, token, created FROM domain_claims "
            "ORDER BY domain, account",
            {});
        std::vector<DomainClaim> out;
        for (int i = 0; i < r.rows(); ++i)
            out.push_back({r.text(i, 0), r.text(i, 1), r.text(i, 2), r.text(i, 3),
                           from_unix(r.integer(i, 4))});
        return out;
    }

    void remove_claim(const std::string& domain, const std::string& account) override {
        exec("DELETE FROM domain_claims WHERE domain = $1 AND account = $2", {domain, account});
    }

    void outage_begin(const std::string& domain, TimePoint start, std::int64_t held) override {
        Tx tx(*this);
        exec("SELECT pg_advisory_xact_lock(hashtext($1))", {domain});  // one writer per domain
        auto open = exec("SELECT 1 FROM outages WHERE domain = $1 AND end_ IS NULL", {domain});
        if (open.rows()) return;
        exec("INSERT INTO outages(domain, start, held) VALUES($1,$2,$3)",
             {domain, to_unix(start), held});
        tx.commit();
    }

    void outage_end(const std::string& domain, TimePoint end, std::int64_t held) override {
        exec(
            "UPDATE outages SET end_ = $1, held = greatest(held, $2) WHERE domain = $3 AND end_ IS "
            "NULL",
            {to_unix(end), held, domain});
    }

    void outage_drained(const std::string& domain, TimePoint at) override {
        exec(
            "UPDATE outages SET drained = $1 WHERE id = (SELECT max(id) FROM outages WHERE domain "
            "= $2 AND end_ IS NOT NULL AND drained IS NULL)",
            {to_unix(at), domain});
    }

    std::vector<Outage> outages(const std::string& domain, std::size_t limit) override {
        auto r = exec(
            "SELECT start, end_, held, drained FROM outages WHERE domain = $1 ORDER BY start DESC, "
            "id DESC LIMIT $2",
            {domain, static_cast<std::int64_t>(limit)});
        std::vector<Outage> out;
        for (int i = 0; i < r.rows(); ++i) {
            Outage o{domain, from_unix(r.integer(i, 0))};
            if (!r.null(i, 1)) o.end = from_unix(r.integer(i, 1));
            o.messages_held = r.integer(i, 2);
            if (!r.null(i, 3) && o.end) o.drain_seconds = r.integer(i, 3) - r.integer(i, 1);
            out.push_back(std::move(o));
        }
        return out;
    }

    bool owns(const std::string& id) override {
        return exec("SELECT 1 FROM messages WHERE id = $1 AND owner = $2", {id, node_}).rows() > 0;
    }

    StoreTables export_tables() override {
        StoreTables t;
        auto g = exec("SELECT network, sender, recipient, first_seen FROM greylist", {});
        for (int i = 0; i < g.rows(); ++i)
            t.greylist.push_back(
                {g.text(i, 0), g.text(i, 1), g.text(i, 2), from_unix(g.integer(i, 3))});
        auto a = exec("SELECT network, until FROM greylist_allow", {});
        for (int i = 0; i < a.rows(); ++i)
            t.allowlist.push_back({a.text(i, 0), from_unix(a.integer(i, 1))});
        auto v = exec("SELECT address, exists_, expires, reply FROM verify_cache", {});
        for (int i = 0; i < v.rows(); ++i)
            t.verify.push_back(
                {v.text(i, 0),
                 VerifyEntry{v.boolean(i, 1), from_unix(v.integer(i, 2)), v.text(i, 3)}});
        t.domains = domains();
        auto n = exec("SELECT name FROM accounts ORDER BY name", {});
        for (int i = 0; i < n.rows(); ++i) t.accounts.push_back(*account(n.text(i, 0)));
        return t;
    }

    void import_tables(const StoreTables& t) override {
        Tx tx(*this);
        for (const auto& r : t.greylist)
            exec(
                "INSERT INTO greylist(network, sender, recipient, first_seen) VALUES($1,$2,$3,$4) "
                "ON CONFLICT DO NOTHING",
                {r.network, r.sender, r.recipient, to_unix(r.first_seen)});
        for (const auto& r : t.allowlist)
            exec("INSERT INTO greylist_allow(network, until) VALUES($1,$2) ON CONFLICT DO NOTHING",
                 {r.network, to_unix(r.until)});
        for (const auto& r : t.verify)
            exec(
                "INSERT INTO verify_cache(address, exists_, expires, reply) VALUES($1,$2,$3,$4) "
                "ON CONFLICT DO NOTHING",
                {r.address, r.entry.exists, to_unix(r.entry.expires), r.entry.reply});
        for (const auto& d : t.domains) add_domain(d);
        tx.commit();
        for (const auto& acc : t.accounts) add_account(acc);
    }

    bool claim_probe(const std::string& domain, TimePoint until) override {
        // Ours when nobody holds it, its holder's claim ran out, or it is ours already.
        return exec(
                   "INSERT INTO primaries(domain, prober, probe_until) VALUES($1,$2,$3) ON "
                   "CONFLICT (domain) DO UPDATE SET prober = $2, probe_until = $3 WHERE "
                   "primaries.probe_until < $4 OR primaries.prober = $2 RETURNING 1",
                   {domain, node_, to_unix(until), to_unix(now())})
                   .rows() > 0;
    }

    void put_primary(const PrimaryState& p) override {
        exec(
            "INSERT INTO primaries(domain, state, since, last_probe, last_result) VALUES($1,$2,$3,"
            "$4,$5) ON CONFLICT (domain) DO UPDATE SET state = $2, since = $3, last_probe = $4, "
            "last_result = $5",
            {p.domain, p.state, to_unix(p.since), to_unix(p.last_probe), p.last_result});
    }

    std::vector<PrimaryState> primaries(TimePoint changed_since) override {
        auto r = exec(
            "SELECT domain, state, since, last_probe, last_result FROM primaries WHERE "
            "greatest(since, last_probe) >= $1",
            {to_unix(changed_since)});
        std::vector<PrimaryState> out;
        for (int i = 0; i < r.rows(); ++i)
            out.push_back({r.text(i, 0), r.text(i, 1), from_unix(r.integer(i, 2)),
                           from_unix(r.integer(i, 3)), r.text(i, 4)});
        return out;
    }

    // The fleet's open connections to a domain's primary: those of nodes still alive (lease),
    // within the primary's window.
    SlotGrant acquire_slot(const std::string& domain, unsigned initial, unsigned max) override {
        Tx tx(*this);
        exec("SELECT pg_advisory_xact_lock(hashtext('slots:' || $1))", {domain});
        auto r = exec(
            "SELECT (SELECT coalesce(sum(s.n), 0) FROM slots s JOIN nodes n ON n.name = s.node "
            "WHERE s.domain = $1 AND n.lease_until >= $2), (SELECT conn_window FROM primaries "
            "WHERE domain = $1)",
            {domain, to_unix(now())});
        const std::int64_t kept = r.null(0, 1) ? 0 : r.integer(0, 1);
        const auto window = std::min(max, kept > 0 ? static_cast<unsigned>(kept) : initial);
        if (r.integer(0, 0) >= static_cast<std::int64_t>(window)) return {false, window};
        exec(
            "INSERT INTO slots(domain, node, n) VALUES($1,$2,1) ON CONFLICT (domain, node) DO "
            "UPDATE SET n = slots.n + 1",
            {domain, node_});
        tx.commit();
        return {true, window};
    }

    unsigned adjust_window(const std::string& domain, Window how, unsigned initial,
                           unsigned max) override {
        // From the current window (0: not started, so `initial`), within 1..max.
        const auto next = [how](const std::string& w) {
            const std::string e = how == Window::Grow    ? w + " + 1"
                                  : how == Window::Halve ? w + " / 2"
                                                         : std::string("$2::int");
            return "least(greatest(" + e + ", 1), $3::int)";
        };
        const std::string sql = "INSERT INTO primaries(domain, conn_window) VALUES($1, " +
                                next("$2::int") +
                                ") ON CONFLICT (domain) DO UPDATE SET conn_window = " +
                                next(
                                    "(CASE WHEN primaries.conn_window = 0 THEN $2::int ELSE "
                                    "primaries.conn_window END)") +
                                " RETURNING conn_window";
        auto r = exec(sql.c_str(),
                      {domain, static_cast<std::int64_t>(initial), static_cast<std::int64_t>(max)});
        return static_cast<unsigned>(r.integer(0, 0));
    }

    void release_all_slots() override { exec("DELETE FROM slots WHERE node = $1", {node_}); }

    void release_slot(const std::string& domain) override {
        exec("UPDATE slots SET n = greatest(n - 1, 0) WHERE domain = $1 AND node = $2",
             {domain, node_});
    }

    std::vector<RateCount> share_rates(const std::vector<RateCount>& mine,
                                       std::int64_t since) override {
        Tx tx(*this);
        for (const auto& r : mine)
            exec(
                "INSERT INTO rates(key, minute, node, count) VALUES($1,$2,$3,$4) ON CONFLICT "
                "(key, minute, node) DO UPDATE SET count = rates.count + EXCLUDED.count",
                {r.key, r.minute, node_, static_cast<std::int64_t>(r.count)});
        auto others = exec(
            "SELECT key, minute, sum(count) FROM rates WHERE minute >= $1 AND node <> $2 GROUP "
            "BY key, minute",
            {since, node_});
        exec("DELETE FROM rates WHERE minute < $1", {since - 1});
        tx.commit();
        std::vector<RateCount> out;
        for (int i = 0; i < others.rows(); ++i)
            out.push_back({others.text(i, 0), others.integer(i, 1),
                           static_cast<std::uint32_t>(others.integer(i, 2))});
        return out;
    }

    // A node's lease is one row: renewing it costs the same with 10 or 10 million messages.
    void renew_lease(TimePoint until) override {
        exec(
            "INSERT INTO nodes(name, lease_until) VALUES($1,$2) ON CONFLICT (name) DO UPDATE SET "
            "lease_until = EXCLUDED.lease_until",
            {node_, to_unix(until)});
    }

    std::vector<IndexEntry> take_over(TimePoint t, std::size_t limit) override {
        // The messages of nodes whose lease ran out (dead, or cut off from the store): ours now.
        // SKIP LOCKED: two nodes taking over at once share the work instead of waiting.
        auto r = exec(
            "UPDATE messages SET owner = $1 WHERE id IN (SELECT m.id FROM messages m JOIN nodes n "
            "ON n.name = m.owner WHERE n.lease_until < $2 AND m.owner <> $1 ORDER BY m.seq LIMIT "
            "$3 FOR UPDATE OF m SKIP LOCKED) RETURNING id, domain, received_at, next_attempt_at, "
            "attempts, held",
            {node_, to_unix(t), static_cast<std::int64_t>(limit)});
        std::vector<IndexEntry> out;
        for (int i = 0; i < r.rows(); ++i) {
            if (!r.text(i, 5).empty()) continue;  // held: owned, never scheduled
            out.push_back({r.text(i, 0), r.text(i, 1), from_unix(r.integer(i, 2)),
                           from_unix(r.integer(i, 3)), static_cast<int>(r.integer(i, 4))});
        }
        return out;
    }

  private:
    struct Reader {};
    // Another connection of the same node, opened by its first call (the schema and the lease
    // are the main one's business).
    PgStore(const PgStore& main, Reader)
        : url_(main.url_),
          node_(main.node_),
          lease_(main.lease_),
          synchronous_commit_(main.synchronous_commit_),
          reader_(true) {}

    struct Tx {
        explicit Tx(PgStore& s) : s(s) {
            s.exec("BEGIN", {});
            s.in_tx_ = true;
        }
        void commit() {
            s.exec("COMMIT", {});
            s.in_tx_ = false;
            done = true;
        }
        ~Tx() {
            s.in_tx_ = false;
            if (!done && s.conn_ && PQstatus(s.conn_) == CONNECTION_OK)
                PQclear(PQexec(s.conn_, "ROLLBACK"));
        }
        PgStore& s;
        bool done = false;
    };

    void connect() {
        if (conn_) PQfinish(conn_);
        prepared_.clear();  // they went with the old connection
        conn_ = PQconnectdb(url_.c_str());
        if (PQstatus(conn_) != CONNECTION_OK) {
            std::string err = one_line(PQerrorMessage(conn_));
            PQfinish(conn_);
            conn_ = nullptr;
            throw StoreError("cannot reach the PostgreSQL store: " + err);
        }
        PQclear(PQexec(conn_, "SET client_min_messages = warning"));
        // A 250 is a promise: the commit must be on disk (and on the synchronous standby) before
        // it returns, whatever the server's or the role's default says. Checked on every
        // connection, so a failover to a server with fsync off is refused too (451, not 250).
        try {
            const std::string set = "SET synchronous_commit = '" + synchronous_commit_ + "'";
            Result r(PQexec(conn_, set.c_str()));
            if (auto err = failure(r)) throw StoreError("postgresql: " + *err);
            Result fsync(PQexec(conn_, "SHOW fsync"));
            if (auto err = failure(fsync)) throw StoreError("postgresql: " + *err);
            if (fsync.text(0, 0) != "on")
                throw StoreUnsafe(
                    "the PostgreSQL server runs with fsync = off: a crash could lose mail that "
                    "was answered 250; refusing to use it (set fsync = on)");
        } catch (...) {
            PQfinish(conn_);
            conn_ = nullptr;
            throw;
        }
    }

    // Runs one statement, prepared once per connection when it has parameters (the server then
    // parses it once, not on every call). A broken connection is reopened before it (libpq goes
    // to whichever host is writable now); a failure inside a transaction is not retried: the
    // caller's work was rolled back with it and it throws, so the caller answers 451 or tries
    // later.
    Result exec(const char* sql, const std::vector<Param>& params, bool binary_result = false) {
        return run(sql, params, binary_result, !params.empty());
    }
    Result exec(const char* sql, std::initializer_list<Param> params, bool binary = false) {
        return exec(sql, std::vector<Param>(params), binary);
    }
    // A statement made up for one call (the operator's filters): never prepared.
    Result exec_once(const std::string& sql, const std::vector<Param>& params) {
        return run(sql.c_str(), params, false, false);
    }

    Result run(const char* sql, const std::vector<Param>& params, bool binary_result,
               bool prepare) {
        try {
            return run_once(sql, params, binary_result, prepare);
        } catch (const StoreError&) {
            // The reading connection only reads: when it turns out to have died since its last
            // call (the server restarted, or failed over), the read is tried again on a new one.
            if (!reader_ || !conn_ || PQstatus(conn_) == CONNECTION_OK) throw;
        }
        return run_once(sql, params, binary_result, prepare);
    }

    Result run_once(const char* sql, const std::vector<Param>& params, bool binary_result,
                    bool prepare) {
        if (!conn_ || PQstatus(conn_) != CONNECTION_OK) {
            if (in_tx_) throw StoreError("the PostgreSQL store connection was lost");
            connect();
        } else if (read_only_ && !in_tx_) {
            // The server turned read-only: connect again, and libpq's
            // target_session_attrs=read-write finds whichever host takes writes now.
            read_only_ = false;
            connect();
        }
        std::vector<const char*> values;
        std::vector<int> lengths, formats;
        for (const auto& p : params) {
            values.push_back(p.is_null ? nullptr : p.value.data());
            lengths.push_back(static_cast<int>(p.value.size()));
            formats.push_back(p.binary ? 1 : 0);
        }
        const int n = static_cast<int>(params.size());
        PGresult* r = nullptr;
        if (prepare) {
            auto [it, fresh] = prepared_.try_emplace(sql, "s" + std::to_string(prepared_.size()));
            if (fresh) {
                Result p(PQprepare(conn_, it->second.c_str(), sql, n, nullptr));
                if (auto err = failure(p)) {
                    prepared_.erase(it);
                    throw StoreError("postgresql: " + *err);
                }
            }
            r = PQexecPrepared(conn_, it->second.c_str(), n, values.data(), lengths.data(),
                               formats.data(), binary_result ? 1 : 0);
        } else {
            r = PQexecParams(conn_, sql, n, nullptr, values.data(), lengths.data(), formats.data(),
                             binary_result ? 1 : 0);
        }
        Result result(r);
        if (auto err = failure(result)) {
            const char* state = PQresultErrorField(result.get(), PG_DIAG_SQLSTATE);
            if (state && std::string_view(state) == "25006") read_only_ = true;
            throw StoreError("postgresql: " + *err);
        }
        return result;
    }

    static std::optional<std::string> failure(const Result& r) {
        const auto status = PQresultStatus(r.get());
        if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return std::nullopt;
        return one_line(PQresultErrorMessage(r.get()));
    }

    // One node migrates at a time (a session advisory lock: even the first CREATE TABLE would
    // race between nodes starting together); the others wait, then find nothing to do.
    void migrate() {
        static constexpr const char* kLock = "SELECT pg_advisory_lock(724165001)";
        static constexpr const char* kUnlock = "SELECT pg_advisory_unlock(724165001)";
        exec(kLock, {});
        try {
            migrate_locked();
        } catch (...) {
            if (conn_ && PQstatus(conn_) == CONNECTION_OK) PQclear(PQexec(conn_, kUnlock));
            throw;
        }
        exec(kUnlock, {});
    }

    void migrate_locked() {
        exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", {});
        Tx tx(*this);
        auto v = exec("SELECT coalesce(max(version), 0) FROM schema_version", {});
        const auto have = v.integer(0, 0);
        const auto want = static_cast<std::int64_t>(std::size(kMigrations));
        for (auto n = have; n < want; ++n) {
            auto r = PQexec(conn_, kMigrations[n]);
            const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
            std::string err = ok ? "" : PQresultErrorMessage(r);
            PQclear(r);
            if (!ok) throw StoreError("migration " + std::to_string(n + 1) + ": " + err);
        }
        if (want > have) {
            exec("DELETE FROM schema_version", {});
            exec("INSERT INTO schema_version(version) VALUES($1)", {want});
        }
        tx.commit();
    }

    // load_head in one round trip: the envelope, the first body piece and the recipients (as
    // arrays, in binary). `owned`: nothing unless this node owns the message.
    std::optional<StoredMessage> load(const std::string& id, bool owned) {
        auto r = exec(
            "SELECT m.domain, m.sender, m.received_at, m.size, m.attempts, m.next_attempt_at, "
            "m.last_error, m.smtputf8, m.eightbit, m.held, m.owner = $2, coalesce(b.data, "
            "bs.data), rc.a, rc.s, rc.l "
            "FROM messages m LEFT JOIN body_pieces b ON b.message_id = m.id AND b.seq = 0 "
            "LEFT JOIN body_shared bs ON bs.body_id = m.body_id AND m.body_id <> '' AND "
            "bs.seq = 0 "
            "CROSS JOIN LATERAL (SELECT array_agg(address ORDER BY pos) a, array_agg(status "
            "ORDER BY pos) s, array_agg(last_reply ORDER BY pos) l FROM recipients WHERE "
            "message_id = m.id) rc WHERE m.id = $1",
            {id, node_}, true);
        if (r.rows() == 0 || (owned && !r.bin_boolean(0, 10))) return std::nullopt;
        StoredMessage m;
        m.id = id;
        m.domain = r.bytes(0, 0);
        m.sender = r.bytes(0, 1);
        m.received_at = from_unix(r.bin_integer(0, 2));
        m.size = r.bin_integer(0, 3);
        m.attempts = static_cast<int>(r.bin_integer(0, 4));
        m.next_attempt_at = from_unix(r.bin_integer(0, 5));
        m.last_error = r.bytes(0, 6);
        m.smtputf8 = r.bin_boolean(0, 7);
        m.eightbit = r.bin_boolean(0, 8);
        m.held = r.bytes(0, 9);
        m.body = r.bytes(0, 11);
        const auto address = r.bin_array(0, 12), status = r.bin_array(0, 13),
                   reply = r.bin_array(0, 14);
        if (status.size() != address.size() || reply.size() != address.size())
            throw StoreError("postgresql: recipients of id=" + id + " read inconsistently");
        for (std::size_t i = 0; i < address.size(); ++i)
            m.recipients.push_back({std::string(address[i]),
                                    static_cast<RcptStatus>(Result::big_endian(status[i])),
                                    std::string(reply[i])});
        return m;
    }

    void insert_in_tx(const NewMessage& m) {
        exec(
            "INSERT INTO messages(id, domain, sender, received_at, size, next_attempt_at, "
            "smtputf8, eightbit, client, held, owner, attempts, last_error, body_id) VALUES($1,$2,"
            "$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
            {m.id, m.domain, m.sender, to_unix(m.received_at), body_size(m),
             to_unix(m.next_attempt_at), m.smtputf8, m.eightbit, m.client, m.held, node_,
             m.attempts, m.last_error, m.body_id});
        // A copy that shares another's body writes none (its owner, in this batch, does).
        if (m.body_id.empty() || m.body_id == m.id) write_body(m);
        int pos = 0;
        for (const auto& a : m.recipients)
            exec(
                "INSERT INTO recipients(message_id, pos, address) VALUES($1,$2,$3) ON CONFLICT "
                "DO NOTHING",
                {m.id, pos++, a});
    }

    void write_body(const NewMessage& m) {
        const bool shared = !m.body_id.empty();
        if (shared) exec("INSERT INTO bodies(id, refs) VALUES($1,$2)", {m.id, m.body_refs});
        std::int64_t seq = 0;
        std::string_view body = m.body;
        const char* piece_sql =
            shared ? "INSERT INTO body_shared(body_id, seq, data) VALUES($1,$2,$3)"
                   : "INSERT INTO body_pieces(message_id, seq, data) VALUES($1,$2,$3)";
        while (!body.empty()) {
            auto piece = body.substr(0, kBodyPiece);
            body.remove_prefix(piece.size());
            exec(piece_sql, {m.id, seq++, Param::bytes(piece)});
        }
        if (m.spool) {
            for (std::int64_t off = 0; off < m.spool->size();) {
                const std::string piece = m.spool->read(off, kBodyPiece);
                if (piece.empty()) throw StoreError("spool shorter than it said");
                off += static_cast<std::int64_t>(piece.size());
                exec(piece_sql, {m.id, seq++, Param::bytes(piece)});
            }
        }
    }

    // Updates of distinct messages; appends each one's pending count to `left`.
    void record_in_tx(std::span<const AttemptUpdate* const> batch, std::vector<int>& left) {
        std::vector<std::string> ids;
        for (const AttemptUpdate* u : batch) ids.push_back(u->id);
        // Locked against a concurrent removal; one deleted meanwhile has nothing to record.
        auto locked =
            exec("SELECT id FROM messages WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                 {Param::array(ids)});
        std::map<std::string, std::int64_t> pending;  // of the messages still there
        for (int i = 0; i < locked.rows(); ++i) pending[locked.text(i, 0)] = 0;
        if (pending.empty()) {
            left.insert(left.end(), batch.size(), 0);
            return;
        }
        std::vector<std::string> o_id, o_address, o_status, o_reply;
        for (const AttemptUpdate* u : batch) {
            if (!pending.contains(u->id)) continue;
            for (const auto& o : u->outcomes) {
                o_id.push_back(u->id);
                o_address.push_back(o.address);
                o_status.push_back(std::to_string(static_cast<int>(o.status)));
                o_reply.push_back(o.reply);
            }
        }
        if (!o_id.empty())
            exec(
                "UPDATE recipients r SET status = v.status, last_reply = v.reply FROM "
                "unnest($1::text[], $2::text[], $3::int[], $4::text[]) AS v(id, address, status, "
                "reply) WHERE r.message_id = v.id AND r.address = v.address",
                {Param::array(o_id), Param::array(o_address), Param::array(o_status),
                 Param::array(o_reply)});
        for (const AttemptUpdate* u : batch)
            if (u->dsn && pending.contains(u->id)) insert_in_tx(*u->dsn);
        std::vector<std::string> present;
        for (const auto& [id, n] : pending) present.push_back(id);
        auto c = exec(
            "SELECT message_id, count(*) FROM recipients WHERE message_id = ANY($1::text[]) AND "
            "status = 0 GROUP BY message_id",
            {Param::array(present)});
        for (int i = 0; i < c.rows(); ++i) pending[c.text(i, 0)] = c.integer(i, 1);
        // Gone when nothing is pending (or asked); else the attempt is counted and logged.
        std::vector<std::string> gone, k_id, k_count, k_next, k_error, k_text;
        const auto at = std::to_string(to_unix(now()));
        for (const AttemptUpdate* u : batch) {
            auto it = pending.find(u->id);
            if (it == pending.end() || it->second == 0 || u->remove) {
                if (it != pending.end()) gone.push_back(u->id);
                left.push_back(0);
                continue;
            }
            k_id.push_back(u->id);
            k_count.push_back(u->count_attempt ? "1" : "0");
            k_next.push_back(std::to_string(to_unix(u->next_attempt_at)));
            k_error.push_back(u->last_error);
            k_text.push_back(attempt_text(*u));
            left.push_back(static_cast<int>(it->second));
        }
        exec(
            "WITH gone AS (DELETE FROM messages WHERE id = ANY($1::text[])), kept AS (UPDATE "
            "messages m SET attempts = m.attempts + v.n, next_attempt_at = v.next, last_error = "
            "v.error FROM unnest($2::text[], $3::int[], $4::bigint[], $5::text[]) AS v(id, n, "
            "next, error) WHERE m.id = v.id) INSERT INTO attempt_log(message_id, at, result) "
            "SELECT id, $6::bigint, result FROM unnest($2::text[], $7::text[]) AS v(id, result)",
            {Param::array(gone), Param::array(k_id), Param::array(k_count), Param::array(k_next),
             Param::array(k_error), at, Param::array(k_text)});
    }

    std::string url_, node_;
    Seconds lease_;
    std::string synchronous_commit_;  // checked by the config: no quote can be in it
    bool reader_ = false;             // the reading connection (reader()), never in a transaction
    PGconn* conn_ = nullptr;
    std::map<std::string, std::string> prepared_;  // SQL -> name, on this connection
    bool in_tx_ = false;
    bool read_only_ = false;  // a write was refused as read-only: connect again first
};

}  // namespace

std::unique_ptr<Store> open_pg_store(const std::string& url, const std::string& node, Seconds lease,
                                     const std::string& synchronous_commit) {
    return std::make_unique<PgStore>(url, node, lease, synchronous_commit);
}

}  // namespace bmx
