#include "control/control.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <istream>

namespace bmx::control {

namespace asio = boost::asio;
using asio::local::stream_protocol;

Server::Server(asio::io_context& io, std::string path, Handler handler)
    : io_(io), path_(std::move(path)), handler_(std::move(handler)) {}

Server::~Server() {
    stop();
}

void Server::start() {
    // A stale socket from a killed server would block bind: replace it, but only if nobody answers.
    if (request(path_, "ping")) throw std::runtime_error("another server answers on " + path_);
    ::unlink(path_.c_str());
    acceptor_ = std::make_unique<stream_protocol::acceptor>(io_);
    stream_protocol::endpoint ep(path_);
    acceptor_->open(ep.protocol());
    acceptor_->bind(ep);
    ::chmod(path_.c_str(), 0600);
    acceptor_->listen();
    asio::co_spawn(io_, accept_loop(), asio::detached);
}

void Server::stop() {
    if (!acceptor_) return;
    boost::system::error_code ec;
    acceptor_->close(ec);
    acceptor_.reset();
    ::unlink(path_.c_str());
}

namespace {

// One request per connection; a silent client gets 10 s, then is dropped.
asio::awaitable<void> answer(stream_protocol::socket sock, Server::Handler& handler) {
    asio::steady_timer deadline(sock.get_executor(), std::chrono::seconds(10));
    deadline.async_wait([&sock](boost::system::error_code ec) {
        if (!ec) sock.close();
    });
    asio::streambuf buf(4096);  // bounded: a control line is short
    auto [rec, n] =
        co_await asio::async_read_until(sock, buf, '\n', asio::as_tuple(asio::use_awaitable));
    if (!rec) {
        std::istream is(&buf);
        std::string line;
        std::getline(is, line);
        std::string reply = handler(line) + "\n";
        co_await asio::async_write(sock, asio::buffer(reply), asio::as_tuple(asio::use_awaitable));
    }
    deadline.cancel();
}

}  // namespace

asio::awaitable<void> Server::accept_loop() {
    auto* acceptor = acceptor_.get();
    for (;;) {
        auto [ec, sock] = co_await acceptor->async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec) co_return;
        asio::co_spawn(io_, answer(std::move(sock), handler_), asio::detached);
    }
}

std::optional<std::string> request(const std::string& path, const std::string& line) {
    try {
        asio::io_context io;
        stream_protocol::socket s(io);
        s.connect(stream_protocol::endpoint(path));
        std::string msg = line + "\n";
        asio::write(s, asio::buffer(msg));
        asio::streambuf buf(16 << 20);  // a reply may list every domain ("status")
        asio::read_until(s, buf, '\n');
        std::istream is(&buf);
        std::string reply;
        std::getline(is, reply);
        return reply;
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

}  // namespace bmx::control
