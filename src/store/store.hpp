// store: the durable queue — messages, their recipients and per-recipient state — and the state
// beside it (greylist, verify cache, accounts, run-time domains, fleet coordination) behind one
// interface that two engines implement: embedded SQLite (one node) and PostgreSQL (a fleet).
// Calls block; the running server reaches a store only through queue/, on its thread. A store
// must never report success for a write that is not on disk, and never delete a message whose DSN
// (when one is owed) is not committed with it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "store/spool.hpp"
#include "util/util.hpp"

namespace bmx {

// Bodies are stored, read and sent in pieces of this size.
inline constexpr std::size_t kBodyPiece = 64 * 1024;

enum class RcptStatus : int { Pending = 0, Delivered = 1, Failed = 2 };
inline const char* to_string(RcptStatus s) {  // "pending", "delivered", "failed"
    return s == RcptStatus::Delivered ? "delivered"
           : s == RcptStatus::Failed  ? "failed"
                                      : "pending";
}

struct NewMessage {
    std::string id;
    std::string domain;  // destination domain: one queue entry per destination
    std::string sender;  // empty = null sender <>
    std::vector<std::string> recipients;
    std::string body;                    // CRLF lines, unstuffed, Received: already prepended
    std::shared_ptr<const Spool> spool;  // non-null: the rest of the body, after `body`
    TimePoint received_at{};
    TimePoint next_attempt_at{};
    bool smtputf8 = false;
    bool eightbit = false;
    std::string client;  // "helo [ip]" for logs
    std::string held;    // non-empty: quarantined (a milter asked); kept, not delivered
    int attempts = 0;    // a message moved from another store keeps its history's count
    std::string last_error;
    // One DATA to several domains: every per-domain copy names the same body, stored once (by
    // the copy whose id is body_id, in the same batch) and removed with the last copy that
    // names it. Empty: the message has a body of its own.
    std::string body_id;
    int body_refs = 0;  // the copies that share it (set on the one whose id is body_id)
};

inline std::int64_t body_size(const NewMessage& m) {
    return static_cast<std::int64_t>(m.body.size()) + (m.spool ? m.spool->size() : 0);
}

struct StoredRecipient {
    std::string address;
    RcptStatus status = RcptStatus::Pending;
    std::string last_reply;
};

struct StoredMessage {
    std::string id, domain, sender;
    std::vector<StoredRecipient> recipients;  // all of them, with their state
    std::string body;
    TimePoint received_at{}, next_attempt_at{};
    std::int64_t size = 0;
    int attempts = 0;
    std::string last_error;
    bool smtputf8 = false, eightbit = false;
    std::string held;  // quarantine reason, "" when not held
};

// What the scheduler keeps in memory per message: small and fixed-size but for the strings.
struct IndexEntry {
    std::string id, domain;
    TimePoint received_at{}, next_attempt_at{};
    int attempts = 0;
};

// One row of `queue list`.
struct QueueRow {
    std::string id, domain, sender;
    std::vector<std::string> recipients;  // still pending
    std::int64_t size = 0;
    TimePoint received_at{}, next_attempt_at{};
    int attempts = 0;
    std::string last_error;
    std::string held;  // quarantine reason, "" when not held
};

struct RecipientOutcome {
    std::string address;
    RcptStatus status = RcptStatus::Pending;  // Pending = deferred this time
    std::string reply;
};

struct AttemptUpdate {
    std::string id;
    std::vector<RecipientOutcome> outcomes;
    TimePoint next_attempt_at{};
    std::string last_error;
    bool count_attempt = true;
    std::optional<NewMessage> dsn;  // committed in the same transaction as the update
    bool remove = false;            // drop the message whatever is pending (expiry, after its DSN)
};

// Greylisting (RFC 6647): what the store says about a (client network, sender, recipient) triplet.
enum class GreyVerdict { FirstSeen, TooEarly, Passed, Allowlisted };
struct GreylistRule {
    Seconds delay, expiry, allow_ttl;
};

// A recipient verification answer from the primary, remembered.
struct VerifyEntry {
    bool exists = false;
    TimePoint expires{};
    std::string reply;
};

// An admin account (issue 7): an operator sees everything, a customer only the domains it owns.
struct Account {
    std::string name, role;  // role: "operator" | "customer"
    std::string pwhash;      // Argon2id, libsodium's crypto_pwhash_str format
    std::vector<std::string> domains;
    TimePoint created{};
};

struct ApiToken {
    std::string id, user, label;
    TimePoint created{};
};

struct AuditEntry {
    TimePoint at{};
    std::string user, action, target, detail, client;
};

// A domain an operator or customer added at run time (the config file's are not in the store).
struct StoredDomain {
    std::string name, primary;          // primary: "host", "host:port" or "[ip]:port"
    std::string recipients = "verify";  // "verify" (ask the primary; the default) | "any"
    bool greylisting = false;
    std::int64_t max_message_size = 0;  // 0: the [smtp] limit
    std::string created_by;
    TimePoint created{};
};

// A customer's claim on a domain (issue 14: customers cannot make backupmx serve any domain):
// no mail is taken for the domain on its strength until it is proven (the domain's live MX set
// names this backup while nobody serves it yet, or TXT _backupmx.DOMAIN holds `token`) or an
// operator approves it.
struct DomainClaim {
    std::string domain, account, primary, token;
    TimePoint created{};
};

// One stretch of time a domain's primary did not answer.
struct Outage {
    std::string domain;
    TimePoint start{};
    std::optional<TimePoint> end;
    std::int64_t messages_held = 0;
    std::optional<std::int64_t> drain_seconds;  // from the end until its queue was empty
};

// A domain's queue at a glance.
struct QueueSummary {
    std::string domain;
    std::int64_t messages = 0, bytes = 0, held = 0;
    std::optional<TimePoint> oldest, next_attempt;
    std::string last_error;  // of the message tried last
};

// Which messages `queue_page` returns; empty fields match everything.
struct QueueFilter {
    std::vector<std::string> domains;  // any of these (empty: all)
    std::string sender, recipient;     // case-insensitive substrings
    std::optional<TimePoint> received_before;
    std::string state;  // "", "queued" or "held"
    std::string after;  // id: the page starts past it
    std::size_t limit = 50;
};

struct AttemptRecord {
    TimePoint at{};
    std::string result;
};

// What `store copy` moves besides the messages: the greylist, the verification cache, the
// run-time domains and the accounts (API tokens and the audit trail stay where they were).
struct StoreTables {
    struct Grey {
        std::string network, sender, recipient;
        TimePoint first_seen{};
    };
    struct Allow {
        std::string network;
        TimePoint until{};
    };
    struct Verified {
        std::string address;
        VerifyEntry entry;
    };
    std::vector<Grey> greylist;
    std::vector<Allow> allowlist;
    std::vector<Verified> verify;
    std::vector<StoredDomain> domains;
    std::vector<Account> accounts;
};

struct StoreError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// The store answers but cannot keep the promise of a 250 (PostgreSQL with fsync = off): waiting
// will not mend it, so a starting server gives up at once.
struct StoreUnsafe : StoreError {
    using StoreError::StoreError;
};

class Store {
  public:
    virtual ~Store() = default;
    // All messages in one transaction: one durable commit for the batch. Throws StoreError.
    virtual void insert(const std::vector<const NewMessage*>& batch) = 0;
    // The scheduler's view of queued (not held) messages, a page at a time: appends to `out` what
    // the next `limit` rows after position `after` (0 to start) hold, and moves `after` on.
    // Returns false once there are no more rows.
    virtual bool load_index_page(std::int64_t& after, std::size_t limit,
                                 std::vector<IndexEntry>& out) = 0;
    std::vector<IndexEntry> load_index() {  // every page at once (tools, tests)
        std::vector<IndexEntry> all;
        std::int64_t after = 0;
        while (load_index_page(after, 100000, all)) {
        }
        return all;
    }
    std::optional<StoredMessage> load(const std::string& id) {  // the whole body
        auto m = load_head(id);
        if (!m) return m;
        for (std::size_t seq = 1;; ++seq) {
            auto piece = read_body(id, seq);
            if (!piece) break;
            m->body += *piece;
        }
        return m;
    }
    // Envelope, state and only the first body piece (all a small message has): delivery reads
    // the rest with read_body, a piece at a time, and never holds a whole large body.
    virtual std::optional<StoredMessage> load_head(const std::string& id) = 0;
    // Body piece `seq` (0, 1, ...; each up to kBodyPiece bytes); nullopt past the last one.
    virtual std::optional<std::string> read_body(const std::string& id, std::size_t seq) = 0;
    // Applies each update's outcomes, all in one transaction (one durable commit for the batch);
    // deletes a message once nothing is pending. Returns, per update, the pending count left (0
    // also when the message is gone, e.g. deleted by an operator meanwhile). Throws StoreError.
    virtual std::vector<int> record_attempts(const std::vector<const AttemptUpdate*>& batch) = 0;
    int record_attempt(const AttemptUpdate& u) { return record_attempts({&u}).front(); }
    virtual std::vector<QueueRow> list() = 0;
    virtual bool remove(const std::string& id) = 0;

    // One transaction: an allowlisted client network passes; otherwise the triplet is recorded
    // (first seen), refused until `delay` has passed, then passes (and allowlists the network)
    // until `expiry`, after which it starts over.
    virtual GreyVerdict greylist(const std::string& network, const std::string& sender,
                                 const std::string& recipient, TimePoint now,
                                 const GreylistRule& rule) = 0;
    virtual std::optional<VerifyEntry> verify_get(const std::string& address, TimePoint now) = 0;
    virtual void verify_put(const std::string& address, const VerifyEntry& e) = 0;

    // Operator's view of the queue: one page in id order, summaries, one message's history.
    virtual std::vector<QueueRow> queue_page(const QueueFilter& f) = 0;
    virtual std::vector<QueueSummary> queue_summary() = 0;
    virtual std::vector<AttemptRecord> history(const std::string& id) = 0;
    // Holds (reason non-empty) or releases (empty) a message; false when there is none.
    virtual bool set_held(const std::string& id, const std::string& reason) = 0;

    // Admin accounts and API tokens (`token_hash`: SHA-256 of the token, hex; never the token).
    virtual bool add_account(const Account& a) = 0;  // false: the name is taken
    virtual std::optional<Account> account(const std::string& name) = 0;
    virtual void add_owner(const std::string& user, const std::string& domain) = 0;
    virtual void add_token(const ApiToken& t, const std::string& token_hash) = 0;
    virtual std::optional<std::string> token_user(const std::string& token_hash) = 0;
    virtual std::vector<ApiToken> tokens(const std::string& user) = 0;
    virtual bool remove_token(const std::string& user, const std::string& id) = 0;
    // Browser sessions, kept by `key` (SHA-256 of the cookie's id), so every node of a fleet
    // knows them. put also ends the sessions idle since `idle_before`. use: the session's user
    // unless it has been idle since `idle_before`; its last use is moved to `t` when older than
    // a minute (a page that polls does not write on every request).
    virtual void put_session(const std::string& key, const std::string& user, TimePoint t,
                             TimePoint idle_before) = 0;
    virtual std::optional<std::string> use_session(const std::string& key, TimePoint t,
                                                   TimePoint idle_before) = 0;
    virtual void end_session(const std::string& key) = 0;
    // Failed admin logins, counted by key ("ip:..." or "user:...", see accounts::login_keys) for
    // every node: add one under each key (forgetting those before `forget_before`); how many a
    // key has had since `since`; clear a key (a good login clears its account's).
    virtual void add_login_failure(const std::vector<std::string>& keys, TimePoint t,
                                   TimePoint forget_before) = 0;
    virtual std::size_t login_failures(const std::string& key, TimePoint since) = 0;
    virtual void clear_login_failures(const std::string& key) = 0;
    // A login attempt, reserved before its password is checked, atomically with the count (for
    // every node: parallel tries cannot all pass a check made before any of them failed): false,
    // and nothing written, when a key has had `max` since `since`; else one row under each key
    // at `t`, which counts as a failure from now on (and forgets those before `since`). A good
    // password takes its rows back with release_login_attempt (same keys and `t`).
    virtual bool reserve_login_attempt(const std::vector<std::string>& keys, TimePoint t,
                                       TimePoint since, std::size_t max) = 0;
    virtual void release_login_attempt(const std::vector<std::string>& keys, TimePoint t) = 0;
    virtual void audit(const AuditEntry& e) = 0;
    virtual std::vector<AuditEntry> audit_log(std::size_t limit) = 0;

    // Domains added at run time. add: false when it exists. remove: refuses (returns the count of
    // messages queued for it, > 0) while mail is queued, in the same transaction as the check.
    virtual bool add_domain(const StoredDomain& d) = 0;
    virtual void update_domain(const StoredDomain& d) = 0;
    virtual std::int64_t remove_domain(const std::string& name) = 0;
    virtual std::vector<StoredDomain> domains() = 0;
    // Customers' claims: one per (domain, account); false when that account has one already.
    virtual bool add_claim(const DomainClaim& c) = 0;
    virtual std::vector<DomainClaim> claims() = 0;
    virtual void remove_claim(const std::string& domain, const std::string& account) = 0;

    virtual void outage_begin(const std::string& domain, TimePoint start, std::int64_t held) = 0;
    virtual void outage_end(const std::string& domain, TimePoint end, std::int64_t held) = 0;
    virtual void outage_drained(const std::string& domain, TimePoint at) = 0;
    virtual std::vector<Outage> outages(const std::string& domain, std::size_t limit) = 0;

    // Everything but the messages, to move a store into another; import keeps rows it has.
    virtual StoreTables export_tables() = 0;
    virtual void import_tables(const StoreTables& t) = 0;

    // A fleet (several nodes, one PostgreSQL store): each message is owned by one node, the one
    // that accepted it, and only its owner delivers it. The owner renews its lease on all of its
    // messages; another node takes over those whose lease ran out (their owner died or lost the
    // store) and schedules them. A store of one node (SQLite) owns everything: both do nothing.
    virtual void renew_lease(TimePoint until) { (void)until; }
    // A fleet's view of each primary, written by whichever node learnt something: one node at a
    // time probes a down primary (claim_probe), and the others follow the shared state; the
    // connections to a primary are counted for the fleet as a whole (acquire_slot).
    struct PrimaryState {
        std::string domain, state;  // "up" | "down"
        TimePoint since{}, last_probe{};
        std::string last_result;
    };
    virtual bool claim_probe(const std::string& domain, TimePoint until) {
        (void)domain;
        (void)until;
        return true;
    }
    virtual void put_primary(const PrimaryState& p) { (void)p; }
    // Every primary's row, or those changed (state or probe) at or after `changed_since`.
    virtual std::vector<PrimaryState> primaries(TimePoint changed_since) {
        (void)changed_since;
        return {};
    }
    // Slow start for the fleet as a whole: the primary's `window` (from `initial` up to `max`)
    // bounds the connections of all nodes together. A slot is granted while fewer are open; the
    // window comes back either way, so a node opens no more than the fleet may.
    struct SlotGrant {
        bool granted = true;
        unsigned window = 0;  // 0: not kept (one node: the scheduler's own count decides)
    };
    virtual SlotGrant acquire_slot(const std::string& domain, unsigned initial, unsigned max) {
        (void)domain;
        (void)initial;
        (void)max;
        return {};
    }
    virtual void release_slot(const std::string& domain) { (void)domain; }
    // The server starting: the slots this node held before (it crashed) are free. (Only the
    // server: a command-line tool of the same node name must not free a running server's.)
    virtual void release_all_slots() {}
    // A delivery went through (Grow: one more), the primary faltered (Halve), or it came back up
    // (Reset: `initial`). Returns the new window (0 when not kept).
    enum class Window { Grow, Halve, Reset };
    virtual unsigned adjust_window(const std::string& domain, Window how, unsigned initial,
                                   unsigned max) {
        (void)domain;
        (void)how;
        (void)initial;
        (void)max;
        return 0;
    }
    // Rate counters shared by a fleet: this node's new events ("ip|kind" per minute) go in, the
    // other nodes' counts for minutes >= `since` come back.
    struct RateCount {
        std::string key;
        std::int64_t minute = 0;
        std::uint32_t count = 0;
    };
    virtual std::vector<RateCount> share_rates(const std::vector<RateCount>& mine,
                                               std::int64_t since) {
        (void)mine;
        (void)since;
        return {};
    }
    virtual bool owns(const std::string& id) {  // may this node deliver it?
        (void)id;
        return true;
    }
    virtual std::vector<IndexEntry> take_over(TimePoint now, std::size_t limit) {
        (void)now;
        (void)limit;
        return {};
    }

    // load_head of a message this node may deliver (owns), else nullopt: what delivery reads,
    // in one round trip where the engine can.
    virtual std::optional<StoredMessage> load_owned(const std::string& id) {
        if (!owns(id)) return std::nullopt;
        return load_head(id);
    }
    // A second connection to the same store for the queue's reads (load_owned, read_body), so
    // they never wait behind this connection's commits; nullptr: one connection does everything.
    virtual std::unique_ptr<Store> reader() { return nullptr; }
};

// One line of a message's delivery history, as both engines write it.
std::string attempt_text(const AttemptUpdate& u);

// "sqlite:PATH" opens (and creates) the embedded store. `read_only` for inspecting commands.
std::unique_ptr<Store> open_sqlite_store(const std::string& path);
// A libpq URI ("postgresql://user@host1,host2/db?target_session_attrs=read-write"): connects,
// and creates or migrates the schema. `node` names this node (the owner of what it accepts);
// `lease`: how long its messages stay its own without a renewal. Every connection sets
// `synchronous_commit` ("on", "remote_write" or "remote_apply": a commit, and so a 250, waits for
// the WAL flush, and for the synchronous standby when one is named); a server running with
// fsync = off is refused. Throws StoreError.
std::unique_ptr<Store> open_pg_store(const std::string& url, const std::string& node, Seconds lease,
                                     const std::string& synchronous_commit = "on");
// Either engine, by the URL's scheme ("sqlite:PATH" or "postgresql://...").
std::unique_ptr<Store> open_store(const std::string& url, const std::string& node, Seconds lease,
                                  const std::string& pg_synchronous_commit = "on");
bool is_pg_url(std::string_view url);

}  // namespace bmx
