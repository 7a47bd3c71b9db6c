#include "smtp/server.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "netio/netio.hpp"
#include "netio/stream.hpp"
#include "smtp/session.hpp"

namespace bmx::smtp {

namespace asio = boost::asio;
using asio::ip::tcp;

Server::Server(asio::io_context& io, const Config& cfg, Queue& queue, policy::Checker& checker)
    : io_(io), cfg_(cfg), queue_(queue), checker_(checker) {}

void Server::start() {
    if (!cfg_.tls_cert.empty()) tls_ = netio::server_context(cfg_.tls_cert, cfg_.tls_key);
    for (const auto& hp : cfg_.listen) {
        auto addr = asio::ip::make_address(hp.host);
        tcp::endpoint ep(addr, hp.port);
        auto a = std::make_unique<tcp::acceptor>(io_);
        a->open(ep.protocol());
        a->set_option(tcp::acceptor::reuse_address(true));
        a->bind(ep);
        a->listen(asio::socket_base::max_listen_connections);
        spdlog::info("listening for SMTP on {}", hp.text());
        asio::co_spawn(io_, accept_loop(*a), asio::detached);
        acceptors_.push_back(std::move(a));
    }
}

void Server::stop() {
    stopping_ = true;
    for (auto& a : acceptors_) {
        boost::system::error_code ec;
        a->close(ec);
    }
    auto copy = sessions_;
    for (auto* s : copy) s->stop();
}

bool Server::stressed() const {
    return sessions_.size() * 100 >= std::size_t{cfg_.max_connections} * cfg_.stress_threshold;
}

bool Server::evict_idlest() {
    Session* idlest = nullptr;
    auto since = std::chrono::steady_clock::now() - std::chrono::seconds(1);
    for (auto* s : sessions_) {
        const auto idle = s->idle_since();
        if (idle && *idle <= since) {
            since = *idle;
            idlest = s;
        }
    }
    if (!idlest) return false;
    ++evicted_;
    if (evicted_ == 1 || evicted_ % 1000 == 0)
        spdlog::warn("at smtp.max_connections = {}: closing idle sessions to make room ({} so far)",
                     cfg_.max_connections, evicted_);
    idlest->evict();
    return true;
}

asio::awaitable<void> Server::accept_loop(tcp::acceptor& acceptor) {
    while (!stopping_) {
        auto [ec, sock] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec) {
            if (stopping_ || ec == asio::error::operation_aborted) co_return;
            spdlog::warn("accept: {}", ec.message());
            continue;  // e.g. EMFILE: the next accept may succeed once sessions end
        }
        // At the cap, the session idle longest (waiting for a command for a second or more)
        // makes room: idle connections from many addresses cannot lock real senders out.
        if (sessions_.size() >= cfg_.max_connections && evict_idlest()) {
        } else if (sessions_.size() >= cfg_.max_connections) {
            spdlog::warn("too many connections ({}), refusing [{}]", sessions_.size(),
                         sock.remote_endpoint(ec).address().to_string());
            asio::co_spawn(
                io_,
                [s = std::move(sock), host = cfg_.hostname]() mutable -> asio::awaitable<void> {
                    co_await netio::write_all(
                        s, "421 4.7.0 " + host + " Too many connections, try again later\r\n");
                    boost::system::error_code e;
                    s.close(e);
                },
                asio::detached);
            continue;
        }
        auto session = std::make_unique<Session>(*this, std::move(sock));
        asio::co_spawn(
            io_, [s = std::move(session)]() -> asio::awaitable<void> { co_await s->run(); },
            asio::detached);
    }
}

}  // namespace bmx::smtp
