// delivery/client: speaks SMTP to a primary for queued messages, one or many per connection — EHLO
// (HELO fallback), STARTTLS by the domain's policy (may, encrypt, verify, dane), PIPELINING when
// offered, per-recipient results, SIZE/8BITMIME/SMTPUTF8 as the message needs — and probes a
// primary for liveness. It must never decide what happens to a message afterwards (the scheduler
// does), never alter the envelope or a byte of the body beyond dot-stuffing, and never send in
// plaintext when the policy asks for TLS.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "delivery/reply.hpp"
#include "delivery/route.hpp"
#include "dns/resolver.hpp"

namespace bmx::delivery {

struct Envelope {
    std::string sender;  // empty = <>
    std::vector<std::string> recipients;
    bool smtputf8 = false;
    bool eightbit = false;
};

// Client TLS contexts, one per trust store ("" = the system's CAs).
class TlsContexts {
  public:
    boost::asio::ssl::context& get(const std::string& ca_file);

  private:
    std::map<std::string, std::unique_ptr<boost::asio::ssl::context>> contexts_;
};

struct Settings {
    std::string helo_name;
    std::chrono::seconds connect_timeout{30};
    std::chrono::seconds reply_timeout{300};
    TlsPolicy tls = TlsPolicy::May;
    std::string tls_ca_file;
    TlsContexts* contexts = nullptr;    // required
    dns::Resolver* resolver = nullptr;  // required for tls = dane (TLSA lookups)
};

// Hands out a queued body a piece at a time, in order; nullopt after the last piece. May throw
// (the store failed): the transaction is then abandoned before its final dot.
using BodySource = std::function<boost::asio::awaitable<std::optional<std::string>>()>;

// The body as it goes out: `size` bytes in all (SIZE=, and a check that every piece came),
// read from `pieces` while it is sent, so a large body is never held whole.
struct Body {
    std::int64_t size = 0;
    const BodySource* pieces = nullptr;
};

struct Outcome {
    bool reached = false;      // a 2xx greeting came back: the primary is alive
    std::string remote;        // "host[ip]:port" actually used
    std::string remote_host;   // its host name (or IP literal) alone, for a DSN's Remote-MTA
    std::string tls = "none";  // "TLSv1.3 cipher=... verify=dane|ok|none" once encrypted
    // Set when the whole transaction failed (connect, greeting, TLS policy, MAIL, DATA, lost
    // connection); rcpt is then empty and every recipient is deferred.
    std::string error;
    std::vector<Reply> rcpt;  // per recipient, in envelope order, when the transaction ran
};

// One connection to a primary, reused for many messages (as Postfix's connection cache does):
// open() connects, greets and secures it by policy; each send() is one mail transaction on it
// (RSET first when the last one ended early). After a failure, a 421 or a timeout the session is
// no longer usable() and the caller opens a new one.
class Session {
  public:
    Session(boost::asio::any_io_executor ex, const Settings& s);  // `s` must outlive the session
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // error empty: open; otherwise reached says whether the primary answered at all.
    boost::asio::awaitable<Outcome> open(const std::vector<Target>& targets);
    boost::asio::awaitable<Outcome> send(const Envelope& env, const Body& body);
    boost::asio::awaitable<void> close();  // QUIT, bounded in time
    bool usable() const;
    std::size_t transactions() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// One message over a connection of its own (connect, transaction, QUIT).
boost::asio::awaitable<Outcome> deliver(const Settings& s, const std::vector<Target>& targets,
                                        const Envelope& env, const Body& body);

// Asks the primary whether a recipient exists (MAIL FROM:<>, RCPT TO:, QUIT; no message is sent).
// rcpt[0] holds the RCPT reply when the question could be asked.
boost::asio::awaitable<Outcome> verify(const Settings& s, const std::vector<Target>& targets,
                                       const std::string& recipient);

// Connects, waits for the greeting, EHLO, QUIT. reached == true means the primary is up.
boost::asio::awaitable<Outcome> probe(const Settings& s, const std::vector<Target>& targets);

}  // namespace bmx::delivery
