// scheduler/index: the in-memory index the scheduler decides from — per message only its key,
// destination, times and attempt count (about 120 bytes with the hooks that order it), per
// destination the messages ordered by next attempt, and all messages ordered by arrival for
// expiry. Every decision (the next due message of a destination, the next to expire, putting one
// back) costs O(log n) at most: nothing here scans the queue. The orders are Boost.Intrusive sets
// whose hooks live in the entry itself, so a message is one allocation, not three.
// It must never hold message contents, and never do I/O.
#pragma once

#include <boost/intrusive/set.hpp>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "util/util.hpp"

namespace bmx {

class Index {
  public:
    using Key = std::uint64_t;  // a queue id (16 hex digits, see new_queue_id) as a number
    using Dest = std::uint32_t;

    using Hook = boost::intrusive::set_member_hook<
        boost::intrusive::link_mode<boost::intrusive::auto_unlink>,
        boost::intrusive::optimize_size<true>>;
    struct Entry {
        Key key = 0;
        Dest dest = 0;
        int attempts = 0;
        TimePoint received{}, next{};
        bool in_flight = false;
        std::uint32_t flush_seen = 0;  // its destination's flushes when it was taken
        Hook order;   // in its destination's due or flushed order (unlinked while in flight)
        Hook expiry;  // in the expiry order (take_expired unlinks in-flight ones)
    };

    static std::optional<Key> key(std::string_view id);  // nullopt: not a queue id
    static std::string id(Key k);

    Dest dest(const std::string& domain);  // interned: the same domain, the same number
    const std::string& domain(Dest d) const { return domains_.at(d); }

    // False when `id` is not a queue id or is indexed already.
    bool add(std::string_view id, const std::string& domain, TimePoint received, TimePoint next,
             int attempts);
    Entry* find(Key k);
    std::size_t size() const { return entries_.size(); }

    // The destination's earliest message due at or before `t` that is not in flight: leaves the
    // due order and is marked in flight.
    std::optional<Key> take_due(Dest d, TimePoint t);
    std::optional<TimePoint> earliest(Dest d) const;  // next attempt of the earliest waiting one
    std::size_t waiting(Dest d) const;                // messages in the due order
    std::size_t total(Dest d) const { return d < due_.size() ? due_[d].total : 0; }

    // The oldest message received at or before `deadline` that is not in flight, marked in flight
    // and out of the due order. In-flight ones met on the way leave the expiry order (requeue puts
    // them back).
    std::optional<Key> take_expired(TimePoint deadline);
    std::optional<TimePoint> oldest() const;  // received_at of the oldest in the expiry order

    // After an attempt that left recipients pending: due again at `next`, no longer in flight;
    // due now instead when its destination was flushed while it was in flight (the flush asked
    // for it too: its attempt had begun before).
    void requeue(Key k, TimePoint next, bool count_attempt);
    // Gone from the store (delivered, expired, deleted): out of every order. An in-flight entry
    // stays known when `unless_in_flight` (its attempt will remove it).
    void remove(Key k, bool unless_in_flight = false);
    // Every waiting message of `d` due now (a flush, or the primary is back): O(1), the due order
    // is spliced whole into the flushed order, which take_due drains first; those in flight come
    // back due now (see requeue). Returns how many: waiting and in flight.
    std::size_t due_all(Dest d);

  private:
    struct ByNext {
        bool operator()(const Entry& a, const Entry& b) const {
            return a.next < b.next || (a.next == b.next && a.key < b.key);
        }
    };
    struct ByReceived {
        bool operator()(const Entry& a, const Entry& b) const {
            return a.received < b.received || (a.received == b.received && a.key < b.key);
        }
    };
    template <Hook Entry::*H, class Less>
    using Order = boost::intrusive::multiset<Entry, boost::intrusive::member_hook<Entry, Hook, H>,
                                             boost::intrusive::compare<Less>,
                                             boost::intrusive::constant_time_size<false>>;
    using DueOrder = Order<&Entry::order, ByNext>;
    using ExpiryOrder = Order<&Entry::expiry, ByReceived>;
    struct Queue {
        DueOrder flushed;        // due now whatever their time (kept in their order)
        DueOrder due;            // by next attempt
        std::size_t linked = 0;  // entries in either order
        std::size_t total = 0;   // every entry of the destination, in flight too
        std::uint32_t flushes = 0;
    };
    void unlink_order(Entry& e);  // out of its destination's orders, if in one
    void link_due(Entry& e);
    void take(Entry& e);  // out of its orders and in flight

    std::unordered_map<Key, Entry> entries_;  // node-based: entries never move
    std::deque<Queue> due_;                   // by destination (a deque: never moved)
    ExpiryOrder expiry_;                      // by received_at
    std::vector<std::string> domains_;
    std::unordered_map<std::string, Dest> dest_ids_;
};

}  // namespace bmx
