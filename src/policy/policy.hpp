// policy: decides, command by command, whether the SMTP session may go on — relay control (only
// our domains, matched exactly and case-insensitively) and the recipient count limit. Later issues
// add recipient validation, greylisting, rate limits, DNSBL, SPF and milters here.
// It must never do I/O itself and never accept a recipient outside a configured domain.
#pragma once

#include <string>

#include "config/config.hpp"

namespace bmx::policy {

struct Decision {
    bool ok = true;
    std::string reply;  // full SMTP reply line when refused, naming the rule
};

// `domain` is the recipient's domain as parsed (lower-cased, no trailing dot).
Decision check_recipient_domain(const Config& cfg, const std::string& domain);
// `count` recipients already accepted in this transaction.
Decision check_recipient_count(const Config& cfg, std::size_t count);

}  // namespace bmx::policy
