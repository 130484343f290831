#include "thin/daemon/volumes.h"

#include <vector>

namespace thin::daemon {

volume_manager::volume_manager(thin::pool::pool& pool) : pool_(pool) {}

volume_manager::holder::~holder() { m_->release(name_); }

std::unique_ptr<volume_manager::holder> volume_manager::acquire(const volume& v) {
    std::unique_lock lk(mutex_);
    // A deactivation still running would make the pool refuse the activation (EBUSY).
    idle_.wait(lk, [&] { return !closing_.count(v.name); });
    auto it = active_.find(v.name);
    if (it == active_.end()) {
        auto dev = pool_.activate(v.id, v.size / 512, v.origin.value_or(std::string()));
        it = active_.emplace(v.name, active{std::move(dev), 0}).first;
    }
    ++it->second.users;
    return std::make_unique<holder>(shared_from_this(), v.name, it->second.dev);
}

void volume_manager::release(const std::string& name) {
    std::shared_ptr<thin::pool::thin_device> dev;
    {
        std::lock_guard lk(mutex_);
        auto it = active_.find(name);
        if (it == active_.end() || --it->second.users > 0) return;
        dev = std::move(it->second.dev);
        active_.erase(it);
        ++closing_[name];
    }
    // Closing waits for requests in flight: not under the lock.
    dev->close();
    dev.reset();
    std::lock_guard lk(mutex_);
    if (--closing_[name] == 0) closing_.erase(name);
    idle_.notify_all();
}

std::size_t volume_manager::users(const std::string& name) const {
    std::lock_guard lk(mutex_);
    auto it = active_.find(name);
    return it == active_.end() ? 0 : it->second.users;
}

void volume_manager::wait_idle(const std::string& name) {
    std::unique_lock lk(mutex_);
    idle_.wait(lk, [&] { return !closing_.count(name); });
}

void volume_manager::set_size(const std::string& name, std::uint64_t bytes) {
    std::lock_guard lk(mutex_);
    auto it = active_.find(name);
    if (it != active_.end()) it->second.dev->set_nr_sectors(bytes / 512);
}

void volume_manager::close_all() {
    std::vector<std::shared_ptr<thin::pool::thin_device>> devs;
    {
        std::lock_guard lk(mutex_);
        for (auto& [name, a] : active_) devs.push_back(a.dev);
    }
    for (auto& d : devs) d->close();
}

} // namespace thin::daemon
