#include "scheduler/index.hpp"

#include <cstdio>

namespace bmx {

std::optional<Index::Key> Index::key(std::string_view id) {
    if (id.size() != 16) return std::nullopt;
    Key k = 0;
    for (char c : id) {
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (v < 0) return std::nullopt;
        k = k << 4 | static_cast<Key>(v);
    }
    return k;
}

std::string Index::id(Key k) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llX", static_cast<unsigned long long>(k));
    return buf;
}

Index::Dest Index::dest(const std::string& domain) {
    auto [it, fresh] = dest_ids_.try_emplace(domain, static_cast<Dest>(domains_.size()));
    if (fresh) {
        domains_.push_back(domain);
        due_.emplace_back();
    }
    return it->second;
}

bool Index::add(std::string_view id, const std::string& domain, TimePoint received, TimePoint next,
                int attempts) {
    auto k = key(id);
    if (!k) return false;
    Dest d = dest(domain);
    auto [it, fresh] = entries_.try_emplace(*k, Entry{d, attempts, received, next, false, true});
    if (!fresh) return false;
    due_[d].due.emplace(next, *k);
    expiry_.emplace(received, *k);
    return true;
}

Index::Entry* Index::find(Key k) {
    auto it = entries_.find(k);
    return it == entries_.end() ? nullptr : &it->second;
}

std::optional<Index::Key> Index::take_due(Dest d, TimePoint t) {
    if (d >= due_.size()) return std::nullopt;
    for (Order* order : {&due_[d].flushed, &due_[d].due}) {
        const bool flushed = order == &due_[d].flushed;
        while (!order->empty() && (flushed || order->begin()->first <= t)) {
            Key k = order->begin()->second;
            order->erase(order->begin());
            auto* e = find(k);
            if (!e || e->in_flight) continue;
            e->in_flight = true;
            return k;
        }
    }
    return std::nullopt;
}

std::optional<TimePoint> Index::earliest(Dest d) const {
    if (d >= due_.size()) return std::nullopt;
    if (!due_[d].flushed.empty()) return TimePoint{};  // due now
    if (due_[d].due.empty()) return std::nullopt;
    return due_[d].due.begin()->first;
}

std::size_t Index::waiting(Dest d) const {
    return d < due_.size() ? due_[d].flushed.size() + due_[d].due.size() : 0;
}

void Index::forget_order(const Entry& e, Key k) {
    due_[e.dest].due.erase({e.next, k});
    if (!due_[e.dest].flushed.empty()) due_[e.dest].flushed.erase({e.next, k});
}

std::optional<Index::Key> Index::take_expired(TimePoint deadline) {
    while (!expiry_.empty() && expiry_.begin()->first <= deadline) {
        Key k = expiry_.begin()->second;
        expiry_.erase(expiry_.begin());
        auto* e = find(k);
        if (e) e->expiring = false;
        if (!e || e->in_flight) continue;  // its attempt will see the age, or requeue re-adds it
        forget_order(*e, k);
        e->in_flight = true;
        return k;
    }
    return std::nullopt;
}

std::optional<TimePoint> Index::oldest() const {
    if (expiry_.empty()) return std::nullopt;
    return expiry_.begin()->first;
}

void Index::requeue(Key k, TimePoint next, bool count_attempt) {
    auto* e = find(k);
    if (!e) return;
    forget_order(*e, k);
    e->next = next;
    e->in_flight = false;
    if (count_attempt) ++e->attempts;
    auto& order = due_[e->dest].due;
    order.emplace_hint(order.end(), next, k);  // usually the latest: O(1)
    if (!e->expiring) {                        // take_expired dropped it while in flight
        expiry_.emplace(e->received, k);
        e->expiring = true;
    }
}

void Index::remove(Key k, bool unless_in_flight) {
    auto it = entries_.find(k);
    if (it == entries_.end()) return;
    forget_order(it->second, k);
    if (it->second.expiring) expiry_.erase({it->second.received, k});
    it->second.expiring = false;
    if (unless_in_flight && it->second.in_flight) return;
    entries_.erase(it);
}

std::size_t Index::due_all(Dest d) {
    if (d >= due_.size()) return 0;
    auto& q = due_[d];
    if (q.flushed.empty())
        q.flushed.swap(q.due);  // O(1)
    else
        q.flushed.merge(q.due);  // splices nodes, no allocation
    return q.flushed.size();
}

}  // namespace bmx
