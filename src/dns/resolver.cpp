#include "dns/resolver.hpp"

#include <unbound.h>

#include <boost/asio/async_result.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <functional>
#include <set>
#include <stdexcept>

#include "util/util.hpp"

namespace bmx::dns {

namespace asio = boost::asio;

namespace {
constexpr int kTypeA = 1, kTypeNs = 2, kTypeMx = 15, kTypeAaaa = 28, kTypeTlsa = 52;
}

const char* to_string(Status s) {
    switch (s) {
        case Status::Ok:
            return "ok";
        case Status::NoData:
            return "no data";
        case Status::NxDomain:
            return "NXDOMAIN";
        case Status::TempFail:
            return "temporary failure";
        case Status::Bogus:
            return "DNSSEC bogus";
    }
    return "?";
}

std::optional<std::string> decode_name(std::string_view wire, std::size_t& pos) {
    std::string out;
    for (int labels = 0; labels < 128; ++labels) {
        if (pos >= wire.size()) return std::nullopt;
        auto len = static_cast<unsigned char>(wire[pos++]);
        if (len == 0) return to_lower(out);
        if (len > 63 || pos + len > wire.size()) return std::nullopt;  // no compression in rdata
        if (!out.empty()) out += '.';
        out.append(wire.substr(pos, len));
        pos += len;
    }
    return std::nullopt;
}

std::optional<Mx> decode_mx(std::string_view rdata) {
    if (rdata.size() < 3) return std::nullopt;
    Mx mx;
    mx.preference =
        (static_cast<unsigned char>(rdata[0]) << 8) | static_cast<unsigned char>(rdata[1]);
    std::size_t pos = 2;
    auto host = decode_name(rdata, pos);
    if (!host || pos != rdata.size()) return std::nullopt;
    mx.host = *host;
    return mx;
}

std::optional<Tlsa> decode_tlsa(std::string_view rdata) {
    if (rdata.size() < 4) return std::nullopt;
    Tlsa t;
    t.usage = static_cast<std::uint8_t>(rdata[0]);
    t.selector = static_cast<std::uint8_t>(rdata[1]);
    t.matching = static_cast<std::uint8_t>(rdata[2]);
    t.data.assign(rdata.begin() + 3, rdata.end());
    return t;
}

struct Resolver::Op {
    explicit Op(asio::io_context& io) : timer(io) {}
    int id = 0;
    asio::steady_timer timer;
    std::function<void(Answer)> complete;
};

struct Resolver::Impl {
    Impl(asio::io_context& io, int fd) : fd(io, fd) {}
    asio::posix::stream_descriptor fd;
    std::set<Op*> ops;  // in flight; owned here until they finish
    bool watching = false;
};

Resolver::Resolver(asio::io_context& io, const Settings& s) : io_(io), settings_(s) {
    ctx_ = ub_ctx_create();
    if (!ctx_) throw std::runtime_error("dns: cannot create resolver context");
    auto check = [this](int rc, const std::string& what) {
        if (rc != 0) {
            ub_ctx_delete(ctx_);
            ctx_ = nullptr;
            throw std::runtime_error("dns: " + what + ": " + ub_strerror(rc));
        }
    };
    check(ub_ctx_async(ctx_, 1), "async mode");
    check(ub_ctx_set_option(ctx_, "do-not-query-localhost:", "no"), "do-not-query-localhost");
    if (s.resolver.empty()) {
        check(ub_ctx_resolvconf(ctx_, nullptr), "reading /etc/resolv.conf");
        check(ub_ctx_hosts(ctx_, nullptr), "reading /etc/hosts");
    } else {
        check(ub_ctx_set_fwd(ctx_, s.resolver.c_str()), "resolver " + s.resolver);
    }
    if (!s.trust_anchor.empty())
        check(ub_ctx_add_ta_file(ctx_, s.trust_anchor.c_str()), "trust anchor " + s.trust_anchor);
    // libunbound answers NXDOMAIN for the reserved "test." TLD itself (RFC 6761 default local
    // zone). With an explicit resolver, ask it instead: test zones live under .test. (This
    // finalizes the context, so it comes after every other setting.)
    if (!s.resolver.empty()) ub_ctx_zone_remove(ctx_, "test.");
    impl_ = std::make_unique<Impl>(io, ub_fd(ctx_));
}

Resolver::~Resolver() {
    stop();
    if (impl_) impl_->fd.release();  // the descriptor belongs to libunbound
    impl_.reset();
    if (ctx_) ub_ctx_delete(ctx_);
}

void Resolver::stop() {
    if (!impl_) return;
    auto ops = impl_->ops;
    for (auto* op : ops) {
        ub_cancel(ctx_, op->id);
        op->complete(Answer{Status::TempFail, {}, {}, false, "resolver stopped"});
    }
    boost::system::error_code ec;
    impl_->fd.cancel(ec);
}

void Resolver::watch() {
    if (impl_->watching || impl_->ops.empty()) return;
    impl_->watching = true;
    impl_->fd.async_wait(asio::posix::stream_descriptor::wait_read,
                         [this](const boost::system::error_code& ec) {
                             impl_->watching = false;
                             if (ec) return;
                             ub_process(ctx_);  // runs on_result for every answer ready
                             watch();
                         });
}

void Resolver::on_result(void* data, int err, ::ub_result* r) {
    auto* op = static_cast<Op*>(data);
    Answer a;
    if (err != 0) {
        a.error = ub_strerror(err);
    } else {
        a.secure = r->secure != 0;
        if (r->canonname && r->qname && !iequals(r->canonname, r->qname)) {
            a.canonname = to_lower(r->canonname);
            if (a.canonname.ends_with('.')) a.canonname.pop_back();
        }
        if (r->bogus) {
            a.status = Status::Bogus;
            a.error = r->why_bogus ? r->why_bogus : "DNSSEC validation failed";
        } else if (r->rcode == 3) {
            a.status = Status::NxDomain;
            a.error = "NXDOMAIN";
        } else if (r->rcode != 0) {
            a.status = Status::TempFail;
            a.error = "rcode " + std::to_string(r->rcode) + (r->rcode == 2 ? " (SERVFAIL)" : "");
        } else if (!r->havedata) {
            a.status = Status::NoData;
            a.error = "no records";
        } else {
            a.status = Status::Ok;
            for (int i = 0; r->data[i]; ++i)
                a.rdata.emplace_back(r->data[i], static_cast<std::size_t>(r->len[i]));
        }
        ub_resolve_free(r);
    }
    op->complete(std::move(a));
}

asio::awaitable<Answer> Resolver::query(const std::string& name, int rrtype) {
    co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(Answer)>(
        [this, &name, rrtype](auto handler) {
            auto h = std::make_shared<decltype(handler)>(std::move(handler));
            auto* op = new Op(io_);
            auto deliver = [this, h](Answer a) {
                asio::post(io_, [h, a = std::move(a)]() mutable { (*h)(std::move(a)); });
            };
            // Every way out (answer, timeout, stop) goes through complete, exactly once.
            op->complete = [this, op, deliver](Answer a) mutable {
                if (!impl_->ops.count(op)) return;
                impl_->ops.erase(op);
                op->timer.cancel();
                auto d = std::move(deliver);
                delete op;
                d(std::move(a));
            };
            impl_->ops.insert(op);
            int rc =
                ub_resolve_async(ctx_, name.c_str(), rrtype, 1, op, &Resolver::on_result, &op->id);
            if (rc != 0) {
                op->complete(Answer{Status::TempFail, {}, {}, false, ub_strerror(rc)});
                return;
            }
            op->timer.expires_after(settings_.timeout);
            op->timer.async_wait([this, op](const boost::system::error_code& ec) {
                if (ec || !impl_->ops.count(op)) return;
                ub_cancel(ctx_, op->id);
                op->complete(Answer{Status::TempFail,
                                    {},
                                    {},
                                    false,
                                    "no answer within " + format_duration(settings_.timeout)});
            });
            watch();
        },
        asio::use_awaitable);
}

asio::awaitable<MxAnswer> Resolver::mx(const std::string& domain) {
    auto a = co_await query(domain, kTypeMx);
    MxAnswer out{a.status, {}, a.secure, a.error};
    for (auto& rd : a.rdata) {
        auto mx = decode_mx(rd);
        if (!mx) {
            out.status = Status::TempFail;
            out.error = "malformed MX record";
            co_return out;
        }
        out.records.push_back(*mx);
    }
    co_return out;
}

asio::awaitable<AddressAnswer> Resolver::addresses(const std::string& host) {
    AddressAnswer out;
    auto v6 = co_await query(host, kTypeAaaa);
    auto v4 = co_await query(host, kTypeA);
    for (auto& rd : v6.rdata)
        if (rd.size() == 16) {
            asio::ip::address_v6::bytes_type b;
            std::copy(rd.begin(), rd.end(), b.begin());
            out.addresses.emplace_back(asio::ip::address_v6(b));
        }
    for (auto& rd : v4.rdata)
        if (rd.size() == 4) {
            asio::ip::address_v4::bytes_type b;
            std::copy(rd.begin(), rd.end(), b.begin());
            out.addresses.emplace_back(asio::ip::address_v4(b));
        }
    out.cname = !v4.canonname.empty() ? v4.canonname : v6.canonname;
    out.secure = v4.secure && (v6.secure || v6.status != Status::Ok);
    if (!out.addresses.empty()) {
        out.status = Status::Ok;
    } else if (v4.status == Status::NxDomain || v6.status == Status::NxDomain) {
        out.status = Status::NxDomain;
        out.error = "NXDOMAIN";
    } else if (v4.status == Status::NoData && v6.status == Status::NoData) {
        out.status = Status::NoData;
        out.error = "no A or AAAA records";
    } else {
        out.status = v4.status == Status::Bogus || v6.status == Status::Bogus ? Status::Bogus
                                                                              : Status::TempFail;
        out.error = !v4.error.empty() ? v4.error : v6.error;
    }
    co_return out;
}

asio::awaitable<TlsaAnswer> Resolver::tlsa(const std::string& host, std::uint16_t port) {
    const std::string name = "_" + std::to_string(port) + "._tcp." + host;
    auto a = co_await query(name, kTypeTlsa);
    TlsaAnswer out{a.status, {}, a.secure, a.error};
    for (auto& rd : a.rdata)
        if (auto t = decode_tlsa(rd)) out.records.push_back(*t);
    co_return out;
}

asio::awaitable<NameAnswer> Resolver::ns(const std::string& domain) {
    auto a = co_await query(domain, kTypeNs);
    NameAnswer out{a.status, {}, a.error};
    for (auto& rd : a.rdata) {
        std::size_t pos = 0;
        if (auto n = decode_name(rd, pos)) out.names.push_back(*n);
    }
    co_return out;
}

}  // namespace bmx::dns
