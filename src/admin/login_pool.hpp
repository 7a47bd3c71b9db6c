// admin/login_pool: the login form's password checks, on a few threads of their own (Argon2id
// costs ~0.1 s and 64 MiB on purpose), in the order admin/check_queue keeps: bounded, fair per
// address, an address with no recent failures first. A check that finds no room is answered
// Busy at once (the login page says 429 and Retry-After), so a flood of logins costs memory and
// time the pool bounds, never the event loop's.
// It must never run Argon2 on the event loop, keep a password after its check, or log one.
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cstdint>
#include <map>
#include <string>

#include "admin/check_queue.hpp"

namespace bmx::admin {

class LoginPool {
  public:
    struct Limits {
        std::size_t threads = 2;      // checks at once
        std::size_t queue = 32;       // checks waiting for a thread
        std::size_t per_address = 4;  // of one address, waiting or running
    };
    LoginPool(boost::asio::io_context& io, Limits limits);  // answers are delivered on `io`
    ~LoginPool();                                           // waits for the running checks

    enum class Verdict { Right, Wrong, Busy };
    // Whether a check would find room now: asked before anything is written for it, so that a
    // flood is turned away without costing the store a transaction each.
    bool has_room(const std::string& address, bool clean) const {
        return queue_.has_room(address, clean);
    }
    // An empty `hash` (an unknown user) costs the same time as a wrong password, and is Wrong.
    // `clean`: the address has had no failed login lately. Called on the event loop only.
    // (References, not copies: GCC 12 may destroy a coroutine's by-value arguments twice.)
    boost::asio::awaitable<Verdict> check(const std::string& address, bool clean,
                                          const std::string& hash, const std::string& password);

  private:
    struct Job {
        std::string hash, password;
        boost::asio::any_completion_handler<void(Verdict)> done;
    };
    void start(std::uint64_t id, const std::string& address, bool clean, Job job);
    void run_next();
    void finish(std::uint64_t id, Verdict v);

    boost::asio::io_context& io_;
    Limits limits_;
    CheckQueue queue_;
    std::map<std::uint64_t, Job> jobs_;  // admitted, waiting or running
    std::size_t running_ = 0;
    std::uint64_t next_id_ = 0;
    boost::asio::thread_pool threads_;
};

}  // namespace bmx::admin
