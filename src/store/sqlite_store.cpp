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
    void reset() {
        sqlite3_reset(s_);
        sqlite3_clear_bindings(s_);
    }
    std::string text(int i) {
        auto p = reinterpret_cast<const char*>(sqlite3_column_blob(s_, i));
        return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s_, i))) : "";
    }
    std::int64_t integer(int i) { return sqlite3_column_int64(s_, i); }

  private:
    sqlite3_stmt* s_ = nullptr;
};

class SqliteStore final : public Store {
  public:
    explicit SqliteStore(const std::string& path) {
        auto dir = std::filesystem::path(path).parent_path();
        if (!dir.empty()) std::filesystem::create_directories(dir);
        bool fresh = !std::filesystem::exists(path);
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

    std::optional<StoredMessage> load(const std::string& id) override {
        auto m = load_head(id);
        if (!m) return m;
        for (std::size_t seq = 1;; ++seq) {
            auto piece = read_body(id, seq);
            if (!piece) break;
            m->body += *piece;
        }
        return m;
    }

    std::optional<StoredMessage> load_head(const std::string& id) override {
        Stmt s(db_,
               "SELECT id, domain, sender, received_at, size, attempts, next_attempt_at, "
               "last_error, smtputf8, eightbit, body FROM messages WHERE id = ?");
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
        Stmt s(db_, "SELECT data FROM body_pieces WHERE message_id = ? AND seq = ?");
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
        d.run();
        return sqlite3_changes(db_) > 0;
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
               "smtputf8, eightbit, client, body, held) VALUES(?,?,?,?,?,?,?,?,?,?,?)");
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
            .bind(11, msg.held);
        m.run();
        Stmt b(db_, "INSERT INTO body_pieces(message_id, seq, data) VALUES(?,?,?)");
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
        Stmt r(db_, "INSERT OR IGNORE INTO recipients(message_id, address) VALUES(?,?)");
        for (const auto& a : msg.recipients) {
            r.bind(1, msg.id).bind(2, a);
            r.run();
        }
    }

    // Columns added after the first schema: added to stores made before them.
    void migrate() {
        Stmt cols(db_, "SELECT name FROM pragma_table_info('messages')");
        bool held = false;
        while (cols.step()) held = held || cols.text(0) == "held";
        if (!held) exec("ALTER TABLE messages ADD COLUMN held TEXT NOT NULL DEFAULT ''");
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

}  // namespace bmx
