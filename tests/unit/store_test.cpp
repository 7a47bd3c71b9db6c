#include "store/store.hpp"

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "../pg_server.hpp"

using namespace bmx;
using namespace std::string_literals;

namespace {

// The connection the store opened last, caught through SQLite's auto-extension hook, so the
// per-connection PRAGMAs can be checked on the store's own handle.
sqlite3* g_last_db = nullptr;
int remember_db(sqlite3* db, char**, const sqlite3_api_routines*) {
    g_last_db = db;
    return SQLITE_OK;
}

// Runs a one-value query on a handle.
std::string query(sqlite3* db, const char* sql) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) return "prepare failed";
    std::string out = "no row";
    if (sqlite3_step(s) == SQLITE_ROW) {
        auto p = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
        out = p ? p : "NULL";
    }
    sqlite3_finalize(s);
    return out;
}

NewMessage msg(const std::string& id, const std::vector<std::string>& rcpts,
               std::string body = "Subject: t\r\n\r\nbody\r\n") {
    NewMessage m;
    m.id = id;
    m.domain = "example.test";
    m.sender = "alice@sender.test";
    m.recipients = rcpts;
    m.body = std::move(body);
    m.received_at = from_unix(1700000000);
    m.next_attempt_at = from_unix(1700000060);
    m.client = "client.test [192.0.2.1]";
    return m;
}

// The store under test, on either engine: the same tests hold for both.
class StoreFixture {
  protected:
    void open(const std::string& engine) {
        engine_ = engine;
        char tmpl[] = "/tmp/bmx_store_test_XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        path_ = dir_ + "/queue.db";
        if (engine == "pg") {
            db_ = test::pg_new_database();
            ASSERT_FALSE(db_.empty());
            url_ = test::pg_url(db_);
        }
        reopen();
    }
    void close() {
        store_.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
        if (!db_.empty()) test::pg_drop_database(db_);
    }
    void reopen() {
        store_.reset();
        store_ =
            engine_ == "pg" ? open_pg_store(url_, "node-a", Seconds(60)) : open_sqlite_store(path_);
    }
    void insert(const std::vector<NewMessage>& msgs) {
        std::vector<const NewMessage*> batch;
        for (const auto& m : msgs) batch.push_back(&m);
        store_->insert(batch);
    }
    std::vector<std::string> ids() {
        std::vector<std::string> out;
        for (const auto& e : store_->load_index()) out.push_back(e.id);
        std::sort(out.begin(), out.end());
        return out;
    }
    // One value from the store's tables, seen through a second connection.
    std::string count(const std::string& sql) {
        if (engine_ == "pg") return test::pg_query(url_, sql);
        sqlite3* db = nullptr;
        EXPECT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
        auto n = query(db, sql.c_str());
        sqlite3_close(db);
        return n;
    }
    std::string recipient_rows(const std::string& id) {
        return count("SELECT count(*) FROM recipients WHERE message_id = '" + id + "'");
    }

    std::string engine_, dir_, path_, db_, url_;
    std::unique_ptr<Store> store_;
};

// Engine-neutral tests run once per engine: StoreTest/sqlite.X and StoreTest/pg.X.
class StoreTest : public StoreFixture, public ::testing::TestWithParam<const char*> {
  protected:
    void SetUp() override { open(GetParam()); }
    void TearDown() override { close(); }
};
INSTANTIATE_TEST_SUITE_P(Engines, StoreTest, ::testing::Values("sqlite", "pg"),
                         [](const auto& info) { return std::string(info.param); });

// What only the embedded engine has: a file, its PRAGMAs, its older layouts.
class SqliteStoreTest : public StoreFixture, public ::testing::Test {
  protected:
    void SetUp() override { open("sqlite"); }
    void TearDown() override { close(); }
};

// What only PostgreSQL does: a fleet (store_ is node-a, other_ node-b on the same database),
// its connections.
class FleetStoreTest : public StoreFixture, public ::testing::Test {
  protected:
    void SetUp() override {
        open("pg");
        other_ = open_pg_store(url_, "node-b", Seconds(60));
    }
    void TearDown() override {
        other_.reset();
        close();
    }
    // The server ends every other connection to this database (a restart, a failover).
    void cut_connections() {
        test::pg_query(url_,
                       "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                       "datname = current_database() AND pid <> pg_backend_pid()");
    }
    std::unique_ptr<Store> other_;  // node-b; store_ is node-a
};

std::vector<RcptStatus> statuses(const StoredMessage& m) {
    std::vector<RcptStatus> out;
    for (const auto& r : m.recipients) out.push_back(r.status);
    return out;
}

}  // namespace

// =============================================================================================
// insert, load_index, load

TEST_P(StoreTest, FreshStoreIsEmpty) {
    EXPECT_TRUE(store_->load_index().empty());
    EXPECT_TRUE(store_->list().empty());
    if (engine_ == "sqlite") {
        EXPECT_TRUE(std::filesystem::exists(path_));
    }
}

TEST_P(StoreTest, InsertBatchThenLoadIndex) {
    auto a = msg("A000000000000001", {"x@example.test"});
    auto b = msg("B000000000000002", {"y@example.test", "z@example.test"});
    auto c = msg("C000000000000003", {"w@other.test"});
    c.domain = "other.test";
    c.next_attempt_at = from_unix(1700009999);
    insert({a, b, c});

    auto index = store_->load_index();
    ASSERT_EQ(index.size(), 3u);
    std::sort(index.begin(), index.end(), [](auto& l, auto& r) { return l.id < r.id; });
    EXPECT_EQ(index[0].id, "A000000000000001");
    EXPECT_EQ(index[0].domain, "example.test");
    EXPECT_EQ(index[0].received_at, from_unix(1700000000));
    EXPECT_EQ(index[0].next_attempt_at, from_unix(1700000060));
    EXPECT_EQ(index[0].attempts, 0);
    EXPECT_EQ(index[2].id, "C000000000000003");
    EXPECT_EQ(index[2].domain, "other.test");
    EXPECT_EQ(index[2].next_attempt_at, from_unix(1700009999));
}

TEST_P(StoreTest, BatchIsAllOrNothing) {
    auto a = msg("A000000000000001", {"x@example.test"});
    auto b = msg("B000000000000002", {"y@example.test"});
    auto dup = msg("A000000000000001", {"q@example.test"});
    std::vector<const NewMessage*> batch{&a, &b, &dup};
    EXPECT_THROW(store_->insert(batch), StoreError);
    EXPECT_TRUE(store_->load_index().empty());
    insert({a, b});  // the store is still usable afterwards
    EXPECT_EQ(ids(), (std::vector<std::string>{"A000000000000001", "B000000000000002"}));
}

TEST_P(StoreTest, LoadReturnsEveryField) {
    auto m = msg("M000000000000001", {"one@example.test", "two@example.test"});
    m.sender = "";
    m.smtputf8 = true;
    m.eightbit = true;
    insert({m});

    auto got = store_->load("M000000000000001");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->id, "M000000000000001");
    EXPECT_EQ(got->domain, "example.test");
    EXPECT_EQ(got->sender, "");
    EXPECT_EQ(got->body, m.body);
    EXPECT_EQ(got->size, static_cast<std::int64_t>(m.body.size()));
    EXPECT_EQ(got->received_at, from_unix(1700000000));
    EXPECT_EQ(got->next_attempt_at, from_unix(1700000060));
    EXPECT_EQ(got->attempts, 0);
    EXPECT_EQ(got->last_error, "");
    EXPECT_TRUE(got->smtputf8);
    EXPECT_TRUE(got->eightbit);
    ASSERT_EQ(got->recipients.size(), 2u);
    EXPECT_EQ(got->recipients[0].address, "one@example.test");
    EXPECT_EQ(got->recipients[1].address, "two@example.test");
    EXPECT_EQ(statuses(*got), (std::vector<RcptStatus>{RcptStatus::Pending, RcptStatus::Pending}));
    EXPECT_EQ(got->recipients[0].last_reply, "");
}

TEST_P(StoreTest, BodyIsByteForByteWithNulAnd8Bit) {
    std::string body = "Subject: \xff\xfe\r\n\r\nnul:\0:here\r\n\x80\x81\xc3\xa9\r\n\0"s;
    ASSERT_EQ(body.size(), 34u);
    std::string all;
    for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
    auto a = msg("A000000000000001", {"x@example.test"}, body);
    auto b = msg("B000000000000002", {"x@example.test"}, all);
    insert({a, b});
    auto ga = store_->load("A000000000000001");
    auto gb = store_->load("B000000000000002");
    ASSERT_TRUE(ga);
    ASSERT_TRUE(gb);
    EXPECT_EQ(ga->body.size(), body.size());
    EXPECT_EQ(ga->body, body);
    EXPECT_EQ(gb->body, all);
    EXPECT_EQ(gb->size, 256);
}

TEST_P(StoreTest, LargeBody) {
    std::string body(5 * 1024 * 1024, 'x');
    body[12345] = '\0';
    insert({msg("A000000000000001", {"x@example.test"}, body)});
    auto got = store_->load("A000000000000001");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->body, body);
}

TEST_P(StoreTest, DuplicateRecipientsStoredOnce) {
    insert({msg("A000000000000001", {"x@example.test", "x@example.test", "y@example.test"})});
    auto got = store_->load("A000000000000001");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->recipients.size(), 2u);
}

TEST_P(StoreTest, LoadUnknownIsNullopt) {
    EXPECT_FALSE(store_->load("NOPE"));
}

// =============================================================================================
// list

TEST_P(StoreTest, ListShowsOnlyPendingRecipients) {
    insert({msg("A000000000000001", {"a@example.test", "b@example.test", "c@example.test"})});
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"a@example.test", RcptStatus::Delivered, "250 ok"},
                  {"c@example.test", RcptStatus::Failed, "550 no"}};
    u.next_attempt_at = from_unix(1700000600);
    u.last_error = "451 later";
    store_->record_attempt(u);

    auto rows = store_->list();
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].id, "A000000000000001");
    EXPECT_EQ(rows[0].domain, "example.test");
    EXPECT_EQ(rows[0].sender, "alice@sender.test");
    EXPECT_EQ(rows[0].recipients, (std::vector<std::string>{"b@example.test"}));
    EXPECT_EQ(rows[0].attempts, 1);
    EXPECT_EQ(rows[0].last_error, "451 later");
    EXPECT_EQ(rows[0].next_attempt_at, from_unix(1700000600));
    EXPECT_EQ(rows[0].received_at, from_unix(1700000000));
}

TEST_P(StoreTest, ListOrderedByArrival) {
    auto late = msg("A000000000000001", {"x@example.test"});
    late.received_at = from_unix(1700000500);
    auto early = msg("B000000000000002", {"y@example.test", "z@example.test"}, "tiny");
    early.received_at = from_unix(1700000100);
    insert({late, early});
    auto rows = store_->list();
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_EQ(rows[0].id, "B000000000000002");
    EXPECT_EQ(rows[0].recipients, (std::vector<std::string>{"y@example.test", "z@example.test"}));
    EXPECT_EQ(rows[0].size, 4);
    EXPECT_EQ(rows[1].id, "A000000000000001");
}

// =============================================================================================
// record_attempt

TEST_P(StoreTest, MixedOutcomesKeepMessageWithPendingRecipients) {
    insert({msg("A000000000000001", {"d@example.test", "f@example.test", "p@example.test"})});
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"d@example.test", RcptStatus::Delivered, "250 2.0.0 ok"},
                  {"f@example.test", RcptStatus::Failed, "550 5.1.1 unknown"},
                  {"p@example.test", RcptStatus::Pending, "451 4.3.0 try later"}};
    u.next_attempt_at = from_unix(1700000900);
    u.last_error = "451 4.3.0 try later";
    EXPECT_EQ(store_->record_attempt(u), 1);

    auto got = store_->load("A000000000000001");
    ASSERT_TRUE(got);
    EXPECT_EQ(statuses(*got), (std::vector<RcptStatus>{RcptStatus::Delivered, RcptStatus::Failed,
                                                       RcptStatus::Pending}));
    EXPECT_EQ(got->recipients[0].last_reply, "250 2.0.0 ok");
    EXPECT_EQ(got->recipients[1].last_reply, "550 5.1.1 unknown");
    EXPECT_EQ(got->recipients[2].last_reply, "451 4.3.0 try later");
    EXPECT_EQ(got->attempts, 1);
    EXPECT_EQ(got->next_attempt_at, from_unix(1700000900));
    EXPECT_EQ(got->last_error, "451 4.3.0 try later");

    auto index = store_->load_index();
    ASSERT_EQ(index.size(), 1u);
    EXPECT_EQ(index[0].attempts, 1);
    EXPECT_EQ(index[0].next_attempt_at, from_unix(1700000900));
}

TEST_P(StoreTest, AttemptsAccumulate) {
    insert({msg("A000000000000001", {"p@example.test"})});
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"p@example.test", RcptStatus::Pending, "421 busy"}};
    for (int i = 1; i <= 3; ++i) {
        u.next_attempt_at = from_unix(1700000000 + i * 100);
        u.last_error = "try " + std::to_string(i);
        EXPECT_EQ(store_->record_attempt(u), 1);
    }
    auto got = store_->load("A000000000000001");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->attempts, 3);
    EXPECT_EQ(got->last_error, "try 3");
    EXPECT_EQ(got->next_attempt_at, from_unix(1700000300));
}

TEST_P(StoreTest, AttemptNotCountedWhenAsked) {
    insert({msg("A000000000000001", {"p@example.test"})});
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.count_attempt = false;
    u.next_attempt_at = from_unix(1700000777);
    u.last_error = "primary down";
    EXPECT_EQ(store_->record_attempt(u), 1);
    auto got = store_->load("A000000000000001");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->attempts, 0);
    EXPECT_EQ(got->next_attempt_at, from_unix(1700000777));
    EXPECT_EQ(got->last_error, "primary down");
}

TEST_P(StoreTest, DeletedWhenNothingPending) {
    insert({msg("A000000000000001", {"d@example.test", "f@example.test"}),
            msg("B000000000000002", {"x@example.test"})});
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"d@example.test", RcptStatus::Delivered, "250 ok"},
                  {"f@example.test", RcptStatus::Failed, "550 no"}};
    EXPECT_EQ(store_->record_attempt(u), 0);
    EXPECT_FALSE(store_->load("A000000000000001"));
    EXPECT_EQ(ids(), (std::vector<std::string>{"B000000000000002"}));
    EXPECT_EQ(recipient_rows("A000000000000001"), "0");  // recipients went with the message
    EXPECT_EQ(recipient_rows("B000000000000002"), "1");
}

TEST_P(StoreTest, DsnInsertedInSameCall) {
    insert({msg("A000000000000001", {"d@example.test", "f@example.test"})});
    NewMessage dsn = msg("D000000000000009", {"alice@sender.test"}, "DSN body\r\n");
    dsn.sender = "";
    dsn.domain = "sender.test";
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"f@example.test", RcptStatus::Failed, "550 no"}};
    u.dsn = dsn;
    EXPECT_EQ(store_->record_attempt(u), 1);

    auto got = store_->load("D000000000000009");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->sender, "");
    EXPECT_EQ(got->domain, "sender.test");
    EXPECT_EQ(got->body, "DSN body\r\n");
    ASSERT_EQ(got->recipients.size(), 1u);
    EXPECT_EQ(got->recipients[0].address, "alice@sender.test");
    EXPECT_EQ(ids(), (std::vector<std::string>{"A000000000000001", "D000000000000009"}));
}

TEST_P(StoreTest, DsnInsertedWhenOriginalDeleted) {
    insert({msg("A000000000000001", {"f@example.test"})});
    NewMessage dsn = msg("D000000000000009", {"alice@sender.test"});
    dsn.sender = "";
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"f@example.test", RcptStatus::Failed, "550 no"}};
    u.dsn = dsn;
    EXPECT_EQ(store_->record_attempt(u), 0);
    EXPECT_EQ(ids(), (std::vector<std::string>{"D000000000000009"}));
}

TEST_P(StoreTest, FailedDsnInsertRollsBackTheUpdate) {
    insert({msg("A000000000000001", {"f@example.test", "p@example.test"}),
            msg("D000000000000009", {"someone@example.test"})});
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"f@example.test", RcptStatus::Failed, "550 no"}};
    u.dsn = msg("D000000000000009", {"alice@sender.test"});  // id already taken
    EXPECT_THROW(store_->record_attempt(u), StoreError);
    auto got = store_->load("A000000000000001");
    ASSERT_TRUE(got);
    EXPECT_EQ(statuses(*got), (std::vector<RcptStatus>{RcptStatus::Pending, RcptStatus::Pending}));
    EXPECT_EQ(got->attempts, 0);
}

TEST_P(StoreTest, RemoveFlagDeletesWithPendingRecipients) {
    insert({msg("A000000000000001", {"p1@example.test", "p2@example.test"})});
    NewMessage dsn = msg("D000000000000009", {"alice@sender.test"});
    dsn.sender = "";
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"p1@example.test", RcptStatus::Pending, "451 later"}};
    u.remove = true;
    u.dsn = dsn;
    EXPECT_EQ(store_->record_attempt(u), 0);
    EXPECT_FALSE(store_->load("A000000000000001"));
    EXPECT_TRUE(store_->load("D000000000000009"));
    EXPECT_EQ(recipient_rows("A000000000000001"), "0");
}

TEST_P(StoreTest, RecordAttemptOnMissingIdReturnsZero) {
    insert({msg("A000000000000001", {"p@example.test"})});
    AttemptUpdate u;
    u.id = "NOTTHERE00000000";
    u.outcomes = {{"p@example.test", RcptStatus::Delivered, "250 ok"}};
    EXPECT_EQ(store_->record_attempt(u), 0);
    EXPECT_FALSE(store_->load("NOTTHERE00000000"));
    auto other = store_->load("A000000000000001");
    ASSERT_TRUE(other);
    EXPECT_EQ(other->recipients[0].status, RcptStatus::Pending);
}

TEST_P(StoreTest, UnknownRecipientInOutcomesIgnored) {
    insert({msg("A000000000000001", {"p@example.test"})});
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"stranger@example.test", RcptStatus::Delivered, "250 ok"}};
    EXPECT_EQ(store_->record_attempt(u), 1);
    EXPECT_EQ(store_->load("A000000000000001")->recipients.size(), 1u);
}

TEST_P(StoreTest, BatchOfAttemptsAppliesEachInOrder) {
    insert({msg("A000000000000001", {"a@example.test", "b@example.test"}),
            msg("B000000000000002", {"c@example.test"}),
            msg("C000000000000003", {"d@example.test"})});
    AttemptUpdate a1, b, missing, a2, c;
    a1.id = a2.id = "A000000000000001";
    a1.outcomes = {{"a@example.test", RcptStatus::Delivered, "250 \"quoted\" \\ {braces}, ok"},
                   {"b@example.test", RcptStatus::Pending, "451 later"}};
    a1.last_error = "451 later";
    a1.next_attempt_at = from_unix(1700000900);
    b.id = "B000000000000002";
    b.outcomes = {{"c@example.test", RcptStatus::Delivered, "250 ok"}};
    missing.id = "NOTTHERE00000000";
    a2.id = "A000000000000001";  // the same message again: applied after a1
    a2.outcomes = {{"b@example.test", RcptStatus::Pending, "452 full"}};
    a2.last_error = "452 \"full\"";
    a2.next_attempt_at = from_unix(1700001800);
    c.id = "C000000000000003";
    c.outcomes = {{"d@example.test", RcptStatus::Pending, "421 busy"}};
    c.count_attempt = false;
    c.next_attempt_at = from_unix(1700000999);
    EXPECT_EQ(store_->record_attempts({&a1, &b, &missing, &a2, &c}),
              (std::vector<int>{1, 0, 0, 1, 1}));

    auto got = store_->load("A000000000000001");
    ASSERT_TRUE(got);
    EXPECT_EQ(statuses(*got),
              (std::vector<RcptStatus>{RcptStatus::Delivered, RcptStatus::Pending}));
    EXPECT_EQ(got->recipients[0].last_reply, "250 \"quoted\" \\ {braces}, ok");
    EXPECT_EQ(got->recipients[1].last_reply, "452 full");
    EXPECT_EQ(got->attempts, 2);
    EXPECT_EQ(got->last_error, "452 \"full\"");
    EXPECT_EQ(got->next_attempt_at, from_unix(1700001800));
    EXPECT_EQ(store_->history("A000000000000001").size(), 2u);
    EXPECT_FALSE(store_->load("B000000000000002"));
    auto gc = store_->load("C000000000000003");
    ASSERT_TRUE(gc);
    EXPECT_EQ(gc->attempts, 0);
    EXPECT_EQ(gc->next_attempt_at, from_unix(1700000999));
}

TEST_P(StoreTest, LoadOwnedIsTheHeadOfAMessageOfThisNode) {
    auto m = msg("A000000000000001", {"a@example.test", "b@example.test"},
                 std::string(kBodyPiece + 10, 'x'));
    insert({m});
    auto head = store_->load_head("A000000000000001");
    auto owned = store_->load_owned("A000000000000001");
    ASSERT_TRUE(head);
    ASSERT_TRUE(owned);
    EXPECT_EQ(owned->body, std::string(kBodyPiece, 'x'));
    EXPECT_EQ(owned->body, head->body);
    EXPECT_EQ(owned->size, head->size);
    EXPECT_EQ(owned->received_at, head->received_at);
    ASSERT_EQ(owned->recipients.size(), 2u);
    EXPECT_EQ(owned->recipients[1].address, "b@example.test");
    EXPECT_FALSE(store_->load_owned("NOTTHERE00000000"));
}

TEST_F(FleetStoreTest, LoadOwnedSkipsAnotherNodesMessage) {
    insert({msg("A000000000000001", {"a@example.test"})});
    EXPECT_TRUE(store_->load_owned("A000000000000001"));
    EXPECT_FALSE(other_->load_owned("A000000000000001"));
    EXPECT_TRUE(other_->load_head("A000000000000001"));
}

TEST_F(FleetStoreTest, StatementsArePreparedAgainAfterAReconnect) {
    insert({msg("A000000000000001", {"a@example.test"})});
    ASSERT_TRUE(store_->load_owned("A000000000000001"));  // prepared on this connection
    cut_connections();
    try {
        store_->load_owned("A000000000000001");  // may be the call that finds it cut
    } catch (const StoreError&) {
    }
    EXPECT_TRUE(store_->load_owned("A000000000000001"));
}

TEST_F(FleetStoreTest, TheReadingConnectionReadsOnANewOneWhenItsOwnWasLost) {
    auto reader = store_->reader();
    ASSERT_TRUE(reader);
    insert({msg("A000000000000001", {"a@example.test"})});
    ASSERT_TRUE(reader->load_owned("A000000000000001"));
    cut_connections();
    EXPECT_TRUE(reader->load_owned("A000000000000001"));  // no StoreError: read again
    EXPECT_TRUE(reader->read_body("A000000000000001", 0));
}

// =============================================================================================
// remove

TEST_P(StoreTest, RemoveUnknownReturnsFalse) {
    EXPECT_FALSE(store_->remove("NOPE"));
}

TEST_P(StoreTest, RemoveKnownDeletesIt) {
    insert({msg("A000000000000001", {"p@example.test"}), msg("B000000000000002", {"q@x.test"})});
    EXPECT_TRUE(store_->remove("A000000000000001"));
    EXPECT_FALSE(store_->load("A000000000000001"));
    EXPECT_EQ(ids(), (std::vector<std::string>{"B000000000000002"}));
    EXPECT_EQ(recipient_rows("A000000000000001"), "0");
    EXPECT_FALSE(store_->remove("A000000000000001"));
}

// =============================================================================================
// durability

TEST_P(StoreTest, DataSurvivesReopen) {
    std::string body = "reopen\0\xff\r\n"s;
    insert({msg("A000000000000001", {"d@example.test", "p@example.test"}, body),
            msg("B000000000000002", {"x@example.test"})});
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"d@example.test", RcptStatus::Delivered, "250 ok"}};
    u.next_attempt_at = from_unix(1700001234);
    u.last_error = "451 later";
    store_->record_attempt(u);

    reopen();
    EXPECT_EQ(ids(), (std::vector<std::string>{"A000000000000001", "B000000000000002"}));
    auto got = store_->load("A000000000000001");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->body, body);
    EXPECT_EQ(statuses(*got),
              (std::vector<RcptStatus>{RcptStatus::Delivered, RcptStatus::Pending}));
    EXPECT_EQ(got->attempts, 1);
    EXPECT_EQ(got->last_error, "451 later");
    EXPECT_EQ(got->next_attempt_at, from_unix(1700001234));
}

TEST_F(SqliteStoreTest, CreatesMissingParentDirectories) {
    auto nested = dir_ + "/a/b/queue.db";
    auto s = open_sqlite_store(nested);
    auto m = msg("A000000000000001", {"p@example.test"});
    s->insert({&m});
    EXPECT_TRUE(std::filesystem::exists(nested));
    EXPECT_TRUE(s->load("A000000000000001"));
}

TEST_F(SqliteStoreTest, JournalModeIsWal) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    EXPECT_EQ(query(db, "PRAGMA journal_mode"), "wal");
    sqlite3_close(db);
}

TEST_F(SqliteStoreTest, StoreConnectionIsSynchronousFullWithForeignKeys) {
    store_.reset();
    g_last_db = nullptr;
    ASSERT_EQ(sqlite3_auto_extension(reinterpret_cast<void (*)(void)>(&remember_db)), SQLITE_OK);
    store_ = open_sqlite_store(path_);
    sqlite3_reset_auto_extension();
    ASSERT_NE(g_last_db, nullptr);
    EXPECT_EQ(query(g_last_db, "PRAGMA synchronous"), "2");  // FULL
    EXPECT_EQ(query(g_last_db, "PRAGMA journal_mode"), "wal");
    EXPECT_EQ(query(g_last_db, "PRAGMA foreign_keys"), "1");
    g_last_db = nullptr;
}

TEST_F(SqliteStoreTest, OpenFailsOnDirectory) {
    EXPECT_THROW(open_sqlite_store(dir_), StoreError);
}

TEST_F(SqliteStoreTest, OpenFailsOnFileThatIsNotADatabase) {
    auto junk = dir_ + "/junk.db";
    {
        std::ofstream out(junk, std::ios::binary);
        out << std::string(4096, 'J');
    }
    EXPECT_THROW(open_sqlite_store(junk), StoreError);  // and leaks nothing (ASan build checks)
}

// ---- greylisting and the recipient verification cache ----

TEST_P(StoreTest, GreylistFirstSeenTooEarlyPassedThenAllowlisted) {
    auto& store = store_;
    const GreylistRule rule{Seconds(300), Seconds(3600), Seconds(86400)};
    auto t0 = from_unix(1'800'000'000);
    EXPECT_EQ(store->greylist("192.0.2", "a@s.test", "u@d.test", t0, rule), GreyVerdict::FirstSeen);
    EXPECT_EQ(store->greylist("192.0.2", "a@s.test", "u@d.test", t0 + Seconds(299), rule),
              GreyVerdict::TooEarly);
    EXPECT_EQ(store->greylist("192.0.2", "a@s.test", "u@d.test", t0 + Seconds(300), rule),
              GreyVerdict::Passed);
    // the network is now trusted for any triplet, until allow_ttl runs out
    EXPECT_EQ(store->greylist("192.0.2", "b@s.test", "v@d.test", t0 + Seconds(400), rule),
              GreyVerdict::Allowlisted);
    EXPECT_EQ(store->greylist("198.51.100", "a@s.test", "u@d.test", t0 + Seconds(400), rule),
              GreyVerdict::FirstSeen);
    EXPECT_EQ(store->greylist("192.0.2", "b@s.test", "v@d.test", t0 + Seconds(300 + 86401), rule),
              GreyVerdict::FirstSeen);
}

TEST_P(StoreTest, GreylistRetryAfterExpiryStartsOver) {
    auto& store = store_;
    const GreylistRule rule{Seconds(300), Seconds(3600), Seconds(86400)};
    auto t0 = from_unix(1'800'000'000);
    store->greylist("192.0.2", "a@s.test", "u@d.test", t0, rule);
    EXPECT_EQ(store->greylist("192.0.2", "a@s.test", "u@d.test", t0 + Seconds(3601), rule),
              GreyVerdict::FirstSeen);
}

TEST_P(StoreTest, VerifyCacheRemembersUntilExpiry) {
    auto t0 = from_unix(1'800'000'000);
    EXPECT_FALSE(store_->verify_get("u@d.test", t0));
    store_->verify_put("u@d.test", VerifyEntry{true, t0 + Seconds(60), "250 ok"});
    store_->verify_put("gone@d.test", VerifyEntry{false, t0 + Seconds(60), "550 5.1.1 no"});
    reopen();  // survives a restart
    auto& store = store_;
    auto e = store->verify_get("u@d.test", t0 + Seconds(59));
    ASSERT_TRUE(e);
    EXPECT_TRUE(e->exists);
    auto n = store->verify_get("gone@d.test", t0);
    ASSERT_TRUE(n);
    EXPECT_FALSE(n->exists);
    EXPECT_EQ(n->reply, "550 5.1.1 no");
    EXPECT_FALSE(store->verify_get("u@d.test", t0 + Seconds(60)));
}

// ---------------------------------------------------------------------------
// bodies in pieces

TEST_P(StoreTest, LargeBodyIsStoredAndReadInPieces) {
    std::string body = "Subject: big\r\n\r\n";
    for (int i = 0; body.size() < 3 * kBodyPiece + 100; ++i)
        body += std::to_string(i) + std::string(70, 'z') + "\r\n";
    insert({msg("A000000000000001", {"a@example.test"}, body)});
    auto head = store_->load_head("A000000000000001");
    ASSERT_TRUE(head);
    EXPECT_EQ(head->size, static_cast<std::int64_t>(body.size()));
    EXPECT_EQ(head->body, body.substr(0, kBodyPiece));  // the first piece only
    std::string all = head->body;
    std::size_t seq = 1;
    while (auto piece = store_->read_body("A000000000000001", seq++)) {
        EXPECT_LE(piece->size(), kBodyPiece);
        all += *piece;
    }
    EXPECT_EQ(seq, 5u);  // pieces 1, 2 and 3 came, 4 did not
    EXPECT_EQ(all, body);
    EXPECT_EQ(store_->load("A000000000000001")->body, body);
}

TEST_P(StoreTest, PiecesGoWithTheirMessage) {
    insert({msg("A000000000000001", {"a@example.test"}, std::string(2 * kBodyPiece, 'q'))});
    ASSERT_TRUE(store_->read_body("A000000000000001", 1));
    AttemptUpdate u;
    u.id = "A000000000000001";
    u.outcomes = {{"a@example.test", RcptStatus::Delivered, "250 ok"}};
    EXPECT_EQ(store_->record_attempt(u), 0);
    EXPECT_FALSE(store_->read_body("A000000000000001", 0));
    EXPECT_FALSE(store_->read_body("A000000000000001", 1));
    EXPECT_EQ(count("SELECT count(*) FROM body_pieces"), "0");
}

TEST_F(SqliteStoreTest, MessageStoredBeforePiecesExistedStillLoads) {
    // A store written by an older backupmx holds the body in messages.body, with no pieces.
    insert({msg("A000000000000001", {"a@example.test"}, "Subject: old\r\n\r\nold body\r\n")});
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "UPDATE messages SET body = CAST('Subject: old' || char(13,10,13,10) "
                           "|| 'old body' || char(13,10) AS BLOB); DELETE FROM body_pieces;",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
    reopen();
    auto head = store_->load_head("A000000000000001");
    ASSERT_TRUE(head);
    EXPECT_EQ(head->body, "Subject: old\r\n\r\nold body\r\n");
    EXPECT_FALSE(store_->read_body("A000000000000001", 1));
    EXPECT_EQ(store_->load("A000000000000001")->body, "Subject: old\r\n\r\nold body\r\n");
}

// The operator's side of the store (issue 7): accounts, tokens, audit, run-time domains,
// outages, and the queue's pages and summaries.
TEST_P(StoreTest, AccountsAndTokensKeepOnlyHashes) {
    const Account a{"ann", "customer", "$argon2id$fake", {"a.test", "b.test"}, from_unix(100)};
    EXPECT_TRUE(store_->add_account(a));
    EXPECT_FALSE(store_->add_account(a));  // the name is taken
    auto got = store_->account("ann");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->role, "customer");
    EXPECT_EQ(got->domains, (std::vector<std::string>{"a.test", "b.test"}));
    EXPECT_FALSE(store_->account("bob"));
    store_->add_token({"t1", "ann", "ci", from_unix(200)}, "hash-of-token");
    EXPECT_EQ(store_->token_user("hash-of-token").value_or(""), "ann");
    EXPECT_FALSE(store_->token_user("other"));
    EXPECT_EQ(store_->tokens("ann").size(), 1u);
    EXPECT_FALSE(store_->remove_token("bob", "t1"));  // only its owner revokes it
    EXPECT_TRUE(store_->remove_token("ann", "t1"));
    EXPECT_FALSE(store_->token_user("hash-of-token"));
}

TEST_P(StoreTest, SessionsEndWhenIdleOrEndedAndGoWithTheirAccount) {
    ASSERT_TRUE(store_->add_account({"ann", "operator", "$argon2id$x", {}, from_unix(1000)}));
    const auto idle = Seconds(3600);
    const auto t = from_unix(100000);
    store_->put_session("k1", "ann", t, t - idle);
    EXPECT_EQ(store_->use_session("k1", t + Seconds(10), t + Seconds(10) - idle), "ann");
    EXPECT_EQ(store_->use_session("forged", t, t - idle), std::nullopt);
    // used within the hour: it lives on past an hour from its creation
    EXPECT_EQ(store_->use_session("k1", t + Seconds(1800), t + Seconds(1800) - idle), "ann");
    const auto later = t + Seconds(1800 + 3000);
    EXPECT_EQ(store_->use_session("k1", later, later - idle), "ann");
    const auto idle_too_long = later + idle + Seconds(1);
    EXPECT_EQ(store_->use_session("k1", idle_too_long, idle_too_long - idle), std::nullopt);
    store_->put_session("k2", "ann", t, t - idle);
    store_->end_session("k2");
    EXPECT_EQ(store_->use_session("k2", t, t - idle), std::nullopt);
    // a new login clears sessions idle too long
    store_->put_session("k3", "ann", idle_too_long, idle_too_long - idle);
    EXPECT_EQ(count("SELECT count(*) FROM admin_sessions"), "1");
}

TEST_P(StoreTest, LoginFailuresAreCountedPerKeyWithinTheWindow) {
    const auto t = from_unix(100000);
    const auto window = Seconds(300);
    for (int i = 0; i < 3; ++i)
        store_->add_login_failure({"ip:192.0.2.1", "user:ann"}, t + Seconds(i), t - window);
    EXPECT_EQ(store_->login_failures("ip:192.0.2.1", t - window), 3u);
    EXPECT_EQ(store_->login_failures("user:ann", t - window), 3u);
    EXPECT_EQ(store_->login_failures("user:bob", t - window), 0u);
    EXPECT_EQ(store_->login_failures("user:ann", t + Seconds(1)), 2u);  // since then
    store_->clear_login_failures("user:ann");                           // a good login
    EXPECT_EQ(store_->login_failures("user:ann", t - window), 0u);
    EXPECT_EQ(store_->login_failures("ip:192.0.2.1", t - window), 3u);
    // a failure later forgets those before its window: the table stays small
    const auto later = t + Seconds(1000);
    store_->add_login_failure({"ip:192.0.2.9"}, later, later - window);
    EXPECT_EQ(count("SELECT count(*) FROM login_failures"), "1");
}

TEST_P(StoreTest, ALoginAttemptIsReservedBeforeItsCheckAndTakenBackWhenGood) {
    const auto t = from_unix(200000);
    const auto since = t - Seconds(300);
    const std::vector<std::string> keys{"ip:192.0.2.1", "user:ann"};
    for (int i = 0; i < 5; ++i) EXPECT_TRUE(store_->reserve_login_attempt(keys, t, since, 5));
    // the sixth is refused before any password is checked, and writes nothing
    EXPECT_FALSE(store_->reserve_login_attempt(keys, t, since, 5));
    EXPECT_FALSE(store_->reserve_login_attempt({"ip:192.0.2.2", "user:ann"}, t, since, 5));
    EXPECT_EQ(store_->login_failures("ip:192.0.2.2", since), 0u);
    EXPECT_EQ(store_->login_failures("user:ann", since), 5u);
    // a good password takes one reservation back, under each key
    store_->release_login_attempt(keys, t);
    EXPECT_EQ(store_->login_failures("ip:192.0.2.1", since), 4u);
    EXPECT_EQ(store_->login_failures("user:ann", since), 4u);
    EXPECT_TRUE(store_->reserve_login_attempt(keys, t, since, 5));
    // the window forgets
    const auto later = t + Seconds(301);
    EXPECT_TRUE(store_->reserve_login_attempt(keys, later, later - Seconds(300), 5));
    EXPECT_EQ(count("SELECT count(*) FROM login_failures"), "2");
}

// Forty tries at once on eight connections (eight nodes of a fleet on PostgreSQL, eight
// processes on one SQLite file), all for one account: exactly the limit pass.
TEST_P(StoreTest, ParallelLoginReservationsOnManyConnectionsPassTheLimitExactly) {
    const auto t = from_unix(300000);
    std::vector<std::unique_ptr<Store>> nodes;
    for (int i = 0; i < 8; ++i)
        nodes.push_back(engine_ == "pg"
                            ? open_pg_store(url_, "node-" + std::to_string(i), Seconds(60))
                            : open_sqlite_store(path_));
    std::atomic<int> passed{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i)
        threads.emplace_back([&, i] {
            for (int j = 0; j < 5; ++j)
                if (nodes[i]->reserve_login_attempt(
                        {"ip:198.51.100." + std::to_string(i), "user:root"}, t, t - Seconds(300),
                        5))
                    ++passed;
        });
    for (auto& th : threads) th.join();
    EXPECT_EQ(passed.load(), 5);
    EXPECT_EQ(store_->login_failures("user:root", t - Seconds(300)), 5u);
}

TEST_P(StoreTest, AuditIsNewestFirstAndBounded) {
    for (int i = 0; i < 5; ++i)
        store_->audit({from_unix(i), "ann", "act" + std::to_string(i), "t", "", "127.0.0.1"});
    auto log = store_->audit_log(3);
    ASSERT_EQ(log.size(), 3u);
    EXPECT_EQ(log[0].action, "act4");
    EXPECT_EQ(log[2].action, "act2");
}

TEST_P(StoreTest, ADomainWithQueuedMailCannotBeRemoved) {
    StoredDomain d{"shop.test", "mx.shop.test:25", "any", false, 0, "ann", from_unix(1)};
    EXPECT_TRUE(store_->add_domain(d));
    EXPECT_FALSE(store_->add_domain(d));
    d.greylisting = true;
    d.max_message_size = 4096;
    store_->update_domain(d);
    auto all = store_->domains();
    ASSERT_EQ(all.size(), 1u);
    EXPECT_TRUE(all[0].greylisting);
    EXPECT_EQ(all[0].max_message_size, 4096);
    auto m = msg("E000000000000001", {"bob@shop.test"});
    m.domain = "shop.test";
    store_->insert({&m});
    EXPECT_EQ(store_->remove_domain("shop.test"), 1);  // refused: one message queued
    EXPECT_EQ(store_->domains().size(), 1u);
    EXPECT_TRUE(store_->remove("E000000000000001"));
    EXPECT_EQ(store_->remove_domain("shop.test"), 0);
    EXPECT_TRUE(store_->domains().empty());
}

TEST_P(StoreTest, OneDataToSeveralDomainsKeepsOneBodyUntilTheLastCopyGoes) {
    std::string big = "Subject: shared\r\n\r\n";
    for (int i = 0; i < 8000; ++i) big += "line " + std::to_string(i) + " of a shared body\r\n";
    ASSERT_GT(big.size(), 2 * kBodyPiece);  // several pieces
    std::vector<NewMessage> copies;
    for (const char* id : {"E0000000000000A1", "E0000000000000A2", "E0000000000000A3"}) {
        auto m = msg(id, {std::string("bob@") + id + ".test"}, big);
        m.domain = std::string(id) + ".test";
        m.body_id = "E0000000000000A1";
        m.body_refs = 3;
        copies.push_back(std::move(m));
    }
    store_->insert({&copies[0], &copies[1], &copies[2]});
    auto whole = [&](const std::string& id) {
        std::string out;
        for (std::size_t seq = 0;; ++seq) {
            auto piece = store_->read_body(id, seq);
            if (!piece) return out;
            out += *piece;
        }
    };
    for (const auto& c : copies) {
        EXPECT_EQ(whole(c.id), big) << c.id;
        EXPECT_EQ(store_->load_head(c.id)->size, static_cast<std::int64_t>(big.size()));
    }
    EXPECT_TRUE(store_->remove("E0000000000000A1"));  // the copy that wrote it goes first
    EXPECT_TRUE(store_->remove("E0000000000000A3"));
    EXPECT_EQ(whole("E0000000000000A2"), big);  // still there for the last copy
    EXPECT_TRUE(store_->remove("E0000000000000A2"));
    // gone with the last: the same body id can be stored again
    auto again = msg("E0000000000000A1", {"bob@example.test"}, "Subject: new\r\n\r\nx\r\n");
    again.body_id = "E0000000000000A1";
    again.body_refs = 1;
    store_->insert({&again});
    EXPECT_EQ(whole("E0000000000000A1"), again.body);
}

TEST_P(StoreTest, DomainClaimsAreOnePerAccountAndServeNothing) {
    ASSERT_TRUE(store_->add_account({"carl", "customer", "$argon2id$x", {}, from_unix(1)}));
    ASSERT_TRUE(store_->add_account({"dora", "customer", "$argon2id$x", {}, from_unix(1)}));
    EXPECT_TRUE(store_->add_claim({"shop.test", "carl", "mx.shop.test", "tok1", from_unix(5)}));
    EXPECT_FALSE(store_->add_claim({"shop.test", "carl", "other", "tok2", from_unix(6)}));
    EXPECT_TRUE(store_->add_claim({"shop.test", "dora", "mx.dora.test", "tok3", from_unix(7)}));
    auto all = store_->claims();
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].account, "carl");
    EXPECT_EQ(all[0].token, "tok1");  // the first claim stands
    EXPECT_EQ(all[0].primary, "mx.shop.test");
    EXPECT_EQ(to_unix(all[0].created), 5);
    EXPECT_TRUE(store_->domains().empty());  // a claim serves nothing
    store_->remove_claim("shop.test", "carl");
    all = store_->claims();
    ASSERT_EQ(all.size(), 1u);
    EXPECT_EQ(all[0].account, "dora");
}

TEST_P(StoreTest, OutagesOpenCloseAndDrain) {
    store_->outage_begin("a.test", from_unix(1000), 0);
    store_->outage_begin("a.test", from_unix(1005), 0);  // one open outage at a time
    auto o = store_->outages("a.test", 10);
    ASSERT_EQ(o.size(), 1u);
    EXPECT_FALSE(o[0].end);
    store_->outage_end("a.test", from_unix(1100), 7);
    store_->outage_drained("a.test", from_unix(1130));
    o = store_->outages("a.test", 10);
    ASSERT_EQ(o.size(), 1u);
    EXPECT_EQ(to_unix(*o[0].end), 1100);
    EXPECT_EQ(o[0].messages_held, 7);
    EXPECT_EQ(o[0].drain_seconds.value_or(-1), 30);
    EXPECT_TRUE(store_->outages("b.test", 10).empty());
}

TEST_P(StoreTest, QueuePagesFiltersSummariesHoldAndHistory) {
    std::vector<NewMessage> ms;
    for (int i = 0; i < 5; ++i) {
        auto m = msg("E00000000000000" + std::to_string(i),
                     {"rcpt" + std::to_string(i) + "@" + (i < 3 ? "a.test" : "b.test")});
        m.domain = i < 3 ? "a.test" : "b.test";
        m.sender = i % 2 ? "Odd@Sender.test" : "even@sender.test";
        m.received_at = from_unix(1000 + i);
        ms.push_back(m);
    }
    std::vector<const NewMessage*> batch;
    for (auto& m : ms) batch.push_back(&m);
    store_->insert(batch);

    QueueFilter f;
    f.domains = {"a.test"};
    f.limit = 2;
    auto p1 = store_->queue_page(f);
    ASSERT_EQ(p1.size(), 2u);
    f.after = p1.back().id;
    auto p2 = store_->queue_page(f);
    ASSERT_EQ(p2.size(), 1u);
    EXPECT_EQ(p2[0].id, "E000000000000002");

    QueueFilter s;
    s.sender = "odd@";  // case-insensitive substring
    EXPECT_EQ(store_->queue_page(s).size(), 2u);
    QueueFilter r;
    r.recipient = "RCPT4";
    ASSERT_EQ(store_->queue_page(r).size(), 1u);
    QueueFilter old;
    old.received_before = from_unix(1001);
    EXPECT_EQ(store_->queue_page(old).size(), 2u);

    EXPECT_TRUE(store_->set_held("E000000000000003", "held by ann"));
    EXPECT_FALSE(store_->set_held("EFFFFFFFFFFFFFFF", "x"));
    QueueFilter held;
    held.state = "held";
    ASSERT_EQ(store_->queue_page(held).size(), 1u);
    EXPECT_EQ(store_->load_head("E000000000000003")->held, "held by ann");

    AttemptUpdate u{"E000000000000000",
                    {{"rcpt0@a.test", RcptStatus::Pending, "451 busy"}},
                    from_unix(5000),
                    "451 busy"};
    store_->record_attempt(u);
    auto h = store_->history("E000000000000000");
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0].result, "rcpt0@a.test deferred: 451 busy");

    auto sums = store_->queue_summary();
    ASSERT_EQ(sums.size(), 2u);
    EXPECT_EQ(sums[0].domain, "a.test");
    EXPECT_EQ(sums[0].messages, 3);
    EXPECT_EQ(to_unix(*sums[0].oldest), 1000);
    EXPECT_EQ(sums[0].last_error, "451 busy");
    EXPECT_EQ(sums[1].held, 1);
}

// =============================================================================================
// A fleet: two nodes on one PostgreSQL store (what only that engine does).

TEST_F(FleetStoreTest, EachMessageBelongsToTheNodeThatAcceptedIt) {
    insert({msg("F000000000000001", {"a@example.test"})});
    EXPECT_TRUE(store_->owns("F000000000000001"));
    EXPECT_FALSE(other_->owns("F000000000000001"));
    EXPECT_EQ(other_->load_index().size(), 0u);  // node-b schedules none of node-a's mail
    EXPECT_EQ(store_->load_index().size(), 1u);
    // node-a's lease still runs: nothing to take over
    EXPECT_TRUE(other_->take_over(now(), 100).empty());
}

TEST_F(FleetStoreTest, ADeadNodesMessagesAreTakenOverOnceItsLeaseRunsOut) {
    insert({msg("F000000000000001", {"a@example.test"}), msg("F000000000000002", {"b@x.test"})});
    store_->renew_lease(now() - Seconds(1));  // node-a stopped renewing
    auto taken = other_->take_over(now(), 100);
    ASSERT_EQ(taken.size(), 2u);
    EXPECT_TRUE(other_->owns("F000000000000001"));
    EXPECT_FALSE(store_->owns("F000000000000001"));      // node-a, back, must not deliver it
    EXPECT_TRUE(other_->take_over(now(), 100).empty());  // taken once
}

TEST_F(FleetStoreTest, OneNodeAtATimeProbesADownPrimary) {
    EXPECT_TRUE(store_->claim_probe("example.test", now() + Seconds(30)));
    EXPECT_FALSE(other_->claim_probe("example.test", now() + Seconds(30)));
    EXPECT_TRUE(store_->claim_probe("example.test", now() + Seconds(30)));  // still ours
    EXPECT_TRUE(other_->claim_probe("other.test", now() + Seconds(30)));    // per primary
    // node-a's claim runs out (it died): node-b probes
    EXPECT_TRUE(store_->claim_probe("example.test", now() - Seconds(1)));
    EXPECT_TRUE(other_->claim_probe("example.test", now() + Seconds(30)));
    store_->put_primary({"example.test", "up", from_unix(1000), from_unix(1001), "reached"});
    auto p = other_->primaries(TimePoint{});
    ASSERT_EQ(p.size(), 2u);
    EXPECT_EQ(p[0].domain == "example.test" ? p[0].state : p[1].state, "up");
    p = other_->primaries(from_unix(1001));  // what changed since: the nodes that wait follow it
    ASSERT_EQ(p.size(), 1u);
    EXPECT_EQ(p[0].domain, "example.test");
    EXPECT_TRUE(other_->primaries(from_unix(1002)).empty());
}

TEST_F(FleetStoreTest, ConnectionsToAPrimaryAreCountedForTheFleetWithinItsWindow) {
    // initial 1, max 3: the fleet opens one connection until a delivery goes through
    auto g = store_->acquire_slot("example.test", 1, 3);
    EXPECT_TRUE(g.granted);
    EXPECT_EQ(g.window, 1u);
    EXPECT_FALSE(other_->acquire_slot("example.test", 1, 3).granted);
    EXPECT_EQ(store_->adjust_window("example.test", Store::Window::Grow, 1, 3), 2u);
    EXPECT_TRUE(other_->acquire_slot("example.test", 1, 3).granted);  // 2 of 2
    EXPECT_FALSE(other_->acquire_slot("example.test", 1, 3).granted);
    EXPECT_EQ(other_->adjust_window("example.test", Store::Window::Grow, 1, 3), 3u);
    EXPECT_EQ(other_->adjust_window("example.test", Store::Window::Grow, 1, 3), 3u);  // max
    EXPECT_TRUE(store_->acquire_slot("example.test", 1, 3).granted);                  // 3 of 3
    EXPECT_FALSE(store_->acquire_slot("example.test", 1, 3).granted);
    store_->release_slot("example.test");
    EXPECT_TRUE(other_->acquire_slot("example.test", 1, 3).granted);
    // the primary falters: halved (never below 1); back up: from `initial` again
    EXPECT_EQ(store_->adjust_window("example.test", Store::Window::Halve, 1, 3), 1u);
    EXPECT_EQ(store_->adjust_window("example.test", Store::Window::Halve, 1, 3), 1u);
    EXPECT_EQ(store_->adjust_window("example.test", Store::Window::Grow, 1, 3), 2u);
    EXPECT_EQ(store_->adjust_window("example.test", Store::Window::Reset, 1, 3), 1u);
    // a node whose lease ran out holds no slots: its connections died with it
    EXPECT_EQ(store_->adjust_window("other.test", Store::Window::Grow, 2, 5), 3u);
    EXPECT_TRUE(store_->acquire_slot("other.test", 2, 5).granted);
    EXPECT_TRUE(store_->acquire_slot("other.test", 2, 5).granted);
    EXPECT_TRUE(store_->acquire_slot("other.test", 2, 5).granted);
    EXPECT_FALSE(other_->acquire_slot("other.test", 2, 5).granted);
    store_->renew_lease(now() - Seconds(1));
    EXPECT_TRUE(other_->acquire_slot("other.test", 2, 5).granted);
}

TEST_F(FleetStoreTest, OnlyTheServerStartingFreesItsNodesSlots) {
    ASSERT_TRUE(store_->acquire_slot("example.test", 1, 1).granted);
    // a command-line tool on the same node (same name) opens the store: the slot stays taken
    auto tool = open_pg_store(url_, "node-a", Seconds(60));
    EXPECT_FALSE(other_->acquire_slot("example.test", 1, 1).granted);
    tool->release_all_slots();  // what `serve` does at start: the slots of a crashed run
    EXPECT_TRUE(other_->acquire_slot("example.test", 1, 1).granted);
}

TEST_F(FleetStoreTest, RateCountsAreSharedBetweenNodes) {
    const std::int64_t minute = to_unix(now()) / 60;
    EXPECT_TRUE(store_->share_rates({{"192.0.2.1|message", minute, 5}}, minute - 1).empty());
    auto seen = other_->share_rates({{"192.0.2.1|message", minute, 2}}, minute - 1);
    ASSERT_EQ(seen.size(), 1u);  // node-b sees node-a's 5, not its own 2
    EXPECT_EQ(seen[0].count, 5u);
    seen = store_->share_rates({}, minute - 1);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].count, 2u);
}
