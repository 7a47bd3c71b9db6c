#include "netio/stream.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <stdexcept>

namespace bmx::netio {

namespace asio = boost::asio;
namespace ssl = asio::ssl;

asio::awaitable<bool> Stream::read_more(std::string& buf) {
    char tmp[8192];
    std::size_t n = 0;
    boost::system::error_code ec;
    if (tls_) {
        std::tie(ec, n) =
            co_await tls_->async_read_some(asio::buffer(tmp), asio::as_tuple(asio::use_awaitable));
    } else {
        std::tie(ec, n) =
            co_await sock_.async_read_some(asio::buffer(tmp), asio::as_tuple(asio::use_awaitable));
    }
    if (ec || n == 0) co_return false;
    buf.append(tmp, n);
    co_return true;
}

asio::awaitable<bool> Stream::write_all(std::string_view data) {
    boost::system::error_code ec;
    std::size_t n = 0;
    auto b = asio::buffer(data.data(), data.size());
    if (tls_) {
        std::tie(ec, n) = co_await asio::async_write(*tls_, b, asio::as_tuple(asio::use_awaitable));
    } else {
        std::tie(ec, n) = co_await asio::async_write(sock_, b, asio::as_tuple(asio::use_awaitable));
    }
    co_return !ec;
}

bool Stream::pending() {
    if (tls_) return SSL_pending(tls_->native_handle()) > 0;
    boost::system::error_code ec;
    return sock_.available(ec) > 0;
}

void Stream::make_tls(ssl::context& ctx) {
    tls_ = std::make_unique<ssl::stream<asio::ip::tcp::socket&>>(sock_, ctx);
}

asio::awaitable<bool> Stream::handshake_server(ssl::context& ctx, std::string& error) {
    make_tls(ctx);
    const bool ok = co_await handshake(false, error);
    co_return ok;
}

asio::awaitable<bool> Stream::handshake(bool client, std::string& error) {
    auto [ec] =
        co_await tls_->async_handshake(client ? ssl::stream_base::client : ssl::stream_base::server,
                                       asio::as_tuple(asio::use_awaitable));
    if (!ec) co_return true;
    error = ec.message();
    if (client) {
        long v = SSL_get_verify_result(tls_->native_handle());
        if (v != X509_V_OK) error += std::string(" (") + X509_verify_cert_error_string(v) + ")";
    }
    co_return false;
}

std::string Stream::tls_version() const {
    return tls_ ? SSL_get_version(tls_->native_handle()) : "";
}

std::string Stream::tls_cipher() const {
    return tls_ ? SSL_CIPHER_get_name(SSL_get_current_cipher(tls_->native_handle())) : "";
}

int Stream::tls_bits() const {
    return tls_ ? SSL_CIPHER_get_bits(SSL_get_current_cipher(tls_->native_handle()), nullptr) : 0;
}

void Stream::close() {
    boost::system::error_code ec;
    sock_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
    sock_.close(ec);
}

namespace {

void harden(ssl::context& c) {
    c.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                  ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                  ssl::context::no_compression | ssl::context::single_dh_use);
    SSL_CTX_set_min_proto_version(c.native_handle(), TLS1_2_VERSION);
    // TLS 1.2: forward-secret AEAD suites only; TLS 1.3 keeps OpenSSL's (all AEAD) defaults.
    SSL_CTX_set_cipher_list(c.native_handle(),
                            "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS");
}

}  // namespace

std::unique_ptr<ssl::context> server_context(const std::string& cert, const std::string& key) {
    auto c = std::make_unique<ssl::context>(ssl::context::tls_server);
    harden(*c);
    SSL_CTX_set_options(c->native_handle(), SSL_OP_CIPHER_SERVER_PREFERENCE);
    boost::system::error_code ec;
    c->use_certificate_chain_file(cert, ec);
    if (ec) throw std::runtime_error("smtp.tls_cert: cannot load " + cert + ": " + ec.message());
    c->use_private_key_file(key, ssl::context::pem, ec);
    if (ec) throw std::runtime_error("smtp.tls_key: cannot load " + key + ": " + ec.message());
    if (SSL_CTX_check_private_key(c->native_handle()) != 1)
        throw std::runtime_error("smtp.tls_key: " + key + " does not match " + cert);
    return c;
}

std::unique_ptr<ssl::context> client_context() {
    auto c = std::make_unique<ssl::context>(ssl::context::tls_client);
    harden(*c);
    SSL_CTX_dane_enable(c->native_handle());
    return c;
}

}  // namespace bmx::netio
