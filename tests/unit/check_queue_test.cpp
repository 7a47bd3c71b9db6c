// admin/check_queue: the order of login password checks — bounded, fair per address, an address
// with no recent failures first — fed ids with no thread and no socket.
#include "admin/check_queue.hpp"

#include <gtest/gtest.h>

#include <vector>

using bmx::admin::CheckQueue;

namespace {

std::vector<std::uint64_t> drain(CheckQueue& q) {
    std::vector<std::uint64_t> out;
    while (auto id = q.pop()) {
        out.push_back(*id);
        q.done(*id);
    }
    return out;
}

}  // namespace

TEST(CheckQueue, OneAddressCannotTakeEverySlot) {
    CheckQueue q(10, 3);
    for (std::uint64_t i = 1; i <= 3; ++i) EXPECT_TRUE(q.push(i, "a", false).admitted);
    EXPECT_FALSE(q.push(4, "a", false).admitted);  // its share is taken
    EXPECT_TRUE(q.push(5, "b", false).admitted);   // others still get in
    // running counts too: one popped is not one freed
    auto first = q.pop();
    ASSERT_TRUE(first);
    EXPECT_FALSE(q.push(6, "a", false).admitted);
    q.done(*first);
    EXPECT_TRUE(q.push(7, "a", false).admitted);
}

TEST(CheckQueue, AddressesTakeTurns) {
    CheckQueue q(10, 10);
    for (std::uint64_t i = 1; i <= 4; ++i) q.push(i, "flood", false);
    q.push(10, "b", false);
    q.push(20, "c", false);
    EXPECT_EQ(drain(q), (std::vector<std::uint64_t>{1, 10, 20, 2, 3, 4}));
}

TEST(CheckQueue, AnAddressWithoutFailuresIsServedFirst) {
    CheckQueue q(10, 10);
    for (std::uint64_t i = 1; i <= 5; ++i) q.push(i, "attacker" + std::to_string(i), false);
    q.push(99, "operator", true);
    EXPECT_EQ(q.pop(), 99u);
    // a second check of the same clean address while the first runs is not first-served
    q.push(100, "operator", true);
    EXPECT_EQ(drain(q), (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 100}));
}

TEST(CheckQueue, AFullQueueIsRefusedButMakesRoomForACleanAddress) {
    CheckQueue q(4, 2);
    q.push(1, "a", false);
    q.push(2, "a", false);
    q.push(3, "b", false);
    q.push(4, "c", false);
    EXPECT_EQ(q.waiting(), 4u);
    EXPECT_FALSE(q.has_room("d", false));
    EXPECT_FALSE(q.push(5, "d", false).admitted);  // full
    EXPECT_FALSE(q.has_room("a", true));  // a clean address with a check in is not first-served
    EXPECT_TRUE(q.has_room("operator", true));
    auto a = q.push(6, "operator", true);
    EXPECT_TRUE(a.admitted);
    EXPECT_EQ(a.displaced, 2u);  // the newest of the address with the most waiting
    EXPECT_EQ(q.waiting(), 4u);
    EXPECT_EQ(drain(q), (std::vector<std::uint64_t>{6, 1, 3, 4}));
    // and "a" got its slot back
    EXPECT_TRUE(q.push(7, "a", false).admitted);
    EXPECT_TRUE(q.push(8, "a", false).admitted);
}

TEST(CheckQueue, AQueueFullOfCleanAddressesRefusesTheNextToo) {
    CheckQueue q(2, 2);
    q.push(1, "x", true);
    q.push(2, "y", true);
    auto a = q.push(3, "z", true);
    EXPECT_FALSE(a.admitted);
    EXPECT_FALSE(a.displaced);
}
