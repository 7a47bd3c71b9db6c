#include "admin/check_queue.hpp"

#include <algorithm>

namespace bmx::admin {

CheckQueue::CheckQueue(std::size_t capacity, std::size_t per_address)
    : capacity_(std::max<std::size_t>(capacity, 1)),
      per_address_(std::max<std::size_t>(per_address, 1)) {}

CheckQueue::Admission CheckQueue::push(std::uint64_t id, const std::string& address, bool clean) {
    Admission a;
    auto held = held_.find(address);
    const std::size_t mine = held == held_.end() ? 0 : held->second;
    if (mine >= per_address_) return a;
    const bool first = clean && mine == 0;
    if (waiting_ >= capacity_) {
        if (!first) return a;
        a.displaced = displace_from(rest_);
        if (!a.displaced) return a;  // the queue is full of first-served checks
    }
    Lane& lane = first ? first_ : rest_;
    auto& q = lane.waiting[address];
    if (q.empty()) lane.turn.push_back(address);
    q.push_back(id);
    ++held_[address];
    address_of_[id] = address;
    ++waiting_;
    a.admitted = true;
    return a;
}

bool CheckQueue::has_room(const std::string& address, bool clean) const {
    auto held = held_.find(address);
    const std::size_t mine = held == held_.end() ? 0 : held->second;
    if (mine >= per_address_) return false;
    return waiting_ < capacity_ || (clean && mine == 0 && !rest_.empty());
}

std::uint64_t CheckQueue::take(Lane& lane) {
    const std::string address = lane.turn.front();
    lane.turn.pop_front();
    auto it = lane.waiting.find(address);
    const std::uint64_t id = it->second.front();
    it->second.pop_front();
    if (it->second.empty())
        lane.waiting.erase(it);
    else
        lane.turn.push_back(address);  // its next check waits for the others' turns
    return id;
}

std::optional<std::uint64_t> CheckQueue::pop() {
    Lane* lane = !first_.empty() ? &first_ : !rest_.empty() ? &rest_ : nullptr;
    if (!lane) return std::nullopt;
    --waiting_;
    return take(*lane);
}

std::optional<std::uint64_t> CheckQueue::displace_from(Lane& lane) {
    auto most = lane.waiting.end();
    for (auto it = lane.waiting.begin(); it != lane.waiting.end(); ++it)
        if (most == lane.waiting.end() || it->second.size() > most->second.size()) most = it;
    if (most == lane.waiting.end()) return std::nullopt;
    const std::uint64_t id = most->second.back();
    most->second.pop_back();
    if (most->second.empty()) {
        lane.turn.erase(std::find(lane.turn.begin(), lane.turn.end(), most->first));
        lane.waiting.erase(most);
    }
    --waiting_;
    release(id);
    return id;
}

void CheckQueue::done(std::uint64_t id) {
    release(id);
}

void CheckQueue::release(std::uint64_t id) {
    auto it = address_of_.find(id);
    if (it == address_of_.end()) return;
    auto held = held_.find(it->second);
    if (held != held_.end() && --held->second == 0) held_.erase(held);
    address_of_.erase(it);
}

}  // namespace bmx::admin
