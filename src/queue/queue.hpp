// queue: the asynchronous door to the store. Coroutines on the event loop hand it work; one
// thread of its own runs every store call, and batches the new messages of all sessions that wait
// at the same moment into one transaction (group commit: one fsync serves many 250s), and likewise
// the delivery attempts that finish together. Delivery's reads go to a second thread and connection
// when the store has one (PostgreSQL), so they never wait behind a commit. It is the one door for
// mail: submit() commits and then hands the messages to the scheduler, record() does the same for
// the DSN an outcome owes. It must never run store calls on the event loop, never complete a
// commit before the store has returned from it, and never hand on a message not committed.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "store/store.hpp"

namespace bmx {

class Queue {
  public:
    explicit Queue(std::unique_ptr<Store> store);
    ~Queue();  // drains every job, then joins the thread
    Queue(const Queue&) = delete;
    Queue& operator=(const Queue&) = delete;

    // The one door into the queue. Commits all messages durably (grouped with other sessions'
    // commits), then hands them to whoever on_committed() named (the scheduler). Every producer
    // of mail comes through here: the SMTP session, alerts; DSNs come through record(). Throws
    // StoreError, and then nothing is handed on.
    boost::asio::awaitable<void> submit(const std::vector<NewMessage>& msgs);

    // Records one delivery attempt or operator action (grouped with the other attempts waiting at
    // the same moment into one transaction). Its DSN, if any, is committed in that transaction
    // and then handed on as submit() does. Returns the recipients still pending. Throws
    // StoreError, and then nothing is handed on.
    boost::asio::awaitable<int> record(const AttemptUpdate& u);

    // Who is told of newly committed messages (held ones included: the scheduler skips them).
    // Set once before serving; unset, committed mail is only stored (tools, tests).
    using Committed = std::function<void(const std::vector<NewMessage>&)>;
    void on_committed(Committed fn) { committed_ = std::move(fn); }

    // Runs fn(store) on the store thread and resumes the caller on its executor with the result.
    // Callers pass a named std::function: GCC 12 may destroy a temporary inside co_await twice.
    template <class T>
    boost::asio::awaitable<T> call(const std::function<T(Store&)>& fn) {
        return run(fn, false);
    }
    // The same for a read that only sees committed data (a message to deliver, its body): on the
    // reading connection when the store has one, else as call().
    template <class T>
    boost::asio::awaitable<T> read(const std::function<T(Store&)>& fn) {
        return run(fn, reader_ != nullptr);
    }

    std::uint64_t batches() const { return batches_.load(); }  // group commits (tests, metrics)
    std::uint64_t attempt_batches() const { return attempt_batches_.load(); }

  private:
    boost::asio::awaitable<void> commit(const std::vector<NewMessage>& msgs);  // submit's half
    Committed committed_;
    struct Job {
        const std::vector<NewMessage>* insert;  // non-null: part of the next group commit
        std::function<void(Store*, std::exception_ptr)> run;
        const AttemptUpdate* attempt = nullptr;  // non-null: part of the next attempt batch
        int* left = nullptr;                     // where the attempt's result goes
    };
    struct Reads {  // the reading connection's jobs, run one after another on its thread
        std::mutex mu;
        std::condition_variable cv;
        std::deque<Job> jobs;
        bool stopping = false;
        std::thread thread;
    };

    template <class T>
    boost::asio::awaitable<T> run(const std::function<T(Store&)>& fn, bool on_reader) {
        auto ex = co_await boost::asio::this_coro::executor;
        co_return co_await boost::asio::async_initiate<decltype(boost::asio::use_awaitable),
                                                       void(std::exception_ptr, T)>(
            [this, ex, &fn, on_reader](auto handler) {
                auto h = std::make_shared<decltype(handler)>(std::move(handler));
                Job job{nullptr, [h, ex, fn](Store* s, std::exception_ptr batch_error) {
                            T result{};
                            std::exception_ptr ep = batch_error;
                            if (!ep) {
                                try {
                                    result = fn(*s);
                                } catch (...) {
                                    ep = std::current_exception();
                                }
                            }
                            boost::asio::post(ex, [h, ep, r = std::move(result)]() mutable {
                                (*h)(ep, std::move(r));
                            });
                        }};
                if (on_reader)
                    enqueue_read(std::move(job));
                else
                    enqueue(std::move(job));
            },
            boost::asio::use_awaitable);
    }

    void enqueue(Job job);
    void enqueue_read(Job job);
    void loop();
    void read_loop();

    std::unique_ptr<Store> store_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Job> jobs_;
    bool stopping_ = false;
    std::atomic<std::uint64_t> batches_{0};
    std::atomic<std::uint64_t> attempt_batches_{0};
    std::thread thread_;
    std::unique_ptr<Store> reader_;  // null: reads share the store thread
    Reads reads_;
};

}  // namespace bmx
