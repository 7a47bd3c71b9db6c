// dns: asynchronous DNS on the Asio loop through libunbound (a validating resolver, so DANE can
// trust its "secure" bit). Answers MX, A/AAAA, TLSA, NS and raw queries with a status that tells a
// hard answer (NXDOMAIN, no data) from a temporary failure. It must never block the event loop and
// never report "secure" unless libunbound validated the answer against a configured trust anchor.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct ub_ctx;
struct ub_result;

namespace bmx::dns {

enum class Status { Ok, NoData, NxDomain, TempFail, Bogus };
const char* to_string(Status s);

struct Settings {
    std::string resolver;      // "" = system (/etc/resolv.conf); else "ip" or "ip@port"
    std::string trust_anchor;  // file with DS/DNSKEY lines; "" = no DNSSEC validation
    std::chrono::seconds timeout{15};
};

struct Answer {
    Status status = Status::TempFail;
    std::vector<std::string> rdata;  // wire-format rdata, one per record
    std::string canonname;           // set when a CNAME was followed
    bool secure = false;
    std::string error;  // why, for logs, when not Ok
};

struct Mx {
    int preference = 0;
    std::string host;  // lower case, no trailing dot; "" is the root (null MX)
};

struct MxAnswer {
    Status status = Status::TempFail;
    std::vector<Mx> records;
    bool secure = false;
    std::string error;
    bool null_mx() const {  // RFC 7505: exactly one record, preference 0, target "."
        return records.size() == 1 && records[0].host.empty();
    }
};

struct AddressAnswer {
    Status status = Status::TempFail;                 // Ok when at least one address
    std::vector<boost::asio::ip::address> addresses;  // AAAA first, then A
    std::string cname;                                // the target when the name was an alias
    bool secure = false;
    std::string error;
};

struct Tlsa {
    std::uint8_t usage = 0, selector = 0, matching = 0;
    std::vector<std::uint8_t> data;
};

struct TlsaAnswer {
    Status status = Status::TempFail;
    std::vector<Tlsa> records;
    bool secure = false;
    std::string error;
};

struct NameAnswer {  // NS (and other name-valued types)
    Status status = Status::TempFail;
    std::vector<std::string> names;
    std::string error;
};

// Decoders for wire-format rdata (exposed for tests).
std::optional<std::string> decode_name(std::string_view wire, std::size_t& pos);
std::optional<Mx> decode_mx(std::string_view rdata);
std::optional<Tlsa> decode_tlsa(std::string_view rdata);

class Resolver {
  public:
    // Throws std::runtime_error when the settings are unusable (bad resolver address, anchor file).
    Resolver(boost::asio::io_context& io, const Settings& s);
    ~Resolver();
    Resolver(const Resolver&) = delete;
    Resolver& operator=(const Resolver&) = delete;

    // Arguments are references: pass named objects that outlive the co_await (see netio.hpp).
    boost::asio::awaitable<Answer> query(const std::string& name, int rrtype);
    boost::asio::awaitable<MxAnswer> mx(const std::string& domain);
    boost::asio::awaitable<AddressAnswer> addresses(const std::string& host);
    boost::asio::awaitable<TlsaAnswer> tlsa(const std::string& host, std::uint16_t port);
    boost::asio::awaitable<NameAnswer> ns(const std::string& domain);
    void stop();  // cancels every query in flight (they complete with TempFail)

    struct Op;

  private:
    void watch();
    static void on_result(void* data, int err, ::ub_result* result);

    boost::asio::io_context& io_;
    Settings settings_;
    ub_ctx* ctx_ = nullptr;
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace bmx::dns
