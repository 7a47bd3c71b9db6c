// domains: the live set of domains that operators and customers added at run time (kept in the
// store, shared by every node), beside the config file's own, which stay read-only. It turns a
// stored domain (the two facts: name and primary, plus a few switches) into the DomainConfig the
// other parts route and filter by. Lookups and changes happen on the event loop only.
// It must never free a DomainConfig a caller may still hold (a replaced one is kept until the
// process ends) and never shadow a config-file domain.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "store/store.hpp"

namespace bmx {

class Domains {
  public:
    explicit Domains(const Config& cfg) : cfg_(cfg) {}
    // Replaces the whole run-time set (at start, and when the store may have changed).
    void load(const std::vector<StoredDomain>& stored);
    void put(const StoredDomain& d);  // adds or replaces one
    void remove(const std::string& name);
    const DomainConfig* find(std::string_view name) const;  // run-time domains only
    const StoredDomain* stored(std::string_view name) const;
    std::vector<StoredDomain> all() const;  // by name
    std::size_t size() const { return live_.size(); }

    // The two facts, checked: a domain name in A-label form (lower-cased, no trailing dot) and a
    // primary as "host", "host:port" or "[ip]:port". Each returns the error to show, or "".
    static std::string check_name(std::string& name);
    static std::string check_primary(const std::string& primary);

  private:
    struct Live {
        StoredDomain stored;
        std::shared_ptr<const DomainConfig> config;
    };
    std::shared_ptr<const DomainConfig> make(const StoredDomain& d) const;

    const Config& cfg_;
    std::map<std::string, Live, std::less<>> live_;
    std::vector<std::shared_ptr<const DomainConfig>> retired_;  // replaced, maybe still in use
};

}  // namespace bmx
