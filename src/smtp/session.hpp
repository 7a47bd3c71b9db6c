// smtp/session: one SMTP conversation, read top to bottom as the protocol goes. Internal to smtp/.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "milter/milter.hpp"
#include "netio/stream.hpp"
#include "policy/checker.hpp"
#include "smtp/protocol.hpp"
#include "smtp/server.hpp"
#include "store/spool.hpp"

namespace bmx::smtp {

class Session {
  public:
    Session(Server& server, boost::asio::ip::tcp::socket sock);
    ~Session();
    boost::asio::awaitable<void> run();  // the whole session, deadline included
    // From Server::stop(): the session answers 421 at once (RFC 5321 3.8), between commands or
    // inside DATA (the half message is not stored), and closes; a reply it owes goes first.
    void stop();
    // The server is full: this idle session makes room (421, closed).
    void evict();
    // Since when it waits for the client's next command; nullopt while it is busy (in DATA, a
    // commit, a DNS or milter check) or replying.
    std::optional<std::chrono::steady_clock::time_point> idle_since() const {
        if (!waiting_) return std::nullopt;
        return last_heard_;
    }

  private:
    boost::asio::awaitable<void> guarded();  // converse(), answering what escapes it
    boost::asio::awaitable<void> converse();
    boost::asio::awaitable<std::optional<CommandReader::Line>> read_command();
    boost::asio::awaitable<bool> flush();
    void reply(std::string line);  // queued; sent when the client waits (RFC 2920)
    void reset_transaction();
    boost::asio::awaitable<bool> dispatch(const Command& c);  // true: a protocol error
    boost::asio::awaitable<void> on_failure(const Command& c, std::exception_ptr failed);

    void on_helo(const Command& c, bool extended);
    boost::asio::awaitable<void> on_mail(const Command& c);
    std::optional<std::string> mail_syntax(const Command& c);  // refusal, or nullopt
    boost::asio::awaitable<void> on_rcpt(const Command& c);
    boost::asio::awaitable<void> on_data(const Command& c);
    boost::asio::awaitable<void> on_starttls(const Command& c);
    boost::asio::awaitable<void> on_etrn(const Command& c);
    boost::asio::awaitable<std::string> commit(const std::string& id, std::string body,
                                               const std::shared_ptr<Spool>& spool,
                                               const std::string& held);
    boost::asio::awaitable<policy::Decision> milter_rcpt(const DomainConfig& d,
                                                         const std::string& sender,
                                                         const std::string& rcpt);
    boost::asio::awaitable<void> end_milter_transactions();
    // A milter's envelope edits: a recipient removed, one added (only for a domain served here:
    // a milter never makes us relay elsewhere), the sender changed.
    void envelope_edits(const std::string& milter, const std::vector<milter::Modification>& mods);
    std::string milter_reply(const std::string& text);  // first line; a 421 ends the session
    std::string received_header(const std::string& id) const;
    bool protocol_error();  // counts an error; true when the session must end
    bool junk();            // counts a NOOP/RSET/VRFY; true (and 421) past the limit

    Server& server_;
    const Config& cfg_;
    netio::Stream stream_;
    boost::asio::steady_timer deadline_;
    std::string peer_;  // client IP
    std::string in_, out_;
    CommandReader reader_;
    std::string helo_;
    bool esmtp_ = false;
    std::optional<Address> sender_;
    Address pending_sender_;           // parsed MAIL FROM, while SPF is checked
    std::uint64_t declared_size_ = 0;  // MAIL FROM's SIZE= (RFC 1870), 0 when none
    // A 552 reply when `size` passes a recipient domain's own max_message_size, else "".
    std::string over_domain_limit(std::uint64_t size) const;
    std::string spf_header_;  // Received-SPF: for this transaction
    std::vector<Address> rcpts_;
    bool smtputf8_ = false, eightbit_ = false;
    std::uint32_t errors_ = 0, junk_ = 0;
    bool quit_ = false;
    bool stopping_ = false;  // the server is shutting down
    bool evicted_ = false;   // closed to make room for others
    bool waiting_ = false;   // in read_command, waiting for the client
    std::chrono::steady_clock::time_point last_heard_ = std::chrono::steady_clock::now();
    bool heard_ = false;  // a first command came
    char last_code_ = 0;
    policy::Reputation reputation_;
    struct ActiveMilter {
        std::unique_ptr<milter::Session> session;
        bool in_transaction = false;
        std::string refusal;  // a connect/helo-stage verdict holds for the whole session
    };
    std::map<std::string, ActiveMilter> milters_;  // by endpoint, opened at first use
    std::string discard_;                          // a milter said discard: who
};

}  // namespace bmx::smtp
