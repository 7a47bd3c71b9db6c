// bench/backlog_tool: helpers for bench/backlog.py.
//   backlog_tool fill STORE COUNT SIZE DOMAIN   puts COUNT messages of SIZE bytes into a store
//                                              through the store's own insert (10,000 a batch)
//   backlog_tool decide COUNT                  times one scheduling decision (take the next due
//                                              message, put it back after its attempt) with COUNT
//                                              messages in the scheduler's index
// Benchmark helper only: never part of the server.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "scheduler/index.hpp"
#include "store/store.hpp"

using namespace bmx;

namespace {

int fill(const std::string& path, long count, long size, const std::string& domain) {
    auto store = open_sqlite_store(path);
    std::string body = "Subject: backlog\r\n\r\n";
    while (static_cast<long>(body.size()) + 80 <= size) body += std::string(78, 'x') + "\r\n";
    const auto t0 = std::chrono::steady_clock::now();
    const TimePoint t = now();
    for (long done = 0; done < count;) {
        std::vector<NewMessage> batch;
        for (int i = 0; i < 10000 && done < count; ++i, ++done) {
            NewMessage m;
            m.id = new_queue_id();
            m.domain = domain;
            m.sender = "load@sender.test";
            m.recipients = {"u" + std::to_string(done) + "@" + domain};
            m.body = body;
            m.received_at = t;
            m.next_attempt_at = t;
            m.client = "backlog [127.0.0.1]";
            batch.push_back(std::move(m));
        }
        std::vector<const NewMessage*> ptrs;
        for (auto& m : batch) ptrs.push_back(&m);
        store->insert(ptrs);
    }
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - t0;
    std::printf("filled %ld messages in %.1f s\n", count, took.count());
    return 0;
}

int decide(long count) {
    Index ix;
    const TimePoint t = TimePoint{} + Seconds(1'700'000'000);
    for (long i = 0; i < count; ++i)
        ix.add(Index::id(0x1000000000000000ULL + static_cast<unsigned long>(i) * 7919),
               i % 2 ? "a.test" : "b.test", t, t + Seconds(i % 3600), 0);
    const auto a = ix.dest("a.test");
    const int rounds = 200000;
    const auto t0 = std::chrono::steady_clock::now();
    long taken = 0;
    for (int r = 0; r < rounds; ++r) {
        // The decision the scheduler makes per message: the next due one of a destination,
        // whether something expires, and after the attempt the message back at its next time.
        auto k = ix.take_due(a, t + Seconds(1000000));  // everything is due: one is taken
        (void)ix.take_expired(t - Seconds(1));
        if (k) {
            // Backoff puts it after the others, as time goes on.
            ix.requeue(*k, t + Seconds(3600) + std::chrono::microseconds(r), true);
            ++taken;
        }
    }
    std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - t0;
    std::printf("queue=%ld decisions=%ld ns_per_decision=%.0f\n", count, taken,
                took.count() / rounds);
    return taken == rounds ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 5 && a[0] == "fill") return fill(a[1], std::stol(a[2]), std::stol(a[3]), a[4]);
    if (a.size() == 2 && a[0] == "decide") return decide(std::stol(a[1]));
    std::fprintf(stderr, "usage: backlog_tool fill STORE COUNT SIZE DOMAIN | decide COUNT\n");
    return 2;
}
