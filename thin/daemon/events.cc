#include "thin/daemon/events.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <sys/eventfd.h>
#include <system_error>
#include <unistd.h>

namespace thin::daemon {

event_hub::subscription::subscription() {
    efd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

event_hub::subscription::~subscription() {
    if (efd_ >= 0) ::close(efd_);
}

void event_hub::subscription::push(const std::string& line) {
    {
        std::lock_guard lk(mutex_);
        if (lines_.size() >= MAX_QUEUED) {
            lines_.pop_front();
            ++dropped_;
        }
        lines_.push_back(line);
    }
    std::uint64_t one = 1;
    (void)!::write(efd_, &one, sizeof one);
}

std::vector<std::string> event_hub::subscription::take() {
    std::uint64_t n;
    (void)!::read(efd_, &n, sizeof n);
    std::lock_guard lk(mutex_);
    std::vector<std::string> out;
    if (dropped_) {
        std::string line = "(";
        line += std::to_string(dropped_);
        line += " events dropped: the reader fell behind)";
        out.push_back(std::move(line));
        dropped_ = 0;
    }
    out.insert(out.end(), lines_.begin(), lines_.end());
    lines_.clear();
    return out;
}

std::shared_ptr<event_hub::subscription> event_hub::subscribe() {
    auto s = std::make_shared<subscription>();
    std::lock_guard lk(mutex_);
    subs_.push_back(s);
    return s;
}

void event_hub::unsubscribe(const std::shared_ptr<subscription>& s) {
    std::lock_guard lk(mutex_);
    std::erase(subs_, s);
}

void event_hub::publish(const std::string& line) {
    std::lock_guard lk(mutex_);
    for (auto& s : subs_) s->push(line);
}

std::size_t event_hub::subscribers() const {
    std::lock_guard lk(mutex_);
    return subs_.size();
}

} // namespace thin::daemon
