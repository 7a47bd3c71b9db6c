// SQLite engine of the store: WAL journal with synchronous=FULL, so COMMIT returns only after the
// WAL is fsync'd; a batch of messages is one transaction and one fsync (group commit).
#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include "store/store.hpp"

namespace bmx {
namespace {

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    sender TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    eightbit INTEGER NOT NULL DEFAULT 0,
    client TEXT NOT NULL DEFAULT '',
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_domain ON messages(domain);
CREATE TABLE IF NOT EXISTS body_pieces (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (message_id, seq)
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,
    last_reply TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (message_id, address)
);
CREATE TABLE IF NOT EXISTS greylist (
    network TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (network, sender, recipient)
);
CREATE TABLE IF NOT EXISTS greylist_allow (
    network TEXT PRIMARY KEY,
    until INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS verify_cache (
    address TEXT PRIMARY KEY,
    exists_ INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    reply TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS attempt_log (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempt_log_message ON attempt_log(message_id);
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    pwhash TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS account_domains (
    name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    domain TEXT NOT NULL,
    PRIMARY KEY (name, domain)
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS admin_sessions (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    last_used INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS login_failures (
    key TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_key ON login_failures(key, at);
CREATE TABLE IF NOT EXISTS audit (
    at INTEGER NOT NULL,
    name TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS bodies (
    id TEXT PRIMARY KEY,
    refs INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS body_shared (
    body_id TEXT NOT NULL REFERENCES bodies(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (body_id, seq)
);
CREATE TABLE IF NOT EXISTS domain_claims (
    domain TEXT NOT NULL,
    account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    primary_host TEXT NOT NULL,
    token TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (domain, account)
);
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY,
    primary_host TEXT NOT NULL,
    recipients TEXT NOT NULL DEFAULT 'any',
    greylisting INTEGER NOT NULL DEFAULT 0,
    max_size INTEGER NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outages (
    domain TEXT NOT NULL,
    start INTEGER NOT NULL,
    end_ INTEGER,
    held INTEGER NOT NULL DEFAULT 0,
    drained INTEGER
);
CREATE INDEX IF NOT EXISTS outages_domain ON outages(domain, start);
)sql";

class Stmt {
  public:
    Stmt(sqlite3* db, const char* sql) {
        if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK)
            throw StoreError(std::string("sqlite prepare: ") + sqlite3_errmsg(db));
    }
    ~Stmt() { sqlite3_finalize(s_); }
    Stmt(const Stmt&) = delete;
    Stmt& operator=(const Stmt&) = delete;
    Stmt& bind(int i, const std::string& v) {
        sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
        return *this;
    }
    Stmt& bind_blob(int i, std::string_view v) {  // `v` must live until the statement runs
        sqlite3_bind_blob64(s_, i, v.empty() ? "" : v.data(), v.size(), SQLITE_STATIC);
        return *this;
    }
    Stmt& bind(int i, std::int64_t v) {
        sqlite3_bind_int64(s_, i, v);
        return *this;
    }
    // true while a row is available
    bool step() {
        int rc = sqlite3_step(s_);
        if (rc == SQLITE_ROW) return true;
        if (rc == SQLITE_DONE) return false;
        throw StoreError(std::string("sqlite step: ") + sqlite3_errmsg(sqlite3_db_handle(s_)));
    }
    void run() {
        step();
        reset();
    }
    bool run_changed() {  // runs; true when a row was inserted, changed or deleted
        run();
        return sqlite3_changes(sqlite3_db_handle(s_)) > 0;
    }
    void reset() {
        sqlite3_reset(s_);
        sqlite3_clear_bindings(s_);
    }
    std::string text(int i) {
        auto p = reinterpret_cast<const char*>(sqlite3_column_blob(s_, i));
        return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s_, i))) : "";
    }
    std::int64_t integer(int i) { return sqlite3_column_int64(s_, i); }
    bool null(int i) { return sqlite3_column_type(s_, i) == SQLITE_NULL; }

  private:
    sqlite3_stmt* s_ = nullptr;
};

class SqliteStore final : public Store {
  public:
    explicit SqliteStore(const std::string& path) {
        auto dir = std::filesystem::path(path).parent_path();
        make_private_dirs(dir.string());
        bool fresh = !std::filesystem::exists(path);
        // 0600 before SQLite opens it: SQLite gives -wal and -shm the database file's mode.
        make_private_file(path);
        if (sqlite3_open_v2(path.c_str(), &db_,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                            nullptr) != SQLITE_OK) {
            std::string err = db_ ? sqlite3_errmsg(db_) : "out of memory";
            sqlite3_close(db_);
            throw StoreError("cannot open store " + path + ": " + err);
        }
        try {  // the destructor does not run when the constructor throws: close here
            sqlite3_busy_timeout(db_, 10000);
            exec("PRAGMA journal_mode=WAL");
            exec("PRAGMA synchronous=FULL");
            exec("PRAGMA foreign_keys=ON");
            exec(kSchema);
            migrate();
        } catch (...) {
            sqlite3_close(db_);
            throw;
        }
        if (fresh)
            sync_dir(dir.empty() ? "." : dir.string());  // the new file's entry is durable too
    }
    ~SqliteStore() override { sqlite3_close(db_); }

    void insert(const std::vector<const NewMessage*>& batch) override {
        Tx tx(*this);
        for (const NewMessage* msg : batch) insert_in_tx(*msg);
        tx.commit();
    }

    bool load_index_page(std::int64_t& after, std::size_t limit,
                         std::vector<IndexEntry>& out) override {
        Stmt s(db_,
               "SELECT id, domain, received_at, next_attempt_at, attempts, held, rowid "
               "FROM messages WHERE rowid > ? ORDER BY rowid LIMIT ?");
        s.bind(1, after).bind(2, static_cast<std::int64_t>(limit));
        bool any = false;
        while (s.step()) {
            any = true;
            after = s.integer(6);
            if (!s.text(5).empty()) continue;  // held: kept, never scheduled
            out.push_back({s.text(0), s.text(1), from_unix(s.integer(2)), from_unix(s.integer(3)),
                           static_cast<int>(s.integer(4))});
        }
        return any;
    }

    std::optional<StoredMessage> load_head(const std::string& id) override {
        Stmt s(db_,
               "SELECT id, domain, sender, received_at, size, attempts, next_attempt_at, "
               "last_error, smtputf8, eightbit, body, held FROM messages WHERE id = ?");
        s.bind(1, id);
        if (!s.step()) return std::nullopt;
        StoredMessage m;
        m.id = s.text(0);
        m.domain = s.text(1);
        m.sender = s.text(2);
        m.received_at = from_unix(s.integer(3));
        m.size = s.integer(4);
        m.attempts = static_cast<int>(s.integer(5));
        m.next_attempt_at = from_unix(s.integer(6));
        m.last_error = s.text(7);
        m.smtputf8 = s.integer(8) != 0;
        m.eightbit = s.integer(9) != 0;
        m.body = s.text(10);  // a message stored before body pieces existed: all of it
        m.held = s.text(11);
        if (m.body.empty()) m.body = read_body(id, 0).value_or("");
        Stmt r(db_,
               "SELECT address, status, last_reply FROM recipients WHERE message_id = ? "
               "ORDER BY rowid");
        r.bind(1, id);
        while (r.step())
            m.recipients.push_back({r.text(0), static_cast<RcptStatus>(r.integer(1)), r.text(2)});
        return m;
    }

    std::optional<std::string> read_body(const std::string& id, std::size_t seq) override {
        Stmt s(db_,
               "SELECT data FROM body_pieces WHERE message_id = ?1 AND seq = ?2 UNION ALL "
               "SELECT s.data FROM messages m JOIN body_shared s ON s.body_id = m.body_id "
               "WHERE m.id = ?1 AND m.body_id <> '' AND s.seq = ?2");
        s.bind(1, id).bind(2, static_cast<std::int64_t>(seq));
        if (!s.step()) return std::nullopt;
        return s.text(0);
    }

    std::vector<int> record_attempts(const std::vector<const AttemptUpdate*>& batch) override {
        Tx tx(*this);
        std::vector<int> left;
        left.reserve(batch.size());
        for (const AttemptUpdate* u : batch) left.push_back(record_in_tx(*u));
        tx.commit();
        return left;
    }

    int record_in_tx(const AttemptUpdate& u) {
        {
            Stmt exists(db_, "SELECT 1 FROM messages WHERE id = ?");
            exists.bind(1, u.id);
            if (!exists.step()) return 0;  // deleted meanwhile: nothing to record
        }
        Stmt r(db_,
               "UPDATE recipients SET status = ?, last_reply = ? WHERE message_id = ? AND "
               "address = ?");
        for (const auto& o : u.outcomes) {
            r.bind(1, static_cast<std::int64_t>(o.status))
                .bind(2, o.reply)
                .bind(3, u.id)
                .bind(4, o.address);
            r.run();
        }
        if (u.dsn) insert_in_tx(*u.dsn);
        std::int64_t pending = 0;
        {
            Stmt c(db_, "SELECT count(*) FROM recipients WHERE message_id = ? AND status = 0");
            c.bind(1, u.id);
            c.step();
            pending = c.integer(0);
        }
        if (pending == 0 || u.remove) {
            Stmt d(db_, "DELETE FROM messages WHERE id = ?");
            d.bind(1, u.id);
            d.run();
            pending = 0;
        } else {
            Stmt m(db_,
                   "UPDATE messages SET attempts = attempts + ?, next_attempt_at = ?, "
                   "last_error = ? WHERE id = ?");
            m.bind(1, std::int64_t{u.count_attempt})
                .bind(2, to_unix(u.next_attempt_at))
                .bind(3, u.last_error)
                .bind(4, u.id);
            m.run();
            // The history of a message still queued (a gone one needs none).
            Stmt h(db_, "INSERT INTO attempt_log(message_id, at, result) VALUES(?,?,?)");
            h.bind(1, u.id).bind(2, to_unix(now())).bind(3, attempt_text(u));
            h.run();
        }
        return static_cast<int>(pending);
    }

    std::vector<QueueRow> list() override {
        std::map<std::string, QueueRow> rows;
        std::vector<std::string> order;
        Stmt s(db_,
               "SELECT id, domain, sender, size, received_at, next_attempt_at, attempts, "
               "last_error, held FROM messages ORDER BY received_at, id");
        while (s.step()) {
            QueueRow q{s.text(0),
                       s.text(1),
                       s.text(2),
                       {},
                       s.integer(3),
                       from_unix(s.integer(4)),
                       from_unix(s.integer(5)),
                       static_cast<int>(s.integer(6)),
                       s.text(7),
                       s.text(8)};
            order.push_back(q.id);
            rows.emplace(q.id, std::move(q));
        }
        Stmt r(db_, "SELECT message_id, address FROM recipients WHERE status = 0 ORDER BY rowid");
        while (r.step()) {
            auto it = rows.find(r.text(0));
            if (it != rows.end()) it->second.recipients.push_back(r.text(1));
        }
        std::vector<QueueRow> out;
        out.reserve(order.size());
        for (auto& id : order) out.push_back(std::move(rows.at(id)));
        return out;
    }

    bool remove(const std::string& id) override {
        Stmt d(db_, "DELETE FROM messages WHERE id = ?");
        d.bind(1, id);
        return d.run_changed();
    }

    GreyVerdict greylist(const std::string& network, const std::string& sender,
                         const std::string& recipient, TimePoint now,
                         const GreylistRule& rule) override {
        const std::int64_t t = to_unix(now);
        Tx tx(*this);
        {
            Stmt a(db_, "SELECT until FROM greylist_allow WHERE network = ?");
            a.bind(1, network);
            if (a.step() && a.integer(0) > t) return GreyVerdict::Allowlisted;
        }
        std::optional<std::int64_t> first;
        {
            Stmt g(db_,
                   "SELECT first_seen FROM greylist WHERE network = ? AND sender = ? AND "
                   "recipient = ?");
            g.bind(1, network).bind(2, sender).bind(3, recipient);
            if (g.step()) first = g.integer(0);
        }
        GreyVerdict v;
        if (!first || t - *first > rule.expiry.count()) {
            Stmt up(db_,
                    "INSERT OR REPLACE INTO greylist(network, sender, recipient, first_seen) "
                    "VALUES(?,?,?,?)");
            up.bind(1, network).bind(2, sender).bind(3, recipient).bind(4, t);
            up.run();
            v = GreyVerdict::FirstSeen;
        } else if (t - *first < rule.delay.count()) {
            v = GreyVerdict::TooEarly;
        } else {
            Stmt al(db_, "INSERT OR REPLACE INTO greylist_allow(network, until) VALUES(?,?)");
            al.bind(1, network).bind(2, t + rule.allow_ttl.count());
            al.run();
            v = GreyVerdict::Passed;
        }
        // Old triplets go as new ones come: the table stays as small as the traffic of a day.
        Stmt old(db_, "DELETE FROM greylist WHERE first_seen < ?");
        old.bind(1, t - rule.expiry.count() - 86400);
        old.run();
        tx.commit();
        return v;
    }

    std::optional<VerifyEntry> verify_get(const std::string& address, TimePoint now) override {
        Stmt s(db_, "SELECT exists_, expires, reply FROM verify_cache WHERE address = ?");
        s.bind(1, address);
        if (!s.step() || s.integer(1) <= to_unix(now)) return std::nullopt;
        return VerifyEntry{s.integer(0) != 0, from_unix(s.integer(1)), s.text(2)};
    }

    void verify_put(const std::string& address, const VerifyEntry& e) override {
        Stmt s(db_,
               "INSERT OR REPLACE INTO verify_cache(address, exists_, expires, reply) "
               "VALUES(?,?,?,?)");
        s.bind(1, address)
            .bind(2, std::int64_t{e.exists})
            .bind(3, to_unix(e.expires))
            .bind(4, e.reply);
        s.run();
    }

    std::vector<QueueRow> queue_page(const QueueFilter& f) override {
        std::string sql =
            "SELECT id, domain, sender, size, received_at, next_attempt_at, attempts, last_error, "
            "held FROM messages m WHERE id > ?1";
        if (!f.domains.empty()) {
            sql += " AND domain IN (";
            for (std::size_t i = 0; i < f.domains.size(); ++i)
                sql += (i ? ",?" : "?") + std::to_string(10 + i);
            sql += ")";
        }
        if (!f.sender.empty()) sql += " AND instr(lower(sender), ?2) > 0";
        if (!f.recipient.empty())
            sql +=
                " AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND "
                "r.status = 0 AND instr(lower(r.address), ?3) > 0)";
        if (f.received_before) sql += " AND received_at <= ?4";
        if (f.state == "held") sql += " AND held != ''";
        if (f.state == "queued") sql += " AND held = ''";
        sql += " ORDER BY id LIMIT ?5";
        Stmt s(db_, sql.c_str());
        s.bind(1, f.after).bind(2, to_lower(f.sender)).bind(3, to_lower(f.recipient));
        s.bind(4, f.received_before ? to_unix(*f.received_before) : std::int64_t{0});
        s.bind(5, static_cast<std::int64_t>(f.limit));
        for (std::size_t i = 0; i < f.domains.size(); ++i)
            s.bind(static_cast<int>(10 + i), f.domains[i]);
        std::vector<QueueRow> out;
        while (s.step())
            out.push_back(QueueRow{s.text(0),
                                   s.text(1),
                                   s.text(2),
                                   {},
                                   s.integer(3),
                                   from_unix(s.integer(4)),
                                   from_unix(s.integer(5)),
                                   static_cast<int>(s.integer(6)),
                                   s.text(7),
                                   s.text(8)});
        Stmt r(db_,
               "SELECT address FROM recipients WHERE message_id = ? AND status = 0 ORDER BY rowid");
        for (auto& q : out) {
            r.bind(1, q.id);
            while (r.step()) q.recipients.push_back(r.text(0));
            r.reset();
        }
        return out;
    }

    std::vector<QueueSummary> queue_summary() override {
        Stmt s(db_,
               "SELECT domain, count(*), sum(size), sum(held != ''), min(received_at), "
               "min(CASE WHEN held = '' THEN next_attempt_at END), "
               "(SELECT last_error FROM messages l WHERE l.domain = m.domain AND last_error != '' "
               "ORDER BY attempts DESC, rowid DESC LIMIT 1) "
               "FROM messages m GROUP BY domain ORDER BY domain");
        std::vector<QueueSummary> out;
        while (s.step()) {
            QueueSummary q{s.text(0), s.integer(1), s.integer(2), s.integer(3)};
            q.oldest = from_unix(s.integer(4));
            if (!s.null(5)) q.next_attempt = from_unix(s.integer(5));
            q.last_error = s.text(6);
            out.push_back(std::move(q));
        }
        return out;
    }

    std::vector<AttemptRecord> history(const std::string& id) override {
        Stmt s(db_, "SELECT at, result FROM attempt_log WHERE message_id = ? ORDER BY rowid");
        s.bind(1, id);
        std::vector<AttemptRecord> out;
        while (s.step()) out.push_back({from_unix(s.integer(0)), s.text(1)});
        return out;
    }

    bool set_held(const std::string& id, const std::string& reason) override {
        Stmt s(db_, "UPDATE messages SET held = ? WHERE id = ?");
        s.bind(1, reason).bind(2, id);
        return s.run_changed();
    }

    bool add_account(const Account& a) override {
        Tx tx(*this);
        {
            Stmt e(db_, "SELECT 1 FROM accounts WHERE name = ?");
            e.bind(1, a.name);
            if (e.step()) return false;
        }
        Stmt s(db_, "INSERT INTO accounts(name, role, pwhash, created) VALUES(?,?,?,?)");
        s.bind(1, a.name).bind(2, a.role).bind(3, a.pwhash).bind(4, to_unix(a.created));
        s.run();
        for (const auto& d : a.domains) add_owner(a.name, d);
        tx.commit();
        return true;
    }

    std::optional<Account> account(const std::string& name) override {
        Stmt s(db_, "SELECT name, role, pwhash, created FROM accounts WHERE name = ?");
        s.bind(1, name);
        if (!s.step()) return std::nullopt;
        Account a{s.text(0), s.text(1), s.text(2), {}, from_unix(s.integer(3))};
        Stmt d(db_, "SELECT domain FROM account_domains WHERE name = ? ORDER BY domain");
        d.bind(1, name);
        while (d.step()) a.domains.push_back(d.text(0));
        return a;
    }

    void add_owner(const std::string& user, const std::string& domain) override {
        Stmt s(db_, "INSERT OR IGNORE INTO account_domains(name, domain) VALUES(?,?)");
        s.bind(1, user).bind(2, domain);
        s.run();
    }

    void add_token(const ApiToken& t, const std::string& token_hash) override {
        Stmt s(db_, "INSERT INTO api_tokens(id, name, hash, label, created) VALUES(?,?,?,?,?)");
        s.bind(1, t.id).bind(2, t.user).bind(3, token_hash).bind(4, t.label);
        s.bind(5, to_unix(t.created));
        s.run();
    }

    void put_session(const std::string& key, const std::string& user, TimePoint t,
                     TimePoint idle_before) override {
        Stmt gone(db_, "DELETE FROM admin_sessions WHERE last_used < ?");
        gone.bind(1, to_unix(idle_before));
        gone.run();
        Stmt s(db_, "INSERT INTO admin_sessions(key, name, last_used) VALUES(?,?,?)");
        s.bind(1, key).bind(2, user).bind(3, to_unix(t));
        s.run();
    }

    std::optional<std::string> use_session(const std::string& key, TimePoint t,
                                           TimePoint idle_before) override {
        Stmt s(db_, "SELECT name, last_used FROM admin_sessions WHERE key = ? AND last_used >= ?");
        s.bind(1, key).bind(2, to_unix(idle_before));
        if (!s.step()) return std::nullopt;
        auto user = s.text(0);
        if (s.integer(1) < to_unix(t) - 60) {
            Stmt u(db_, "UPDATE admin_sessions SET last_used = ? WHERE key = ?");
            u.bind(1, to_unix(t)).bind(2, key);
            u.run();
        }
        return user;
    }

    void end_session(const std::string& key) override {
        Stmt s(db_, "DELETE FROM admin_sessions WHERE key = ?");
        s.bind(1, key);
        s.run();
    }

    void add_login_failure(const std::vector<std::string>& keys, TimePoint t,
                           TimePoint forget_before) override {
        Stmt gone(db_, "DELETE FROM login_failures WHERE at < ?");
        gone.bind(1, to_unix(forget_before));
        gone.run();
        Stmt s(db_, "INSERT INTO login_failures(key, at) VALUES(?,?)");
        for (const auto& k : keys) {
            s.bind(1, k).bind(2, to_unix(t));
            s.run();
        }
    }

    std::size_t login_failures(const std::string& key, TimePoint since) override {
        Stmt s(db_, "SELECT count(*) FROM login_failures WHERE key = ? AND at >= ?");
        s.bind(1, key).bind(2, to_unix(since));
        s.step();
        return static_cast<std::size_t>(s.integer(0));
    }

    void clear_login_failures(const std::string& key) override {
        Stmt s(db_, "DELETE FROM login_failures WHERE key = ?");
        s.bind(1, key);
        s.run();
    }

    bool reserve_login_attempt(const std::vector<std::string>& keys, TimePoint t, TimePoint since,
                               std::size_t max) override {
        Tx tx(*this);  // BEGIN IMMEDIATE: the write lock before the count, for every process
        Stmt gone(db_, "DELETE FROM login_failures WHERE at < ?");
        gone.bind(1, to_unix(since));
        gone.run();
        for (const auto& k : keys)
            if (login_failures(k, since) >= max) return false;
        Stmt s(db_, "INSERT INTO login_failures(key, at) VALUES(?,?)");
        for (const auto& k : keys) {
            s.bind(1, k).bind(2, to_unix(t));
            s.run();
        }
        tx.commit();
        return true;
    }

    void release_login_attempt(const std::vector<std::string>& keys, TimePoint t) override {
        Stmt s(db_,
               "DELETE FROM login_failures WHERE rowid = (SELECT rowid FROM login_failures "
               "WHERE key = ? AND at = ? LIMIT 1)");
        for (const auto& k : keys) {
            s.bind(1, k).bind(2, to_unix(t));
            s.run();
        }
    }

    std::optional<std::string> token_user(const std::string& token_hash) override {
        Stmt s(db_, "SELECT name FROM api_tokens WHERE hash = ?");
        s.bind(1, token_hash);
        if (!s.step()) return std::nullopt;
        return s.text(0);
    }

    std::vector<ApiToken> tokens(const std::string& user) override {
        Stmt s(db_,
               "SELECT id, name, label, created FROM api_tokens WHERE name = ? ORDER BY rowid");
        s.bind(1, user);
        std::vector<ApiToken> out;
        while (s.step()) out.push_back({s.text(0), s.text(1), s.text(2), from_unix(s.integer(3))});
        return out;
    }

    bool remove_token(const std::string& user, const std::string& id) override {
        Stmt s(db_, "DELETE FROM api_tokens WHERE name = ? AND id = ?");
        s.bind(1, user).bind(2, id);
        return s.run_changed();
    }

    void audit(const AuditEntry& e) override {
        Stmt s(db_,
               "INSERT INTO audit(at, name, action, target, detail, client) VALUES(?,?,?,?,?,?)");
        s.bind(1, to_unix(e.at)).bind(2, e.user).bind(3, e.action).bind(4, e.target);
        s.bind(5, e.detail).bind(6, e.client);
        s.run();
    }

    std::vector<AuditEntry> audit_log(std::size_t limit) override {
        Stmt s(db_,
               "SELECT at, name, action, target, detail, client FROM audit ORDER BY rowid DESC "
               "LIMIT ?");
        s.bind(1, static_cast<std::int64_t>(limit));
        std::vector<AuditEntry> out;
        while (s.step())
            out.push_back(
                {from_unix(s.integer(0)), s.text(1), s.text(2), s.text(3), s.text(4), s.text(5)});
        return out;
    }

    bool add_domain(const StoredDomain& d) override {
        Tx tx(*this);
        {
            Stmt e(db_, "SELECT 1 FROM domains WHERE name = ?");
            e.bind(1, d.name);
            if (e.step()) return false;
        }
        Stmt s(db_,
               "INSERT INTO domains(name, primary_host, recipients, greylisting, created_by, "
               "created, max_size) VALUES(?,?,?,?,?,?,?)");
        s.bind(1, d.name).bind(2, d.primary).bind(3, d.recipients);
        s.bind(4, std::int64_t{d.greylisting}).bind(5, d.created_by).bind(6, to_unix(d.created));
        s.bind(7, d.max_message_size);
        s.run();
        tx.commit();
        return true;
    }

    void update_domain(const StoredDomain& d) override {
        Stmt s(db_,
               "UPDATE domains SET primary_host = ?, recipients = ?, greylisting = ?, max_size = ? "
               "WHERE name = ?");
        s.bind(1, d.primary).bind(2, d.recipients).bind(3, std::int64_t{d.greylisting});
        s.bind(4, d.max_message_size).bind(5, d.name);
        s.run();
    }

    std::int64_t remove_domain(const std::string& name) override {
        Tx tx(*this);
        Stmt c(db_, "SELECT count(*) FROM messages WHERE domain = ?");
        c.bind(1, name);
        c.step();
        if (const auto n = c.integer(0); n > 0) return n;
        Stmt d(db_, "DELETE FROM domains WHERE name = ?");
        d.bind(1, name);
        d.run();
        Stmt o(db_, "DELETE FROM account_domains WHERE domain = ?");
        o.bind(1, name);
        o.run();
        tx.commit();
        return 0;
    }

    std::vector<StoredDomain> domains() override {
        Stmt s(db_,
               "SELECT name, primary_host, recipients, greylisting, max_size, created_by, created "
               "FROM domains ORDER BY name");
        std::vector<StoredDomain> out;
        while (s.step())
            out.push_back({s.text(0), s.text(1), s.text(2), s.integer(3) != 0, s.integer(4),
                           s.text(5), from_unix(s.integer(6))});
        return out;
    }

    bool add_claim(const DomainClaim& c) override {
        Stmt s(db_,
               "INSERT OR IGNORE INTO domain_claims(domain, account, primary_host, token, created) "
               "VALUES(?,?,?,?,?)");
        s.bind(1, c.domain).bind(2, c.account).bind(3, c.primary).bind(4, c.token);
        s.bind(5, to_unix(c.created));
        s.run();
        return sqlite3_changes(db_) > 0;
    }

    std::vector<DomainClaim> claims() override {
        Stmt s(db_,
               "SELECT domain, account, primary_host, token, created FROM domain_claims "
               "ORDER BY domain, account");
        std::vector<DomainClaim> out;
        while (s.step())
            out.push_back({s.text(0), s.text(1), s.text(2), s.text(3), from_unix(s.integer(4))});
        return out;
    }

    void remove_claim(const std::string& domain, const std::string& account) override {
        Stmt s(db_, "DELETE FROM domain_claims WHERE domain = ? AND account = ?");
        s.bind(1, domain).bind(2, account);
        s.run();
    }

    void outage_begin(const std::string& domain, TimePoint start, std::int64_t held) override {
        Tx tx(*this);
        Stmt open(db_, "SELECT 1 FROM outages WHERE domain = ? AND end_ IS NULL");
        open.bind(1, domain);
        if (open.step()) return;  // one open outage per domain
        Stmt s(db_, "INSERT INTO outages(domain, start, held) VALUES(?,?,?)");
        s.bind(1, domain).bind(2, to_unix(start)).bind(3, held);
        s.run();
        tx.commit();
    }

    void outage_end(const std::string& domain, TimePoint end, std::int64_t held) override {
        Stmt s(db_,
               "UPDATE outages SET end_ = ?, held = max(held, ?) WHERE domain = ? AND end_ IS "
               "NULL");
        s.bind(1, to_unix(end)).bind(2, held).bind(3, domain);
        s.run();
    }

    void outage_drained(const std::string& domain, TimePoint at) override {
        Stmt s(db_,
               "UPDATE outages SET drained = ? WHERE rowid = (SELECT max(rowid) FROM outages "
               "WHERE domain = ? AND end_ IS NOT NULL AND drained IS NULL)");
        s.bind(1, to_unix(at)).bind(2, domain);
        s.run();
    }

    std::vector<Outage> outages(const std::string& domain, std::size_t limit) override {
        Stmt s(db_,
               "SELECT start, end_, held, drained FROM outages WHERE domain = ? ORDER BY start "
               "DESC, rowid DESC LIMIT ?");
        s.bind(1, domain).bind(2, static_cast<std::int64_t>(limit));
        std::vector<Outage> out;
        while (s.step()) {
            Outage o{domain, from_unix(s.integer(0))};
            if (!s.null(1)) o.end = from_unix(s.integer(1));
            o.messages_held = s.integer(2);
            if (!s.null(3) && o.end) o.drain_seconds = s.integer(3) - s.integer(1);
            out.push_back(std::move(o));
        }
        return out;
    }

    StoreTables export_tables() override {
        StoreTables t;
        Stmt g(db_, "SELECT network, sender, recipient, first_seen FROM greylist");
        while (g.step())
            t.greylist.push_back({g.text(0), g.text(1), g.text(2), from_unix(g.integer(3))});
        Stmt a(db_, "SELECT network, until FROM greylist_allow");
        while (a.step()) t.allowlist.push_back({a.text(0), from_unix(a.integer(1))});
        Stmt v(db_, "SELECT address, exists_, expires, reply FROM verify_cache");
        while (v.step())
            t.verify.push_back(
                {v.text(0), VerifyEntry{v.integer(1) != 0, from_unix(v.integer(2)), v.text(3)}});
        t.domains = domains();
        Stmt n(db_, "SELECT name FROM accounts ORDER BY name");
        while (n.step()) t.accounts.push_back(*account(n.text(0)));
        return t;
    }

    void import_tables(const StoreTables& t) override {
        Tx tx(*this);
        Stmt g(db_,
               "INSERT OR IGNORE INTO greylist(network, sender, recipient, first_seen) "
               "VALUES(?,?,?,?)");
        for (const auto& r : t.greylist) {
            g.bind(1, r.network).bind(2, r.sender).bind(3, r.recipient);
            g.bind(4, to_unix(r.first_seen));
            g.run();
        }
        Stmt a(db_, "INSERT OR IGNORE INTO greylist_allow(network, until) VALUES(?,?)");
        for (const auto& r : t.allowlist) {
            a.bind(1, r.network).bind(2, to_unix(r.until));
            a.run();
        }
        for (const auto& r : t.verify) verify_put(r.address, r.entry);
        tx.commit();
        for (const auto& d : t.domains) add_domain(d);
        for (const auto& acc : t.accounts) add_account(acc);
    }

  private:
    struct Tx {
        explicit Tx(SqliteStore& s) : s(s) { s.exec("BEGIN IMMEDIATE"); }
        void commit() {
            s.exec("COMMIT");
            done = true;
        }
        ~Tx() {
            if (!done) sqlite3_exec(s.db_, "ROLLBACK", nullptr, nullptr, nullptr);
        }
        SqliteStore& s;
        bool done = false;
    };

    void insert_in_tx(const NewMessage& msg) {
        Stmt m(db_,
               "INSERT INTO messages(id, domain, sender, received_at, size, next_attempt_at, "
               "smtputf8, eightbit, client, body, held, attempts, last_error, body_id) "
               "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
        m.bind(1, msg.id)
            .bind(2, msg.domain)
            .bind(3, msg.sender)
            .bind(4, to_unix(msg.received_at))
            .bind(5, body_size(msg))
            .bind(6, to_unix(msg.next_attempt_at))
            .bind(7, std::int64_t{msg.smtputf8})
            .bind(8, std::int64_t{msg.eightbit})
            .bind(9, msg.client)
            .bind_blob(10, std::string_view{})  // the body goes in pieces, below
            .bind(11, msg.held)
            .bind(12, std::int64_t{msg.attempts})
            .bind(13, msg.last_error)
            .bind(14, msg.body_id);
        m.run();
        // A copy that shares another's body writes none (its owner, in this batch, does).
        if (msg.body_id.empty() || msg.body_id == msg.id) write_body(msg);
        Stmt r(db_, "INSERT OR IGNORE INTO recipients(message_id, address) VALUES(?,?)");
        for (const auto& a : msg.recipients) {
            r.bind(1, msg.id).bind(2, a);
            r.run();
        }
    }

    void write_body(const NewMessage& msg) {
        const bool shared = !msg.body_id.empty();
        if (shared) {
            Stmt o(db_, "INSERT INTO bodies(id, refs) VALUES(?,?)");
            o.bind(1, msg.body_id).bind(2, std::int64_t{msg.body_refs});
            o.run();
        }
        Stmt b(db_, shared ? "INSERT INTO body_shared(body_id, seq, data) VALUES(?,?,?)"
                           : "INSERT INTO body_pieces(message_id, seq, data) VALUES(?,?,?)");
        std::int64_t seq = 0;
        std::string_view body = msg.body;
        while (!body.empty()) {
            auto piece = body.substr(0, kBodyPiece);
            body.remove_prefix(piece.size());
            b.bind(1, msg.id).bind(2, seq++).bind_blob(3, piece);
            b.run();
        }
        if (msg.spool) {  // the rest arrived in a spool file: copied a piece at a time
            for (std::int64_t off = 0; off < msg.spool->size();) {
                const std::string piece = msg.spool->read(off, kBodyPiece);
                if (piece.empty()) throw StoreError("spool shorter than it said");
                off += static_cast<std::int64_t>(piece.size());
                b.bind(1, msg.id).bind(2, seq++).bind_blob(3, piece);
                b.run();
            }
        }
    }

    // Columns added after the first schema: added to stores made before them.
    void migrate() {
        Stmt cols(db_, "SELECT name FROM pragma_table_info('messages')");
        bool held = false;
        while (cols.step()) held = held || cols.text(0) == "held";
        if (!held) exec("ALTER TABLE messages ADD COLUMN held TEXT NOT NULL DEFAULT ''");
        Stmt again(db_, "SELECT name FROM pragma_table_info('messages')");
        bool body_id = false;
        while (again.step()) body_id = body_id || again.text(0) == "body_id";
        if (!body_id) exec("ALTER TABLE messages ADD COLUMN body_id TEXT NOT NULL DEFAULT ''");
        // A shared body goes with the last message that names it.
        exec(
            "CREATE TRIGGER IF NOT EXISTS messages_release_body AFTER DELETE ON messages "
            "WHEN OLD.body_id <> '' BEGIN "
            "UPDATE bodies SET refs = refs - 1 WHERE id = OLD.body_id; "
            "DELETE FROM bodies WHERE id = OLD.body_id AND refs <= 0; END");
    }

    void exec(const char* sql) {
        char* err = nullptr;
        if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
            std::string e = err ? err : "unknown";
            sqlite3_free(err);
            throw StoreError(std::string("sqlite: ") + e);
        }
    }

    static void sync_dir(const std::string& dir) {
        int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
        if (fd >= 0) {
            ::fsync(fd);
            ::close(fd);
        }
    }

    sqlite3* db_ = nullptr;
};

}  // namespace

std::unique_ptr<Store> open_sqlite_store(const std::string& path) {
    return std::make_unique<SqliteStore>(path);
}

bool is_pg_url(std::string_view url) {
    return url.starts_with("postgresql://") || url.starts_with("postgres://");
}

std::unique_ptr<Store> open_store(const std::string& url, const std::string& node, Seconds lease,
                                  const std::string& pg_synchronous_commit) {
    if (is_pg_url(url)) return open_pg_store(url, node, lease, pg_synchronous_commit);
    if (url.starts_with("sqlite:")) return open_sqlite_store(url.substr(7));
    throw StoreError("unknown store " + url + " (want sqlite:PATH or postgresql://...)");
}

std::string attempt_text(const AttemptUpdate& u) {
    std::string t;
    for (const auto& o : u.outcomes) {
        const char* what = o.status == RcptStatus::Delivered ? "delivered"
                           : o.status == RcptStatus::Failed  ? "failed"
                                                             : "deferred";
        t += (t.empty() ? "" : "; ") + o.address + " " + what + (o.reply.empty() ? "" : ": ");
        t += o.reply;
    }
    if (!u.last_error.empty() && u.outcomes.empty()) t = u.last_error;
    if (u.remove) t += t.empty() ? "removed" : "; removed";
    return t.empty() ? "attempted" : t;
}

}  // namespace bmx
