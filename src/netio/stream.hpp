// netio/stream: a TCP connection that can turn into TLS mid-way (STARTTLS), with the two things
// SMTP needs from it — read more bytes, write all bytes — the same before and after the turn.
// It must never interpret what it carries, and never fall back to plaintext by itself.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <memory>
#include <string>
#include <string_view>

namespace bmx::netio {

class Stream {
  public:
    explicit Stream(boost::asio::ip::tcp::socket sock) : sock_(std::move(sock)) {}
    boost::asio::ip::tcp::socket& socket() { return sock_; }
    bool tls() const { return tls_ != nullptr; }
    SSL* ssl() { return tls_ ? tls_->native_handle() : nullptr; }

    boost::asio::awaitable<bool> read_more(std::string& buf);  // false on EOF or error
    boost::asio::awaitable<bool> write_all(std::string_view data);
    // Whether the peer has sent bytes not read yet (without reading them). Under TLS only what
    // OpenSSL already holds decrypted counts: raw bytes may be a TLS record that carries no data
    // (a TLS 1.3 session ticket).
    bool pending();

    // STARTTLS. `prepare` may configure the SSL object (SNI, verification, DANE) before the
    // handshake. On failure returns false with OpenSSL's reason in `error`.
    boost::asio::awaitable<bool> handshake_server(boost::asio::ssl::context& ctx,
                                                  std::string& error);
    template <class Prepare>
    boost::asio::awaitable<bool> handshake_client(boost::asio::ssl::context& ctx, Prepare prepare,
                                                  std::string& error) {
        make_tls(ctx);
        if (!prepare(tls_->native_handle())) {
            error = "cannot prepare TLS";
            co_return false;
        }
        const bool ok = co_await handshake(true, error);
        co_return ok;
    }

    std::string tls_version() const;  // "TLSv1.3"
    std::string tls_cipher() const;   // "TLS_AES_256_GCM_SHA384"
    int tls_bits() const;
    void close();

  private:
    void make_tls(boost::asio::ssl::context& ctx);
    boost::asio::awaitable<bool> handshake(bool client, std::string& error);

    boost::asio::ip::tcp::socket sock_;
    std::unique_ptr<boost::asio::ssl::stream<boost::asio::ip::tcp::socket&>> tls_;
};

// A server context: TLS 1.2+, no compression, strong ciphers, the given certificate and key.
// Throws std::runtime_error naming the file when they cannot be loaded.
std::unique_ptr<boost::asio::ssl::context> server_context(const std::string& cert,
                                                          const std::string& key);
// A client context: TLS 1.2+, no compression. Certificates are checked per connection.
std::unique_ptr<boost::asio::ssl::context> client_context();

}  // namespace bmx::netio
