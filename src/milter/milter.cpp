// The milter client's I/O: one Session per SMTP connection and milter, a coroutine per step,
// each write and read under a deadline (netio::watchdog). The bytes come from codec.cpp.
#include "milter/milter.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "netio/netio.hpp"

namespace bmx::milter {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using generic_stream = asio::generic::stream_protocol;

// ---- Session ----

struct detail::Step {
    char command;
    std::optional<Stage> macros;
    std::uint32_t skip_flag;     // SMFIP_NO*: the milter does not want this step
    std::uint32_t noreply_flag;  // SMFIP_NR_*: it does not answer it
    bool content;                // content_timeout rather than command_timeout
    bool connection;             // connect/helo: a decision holds for the whole connection
    bool message;                // a step of the message: nothing to say once it was accepted
};

namespace {

using detail::Step;
const Step kConnect{smfic::Connect, Stage::Connect, smfip::NoConnect, smfip::NrConn, false,
                    true,           false};
const Step kHelo{smfic::Helo, Stage::Helo, smfip::NoHelo, smfip::NrHelo, false, true, false};
const Step kMail{smfic::Mail, Stage::EnvFrom, smfip::NoMail, smfip::NrMail, false, false, false};
const Step kRcpt{smfic::Rcpt, Stage::EnvRcpt, smfip::NoRcpt, smfip::NrRcpt, false, false, true};
const Step kData{smfic::Data, Stage::Data, smfip::NoData, smfip::NrData, false, false, true};
const Step kHeader{smfic::Header, std::nullopt, smfip::NoHdrs, smfip::NrHdr, true, false, true};
const Step kEoh{smfic::Eoh, Stage::Eoh, smfip::NoEoh, smfip::NrEoh, true, false, true};
const Step kBody{smfic::Body, std::nullopt, smfip::NoBody, smfip::NrBody, true, false, true};
const Step kEom{smfic::BodyEob, Stage::Eom, 0, 0, true, false, true};

// Postfix's milter_*_macros defaults, and the client's own (which milters ask for by name).
constexpr std::array<std::string_view, kStages> kDefaultMacros{
    "j {daemon_name} {daemon_addr} v _ {client_addr} {client_name} {client_port}",  // connect
    "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",            // helo
    "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
    "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",  // rcpt
    "i",                                        // data
    "i",                                        // end of message
    "i",                                        // end of headers
};

// "j" and "{j}" are one macro; so are "daemon_name" and "{daemon_name}". libmilter looks both up.
std::string canonical_macro(std::string_view name) {
    if (name.size() >= 2 && name.front() == '{' && name.back() == '}')
        name = name.substr(1, name.size() - 2);
    if (name.size() == 1) return std::string(name);
    return "{" + std::string(name) + "}";
}

// A header value as a milter gets it: one leading space gone (unless it asked to keep it), the
// line breaks of folded lines as bare LF (Sendmail's habit, which Postfix follows).
std::string value_for_milter(std::string_view value, bool keep_space) {
    if (!keep_space && !value.empty() && value.front() == ' ') value.remove_prefix(1);
    std::string out;
    out.reserve(value.size());
    for (std::size_t i = 0; i < value.size(); ++i) {
        if (value[i] == '\r' && i + 1 < value.size() && value[i + 1] == '\n') continue;
        out += value[i];
    }
    return out;
}

std::uint32_t action_needed(const Modification& m) {
    switch (m.type) {
        case Modification::Type::AddHeader:
        case Modification::Type::InsertHeader:
            return smfif::AddHdrs;
        case Modification::Type::ChangeHeader:
            return smfif::ChgHdrs;
        case Modification::Type::Quarantine:
            return smfif::Quarantine;
        case Modification::Type::ReplaceBody:
            return smfif::ChgBody;
        case Modification::Type::AddRecipient:
            return m.args.empty() ? smfif::AddRcpt : smfif::AddRcptPar;
        case Modification::Type::DeleteRecipient:
            return smfif::DelRcpt;
        case Modification::Type::ChangeSender:
            return smfif::ChgFrom;
    }
    return ~0u;
}

}  // namespace

Session::Session(asio::any_io_executor ex, Endpoint endpoint, Settings settings)
    : ex_(ex),
      endpoint_(std::move(endpoint)),
      settings_(settings),
      deadline_(ex),
      decoder_(settings.max_packet) {
    macros_["v"] = "backupmx";
    macros_["{daemon_name}"] = "backupmx";
}

Session::~Session() {
    close();
}

void Session::set_macro(std::string name, std::string value) {
    macros_[canonical_macro(name)] = std::move(value);
}

void Session::clear_macro(const std::string& name) {
    macros_.erase(canonical_macro(name));
}

bool Session::failed() const {
    return state_ == State::Error;
}

void Session::close() {
    if (sock_) {
        boost::system::error_code ec;
        sock_->close(ec);
        sock_.reset();
    }
}

Verdict Session::comm_error(std::string why) {
    error_ = "milter " + endpoint_.text() + ": " + why;
    spdlog::warn("{}", error_);
    close();
    state_ = State::Error;
    switch (settings_.default_action) {
        case DefaultAction::Accept:
            sticky_ = Verdict{};
            break;
        case DefaultAction::Reject:
            sticky_ = Verdict{Verdict::Reject, "550 5.5.0 Service unavailable"};
            break;
        case DefaultAction::Tempfail:
            sticky_ = Verdict{Verdict::Tempfail, "451 4.7.1 Service unavailable - try again later"};
            break;
    }
    return sticky_;
}

Verdict Session::conf_error(std::string why) {
    comm_error(std::move(why));
    if (settings_.default_action != DefaultAction::Accept)
        sticky_ =
            Verdict{Verdict::Tempfail, "451 4.3.5 Server configuration problem - try again later"};
    return sticky_;
}

Verdict Session::reject_connection(Verdict v) {
    close();  // libmilter forgets a connection it refused; so do we
    state_ = State::RejectCon;
    sticky_ = v;
    return v;
}

asio::awaitable<bool> Session::write_all(const std::string& bytes) {
    auto [ec, n] = co_await asio::async_write(*sock_, asio::buffer(bytes),
                                              asio::as_tuple(asio::use_awaitable));
    if (ec) error_ = "write: " + ec.message();
    co_return !ec;
}

asio::awaitable<std::optional<Packet>> Session::read_packet() {
    for (;;) {
        auto p = decoder_.next();
        if (p) co_return p;
        if (decoder_.failed()) {
            error_ = decoder_.error();
            co_return std::nullopt;
        }
        auto [ec, n] = co_await sock_->async_read_some(asio::buffer(inbuf_),
                                                       asio::as_tuple(asio::use_awaitable));
        if (ec || n == 0) {
            error_ = ec && ec != asio::error::eof ? "read: " + ec.message()
                                                  : "connection closed by the milter";
            co_return std::nullopt;
        }
        decoder_.feed(std::string_view(inbuf_.data(), n));
    }
}

asio::awaitable<bool> Session::send(const std::string& bytes, std::chrono::milliseconds limit) {
    if (!sock_) {
        error_ = "not connected";
        co_return false;
    }
    deadline_.expires_after(limit);
    auto r = co_await (write_all(bytes) || netio::watchdog(deadline_));
    if (r.index() == 1) {
        error_ = "timeout (" + std::to_string(limit.count()) + " ms) sending";
        co_return false;
    }
    co_return std::get<0>(r);
}

asio::awaitable<std::optional<Packet>> Session::receive(std::chrono::milliseconds limit) {
    if (!sock_) {
        error_ = "not connected";
        co_return std::nullopt;
    }
    deadline_.expires_after(limit);
    auto r = co_await (read_packet() || netio::watchdog(deadline_));
    if (r.index() == 1) {
        error_ = "timeout (" + std::to_string(limit.count()) + " ms) waiting for a reply";
        co_return std::nullopt;
    }
    co_return std::get<0>(std::move(r));
}

namespace {

asio::awaitable<bool> connect_to(generic_stream::socket& s, const generic_stream::endpoint& ep,
                                 std::string& error) {
    auto [ec] = co_await s.async_connect(ep, asio::as_tuple(asio::use_awaitable));
    if (ec) error = ec.message();
    co_return !ec;
}

}  // namespace

asio::awaitable<bool> Session::dial(std::string& why) {
    if (endpoint_.kind == Endpoint::Kind::Unix) {
        generic_stream::socket s(ex_);
        const generic_stream::endpoint ep{asio::local::stream_protocol::endpoint(endpoint_.path)};
        const bool ok = co_await connect_to(s, ep, why);
        if (ok) sock_.emplace(std::move(s));
        co_return ok;
    }
    asio::ip::tcp::resolver resolver(ex_);
    const std::string port = std::to_string(endpoint_.port);
    auto [ec, results] =
        co_await resolver.async_resolve(endpoint_.host, port, asio::as_tuple(asio::use_awaitable));
    if (ec) {
        why = "resolve " + endpoint_.host + ": " + ec.message();
        co_return false;
    }
    for (const auto& r : results) {  // every address of the name, in order
        generic_stream::socket s(ex_);
        const generic_stream::endpoint ep{r.endpoint()};
        const bool ok = co_await connect_to(s, ep, why);
        if (ok) {
            sock_.emplace(std::move(s));
            co_return true;
        }
    }
    co_return false;
}

asio::awaitable<bool> Session::open() {
    deadline_.expires_after(settings_.connect_timeout);
    std::string why;
    auto r = co_await (dial(why) || netio::watchdog(deadline_));
    if (r.index() == 1) {
        error_ =
            "timeout (" + std::to_string(settings_.connect_timeout.count()) + " ms) connecting";
        close();
        co_return false;
    }
    if (!std::get<0>(r)) {
        error_ = "connect: " + why;
        co_return false;
    }
    co_return true;
}

asio::awaitable<Verdict> Session::negotiate() {
    if (tried_) co_return state_ == State::Error ? sticky_ : Verdict{};
    tried_ = true;
    const bool opened = co_await open();
    if (!opened) co_return comm_error(error_);
    const std::string optneg = encode_optneg(kVersion, settings_.actions, settings_.protocol);
    const bool sent = co_await send(optneg, settings_.command_timeout);
    if (!sent) co_return comm_error("negotiation: " + error_);
    auto pkt = co_await receive(settings_.command_timeout);
    if (!pkt) co_return comm_error("negotiation: " + error_);
    std::string why;
    auto r = parse_response(*pkt, why);
    if (!r) co_return comm_error("negotiation: " + why);
    if (r->kind != Response::Kind::Negotiate)
        co_return comm_error("negotiation: unexpected " + reply_name(pkt->command));
    const Negotiation& n = r->neg;
    if (n.version < 2 || n.version > kVersion)
        co_return comm_error("protocol version " + std::to_string(n.version) + ", we speak 2 to " +
                             std::to_string(kVersion));
    if ((n.actions & ~settings_.actions) != 0)
        co_return comm_error(
            fmt::format("actions 0x{:x} beyond the 0x{:x} offered", n.actions, settings_.actions));
    if ((n.protocol & ~settings_.protocol) != 0)
        co_return comm_error(fmt::format("protocol flags 0x{:x} beyond the 0x{:x} offered",
                                         n.protocol, settings_.protocol));
    actions_ = n.actions;
    protocol_ = n.protocol;
    // Steps that do not exist in an older protocol are never sent (Postfix's np_mask).
    if (n.version < 4) protocol_ |= smfip::NoData;
    if (n.version < 3) protocol_ |= smfip::NoUnknown;
    wanted_macros_ = n.macros;
    state_ = State::Ready;
    error_.clear();
    co_return Verdict{};
}

std::string Session::macros_for(Stage stage, char command) const {
    const auto i = static_cast<std::size_t>(stage);
    const std::string_view names =
        wanted_macros_[i] ? std::string_view(*wanted_macros_[i]) : kDefaultMacros[i];
    std::vector<std::pair<std::string, std::string>> list;
    std::size_t pos = 0;
    while (pos < names.size()) {
        const auto end = std::min(names.find_first_of(" ,\t", pos), names.size());
        if (end > pos) {
            const std::string name = canonical_macro(names.substr(pos, end - pos));
            const auto it = macros_.find(name);
            const bool seen = std::any_of(list.begin(), list.end(),
                                          [&](const auto& p) { return p.first == name; });
            if (it != macros_.end() && !seen) list.emplace_back(name, it->second);
        }
        pos = end + 1;
    }
    if (list.empty()) return {};
    return encode_macros(command, list);
}

asio::awaitable<Verdict> Session::event(const Step& step, const std::string& payload,
                                        EndOfMessage* eom) {
    switch (state_) {
        case State::Error:
        case State::RejectCon:
            co_return sticky_;
        case State::Closed:
        case State::AcceptCon:
            co_return Verdict{};
        case State::AcceptMsg:
            if (step.message) co_return Verdict{};
            break;
        case State::Ready:
            if (step.command != smfic::Connect)
                co_return comm_error(command_name(step.command) + " before SMFIC_CONNECT");
            state_ = State::Envelope;
            break;
        case State::Envelope:
        case State::Message:
            break;
    }
    if (step.content) state_ = State::Message;

    std::string out = step.macros ? macros_for(*step.macros, step.command) : std::string();
    const bool skipped = (protocol_ & step.skip_flag) != 0;
    if (!skipped) out += payload;
    if (out.empty()) co_return Verdict{};
    const auto limit = step.content ? settings_.content_timeout : settings_.command_timeout;
    const bool sent = co_await send(out, limit);
    if (!sent) co_return comm_error(command_name(step.command) + ": " + error_);
    if (skipped || (protocol_ & step.noreply_flag) != 0) co_return Verdict{};

    std::size_t edit_bytes = 0;
    for (;;) {
        auto pkt = co_await receive(limit);  // each reply, SMFIR_PROGRESS too, gets a full limit
        if (!pkt) co_return comm_error("after " + command_name(step.command) + ": " + error_);
        std::string why;
        auto r = parse_response(*pkt, why);
        if (!r) co_return comm_error("after " + command_name(step.command) + ": " + why);
        using K = Response::Kind;
        switch (r->kind) {
            case K::Progress:
                continue;
            case K::Continue:
                co_return Verdict{};
            case K::Accept:
                if (step.connection) {
                    close();
                    state_ = State::AcceptCon;
                } else {
                    state_ = State::AcceptMsg;
                }
                co_return Verdict{Verdict::Accept, ""};
            case K::Discard:
                if (step.connection)
                    co_return conf_error("SMFIR_DISCARD is not allowed after " +
                                         command_name(step.command));
                state_ = State::AcceptMsg;
                co_return Verdict{Verdict::Discard, ""};
            case K::Reject:
            case K::Tempfail:
            case K::ReplyCode: {
                Verdict v = r->kind == K::Reject
                                ? Verdict{Verdict::Reject, "550 5.7.1 Command rejected"}
                            : r->kind == K::Tempfail
                                ? Verdict{Verdict::Tempfail,
                                          "451 4.7.1 Service unavailable - try again later"}
                                : Verdict{Verdict::ReplyCode, r->text};
                if (step.connection) co_return reject_connection(v);
                co_return v;
            }
            case K::Shutdown:
            case K::ConnFail:
                co_return reject_connection(
                    Verdict{Verdict::ReplyCode, "421 4.7.0 Server closing connection"});
            case K::Skip:
                if (step.command != smfic::Body || (protocol_ & smfip::Skip) == 0)
                    co_return comm_error("unexpected SMFIR_SKIP after " +
                                         command_name(step.command));
                body_skipped_ = true;
                co_return Verdict{};
            case K::Modify: {
                Modification& m = r->mod;
                if (!eom)
                    co_return comm_error("unexpected " + reply_name(pkt->command) + " after " +
                                         command_name(step.command));
                if ((actions_ & action_needed(m)) == 0)
                    co_return comm_error(reply_name(pkt->command) +
                                         " without having negotiated it");
                edit_bytes += m.name.size() + m.value.size() + m.args.size();
                if (edit_bytes > settings_.max_edit_size)
                    co_return comm_error("edits over max_edit_size (" +
                                         std::to_string(settings_.max_edit_size) + " bytes)");
                using T = Modification::Type;
                if (m.type == T::AddHeader || m.type == T::InsertHeader ||
                    m.type == T::ChangeHeader)
                    m.value = normalize_header_value(m.value, (protocol_ & smfip::HdrLeadSpc) != 0);
                auto& mods = eom->modifications;
                auto replaced = std::find_if(mods.begin(), mods.end(), [](const auto& x) {
                    return x.type == T::ReplaceBody;
                });
                if (m.type == T::ReplaceBody && replaced != mods.end())
                    replaced->value += m.value;  // the body comes in chunks
                else
                    mods.push_back(std::move(m));
                continue;
            }
            case K::Negotiate:
                co_return comm_error("unexpected SMFIC_OPTNEG after " + command_name(step.command));
        }
    }
}

asio::awaitable<Verdict> Session::connect(std::string_view hostname, std::string_view ip,
                                          std::uint16_t port) {
    if (!tried_) {
        auto v = co_await negotiate();
        if (state_ == State::Error) co_return v;
    }
    Family family = Family::Unknown;
    std::string addr(ip);
    boost::system::error_code ec;
    auto a = asio::ip::make_address(addr, ec);
    if (!ec && a.is_v6() && a.to_v6().is_v4_mapped())
        a = asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
    if (!ec) {
        family = a.is_v4() ? Family::Inet : Family::Inet6;
        addr = a.to_string();
    }
    const std::string name = hostname.empty() ? std::string("unknown") : std::string(hostname);
    set_macro("{client_name}", name);
    set_macro("{client_addr}", addr);
    set_macro("{client_port}", std::to_string(port));
    set_macro("_", name + " [" + addr + "]");
    const std::string payload = encode_connect(name, family, port, addr);
    co_return co_await event(kConnect, payload, nullptr);
}

asio::awaitable<Verdict> Session::helo(std::string_view name) {
    const std::string payload = encode_helo(name);
    co_return co_await event(kHelo, payload, nullptr);
}

asio::awaitable<Verdict> Session::mail(std::string_view sender,
                                       const std::vector<std::string>& esmtp_args) {
    if (transaction_) co_await abort();  // a new transaction starts clean
    transaction_ = true;
    body_skipped_ = false;
    std::string bare(sender);
    if (bare.size() >= 2 && bare.front() == '<' && bare.back() == '>')
        bare = bare.substr(1, bare.size() - 2);
    set_macro("{mail_addr}", bare);
    clear_macro("{rcpt_addr}");
    const std::string payload = encode_mail(sender, esmtp_args);
    co_return co_await event(kMail, payload, nullptr);
}

asio::awaitable<Verdict> Session::rcpt(std::string_view recipient,
                                       const std::vector<std::string>& esmtp_args) {
    std::string bare(recipient);
    if (bare.size() >= 2 && bare.front() == '<' && bare.back() == '>')
        bare = bare.substr(1, bare.size() - 2);
    set_macro("{rcpt_addr}", bare);
    const std::string payload = encode_rcpt(recipient, esmtp_args);
    co_return co_await event(kRcpt, payload, nullptr);
}

asio::awaitable<Verdict> Session::data() {
    const std::string payload = frame(smfic::Data, "");
    co_return co_await event(kData, payload, nullptr);
}

asio::awaitable<Verdict> Session::header(std::string_view name, std::string_view value) {
    const std::string v = value_for_milter(value, (protocol_ & smfip::HdrLeadSpc) != 0);
    const std::string payload = encode_header(name, v);
    co_return co_await event(kHeader, payload, nullptr);
}

asio::awaitable<Verdict> Session::end_of_headers() {
    const std::string payload = frame(smfic::Eoh, "");
    co_return co_await event(kEoh, payload, nullptr);
}

asio::awaitable<Verdict> Session::body(std::string_view chunk) {
    Verdict v;
    for (std::size_t pos = 0; pos < chunk.size() && v.action == Verdict::Continue;
         pos += kChunkSize) {
        if (body_skipped_) break;
        const std::string payload = encode_body(chunk.substr(pos, kChunkSize));
        v = co_await event(kBody, payload, nullptr);
    }
    co_return v;
}

asio::awaitable<EndOfMessage> Session::end_of_message() {
    EndOfMessage out;
    const std::string payload = frame(smfic::BodyEob, "");
    out.verdict = co_await event(kEom, payload, &out);
    if (!out.verdict.proceed()) out.modifications.clear();
    co_return out;
}

asio::awaitable<EndOfMessage> Session::message(std::string_view stored, bool first_is_ours,
                                               const Spool* rest) {
    const MessageParts parts = split_message(stored);
    EndOfMessage out;
    for (std::size_t i = first_is_ours ? 1 : 0; i < parts.headers.size(); ++i) {
        const HeaderField& f = parts.headers[i];
        out.verdict = co_await header(f.name, f.value);
        if (out.verdict.action != Verdict::Continue) co_return out;
    }
    out.verdict = co_await end_of_headers();
    if (out.verdict.action != Verdict::Continue) co_return out;
    out.verdict = co_await body(parts.body);
    if (out.verdict.action != Verdict::Continue) co_return out;
    for (std::int64_t off = 0; rest && off < rest->size() && !body_skipped_;) {
        const std::string piece = rest->read(off, kChunkSize);
        if (piece.empty()) break;
        off += static_cast<std::int64_t>(piece.size());
        out.verdict = co_await body(piece);
        if (out.verdict.action != Verdict::Continue) co_return out;
    }
    co_return co_await end_of_message();
}

asio::awaitable<void> Session::abort() {
    const bool open_transaction = transaction_;
    transaction_ = false;
    body_skipped_ = false;
    if (!open_transaction) co_return;
    if (state_ != State::Envelope && state_ != State::Message && state_ != State::AcceptMsg)
        co_return;
    const std::string packet = frame(smfic::Abort, "");
    const bool sent = co_await send(packet, settings_.command_timeout);
    if (!sent) {
        comm_error("SMFIC_ABORT: " + error_);
        co_return;
    }
    state_ = State::Envelope;
}

asio::awaitable<void> Session::quit() {
    if (sock_ && state_ != State::Error) {
        const std::string packet = frame(smfic::Quit, "");
        co_await send(packet, settings_.command_timeout);  // nothing to do if it does not go
    }
    close();
    if (state_ != State::Error && state_ != State::RejectCon) state_ = State::Closed;
}

}  // namespace bmx::milter
