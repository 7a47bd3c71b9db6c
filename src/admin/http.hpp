// admin/http: the admin listener's HTTP/1.1 plumbing on Boost.Beast, on the server's event loop —
// accept on the configured addresses (TLS when a certificate is set), read one request at a time
// (bounded in size and time), hand it to the router, write its answer, keep the connection alive.
// It must never decide anything about a request itself: who may do what is the router's.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/http.hpp>
#include <functional>
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

class Listener {
  public:
    Listener(boost::asio::io_context& io, std::vector<HostPort> listen, const std::string& cert,
             const std::string& key, Handler handler);
    ~Listener();
    void start();  // binds every address (throws when one cannot be bound), then accepts
    void stop();   // no new connections; open ones end after their current request
    bool tls() const { return tls_ != nullptr; }

    static constexpr std::size_t kMaxBody = 1 << 20;     // a JSON request is small
    static constexpr std::size_t kMaxConnections = 256;  // at once

  private:
    boost::asio::awaitable<void> accept_loop(boost::asio::ip::tcp::acceptor& a);
    boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket sock);
    template <class Stream>
    boost::asio::awaitable<void> exchange(Stream& stream, const Peer& peer);

    boost::asio::io_context& io_;
    std::vector<HostPort> listen_;
    Handler handler_;
    std::unique_ptr<boost::asio::ssl::context> tls_;
    std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors_;
    std::size_t open_ = 0;
    bool stopping_ = false;
};

}  // namespace bmx::admin
