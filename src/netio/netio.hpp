// netio: the few socket habits the SMTP server and client share — a deadline watchdog that ends a
// connection's coroutine when its current read or write overruns, and line-buffered reads.
// It must never interpret protocol bytes; parsing belongs to smtp/ and delivery/.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <string>

// House rule for every coroutine in backupmx: never put `co_await` inside an `if`/`while`
// condition; bind the result to a local first. GCC 12 (Debian 12's compiler) miscompiles
// `if (co_await f()) co_return x;` into a frame that resumes at a bad state (SIGILL); found here
// with a probe of smtp-sink, fixed by this rule. Likewise, never pass a temporary with a destructor
// (a std::string or std::function built in the call) as a by-value argument of a coroutine inside
// a co_await: GCC 12 may destroy it twice (found with ASan). Name it first, or take a reference.
namespace bmx::netio {

// Completes when `deadline` has passed. Use as `co_await (work() || watchdog(deadline))`: the
// operator cancels `work` when the deadline fires; moving the expiry forward keeps it waiting.
boost::asio::awaitable<void> watchdog(boost::asio::steady_timer& deadline);

// Reads more bytes into `buf` (appending). Returns false on EOF or error.
boost::asio::awaitable<bool> read_more(boost::asio::ip::tcp::socket& s, std::string& buf);

// Writes all of `data`. Returns false on error.
boost::asio::awaitable<bool> write_all(boost::asio::ip::tcp::socket& s, std::string_view data);

}  // namespace bmx::netio
