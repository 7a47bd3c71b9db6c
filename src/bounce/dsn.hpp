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

std::optional<NewMessage> make_dsn(const StoredMessage& original,
                                   const std::vector<Failure>& failures,
                                   const std::string& hostname, const std::string& remote_mta,
                                   TimePoint now);

}  // namespace bmx::bounce
