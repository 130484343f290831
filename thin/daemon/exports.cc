// The pool's volumes as NBD exports (thin/nbd/export.h): one export per catalogue volume, by name.
// Every connection's open() holds the volume's activation (volume_manager), so the device is
// shared by all connections to it and deactivated when the last one ends.
#include "thin/daemon/state.h"
#include "thin/daemon/text.h"

#include <algorithm>

namespace thin::daemon {

namespace {

using thin::pool::extent_state;

// Upper bound of one block-status answer (the NBD client asks again for the rest).
constexpr std::uint64_t MAX_STATUS_BLOCKS = 8192;

class volume_export : public thin::nbd::export_handle {
public:
    volume_export(std::shared_ptr<state> s, std::unique_ptr<volume_manager::holder> h)
        : s_(std::move(s)), h_(std::move(h)) {}
    ~volume_export() override {
        std::string name = h_->name();
        h_.reset();  // the last one deactivates the device, after its requests drain
        s_->log("volume " + name + " closed (" + std::to_string(s_->volumes->users(name)) + " users left)");
    }

    std::uint64_t size() const override { return h_->device().nr_sectors() * 512; }

    bool read_only() const override {
        auto m = s_->pool->mode();
        return s_->opts.features.read_only || m == thin::pool::pool_mode::read_only ||
               m == thin::pool::pool_mode::fail || m == thin::pool::pool_mode::out_of_metadata_space;
    }

    std::uint32_t preferred_block_size() const override { return std::uint32_t(s_->block_bytes()); }
    bool can_trim() const override { return !s_->opts.features.ignore_discard; }
    void submit(thin::pool::io_request r) override { h_->device().submit(std::move(r)); }

    std::vector<thin::nbd::extent> block_status(std::uint64_t offset, std::uint64_t length) override {
        std::uint64_t sectors = std::min(length / 512, MAX_STATUS_BLOCKS * s_->block_sectors);
        std::vector<thin::nbd::extent> out;
        for (const auto& e : h_->device().extents(offset / 512, std::max<std::uint64_t>(sectors, 1))) {
            bool unmapped = e.state == extent_state::unmapped;
            out.push_back({e.nr_sectors * 512, unmapped, unmapped});
        }
        return out;
    }

private:
    std::shared_ptr<state> s_;
    std::unique_ptr<volume_manager::holder> h_;
};

class volume_exports : public thin::nbd::export_provider {
public:
    explicit volume_exports(std::shared_ptr<state> s) : s_(std::move(s)) {}

    std::vector<entry> list() override {
        std::lock_guard lk(s_->mutex);
        std::vector<entry> out;
        for (const auto& v : s_->cat.volumes)
            out.push_back({v.name, human_size(v.size) + " thin volume (device " + std::to_string(v.id) + ")"});
        return out;
    }

    std::shared_ptr<thin::nbd::export_handle> open(const std::string& name) override {
        std::unique_ptr<volume_manager::holder> h;
        {
            // Under the catalogue lock: a delete cannot slip between the lookup and the activation.
            std::lock_guard lk(s_->mutex);
            const volume* v = s_->cat.find(name);
            if (!v || s_->shut_down) return nullptr;
            try {
                h = s_->volumes->acquire(*v);
            } catch (const thin::pool::pool_error& e) {
                throw std::runtime_error("volume " + name + " cannot be activated: " + e.what());
            }
        }
        s_->log("volume " + name + " opened (" + std::to_string(s_->volumes->users(name)) + " users)");
        return std::make_shared<volume_export>(s_, std::move(h));
    }

private:
    std::shared_ptr<state> s_;
};

} // namespace

std::shared_ptr<thin::nbd::export_provider> make_exports(std::shared_ptr<state> s) {
    return std::make_shared<volume_exports>(std::move(s));
}

} // namespace thin::daemon
