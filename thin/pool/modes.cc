// Commits (pool.md §5.6, §7.3 rule 6) and pool modes (§4): the data device is flushed before the
// metadata commits; metadata failures abort to READ_ONLY (or FAIL); space exhaustion and its
// recovery; references held outside the mappings kept out of every commit.
#include "thin/pool/core.h"

#include <cerrno>
#include <future>

namespace thin::pool::detail {

using clock = std::chrono::steady_clock;

// ---- commit --------------------------------------------------------------------------------

int pool_core::flush_data_sync() {
    std::promise<int> p;
    auto f = p.get_future();
    data_->flush([&p](int r) { p.set_value(r); });
    return f.get();
}

void pool_core::with_pins_dropped(const std::function<void()>& fn) {
    for (auto& [b, n] : pins_)
        for (unsigned i = 0; i < n; ++i) md_->dec_data_block(b);
    fn();
    for (auto& [b, n] : pins_)
        for (unsigned i = 0; i < n; ++i) md_->inc_data_block(b);
}

// Flush the data device, then commit the metadata (pool.md §7.3 rule 6). False when the commit
// could not happen (mode) or failed.
bool pool_core::commit_now() {
    if (!writable_mode() || md_broken_.load()) return false;
    if (!md_->changed()) {
        check_for_metadata_space();
        check_for_data_space();
        return true;
    }
    if (int r = flush_data_sync()) {
        log("data device flush failed before a metadata commit: error " + std::to_string(r));
        return false;
    }
    try {
        std::unique_lock lk(md_lock_);
        with_pins_dropped([&] { md_->commit(); });
    } catch (const std::exception& e) {
        metadata_operation_failed("dm_pool_commit_metadata", e.what());
        return false;
    }
    ++nr_commits_;
    changed_since_.reset();
    check_for_metadata_space();
    check_for_data_space();
    return true;
}

void pool_core::pin(std::uint64_t b) {
    md_->inc_data_block(b);
    ++pins_[b];
}

void pool_core::unpin(std::uint64_t b, std::uint64_t epoch) {
    if (epoch != abort_epoch_ || md_broken_.load()) return;  // the abort dropped it
    auto it = pins_.find(b);
    if (it == pins_.end()) return;
    if (--it->second == 0) pins_.erase(it);
    md_->dec_data_block(b);
}

// ---- modes (pool.md §4) -------------------------------------------------------------------------

void pool_core::metadata_operation_failed(const std::string& op, const std::string& what) {
    log("metadata operation '" + op + "' failed: " + what);
    pool_mode m = mode_.load();
    if (m == pool_mode::fail) return;
    if (m == pool_mode::read_only || md_->read_only()) {
        set_mode(pool_mode::fail);
        return;
    }
    log("aborting current metadata transaction");
    bool failed = false;
    {
        std::unique_lock lk(md_lock_);
        try {
            for (dev_id d : md_->devices())
                if (md_->device_changed(d)) aborted_with_changes_.insert(d);
        } catch (...) {
        }
        try {
            md_->abort();
        } catch (const std::exception& e) {
            md_broken_ = true;
            lk.unlock();
            log(std::string("failed to abort metadata transaction: ") + e.what());
            failed = true;
        }
        if (!failed) {
            ++abort_epoch_;
            pins_.clear();
            changed_since_.reset();
            try {
                md_->set_needs_check();
                md_->commit();
            } catch (const std::exception& e) {
                md_broken_ = true;
                lk.unlock();
                log(std::string("failed to set 'needs_check' flag in metadata: ") + e.what());
                failed = true;
            }
        }
    }
    set_mode(failed ? pool_mode::fail : pool_mode::read_only);
}

void pool_core::set_mode(pool_mode nm) {
    pool_mode old = mode_.load();
    if (old == pool_mode::fail) return;  // terminal
    if (nm == pool_mode::write && !md_broken_.load() && md_->needs_check()) {
        log("unable to switch pool to write mode until repaired.");
        if (old != pool_mode::write) return;
        nm = pool_mode::read_only;
    }
    auto ro = [](pool_mode m) { return m == pool_mode::read_only || m == pool_mode::out_of_metadata_space; };
    std::string msg;
    switch (nm) {
    case pool_mode::fail:
        msg = "switching pool to fail mode";
        mode_ = nm;
        no_space_deadline_.reset();
        error_retry_list(old == pool_mode::out_of_data_space ? -ENOSPC : -EIO);
        break;
    case pool_mode::read_only:
    case pool_mode::out_of_metadata_space:
        if (!ro(old)) msg = "switching pool to read-only mode";
        mode_ = nm;
        no_space_deadline_.reset();
        error_retry_list(old == pool_mode::out_of_data_space ? -ENOSPC : -EIO);
        break;
    case pool_mode::out_of_data_space:
        if (old != nm)
            msg = error_if_no_space_ ? "switching pool to out-of-data-space (error IO) mode"
                                     : "switching pool to out-of-data-space (queue IO) mode";
        mode_ = nm;
        if (old != nm && !error_if_no_space_ && opts_.no_space_timeout.count() > 0)
            no_space_deadline_ = clock::now() + opts_.no_space_timeout;
        break;
    case pool_mode::write:
        if (old != nm) msg = "switching pool to write mode";
        mode_ = nm;
        no_space_deadline_.reset();
        error_if_no_space_ = requested_.error_if_no_space;
        if (old == pool_mode::out_of_data_space) requeue_retry_list();
        break;
    }
    if (old != nm) emit(pool_event_kind::mode_changed, msg.empty() ? std::string("switching pool mode") : msg);
}

void pool_core::check_for_metadata_space() {
    if (!writable_mode() || md_broken_.load()) return;
    if (md_->nr_free_metadata_beyond_reserve() == 0) {
        log("No free metadata blocks");
        set_mode(pool_mode::out_of_metadata_space);
    }
}

void pool_core::check_for_data_space() {
    if (mode_.load() != pool_mode::out_of_data_space || md_broken_.load()) return;
    if (md_->nr_free_data_blocks() > 0) set_mode(pool_mode::write);
}

void pool_core::error_retry_list(int err) {
    std::vector<bio*> v;
    v.swap(retry_);
    for (bio* b : v) {
        b->tc->busy(1);
        finish_bio(b, err);
    }
}

void pool_core::requeue_retry_list() {
    std::vector<bio*> v;
    v.swap(retry_);
    for (bio* b : v) b->tc->busy(1);
    defer_bios(v);
}

void pool_core::no_space_for(bio* holder) {
    if (error_if_no_space_ || no_more_retry_) return finish_bio(holder, -ENOSPC);
    retry_.push_back(holder);
    holder->tc->busy(-1);  // waiting for space does not hold a snapshot up
}

} // namespace thin::pool::detail
