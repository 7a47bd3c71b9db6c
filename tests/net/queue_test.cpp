// The queue's thread and group commit, driven by real coroutines on an io_context.
#include "queue/queue.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <condition_variable>
#include <filesystem>
#include <mutex>

#include "../pg_server.hpp"
#include "support.hpp"

using namespace bmx;
using bmx::test::pg_drop_database;
using bmx::test::pg_new_database;
using bmx::test::pg_url;
using bmx::test::TempDir;
namespace asio = boost::asio;

namespace {

NewMessage message(int i) {
    NewMessage m;
    m.id = new_queue_id();
    m.domain = "example.test";
    m.sender = "s@sender.test";
    m.recipients = {"u" + std::to_string(i) + "@example.test"};
    m.body = "Subject: " + std::to_string(i) + "\r\n\r\nbody\r\n";
    m.received_at = m.next_attempt_at = now();
    return m;
}

// A store whose disk is "full": every write fails.
struct FullStore : Store {
    void insert(const std::vector<const NewMessage*>&) override { throw StoreError("disk full"); }
    bool load_index_page(std::int64_t&, std::size_t, std::vector<IndexEntry>&) override {
        return false;
    }
    std::optional<StoredMessage> load_head(const std::string&) override { return std::nullopt; }
    std::optional<std::string> read_body(const std::string&, std::size_t) override {
        return std::nullopt;
    }
    std::vector<int> record_attempts(const std::vector<const AttemptUpdate*>&) override {
        throw StoreError("disk full");
    }
    std::vector<QueueRow> list() override { return {}; }
    bool remove(const std::string&) override { return false; }
    GreyVerdict greylist(const std::string&, const std::string&, const std::string&, TimePoint,
                         const GreylistRule&) override {
        throw StoreError("disk full");
    }
    std::optional<VerifyEntry> verify_get(const std::string&, TimePoint) override { return {}; }
    void verify_put(const std::string&, const VerifyEntry&) override {
        throw StoreError("disk full");
    }
    // The operator's side: reads find nothing, writes fail.
    [[noreturn]] static void full() { throw StoreError("disk full"); }
    std::vector<QueueRow> queue_page(const QueueFilter&) override { return {}; }
    std::vector<QueueSummary> queue_summary() override { return {}; }
    std::vector<AttemptRecord> history(const std::string&) override { return {}; }
    bool set_held(const std::string&, const std::string&) override { full(); }
    bool add_account(const Account&) override { full(); }
    std::optional<Account> account(const std::string&) override { return {}; }
    void add_owner(const std::string&, const std::string&) override { full(); }
    void add_token(const ApiToken&, const std::string&) override { full(); }
    std::optional<std::string> token_user(const std::string&) override { return {}; }
    std::vector<ApiToken> tokens(const std::string&) override { return {}; }
    bool remove_token(const std::string&, const std::string&) override { full(); }
    void put_session(const std::string&, const std::string&, TimePoint, TimePoint) override {
        full();
    }
    std::optional<std::string> use_session(const std::string&, TimePoint, TimePoint) override {
        return {};
    }
    void end_session(const std::string&) override {}
    void add_login_failure(const std::vector<std::string>&, TimePoint, TimePoint) override {
        full();
    }
    std::size_t login_failures(const std::string&, TimePoint) override { return 0; }
    void clear_login_failures(const std::string&) override {}
    bool reserve_login_attempt(const std::vector<std::string>&, TimePoint, TimePoint,
                               std::size_t) override {
        full();
    }
    void release_login_attempt(const std::vector<std::string>&, TimePoint) override {}
    void audit(const AuditEntry&) override { full(); }
    std::vector<AuditEntry> audit_log(std::size_t) override { return {}; }
    bool add_domain(const StoredDomain&) override { full(); }
    void update_domain(const StoredDomain&) override { full(); }
    std::int64_t remove_domain(const std::string&) override { full(); }
    std::vector<StoredDomain> domains() override { return {}; }
    bool add_claim(const DomainClaim&) override { full(); }
    std::vector<DomainClaim> claims() override { return {}; }
    void remove_claim(const std::string&, const std::string&) override { full(); }
    void outage_begin(const std::string&, TimePoint, std::int64_t) override { full(); }
    void outage_end(const std::string&, TimePoint, std::int64_t) override { full(); }
    void outage_drained(const std::string&, TimePoint) override { full(); }
    std::vector<Outage> outages(const std::string&, std::size_t) override { return {}; }
    StoreTables export_tables() override { return {}; }
    void import_tables(const StoreTables&) override { full(); }
};

// A store with a reading connection of its own: its commit waits until a read is done, which
// only a read that does not queue behind the commit can be.
struct SlowCommitStore : FullStore {
    struct Shared {
        std::mutex mu;
        std::condition_variable cv;
        bool read = false;
    };
    struct Reader : FullStore {
        explicit Reader(std::shared_ptr<Shared> s) : shared(std::move(s)) {}
        std::optional<StoredMessage> load_head(const std::string& id) override {
            {
                std::lock_guard lock(shared->mu);
                shared->read = true;
            }
            shared->cv.notify_all();
            StoredMessage m;
            m.id = id;
            return m;
        }
        std::shared_ptr<Shared> shared;
    };
    void insert(const std::vector<const NewMessage*>&) override {
        std::unique_lock lock(shared->mu);
        if (!shared->cv.wait_for(lock, std::chrono::seconds(10), [&] { return shared->read; }))
            throw StoreError("the read waited behind the commit");
    }
    std::unique_ptr<Store> reader() override { return std::make_unique<Reader>(shared); }
    std::shared_ptr<Shared> shared = std::make_shared<Shared>();
};

}  // namespace

// Group commit holds on both engines: one transaction (one fsync, or one WAL flush) for many.
class QueueOnEngine : public ::testing::TestWithParam<const char*> {
  protected:
    void SetUp() override {
        if (std::string(GetParam()) == "pg") {
            db_ = pg_new_database();
            ASSERT_FALSE(db_.empty());
        }
    }
    void TearDown() override {
        if (!db_.empty()) pg_drop_database(db_);
    }
    std::unique_ptr<Store> open() {
        return db_.empty() ? open_sqlite_store(dir.path + "/q.db")
                           : open_pg_store(pg_url(db_), "node-a", Seconds(60));
    }
    std::unique_ptr<Store> open_other() {  // another connection to the same store
        return db_.empty() ? open_sqlite_store(dir.path + "/q.db")
                           : open_pg_store(pg_url(db_), "node-b", Seconds(60));
    }
    TempDir dir;
    std::string db_;
};
INSTANTIATE_TEST_SUITE_P(Engines, QueueOnEngine, ::testing::Values("sqlite", "pg"),
                         [](const auto& info) { return std::string(info.param); });

TEST_P(QueueOnEngine, ConcurrentCommitsShareTransactions) {
    const int n = 300;
    int committed = 0;
    int early = 0;  // completions that came before their message was in the store
    std::uint64_t batches = 0;
    {
        Queue q(open());
        auto other = open_other();  // a connection of its own: it sees only what is committed
        asio::io_context io;
        for (int i = 0; i < n; ++i) {
            asio::co_spawn(
                io,
                [&q, &committed, &early, &other, i]() -> asio::awaitable<void> {
                    const std::vector<NewMessage> batch{message(i)};
                    co_await q.submit(batch);
                    if (q.batches() == 0 || !other->load_head(batch[0].id)) ++early;
                    ++committed;
                },
                asio::detached);
        }
        io.run();
        batches = q.batches();
    }
    EXPECT_EQ(committed, n);
    EXPECT_EQ(early, 0) << "a commit completed before its batch was committed";
    EXPECT_GE(batches, 1u);
    EXPECT_LT(batches, static_cast<std::uint64_t>(n)) << "no commit was shared";
    auto store = open();  // reopened: everything is on disk
    EXPECT_EQ(store->load_index().size(), static_cast<std::size_t>(n));
}

TEST_P(QueueOnEngine, ConcurrentAttemptRecordsShareTransactions) {
    const int n = 300;
    std::vector<NewMessage> msgs;
    for (int i = 0; i < n; ++i) msgs.push_back(message(i));
    int removed = 0, kept = 0;
    std::uint64_t batches = 0;
    {
        Queue q(open());
        asio::io_context io;
        asio::co_spawn(
            io, [&]() -> asio::awaitable<void> { co_await q.submit(msgs); }, asio::detached);
        io.run();
        io.restart();
        for (int i = 0; i < n; ++i) {
            asio::co_spawn(
                io,
                [&, i]() -> asio::awaitable<void> {
                    // Even messages are delivered (and leave), odd ones are deferred (and stay).
                    AttemptUpdate u;
                    u.id = msgs[i].id;
                    u.next_attempt_at = now();
                    u.outcomes = {{msgs[i].recipients[0],
                                   i % 2 ? RcptStatus::Pending : RcptStatus::Delivered, "250 ok"}};
                    int left = co_await q.record(u);
                    ++(left == 0 ? removed : kept);
                },
                asio::detached);
        }
        io.run();
        batches = q.attempt_batches();
    }
    EXPECT_EQ(removed, n / 2);
    EXPECT_EQ(kept, n / 2);
    EXPECT_LT(batches, static_cast<std::uint64_t>(n)) << "no transaction was shared";
    auto store = open();
    EXPECT_EQ(store->load_index().size(), static_cast<std::size_t>(n / 2));
}

TEST_P(QueueOnEngine, CallRunsOnTheStoreThreadAndReturnsValues) {
    Queue q(open());
    asio::io_context io;
    std::size_t rows = 99;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            const std::vector<NewMessage> batch{message(1), message(2)};
            co_await q.submit(batch);
            const std::function<std::size_t(Store&)> count = [](Store& s) {
                return s.list().size();
            };
            rows = co_await q.call(count);
            const auto again = co_await q.read(count);  // no reading connection: store thread
            rows += again;
        },
        asio::detached);
    io.run();
    EXPECT_EQ(rows, 4u);
}

TEST(Queue, ReadsOnTheReadingConnectionDoNotWaitForACommit) {
    Queue q(std::make_unique<SlowCommitStore>());
    asio::io_context io;
    std::string committed, loaded;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            const std::vector<NewMessage> batch{message(1)};
            try {
                co_await q.submit(batch);
                committed = "yes";
            } catch (const StoreError& e) {
                committed = e.what();
            }
        },
        asio::detached);
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            const std::function<std::optional<StoredMessage>(Store&)> load = [](Store& s) {
                return s.load_owned("A000000000000001");
            };
            auto m = co_await q.read(load);
            if (m) loaded = m->id;
        },
        asio::detached);
    io.run();
    EXPECT_EQ(committed, "yes");
    EXPECT_EQ(loaded, "A000000000000001");
}

// Runs `step` against a queue whose store always fails; returns what the caller caught.
template <class Step>
std::string caught_from_full_store(Step step) {
    Queue q(std::make_unique<FullStore>());
    asio::io_context io;
    std::string error;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            try {
                co_await step(q);
            } catch (const StoreError& e) {
                error = e.what();
            }
        },
        asio::detached);
    io.run();
    return error;
}

TEST(Queue, StoreFailureReachesTheCaller) {
    const std::vector<NewMessage> batch{message(1)};
    EXPECT_EQ(caught_from_full_store([&](Queue& q) { return q.submit(batch); }), "disk full");
}

TEST(Queue, AttemptStoreFailureReachesTheCaller) {
    AttemptUpdate u;
    u.id = "X";
    EXPECT_EQ(
        caught_from_full_store([&](Queue& q) -> asio::awaitable<void> { co_await q.record(u); }),
        "disk full");
}

// The one door: submit() hands the scheduler exactly what it committed, and only once the store
// has it; a failed commit hands nothing on.
TEST_P(QueueOnEngine, SubmitHandsCommittedMessagesOnAfterTheCommit) {
    const std::vector<NewMessage> msgs{message(1), message(2)};
    std::vector<std::string> handed;
    bool stored_when_handed = false;
    {
        Queue q(open());
        q.on_committed([&](const std::vector<NewMessage>& m) {
            for (const auto& x : m) handed.push_back(x.id);
            stored_when_handed = open_other()->load_head(m.front().id).has_value();
        });
        asio::io_context io;
        asio::co_spawn(
            io, [&]() -> asio::awaitable<void> { co_await q.submit(msgs); }, asio::detached);
        io.run();
    }
    EXPECT_EQ(handed, (std::vector<std::string>{msgs[0].id, msgs[1].id}));
    EXPECT_TRUE(stored_when_handed) << "handed on before the commit";
}

TEST(Queue, FailedSubmitHandsNothingOn) {
    const std::vector<NewMessage> batch{message(1)};
    bool handed = false;
    Queue q(std::make_unique<FullStore>());
    q.on_committed([&](const std::vector<NewMessage>&) { handed = true; });
    asio::io_context io;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            try {
                co_await q.submit(batch);
            } catch (const StoreError&) {
            }
        },
        asio::detached);
    io.run();
    EXPECT_FALSE(handed);
}

// A DSN comes through the same door: record() commits it with the attempt, then hands it on.
TEST_P(QueueOnEngine, RecordHandsTheCommittedDsnOn) {
    const std::vector<NewMessage> msgs{message(1)};
    NewMessage dsn = message(2);
    dsn.sender.clear();
    std::vector<std::string> handed;
    {
        Queue q(open());
        asio::io_context io;
        asio::co_spawn(
            io, [&]() -> asio::awaitable<void> { co_await q.submit(msgs); }, asio::detached);
        io.run();
        io.restart();
        q.on_committed([&](const std::vector<NewMessage>& m) {
            for (const auto& x : m) handed.push_back(x.id);
        });
        AttemptUpdate u;
        u.id = msgs[0].id;
        u.next_attempt_at = now();
        u.outcomes = {{msgs[0].recipients[0], RcptStatus::Failed, "550 no"}};
        u.dsn = dsn;
        u.remove = true;
        asio::co_spawn(
            io, [&]() -> asio::awaitable<void> { co_await q.record(u); }, asio::detached);
        io.run();
    }
    EXPECT_EQ(handed, std::vector<std::string>{dsn.id});
    EXPECT_TRUE(open()->load_head(dsn.id).has_value());
}
