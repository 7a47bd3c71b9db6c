// delivery/client: speaks SMTP to a primary for one queued message — EHLO (HELO fallback),
// PIPELINING when offered, per-recipient results, SIZE/8BITMIME/SMTPUTF8 as the message needs —
// and probes a primary for liveness. It must never decide what happens to a message afterwards
// (the scheduler does) and never alter the envelope or a byte of the body beyond dot-stuffing.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "delivery/reply.hpp"

namespace bmx::delivery {

struct Envelope {
    std::string sender;  // empty = <>
    std::vector<std::string> recipients;
    bool smtputf8 = false;
    bool eightbit = false;
};

struct Settings {
    std::string helo_name;
    std::chrono::seconds connect_timeout{30};
    std::chrono::seconds reply_timeout{300};
};

struct Outcome {
    bool reached = false;  // a 2xx greeting came back: the primary is alive
    std::string remote;    // "host[ip]:port" actually used
    // Set when the whole transaction failed (connect, greeting, MAIL, DATA, lost connection).
    std::string error;
    bool permanent = false;   // that failure was a 5xx: final for every recipient
    std::vector<Reply> rcpt;  // per recipient, in envelope order, when the transaction ran
};

boost::asio::awaitable<Outcome> deliver(const Settings& s, const HostPort& to, const Envelope& env,
                                        std::string_view body);

// Connects, waits for the greeting, EHLO, QUIT. reached == true means the primary is up.
boost::asio::awaitable<Outcome> probe(const Settings& s, const HostPort& to);

}  // namespace bmx::delivery
