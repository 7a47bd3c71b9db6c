// control: the running server's local command door — a Unix stream socket (mode 0600, beside the
// store) taking one line ("flush [DOMAIN]", "forget ID", "schedule ID", "status", "domains",
// "ping") and answering one line. The CLI uses it so what it changes in the store reaches the
// running scheduler. It must never listen on the network.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace bmx::control {

class Server {
  public:
    using Handler = std::function<std::string(const std::string& line)>;
    Server(boost::asio::io_context& io, std::string path, Handler handler);
    ~Server();
    void start();  // throws when the socket cannot be bound
    void stop();

  private:
    boost::asio::awaitable<void> accept_loop();
    boost::asio::io_context& io_;
    std::string path_;
    Handler handler_;
    std::unique_ptr<boost::asio::local::stream_protocol::acceptor> acceptor_;
};

// Client side: sends one line, returns the reply line, or nullopt when no server answers.
std::optional<std::string> request(const std::string& path, const std::string& line);

}  // namespace bmx::control
