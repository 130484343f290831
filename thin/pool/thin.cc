// A thin device (pool.md §1.2): counts its requests in flight so close() and snapshots of an active
// origin can wait for them, and hands everything else to the pool core.
#include "thin/pool/core.h"

#include <cerrno>

namespace thin::pool::detail {

thin_impl::thin_impl(std::shared_ptr<pool_core> p, dev_id id, std::uint64_t nr_sectors,
                     std::shared_ptr<data_device> origin)
    : pool_(std::move(p)), id_(id), nr_sectors_(nr_sectors), origin_(std::move(origin)) {
    if (origin_) origin_sectors_ = origin_->nr_sectors();
}

thin_impl::~thin_impl() {
    close();
    // The last reference may go on a device's completion thread: an origin device must not be
    // destroyed there (it may be that device's own thread), so the pool keeps it until it closes.
    if (origin_) pool_->keep_until_close(std::move(origin_));
}

void thin_impl::submit(io_request r) {
    bool open;
    {
        std::lock_guard lk(m_);
        open = !closed_;
        if (open && quiesced_) {
            held_.push_back(std::move(r));
            return;
        }
        if (open) {
            ++in_flight_;
            busy_.fetch_add(1);
        }
    }
    if (open)
        pool_->submit(this, std::move(r));
    else
        pool_->reject(std::move(r), -EIO);
}

void thin_impl::request_done() {
    std::lock_guard lk(m_);
    if (--in_flight_ == 0) cv_.notify_all();
}

void thin_impl::busy(long delta) {
    if (busy_.fetch_add(delta) + delta == 0 && quiescing_.load()) {
        std::lock_guard lk(m_);
        cv_.notify_all();
    }
}

void thin_impl::quiesce() {
    std::unique_lock lk(m_);
    quiesced_ = true;
    quiescing_ = true;
    cv_.wait(lk, [&] { return busy_.load() == 0; });
    quiescing_ = false;
}

void thin_impl::unquiesce() {
    std::vector<io_request> held;
    {
        std::lock_guard lk(m_);
        quiesced_ = false;
        held.swap(held_);
        cv_.notify_all();  // close() waits for this too
    }
    for (auto& r : held) submit(std::move(r));
}

void thin_impl::close() {
    {
        std::unique_lock lk(m_);
        closed_ = true;
        cv_.wait(lk, [&] { return in_flight_ == 0 && !quiesced_; });
        if (unregistered_) return;
        unregistered_ = true;
    }
    pool_->unregister(this);
}

std::string thin_impl::status() const {
    {
        std::lock_guard lk(m_);
        if (closed_) return "-";
    }
    if (pool_->closed()) return "-";
    thin_status s = status_info();
    if (s.fail) return "Fail";
    std::string r = std::to_string(s.mapped_sectors) + " ";
    r += s.highest_mapped_sector ? std::to_string(*s.highest_mapped_sector) : "-";
    return r;
}

thin_status thin_impl::status_info() const { return pool_->thin_info(this); }

std::vector<extent> thin_impl::extents(std::uint64_t sector, std::uint64_t nr_sectors) const {
    return pool_->thin_extents(this, sector, nr_sectors);
}

} // namespace thin::pool::detail
