// bounce: writes delivery status notifications (RFC 3464 multipart/report, RFC 3462) for the
// recipients of a message that failed for good or expired. The DSN is an ordinary NewMessage that
// goes through the queue. It must never produce a DSN for the null sender (no bounce loops) and
// never include more of the original than its headers.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "store/store.hpp"

namespace bmx::bounce {

struct Failure {
    std::string recipient;
    std::string status;      // enhanced status "5.1.1", "4.4.7"
    std::string diagnostic;  // "550 5.1.1 <x@y>: no such user", or our own words
};

// Enhanced status from an SMTP reply text ("550 5.1.1 ...") or from its class when it has none.
std::string status_of(std::string_view reply);

// The DSN returns the original's header section, cut at a field boundary to at most
// `max_headers` bytes ([queue] dsn_max_headers): a bounce must not carry a forger's 64 KiB.
constexpr std::size_t kDsnMaxHeaders = 8192;
std::string returned_headers(std::string_view body, std::size_t max_headers);

std::optional<NewMessage> make_dsn(const StoredMessage& original,
                                   const std::vector<Failure>& failures,
                                   const std::string& hostname, const std::string& remote_mta,
                                   TimePoint now, std::size_t max_headers = kDsnMaxHeaders);

// An operator returns a queued message to its sender: every pending recipient fails with
// status 5.0.0 and `why`, a DSN is made (none for a null sender), and the update removes the
// message in the same transaction that commits the DSN.
AttemptUpdate return_to_sender(const StoredMessage& m, const std::string& hostname,
                               const std::string& why, TimePoint now,
                               std::size_t max_headers = kDsnMaxHeaders);

// A message older than max_age: every pending recipient fails with status 4.4.7 ("delivery
// time expired", with the last error), a DSN is made (none for a null sender), and the update
// removes the message in the same transaction that commits the DSN.
AttemptUpdate expire(const StoredMessage& m, const std::string& hostname, Seconds max_age,
                     TimePoint now, std::size_t max_headers = kDsnMaxHeaders);

}  // namespace bmx::bounce
