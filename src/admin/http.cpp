#include "admin/http.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include "netio/stream.hpp"
#include "util/util.hpp"

namespace bmx::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using SteadyClock = std::chrono::steady_clock;

namespace {

Response plain_error(http::status st, std::string_view msg) {
    Response r{st, 11};
    r.set(http::field::content_type, "application/json");
    r.set(http::field::server, "backupmx");
    r.body() = "{\"error\": \"" + printable(msg) + "\"}\n";
    r.keep_alive(false);
    r.prepare_payload();
    return r;
}

// What the client got wrong, when the parser says it (not a closed or timed-out connection).
bool client_error(const boost::system::error_code& ec) {
    static const auto& category = http::make_error_code(http::error::bad_version).category();
    return ec.category() == category && ec != http::error::end_of_stream &&
           ec != http::error::partial_message;
}

// Refusals at the connection caps, logged at most once a second (a flood writes no flood).
void log_refusal(const std::string& ip, const char* why) {
    static SteadyClock::time_point last;
    static std::size_t more = 0;
    const auto t = SteadyClock::now();
    if (t - last < std::chrono::seconds(1)) {
        ++more;
        return;
    }
    spdlog::info("admin: connection from {} refused: {}{}", printable(ip), why,
                 more ? " (and " + std::to_string(more) + " more since the last such line)" : "");
    last = t;
    more = 0;
}

}  // namespace

Listener::Listener(asio::io_context& io, std::vector<HostPort> listen, const std::string& cert,
                   const std::string& key, Handler handler, ListenerLimits limits)
    : io_(io), listen_(std::move(listen)), handler_(std::move(handler)), limits_(limits) {
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
    for (auto& c : conns_)
        if (c.state == Conn::State::Idle && c.stream && !c.closed) {
            boost::system::error_code ec;
            c.stream->socket().close(ec);
        }
}

bool Listener::make_room() {
    Conn* pick = nullptr;
    for (auto state : {Conn::State::Idle, Conn::State::Reading}) {
        for (auto& c : conns_)
            if (c.state == state && c.stream && !c.closed && (!pick || c.since < pick->since))
                pick = &c;
        if (pick) break;
    }
    if (!pick) return false;
    boost::system::error_code ec;
    pick->stream->socket().close(ec);  // its coroutine ends on operation_aborted
    pick->closed = true;
    --live_;
    return true;
}

void Listener::refuse(tcp::socket& sock) {
    if (!tls_) {  // a word, if the socket takes it at once; never a wait
        static const std::string kBusy =
            "HTTP/1.1 503 Service Unavailable\r\nServer: backupmx\r\nRetry-After: 5\r\n"
            "Connection: close\r\nContent-Type: text/plain\r\nContent-Length: 39\r\n\r\n"
            "too many connections; try again later\r\n";
        boost::system::error_code ec;
        sock.non_blocking(true, ec);
        if (!ec) sock.write_some(asio::buffer(kBusy), ec);
    }
    boost::system::error_code ignored;
    sock.shutdown(tcp::socket::shutdown_both, ignored);
    sock.close(ignored);
}

asio::awaitable<void> Listener::accept_loop(tcp::acceptor& acceptor) {
    while (!stopping_) {
        auto [ec, sock] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec) {
            if (ec == asio::error::operation_aborted || stopping_) co_return;
            continue;
        }
        boost::system::error_code rec;
        const std::string ip = sock.remote_endpoint(rec).address().to_string();
        if (rec) continue;
        if (per_address_[ip] >= limits_.per_address) {
            log_refusal(ip,
                        "too many connections from this address ([admin] "
                        "max_connections_per_address)");
            refuse(sock);
            continue;
        }
        if (live_ >= limits_.max_connections && !make_room()) {
            log_refusal(ip, "too many connections, none idle or reading ([admin] max_connections)");
            refuse(sock);
            continue;
        }
        // Counted before the coroutine first runs, so a burst of accepts cannot pass the caps.
        auto conn = conns_.insert(conns_.end(), Conn{ip});
        conn->set(Conn::State::Idle);
        ++per_address_[ip];
        ++live_;
        asio::co_spawn(io_, serve(std::move(sock), conn), asio::detached);
    }
}

asio::awaitable<void> Listener::serve(tcp::socket sock, std::list<Conn>::iterator it) {
    struct Forget {
        Listener& l;
        std::list<Conn>::iterator it;
        ~Forget() {
            auto pa = l.per_address_.find(it->ip);
            if (pa != l.per_address_.end() && --pa->second == 0) l.per_address_.erase(pa);
            if (!it->closed) --l.live_;
            l.conns_.erase(it);
        }
    } forget{*this, it};
    if (it->closed) co_return;
    Peer peer{it->ip, tls_ != nullptr};
    beast::tcp_stream stream(std::move(sock));
    it->stream = &stream;
    if (!tls_) {
        co_await exchange(stream, peer, *it);
        co_return;
    }
    beast::ssl_stream<beast::tcp_stream> tls(std::move(stream), *tls_);
    it->stream = &beast::get_lowest_layer(tls);
    beast::get_lowest_layer(tls).expires_after(limits_.header_timeout);
    auto [hec] = co_await tls.async_handshake(asio::ssl::stream_base::server,
                                              asio::as_tuple(asio::use_awaitable));
    if (hec || it->closed) co_return;
    co_await exchange(tls, peer, *it);
    if (it->closed) co_return;  // closed to make room
    it->set(Conn::State::Busy);
    beast::get_lowest_layer(tls).expires_after(std::chrono::seconds(5));
    co_await tls.async_shutdown(asio::as_tuple(asio::use_awaitable));
}

template <class Stream>
asio::awaitable<void> Listener::exchange(Stream& stream, const Peer& peer, Conn& conn) {
    beast::flat_buffer buffer;
    auto& low = beast::get_lowest_layer(stream);
    // A new connection has header_timeout for its first request's header, from the accept
    // (the TLS handshake included); a kept-alive one idle_timeout for the first byte of the next.
    bool first = true;
    if (!tls_) low.expires_after(limits_.header_timeout);
    while (!stopping_) {
        if (buffer.size() == 0) {
            conn.set(Conn::State::Idle);
            if (!first) low.expires_after(limits_.idle_timeout);
            auto [ec, n] = co_await stream.async_read_some(buffer.prepare(4096),
                                                           asio::as_tuple(asio::use_awaitable));
            if (ec || conn.closed) co_return;  // closed, timed out, or closed to make room
            buffer.commit(n);
            if (!first) low.expires_after(limits_.header_timeout);
        }
        conn.set(Conn::State::Reading);
        first = false;
        http::request_parser<http::string_body> parser;
        parser.header_limit(16 * 1024);
        parser.body_limit(kMaxBody);
        auto [ec, n] = co_await http::async_read_header(stream, buffer, parser,
                                                        asio::as_tuple(asio::use_awaitable));
        if (!ec && parser.get().version() != 10 && parser.get().version() != 11)
            ec = http::error::bad_version;  // HTTP/1.0 and 1.1 only
        if (!ec && !parser.is_done()) {
            low.expires_after(kBodyTimeout);
            std::tie(ec, n) = co_await http::async_read(stream, buffer, parser,
                                                        asio::as_tuple(asio::use_awaitable));
        }
        if (conn.closed) co_return;
        conn.set(Conn::State::Busy);
        if (ec) {
            std::optional<Response> r;
            if (ec == http::error::body_limit)
                r = plain_error(http::status::payload_too_large, "request too large");
            else if (ec == http::error::header_limit)
                r = plain_error(http::status::request_header_fields_too_large, "request too large");
            else if (client_error(ec))
                r = plain_error(http::status::bad_request, "bad request: " + ec.message());
            if (r) {
                spdlog::info("admin: bad request from {}: {} (answered {})", printable(peer.ip),
                             printable(ec.message()), r->result_int());
                low.expires_after(std::chrono::seconds(5));
                auto [wec, wn] =
                    co_await http::async_write(stream, *r, asio::as_tuple(asio::use_awaitable));
                if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
                    // Read what the client still sends for a moment, so that closing does not
                    // reset the connection before it has read the answer.
                    boost::system::error_code ignored;
                    low.socket().shutdown(tcp::socket::shutdown_send, ignored);
                    low.expires_after(std::chrono::seconds(1));
                    for (std::size_t drained = 0; !wec && drained < kMaxBody;) {
                        buffer.clear();
                        auto [dec, dn] = co_await stream.async_read_some(
                            buffer.prepare(4096), asio::as_tuple(asio::use_awaitable));
                        if (dec) break;
                        drained += dn;
                    }
                }
            }
            co_return;
        }
        const Request& req = parser.get();
        Response res = co_await handler_(req, peer);
        res.version(req.version());
        res.keep_alive(req.keep_alive() && !stopping_);
        res.set(http::field::server, "backupmx");
        res.prepare_payload();
        low.expires_after(kBodyTimeout);
        auto [wec, wn] =
            co_await http::async_write(stream, res, asio::as_tuple(asio::use_awaitable));
        if (wec || !res.keep_alive()) co_return;
    }
}

}  // namespace bmx::admin
