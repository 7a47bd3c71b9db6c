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
    auto [it, fresh] = entries_.try_emplace(*k);
    if (!fresh) return false;
    Entry& e = it->second;
    e.key = *k;
    e.dest = d;
    e.attempts = attempts;
    e.received = received;
    e.next = next;
    link_due(e);
    expiry_.insert(e);
    ++due_[d].total;
    return true;
}

Index::Entry* Index::find(Key k) {
    auto it = entries_.find(k);
    return it == entries_.end() ? nullptr : &it->second;
}

void Index::link_due(Entry& e) {
    auto& q = due_[e.dest];
    q.due.insert(q.due.end(), e);  // a hint: a later next attempt than the rest, usually
    ++q.linked;
}

void Index::take(Entry& e) {
    unlink_order(e);
    e.in_flight = true;
    e.flush_seen = due_[e.dest].flushes;
}

void Index::unlink_order(Entry& e) {
    if (!e.order.is_linked()) return;
    e.order.unlink();
    --due_[e.dest].linked;
}

std::optional<Index::Key> Index::take_due(Dest d, TimePoint t) {
    if (d >= due_.size()) return std::nullopt;
    auto& q = due_[d];
    Entry* e = nullptr;
    if (!q.flushed.empty())
        e = &*q.flushed.begin();
    else if (!q.due.empty() && q.due.begin()->next <= t)
        e = &*q.due.begin();
    if (!e) return std::nullopt;
    take(*e);
    return e->key;
}

std::optional<TimePoint> Index::earliest(Dest d) const {
    if (d >= due_.size()) return std::nullopt;
    if (!due_[d].flushed.empty()) return TimePoint{};  // due now
    if (due_[d].due.empty()) return std::nullopt;
    return due_[d].due.begin()->next;
}

std::size_t Index::waiting(Dest d) const {
    return d < due_.size() ? due_[d].linked : 0;
}

std::optional<Index::Key> Index::take_expired(TimePoint deadline) {
    while (!expiry_.empty() && expiry_.begin()->received <= deadline) {
        Entry& e = *expiry_.begin();
        e.expiry.unlink();
        if (e.in_flight) continue;  // its attempt will see the age, or requeue re-adds it
        take(e);
        return e.key;
    }
    return std::nullopt;
}

std::optional<TimePoint> Index::oldest() const {
    if (expiry_.empty()) return std::nullopt;
    return expiry_.begin()->received;
}

void Index::requeue(Key k, TimePoint next, bool count_attempt) {
    auto* e = find(k);
    if (!e) return;
    unlink_order(*e);
    e->next = next;
    e->in_flight = false;
    if (count_attempt) ++e->attempts;
    auto& q = due_[e->dest];
    if (e->flush_seen != q.flushes) {  // flushed while in flight
        q.flushed.insert(*e);
        ++q.linked;
    } else {
        link_due(*e);
    }
    if (!e->expiry.is_linked()) expiry_.insert(*e);  // take_expired dropped it while in flight
}

void Index::remove(Key k, bool unless_in_flight) {
    auto it = entries_.find(k);
    if (it == entries_.end()) return;
    unlink_order(it->second);
    it->second.expiry.unlink();
    if (unless_in_flight && it->second.in_flight) return;
    --due_[it->second.dest].total;
    entries_.erase(it);
}

std::size_t Index::due_all(Dest d) {
    if (d >= due_.size()) return 0;
    auto& q = due_[d];
    ++q.flushes;
    if (q.flushed.empty()) {
        q.flushed.swap(q.due);  // O(1)
    } else {
        while (!q.due.empty()) {  // a flush while another drains: rare, no allocation
            Entry& e = *q.due.begin();
            q.due.erase(q.due.begin());
            q.flushed.insert(e);
        }
    }
    return q.total;
}

}  // namespace bmx
