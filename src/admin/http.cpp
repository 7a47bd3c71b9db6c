#include "admin/http.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include "netio/stream.hpp"

namespace bmx::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;

Listener::Listener(asio::io_context& io, std::vector<HostPort> listen, const std::string& cert,
                   const std::string& key, Handler handler)
    : io_(io), listen_(std::move(listen)), handler_(std::move(handler)) {
    if (!cert.empty()) tls_ = netio::server_context(cert, key);
}

Listener::~Listener() = default;

void Listener::start() {
    for (const auto& hp : listen_) {
        tcp::endpoint ep(asio::ip::make_address(hp.host), hp.port);
        auto a = std::make_unique<tcp::acceptor>(io_);
        a->open(ep.protocol());
        a->set_option(tcp::acceptor::reuse_address(true));
        a->bind(ep);
        a->listen();
        spdlog::info("listening for admin {} on {}", tls_ ? "HTTPS" : "HTTP", hp.text());
        acceptors_.push_back(std::move(a));
    }
    for (auto& a : acceptors_) asio::co_spawn(io_, accept_loop(*a), asio::detached);
}

void Listener::stop() {
    stopping_ = true;
    for (auto& a : acceptors_) {
        boost::system::error_code ec;
        a->close(ec);
    }
}

asio::awaitable<void> Listener::accept_loop(tcp::acceptor& acceptor) {
    while (!stopping_) {
        auto [ec, sock] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec) {
            if (ec == asio::error::operation_aborted || stopping_) co_return;
            continue;
        }
        if (open_ >= kMaxConnections) {
            boost::system::error_code ignored;
            sock.close(ignored);
            continue;
        }
        asio::co_spawn(io_, serve(std::move(sock)), asio::detached);
    }
}

asio::awaitable<void> Listener::serve(tcp::socket sock) {
    ++open_;
    struct Count {
        std::size_t& n;
        ~Count() { --n; }
    } count{open_};
    boost::system::error_code ec;
    Peer peer{sock.remote_endpoint(ec).address().to_string(), tls_ != nullptr};
    if (ec) co_return;
    beast::tcp_stream stream(std::move(sock));
    if (!tls_) {
        co_await exchange(stream, peer);
        co_return;
    }
    beast::ssl_stream<beast::tcp_stream> tls(std::move(stream), *tls_);
    beast::get_lowest_layer(tls).expires_after(std::chrono::seconds(30));
    auto [hec] = co_await tls.async_handshake(asio::ssl::stream_base::server,
                                              asio::as_tuple(asio::use_awaitable));
    if (hec) co_return;
    co_await exchange(tls, peer);
    beast::get_lowest_layer(tls).expires_after(std::chrono::seconds(5));
    co_await tls.async_shutdown(asio::as_tuple(asio::use_awaitable));
}

template <class Stream>
asio::awaitable<void> Listener::exchange(Stream& stream, const Peer& peer) {
    beast::flat_buffer buffer;
    while (!stopping_) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(16 * 1024);
        parser.body_limit(kMaxBody);
        beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(60));
        auto [ec, n] =
            co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
        if (ec) {
            if (ec == http::error::body_limit || ec == http::error::header_limit) {
                Response r{ec == http::error::body_limit
                               ? http::status::payload_too_large
                               : http::status::request_header_fields_too_large,
                           11};
                r.set(http::field::content_type, "application/json");
                r.body() = R"({"error": "request too large"})";
                r.keep_alive(false);
                r.prepare_payload();
                co_await http::async_write(stream, r, asio::as_tuple(asio::use_awaitable));
            }
            co_return;
        }
        const Request& req = parser.get();
        Response res = co_await handler_(req, peer);
        res.version(req.version());
        res.keep_alive(req.keep_alive() && !stopping_);
        res.set(http::field::server, "backupmx");
        res.prepare_payload();
        beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(60));
        auto [wec, wn] =
            co_await http::async_write(stream, res, asio::as_tuple(asio::use_awaitable));
        if (wec || !res.keep_alive()) co_return;
    }
}

}  // namespace bmx::admin
