#pragma once
// Active volumes: a volume's thin device is activated when its first user (an NBD connection, a
// test) opens it and deactivated when the last one lets go, so delete and snapshot see an idle
// volume as inactive. The export provider for the NBD server sits on top (exports.h).
#include "thin/daemon/catalogue.h"
#include "thin/pool/pool.h"

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace thin::daemon {

class volume_manager : public std::enable_shared_from_this<volume_manager> {
public:
    explicit volume_manager(thin::pool::pool& pool);

    // One user's hold on an active volume; deactivates the device when the last holder goes.
    class holder {
    public:
        holder(std::shared_ptr<volume_manager> m, std::string name, std::shared_ptr<thin::pool::thin_device> dev)
            : m_(std::move(m)), name_(std::move(name)), dev_(std::move(dev)) {}
        ~holder();
        holder(const holder&) = delete;
        holder& operator=(const holder&) = delete;
        thin::pool::thin_device& device() const { return *dev_; }
        const std::string& name() const { return name_; }

    private:
        std::shared_ptr<volume_manager> m_;
        std::string name_;
        std::shared_ptr<thin::pool::thin_device> dev_;
    };

    // Activates v (or joins its activation). pool_error from activate passes through.
    std::unique_ptr<holder> acquire(const volume& v);
    // Holders of a volume now (NBD connections).
    std::size_t users(const std::string& name) const;
    // Waits until no deactivation of `name` is in progress (before delete).
    void wait_idle(const std::string& name);
    // Sets the length of an active volume (resize).
    void set_size(const std::string& name, std::uint64_t bytes);
    // Deactivates every volume (shutdown; holders left over see their device closed).
    void close_all();

private:
    void release(const std::string& name);
    struct active {
        std::shared_ptr<thin::pool::thin_device> dev;
        std::size_t users = 0;
    };
    thin::pool::pool& pool_;
    mutable std::mutex mutex_;
    std::condition_variable idle_;
    std::map<std::string, active> active_;
    std::map<std::string, int> closing_;
};

} // namespace thin::daemon
