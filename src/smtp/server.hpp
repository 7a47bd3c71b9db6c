// smtp/server: the SMTP listener and one coroutine per session (RFC 5321 with PIPELINING, SIZE,
// 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8). Every command asks policy/, the end of DATA asks the
// queue to commit, and only then is 250 said. It must never answer 250 to DATA before the store
// has the message on disk, never buffer a line or a message past its limit, and never block the
// event loop.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "policy/checker.hpp"
#include "queue/queue.hpp"

namespace bmx::smtp {

class Session;

// What an ETRN (RFC 1985) for a node came to: the SMTP reply follows from it.
struct EtrnAnswer {
    enum class Kind { Started, NothingWaiting, NotAllowed, UnknownNode } kind;
    std::string why;  // for NotAllowed / UnknownNode
};

class Server {
  public:
    // Asked for ETRN <node> by the client at `ip`; unset: ETRN is not offered.
    using Etrn = std::function<boost::asio::awaitable<EtrnAnswer>(const std::string& node,
                                                                  const std::string& ip)>;
    // Accepted mail goes through queue.submit(): committed, then scheduled.
    Server(boost::asio::io_context& io, const Config& cfg, Queue& queue, policy::Checker& checker);
    // Loads the TLS certificate, binds every listen address (throws on failure, before serving)
    // and starts accepting.
    void start();
    // Stops accepting and closes every session; a session waiting for its commit still finishes it.
    void stop();
    std::size_t sessions() const { return sessions_.size(); }
    void on_etrn(Etrn f) { on_etrn_ = std::move(f); }

    // Under stress (sessions at smtp.stress_threshold percent of max_connections) a session
    // gets short timeouts, as Postfix's stress mode gives.
    bool stressed() const;

  private:
    boost::asio::awaitable<void> accept_loop(boost::asio::ip::tcp::acceptor& acceptor);
    bool evict_idlest();  // closes the session idle longest (1 s or more); false: none is
    friend class Session;
    std::uint64_t evicted_ = 0;
    std::size_t data_memory_ = 0;  // bytes of messages all sessions hold in memory in DATA

    boost::asio::io_context& io_;
    const Config& cfg_;
    Queue& queue_;
    policy::Checker& checker_;
    Etrn on_etrn_;
    std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors_;
    std::set<Session*> sessions_;
    std::unique_ptr<boost::asio::ssl::context> tls_;  // set when smtp.tls_cert/tls_key are
    bool stopping_ = false;
};

}  // namespace bmx::smtp
