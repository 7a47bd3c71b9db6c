// admin/check_queue: the order in which login password checks get one of the few Argon2 threads
// (admin/login_pool runs them), sans I/O: ids and addresses in, the next id out. Bounded: at most
// `capacity` checks wait, and at most `per_address` of one address wait or run, so one address
// cannot take all the slots. Served first: a check from an address with no recent failed login
// and nothing else waiting or running (an operator at their usual desk); then the others, one
// address after another in turn. A first-served check that finds the queue full takes the place
// of the newest check of the address with the most waiting, which is refused instead.
// It must never hold a password or a hash, and never admit past its two bounds.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>

namespace bmx::admin {

class CheckQueue {
  public:
    CheckQueue(std::size_t capacity, std::size_t per_address);

    struct Admission {
        bool admitted = false;
        std::optional<std::uint64_t> displaced;  // refused to make room for this one
    };
    // `clean`: the address has had no failed login lately.
    Admission push(std::uint64_t id, const std::string& address, bool clean);
    bool has_room(const std::string& address, bool clean) const;  // would push admit it now?
    std::optional<std::uint64_t> pop();  // the next to run; it counts for its address until done
    void done(std::uint64_t id);         // a popped check has finished
    std::size_t waiting() const { return waiting_; }

  private:
    struct Lane {
        std::deque<std::string> turn;                              // addresses, in turn
        std::map<std::string, std::deque<std::uint64_t>> waiting;  // per address, oldest first
        bool empty() const { return turn.empty(); }
    };
    static std::uint64_t take(Lane& lane);
    std::optional<std::uint64_t> displace_from(Lane& lane);
    void release(std::uint64_t id);

    std::size_t capacity_, per_address_;
    Lane first_, rest_;
    std::map<std::string, std::size_t> held_;          // per address: waiting and running
    std::map<std::uint64_t, std::string> address_of_;  // waiting and running
    std::size_t waiting_ = 0;
};

}  // namespace bmx::admin
