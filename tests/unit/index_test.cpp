// The scheduler's in-memory index: due order per destination, expiry order, in-flight marks.
#include "scheduler/index.hpp"

#include <gtest/gtest.h>

using namespace bmx;

namespace {

TimePoint at(int s) {
    return TimePoint{} + Seconds(1'000'000 + s);
}

std::string qid(int n) {
    return Index::id(0xABC0000000000000ULL + static_cast<unsigned>(n));
}

}  // namespace

TEST(Index, KeysRoundTripAndRejectWhatIsNotAQueueId) {
    const std::string id = new_queue_id();
    auto k = Index::key(id);
    ASSERT_TRUE(k);
    EXPECT_EQ(Index::id(*k), id);
    EXPECT_EQ(Index::id(0), "0000000000000000");
    EXPECT_FALSE(Index::key("short"));
    EXPECT_FALSE(Index::key("E523F72FAA5E15C0X"));
    EXPECT_FALSE(Index::key("e523f72faa5e15c0"));  // ours are upper case
    EXPECT_FALSE(Index::key("E523F72FAA5E15CG"));
}

TEST(Index, TakesTheEarliestDueOfOneDestinationOnly) {
    Index ix;
    ix.add(qid(1), "a.test", at(0), at(30), 0);
    ix.add(qid(2), "a.test", at(0), at(10), 0);
    ix.add(qid(3), "b.test", at(0), at(5), 0);
    ix.add(qid(4), "a.test", at(0), at(20), 0);
    auto a = ix.dest("a.test");
    EXPECT_EQ(ix.waiting(a), 3u);
    EXPECT_EQ(ix.earliest(a), at(10));
    EXPECT_FALSE(ix.take_due(a, at(9)));  // nothing due yet
    EXPECT_EQ(ix.take_due(a, at(25)), Index::key(qid(2)));
    EXPECT_EQ(ix.take_due(a, at(25)), Index::key(qid(4)));
    EXPECT_FALSE(ix.take_due(a, at(25)));
    EXPECT_TRUE(ix.find(*Index::key(qid(2)))->in_flight);
    EXPECT_EQ(ix.waiting(a), 1u);
    EXPECT_EQ(ix.waiting(ix.dest("b.test")), 1u);
}

TEST(Index, AddRefusesDuplicatesAndForeignIds) {
    Index ix;
    EXPECT_TRUE(ix.add(qid(1), "a.test", at(0), at(0), 0));
    EXPECT_FALSE(ix.add(qid(1), "a.test", at(0), at(0), 0));
    EXPECT_FALSE(ix.add("not-a-queue-id", "a.test", at(0), at(0), 0));
    EXPECT_EQ(ix.size(), 1u);
}

TEST(Index, RequeueCountsTheAttemptAndMakesItDueAgain) {
    Index ix;
    ix.add(qid(1), "a.test", at(0), at(0), 2);
    auto a = ix.dest("a.test");
    auto k = *ix.take_due(a, at(0));
    ix.requeue(k, at(60), true);
    const auto* e = ix.find(k);
    EXPECT_FALSE(e->in_flight);
    EXPECT_EQ(e->attempts, 3);
    EXPECT_EQ(e->next, at(60));
    EXPECT_FALSE(ix.take_due(a, at(59)));
    EXPECT_EQ(ix.take_due(a, at(60)), k);
}

TEST(Index, ExpiryTakesTheOldestNotInFlightAndRequeueRestoresIt) {
    Index ix;
    ix.add(qid(1), "a.test", at(0), at(500), 0);
    ix.add(qid(2), "a.test", at(5), at(500), 0);
    ix.add(qid(3), "a.test", at(50), at(500), 0);
    auto a = ix.dest("a.test");
    EXPECT_EQ(ix.oldest(), at(0));
    auto busy = *ix.take_due(a, at(500));  // qid(1) or another: all due at 500, key order
    EXPECT_EQ(busy, *Index::key(qid(1)));
    // Deadline 10: qid(1) is in flight (skipped and dropped from the order), qid(2) expires.
    EXPECT_EQ(ix.take_expired(at(10)), Index::key(qid(2)));
    EXPECT_FALSE(ix.take_expired(at(10)));
    EXPECT_EQ(ix.waiting(a), 1u);  // qid(3) only: qid(2) left the due order too
    ix.requeue(busy, at(600), true);
    EXPECT_EQ(ix.take_expired(at(10)), busy);  // back in the expiry order
}

TEST(Index, RemoveKeepsAnInFlightEntryWhenAsked) {
    Index ix;
    ix.add(qid(1), "a.test", at(0), at(0), 0);
    ix.add(qid(2), "a.test", at(0), at(0), 0);
    auto a = ix.dest("a.test");
    auto k1 = *ix.take_due(a, at(0));
    ix.remove(k1, true);
    EXPECT_NE(ix.find(k1), nullptr);  // its attempt is running and will remove it
    auto k2 = *Index::key(qid(2));
    ix.remove(k2, true);  // not in flight: gone
    EXPECT_EQ(ix.find(k2), nullptr);
    EXPECT_FALSE(ix.take_due(a, at(0)));
    ix.remove(k1);
    EXPECT_EQ(ix.size(), 0u);
}

TEST(Index, DueAllMakesEveryWaitingMessageDueNow) {
    Index ix;
    for (int i = 0; i < 5; ++i) ix.add(qid(i), "a.test", at(0), at(100 + i), 0);
    ix.add(qid(9), "b.test", at(0), at(100), 0);
    auto a = ix.dest("a.test");
    EXPECT_EQ(ix.due_all(a), 5u);
    EXPECT_EQ(ix.earliest(a), TimePoint{});  // due now
    int taken = 0;
    while (ix.take_due(a, at(1))) ++taken;
    EXPECT_EQ(taken, 5);
    EXPECT_FALSE(ix.take_due(ix.dest("b.test"), at(1)));
}

TEST(Index, ManyMessagesComeOutInDueOrder) {
    Index ix;
    const int n = 20000;
    for (int i = 0; i < n; ++i) ix.add(qid(i), "a.test", at(0), at((i * 7919) % n), 0);
    auto a = ix.dest("a.test");
    TimePoint last{};
    int taken = 0;
    while (auto k = ix.take_due(a, at(n))) {
        EXPECT_LE(last, ix.find(*k)->next);
        last = ix.find(*k)->next;
        ++taken;
    }
    EXPECT_EQ(taken, n);
}

TEST(Index, AFlushedMessageThatFailsAgainWaitsForItsBackoff) {
    Index ix;
    ix.add(qid(1), "a.test", at(0), at(1000), 0);
    ix.add(qid(2), "a.test", at(0), at(2000), 0);
    auto a = ix.dest("a.test");
    ix.due_all(a);
    auto k = *ix.take_due(a, at(1));
    ix.requeue(k, at(60), true);  // tried, deferred: back in the time order, not flushed
    EXPECT_EQ(ix.take_due(a, at(1)), Index::key(qid(2)));  // the other flushed one
    EXPECT_FALSE(ix.take_due(a, at(59)));
    EXPECT_EQ(ix.take_due(a, at(60)), k);
}

TEST(Index, AMessageInFlightDuringAFlushComesBackDueNow) {
    Index ix;
    ix.add(qid(1), "a.test", at(0), at(0), 0);
    ix.add(qid(2), "a.test", at(0), at(0), 0);
    auto a = ix.dest("a.test");
    auto k1 = *ix.take_due(a, at(0));  // being tried when the flush comes
    auto k2 = *ix.take_due(a, at(0));
    EXPECT_EQ(ix.due_all(a), 2u);    // both held: neither is waiting, both are counted
    ix.requeue(k1, at(3600), true);  // its attempt failed: due now all the same
    EXPECT_EQ(ix.earliest(a), TimePoint{});
    EXPECT_EQ(ix.take_due(a, at(1)), k1);
    ix.requeue(k1, at(3600), true);  // tried after the flush and failed: waits its backoff
    ix.requeue(k2, at(3600), true);  // (k2 was in flight during the flush: due now)
    EXPECT_EQ(ix.take_due(a, at(1)), k2);
    EXPECT_FALSE(ix.take_due(a, at(1)));
    EXPECT_EQ(ix.take_due(a, at(3600)), k1);
}

TEST(Index, FlushedMessagesCanBeRemovedExpiredAndFlushedAgain) {
    Index ix;
    for (int i = 0; i < 4; ++i) ix.add(qid(i), "a.test", at(i), at(1000 + i), 0);
    auto a = ix.dest("a.test");
    EXPECT_EQ(ix.due_all(a), 4u);
    ix.remove(*Index::key(qid(1)));
    EXPECT_EQ(ix.take_expired(at(0)), Index::key(qid(0)));  // the oldest, out of the flushed order
    ix.add(qid(9), "a.test", at(9), at(5000), 0);
    EXPECT_EQ(ix.due_all(a), 4u);  // merged: 2, 3 and 9 (and 0, in flight)
    EXPECT_EQ(ix.waiting(a), 3u);
    std::vector<Index::Key> got;
    while (auto k = ix.take_due(a, at(0))) got.push_back(*k);
    EXPECT_EQ(got, (std::vector<Index::Key>{*Index::key(qid(2)), *Index::key(qid(3)),
                                            *Index::key(qid(9))}));
}
