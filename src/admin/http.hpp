// admin/http: the admin listener's HTTP/1.1 plumbing on Boost.Beast, on the server's event loop —
// accept on the configured addresses (TLS when a certificate is set), read one request at a time
// (bounded in size and time), hand it to the router, write its answer, keep the connection alive.
// Bounded against idle and slow clients: at most `max_connections` at once and
// `per_address` from one address (more are refused at once); a request's header must arrive
// whole within `header_timeout`, a kept-alive connection may wait `idle_timeout` for its next
// request; at the cap, the connection idle longest (else the one reading a request longest) makes
// room for a new one, so idle or slow clients cannot keep the operator out. A request it cannot
// parse (a bad version, a bad or conflicting length, ...) is answered 400 and logged, then closed.
// It must never decide anything about a request itself (who may do what is the router's), nor
// write a client's bytes to the log.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace bmx::admin {

namespace http = boost::beast::http;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

struct Peer {
    std::string ip;
    bool tls = false;
};

// The router: called once per request; the references live until its answer is written.
using Handler = std::function<boost::asio::awaitable<Response>(const Request&, const Peer&)>;

struct ListenerLimits {
    std::size_t max_connections = 256;  // at once
    std::size_t per_address = 16;       // at once, from one address
    std::chrono::seconds header_timeout{10};
    std::chrono::seconds idle_timeout{30};
};

class Listener {
  public:
    Listener(boost::asio::io_context& io, std::vector<HostPort> listen, const std::string& cert,
             const std::string& key, Handler handler, ListenerLimits limits = {});
    ~Listener();
    void start();  // binds every address (throws when one cannot be bound), then accepts
    void stop();   // no new connections; idle ones close, busy ones after their current request
    bool tls() const { return tls_ != nullptr; }

    static constexpr std::size_t kMaxBody = 1 << 20;  // a JSON request is small
    static constexpr std::chrono::seconds kBodyTimeout{60};

    // An open connection, while its coroutine runs. Idle: waiting for a request's first byte;
    // Reading: the rest of the request; Busy: the router has it, or its answer is being written.
    // An Idle or Reading one may be closed to make room (then `closed`, until its coroutine ends).
    struct Conn {
        enum class State { Idle, Reading, Busy };
        std::string ip;
        boost::beast::tcp_stream* stream = nullptr;  // set by serve()
        State state = State::Idle;
        std::chrono::steady_clock::time_point since;  // in this state
        bool closed = false;
        void set(State s) {
            state = s;
            since = std::chrono::steady_clock::now();
        }
    };

  private:
    boost::asio::awaitable<void> accept_loop(boost::asio::ip::tcp::acceptor& a);
    boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket sock,
                                       std::list<Conn>::iterator conn);
    template <class Stream>
    boost::asio::awaitable<void> exchange(Stream& stream, const Peer& peer, Conn& conn);
    bool make_room();  // closes one Idle (else Reading) connection; false when all are Busy
    void refuse(boost::asio::ip::tcp::socket& sock);  // at a cap: 503, closed

    boost::asio::io_context& io_;
    std::vector<HostPort> listen_;
    Handler handler_;
    ListenerLimits limits_;
    std::unique_ptr<boost::asio::ssl::context> tls_;
    std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors_;
    std::list<Conn> conns_;
    std::size_t live_ = 0;                            // conns_ not closed to make room
    std::map<std::string, std::size_t> per_address_;  // conns_, per address
    bool stopping_ = false;
};

}  // namespace bmx::admin
