#include "queue/queue.hpp"

#include <chrono>

#include "metrics/metrics.hpp"

namespace bmx {

Queue::Queue(std::unique_ptr<Store> store) : store_(std::move(store)), reader_(store_->reader()) {
    thread_ = std::thread([this] { loop(); });
    if (reader_) reads_.thread = std::thread([this] { read_loop(); });
}

Queue::~Queue() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
    if (reader_) {
        {
            std::lock_guard lock(reads_.mu);
            reads_.stopping = true;
        }
        reads_.cv.notify_all();
        reads_.thread.join();
    }
}

void Queue::enqueue(Job job) {
    {
        std::lock_guard lock(mu_);
        jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
}

void Queue::enqueue_read(Job job) {
    {
        std::lock_guard lock(reads_.mu);
        reads_.jobs.push_back(std::move(job));
    }
    reads_.cv.notify_one();
}

void Queue::read_loop() {
    for (;;) {
        std::deque<Job> jobs;
        {
            std::unique_lock lock(reads_.mu);
            reads_.cv.wait(lock, [&] { return reads_.stopping || !reads_.jobs.empty(); });
            if (reads_.jobs.empty()) return;  // stopping, every read done
            jobs.swap(reads_.jobs);
        }
        for (auto& j : jobs) j.run(reader_.get(), nullptr);
    }
}

boost::asio::awaitable<void> Queue::commit(const std::vector<NewMessage>& msgs) {
    auto ex = co_await boost::asio::this_coro::executor;
    co_await boost::asio::async_initiate<decltype(boost::asio::use_awaitable),
                                         void(std::exception_ptr)>(
        [this, ex, &msgs](auto handler) {
            auto h = std::make_shared<decltype(handler)>(std::move(handler));
            // `msgs` lives in this coroutine frame, which stays suspended until the job is done.
            enqueue(Job{&msgs, [h, ex](Store*, std::exception_ptr ep) {
                            boost::asio::post(ex, [h, ep]() mutable { (*h)(ep); });
                        }});
        },
        boost::asio::use_awaitable);
}

boost::asio::awaitable<int> Queue::record(const AttemptUpdate& u) {
    auto ex = co_await boost::asio::this_coro::executor;
    int left = 0;
    co_await boost::asio::async_initiate<decltype(boost::asio::use_awaitable),
                                         void(std::exception_ptr)>(
        [this, ex, &u, &left](auto handler) {
            auto h = std::make_shared<decltype(handler)>(std::move(handler));
            // `u` and `left` live in this coroutine frame, suspended until the job is done.
            enqueue(Job{nullptr,
                        [h, ex](Store*, std::exception_ptr ep) {
                            boost::asio::post(ex, [h, ep]() mutable { (*h)(ep); });
                        },
                        &u, &left});
        },
        boost::asio::use_awaitable);
    if (u.dsn && committed_) committed_({*u.dsn});
    co_return left;
}

boost::asio::awaitable<void> Queue::submit(const std::vector<NewMessage>& msgs) {
    co_await commit(msgs);
    if (committed_) committed_(msgs);
}

void Queue::loop() {
    for (;;) {
        std::deque<Job> jobs;
        {
            std::unique_lock lock(mu_);
            cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
            if (jobs_.empty() && stopping_) return;
            jobs.swap(jobs_);
        }
        static auto& commit_seconds = metrics::histogram(
            "backupmx_store_commit_seconds", "Time to commit a group of new messages durably",
            {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5});
        static auto& commit_size =
            metrics::histogram("backupmx_store_commit_messages",
                               "Messages per group commit (one fsync serves them all)",
                               {1, 2, 4, 8, 16, 32, 64, 128, 256});
        // Group commit: every message waiting now goes into one transaction.
        std::vector<const NewMessage*> batch;
        for (auto& j : jobs)
            if (j.insert)
                for (auto& m : *j.insert) batch.push_back(&m);
        std::exception_ptr batch_error;
        if (!batch.empty()) {
            try {
                const auto t0 = std::chrono::steady_clock::now();
                store_->insert(batch);
                ++batches_;
                commit_seconds.observe(
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
                commit_size.observe(static_cast<double>(batch.size()));
            } catch (...) {
                batch_error = std::current_exception();
            }
        }
        // Attempts finished together share one transaction too.
        std::vector<const AttemptUpdate*> attempts;
        for (auto& j : jobs)
            if (j.attempt) attempts.push_back(j.attempt);
        std::exception_ptr attempt_error;
        if (!attempts.empty()) {
            try {
                auto left = store_->record_attempts(attempts);
                std::size_t i = 0;
                for (auto& j : jobs)
                    if (j.attempt) *j.left = left.at(i++);
                ++attempt_batches_;
            } catch (...) {
                attempt_error = std::current_exception();
            }
        }
        for (auto& j : jobs)
            j.run(store_.get(), j.insert ? batch_error : j.attempt ? attempt_error : nullptr);
    }
}

}  // namespace bmx
