#include "admin/login_pool.hpp"

#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "accounts/accounts.hpp"

namespace bmx::admin {

namespace asio = boost::asio;

LoginPool::LoginPool(asio::io_context& io, Limits limits)
    : io_(io),
      limits_(limits),
      queue_(limits.queue, limits.per_address),
      threads_(std::max<std::size_t>(limits.threads, 1)) {}

LoginPool::~LoginPool() {
    threads_.join();
}

asio::awaitable<LoginPool::Verdict> LoginPool::check(const std::string& address, bool clean,
                                                     const std::string& hash,
                                                     const std::string& password) {
    const std::uint64_t id = ++next_id_;
    co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(Verdict)>(
        [this, id, &address, clean, &hash, &password](auto handler) {
            start(id, address, clean, Job{hash, password, std::move(handler)});
        },
        asio::use_awaitable);
}

void LoginPool::start(std::uint64_t id, const std::string& address, bool clean, Job job) {
    const auto a = queue_.push(id, address, clean);
    if (a.displaced) {
        auto it = jobs_.find(*a.displaced);
        auto done = std::move(it->second.done);
        jobs_.erase(it);
        asio::post(io_, [done = std::move(done)]() mutable { std::move(done)(Verdict::Busy); });
    }
    if (!a.admitted) {
        asio::post(io_, [done = std::move(job.done)]() mutable { std::move(done)(Verdict::Busy); });
        return;
    }
    jobs_.emplace(id, std::move(job));
    run_next();
}

void LoginPool::run_next() {
    while (running_ < std::max<std::size_t>(limits_.threads, 1)) {
        auto id = queue_.pop();
        if (!id) return;
        ++running_;
        Job& job = jobs_.at(*id);
        asio::post(threads_, [this, id = *id, hash = std::move(job.hash),
                              password = std::move(job.password)]() mutable {
            static const std::string dummy = accounts::hash_password("not a password");
            const bool ok =
                accounts::verify_password(hash.empty() ? dummy : hash, password) && !hash.empty();
            password.assign(password.size(), '\0');
            asio::post(io_, [this, id, ok] { finish(id, ok ? Verdict::Right : Verdict::Wrong); });
        });
    }
}

void LoginPool::finish(std::uint64_t id, Verdict v) {
    --running_;
    queue_.done(id);
    auto it = jobs_.find(id);
    if (it != jobs_.end()) {
        auto done = std::move(it->second.done);
        jobs_.erase(it);
        std::move(done)(v);
    }
    run_next();
}

}  // namespace bmx::admin
