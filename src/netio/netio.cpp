#include "netio/netio.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

namespace bmx::netio {

namespace asio = boost::asio;

asio::awaitable<void> watchdog(asio::steady_timer& deadline) {
    for (;;) {
        auto now = std::chrono::steady_clock::now();
        if (deadline.expiry() <= now) co_return;
        // Moving the expiry cancels this wait (operation_aborted): loop and look again.
        co_await deadline.async_wait(asio::as_tuple(asio::use_awaitable));
    }
}

asio::awaitable<bool> read_more(asio::ip::tcp::socket& s, std::string& buf) {
    char tmp[8192];
    auto [ec, n] =
        co_await s.async_read_some(asio::buffer(tmp), asio::as_tuple(asio::use_awaitable));
    if (ec || n == 0) co_return false;
    buf.append(tmp, n);
    co_return true;
}

asio::awaitable<bool> write_all(asio::ip::tcp::socket& s, std::string_view data) {
    auto [ec, n] = co_await asio::async_write(s, asio::buffer(data.data(), data.size()),
                                              asio::as_tuple(asio::use_awaitable));
    co_return !ec;
}

}  // namespace bmx::netio
