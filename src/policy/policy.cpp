#include "policy/policy.hpp"

namespace bmx::policy {

Decision check_recipient_domain(const Config& cfg, const std::string& domain) {
    if (cfg.find_domain(domain)) return {};
    return {false, "550 5.7.1 Relay access denied: " + domain +
                       " is not a domain this backup MX serves (no [[domain]] entry)"};
}

Decision check_recipient_count(const Config& cfg, std::size_t count) {
    if (count < cfg.max_recipients) return {};
    return {false, "452 4.5.3 Too many recipients (smtp.max_recipients = " +
                       std::to_string(cfg.max_recipients) +
                       "); send the rest in another transaction"};
}

}  // namespace bmx::policy
