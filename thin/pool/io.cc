// The worker's handling of reads, writes and flushes (pool.md §5.2-§5.4, §5.6, §5.7): mapped blocks,
// unmapped reads, provisioning with zeroing or an external origin's copy, breaking sharing, and the
// commit that FLUSH/FUA requests on changed devices wait for.
#include "thin/pool/core.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace thin::pool::detail {

// A block being provisioned or having its sharing broken: allocated, being zeroed/copied/written,
// mapped when every step is done.
struct pool_core::mapping {
    thin_impl* tc = nullptr;
    bio* holder = nullptr;
    std::uint64_t vblock = 0;
    std::uint64_t data_block = 0;
    std::uint64_t epoch = 0;  // abort epoch of the allocation
    cell* vcell = nullptr;
    cell* pcell = nullptr;  // breaking sharing: the old data block
    bool overwrite = false;  // the holder's own write fills the block
    unsigned pending = 0;
    int err = 0;
};

void pool_core::fail_holder(bio* holder, cell* c, int err) {
    std::vector<bio*> waiters;
    if (c) waiters = prison_.release_no_holder(c);
    finish_bio(holder, err);
    defer_bios(waiters);
}

void pool_core::process_rw(bio* b, cell* c) {
    dev_id dev = b->tc->id();
    if (!c && !prison_.detain(cell_key::virt(dev, b->vblock), b, &c)) return;

    std::optional<lookup_result> r;
    try {
        std::shared_lock lk(md_lock_);
        r = md_->lookup(dev, b->vblock);
    } catch (const std::exception& e) {
        metadata_operation_failed("dm_thin_find_block", e.what());
        return fail_holder(b, c, -EIO);
    }
    pool_mode m = mode_.load();
    bool ro = m == pool_mode::read_only || m == pool_mode::out_of_metadata_space;
    if (r) {
        if (is_write(b) && r->shared) {
            if (ro) return fail_holder(b, c, -EIO);
            return break_sharing(b, c, *r);
        }
        return remap_cell(c, r->data_block, r->shared, true);
    }
    if (!is_write(b)) {
        read_unmapped(b);
        return defer_bios(prison_.release_no_holder(c));
    }
    if (b->op == io_op::write_zeroes && !b->no_hole && !(b->tc->origin() && b->sector < b->tc->origin_sectors())) {
        // An unprovisioned block with no origin under it reads as zeros already: zeroing it is
        // done without taking a block (clients zero every hole of a sparse image they copy).
        finish_bio(b, 0);
        return defer_bios(prison_.release_no_holder(c));
    }
    if (ro) return fail_holder(b, c, -EIO);
    provision(b, c);
}

// Issues the cell's reads and writes to data_block, counting them while the cell is still held
// (pool.md §7.3 rule 3); anything else in the cell goes back to the worker.
void pool_core::remap_cell(cell* c, std::uint64_t data_block, bool shared, bool with_holder) {
    std::vector<bio*> to_issue, again;
    prison_.release_visit(c, with_holder, [&](bio* x) {
        if (!is_rw(x) || (shared && is_write(x))) {
            again.push_back(x);
            return;
        }
        x->all_io = int(all_io_ds_.inc());
        if (shared) x->shared_read = int(shared_read_ds_.inc());
        to_issue.push_back(x);
    });
    for (bio* x : to_issue) issue(x, data_block);
    defer_bios(again);
}

// pool.md §5.2: zeros, or the external origin below its end.
void pool_core::read_unmapped(bio* b) {
    thin_impl* tc = b->tc;
    data_device* origin = tc->origin();
    std::uint64_t osz = tc->origin_sectors();
    if (origin && b->sector < osz) {
        std::uint64_t n = b->nr;
        if (b->sector + b->nr > osz) {
            std::memset(b->buf, 0, b->nr * SECTOR_SIZE);
            n = osz - b->sector;
        }
        origin->read(b->sector, n, b->buf, [this, b](int r) { bio_endio(b, r); });
        return;
    }
    std::memset(b->buf, 0, b->nr * SECTOR_SIZE);
    finish_bio(b, 0);
}

pool_core::alloc_result pool_core::alloc_data_block(std::uint64_t& out) {
    if (mode_.load() != pool_mode::write) return writable_mode() ? alloc_result::no_space : alloc_result::failed;
    // Keep the metadata reserve for the commit that notices it is gone (pool.md §4, §5.7).
    if (md_->nr_free_metadata_beyond_reserve() == 0) {
        commit_now();
        if (mode_.load() != pool_mode::write)
            return mode_.load() == pool_mode::out_of_data_space ? alloc_result::no_space : alloc_result::failed;
    }
    std::uint64_t free = md_->nr_free_data_blocks();
    if (free <= opts_.low_water_mark && !data_lwm_fired_) {
        data_lwm_fired_ = true;
        emit(pool_event_kind::data_low_water, "reached low water mark for data device: sending event.");
    }
    for (int attempt = 0; attempt < 2; ++attempt) {
        std::optional<std::uint64_t> b;
        try {
            std::unique_lock lk(md_lock_);
            b = md_->alloc_data_block();
        } catch (const std::exception& e) {
            metadata_operation_failed("dm_pool_alloc_data_block", e.what());
            return alloc_result::failed;
        }
        if (b) {
            ++pins_[*b];  // the allocation's reference, until the mapping takes it over
            out = *b;
            return alloc_result::ok;
        }
        // Blocks freed in this transaction become allocatable once it is committed.
        if (attempt == 0 && !commit_now()) return alloc_result::failed;
    }
    set_mode(pool_mode::out_of_data_space);
    return alloc_result::no_space;
}

void pool_core::provision(bio* b, cell* c) {
    std::uint64_t db;
    switch (alloc_data_block(db)) {
    case alloc_result::ok: break;
    case alloc_result::no_space: {
        auto waiters = prison_.release_no_holder(c);
        no_space_for(b);
        return defer_bios(waiters);
    }
    case alloc_result::failed: return fail_holder(b, c, -EIO);
    }
    auto m = std::make_shared<mapping>();
    m->tc = b->tc;
    m->holder = b;
    m->vblock = b->vblock;
    m->data_block = db;
    m->epoch = abort_epoch_;
    m->vcell = c;

    bool covers = offset_of(b->sector) == 0 && b->nr == bs_;
    bool zero = !requested_.skip_block_zeroing;
    std::uint64_t vsector = sector_of(b->vblock);
    data_device* origin = b->tc->origin();
    std::uint64_t osz = b->tc->origin_sectors();
    auto step = [this, m](int r) { post([this, m, r] { mapping_step(m, r); }); };

    if (origin && vsector < osz) {
        if (covers) return start_overwrite(m);
        std::uint64_t n = std::min<std::uint64_t>(bs_, osz - vsector);
        bool zero_tail = n < bs_ && zero;
        m->pending = zero_tail ? 2 : 1;
        data_->copy(*origin, vsector, sector_of(db), n, step);
        if (zero_tail) data_->write_zeroes(sector_of(db) + n, bs_ - n, step);
        return;
    }
    if (!zero) return complete_mapping(m);
    if (covers) return start_overwrite(m);
    m->pending = 1;
    data_->write_zeroes(sector_of(db), bs_, step);
}

// The holder's write fills the whole new block: it is the copy (pool.md §5.3 "overwrite").
void pool_core::start_overwrite(const std::shared_ptr<mapping>& m) {
    m->overwrite = true;
    ++m->pending;
    bio* b = m->holder;
    b->all_io = int(all_io_ds_.inc());
    std::uint64_t s = sector_of(m->data_block);
    auto cb = [this, m, b](int r) {
        if (b->all_io >= 0) {
            post_jobs(all_io_ds_.dec(unsigned(b->all_io)));
            b->all_io = -1;
        }
        post([this, m, r] { mapping_step(m, r); });
    };
    if (b->op == io_op::write_zeroes)
        data_->write_zeroes(s, b->nr, cb);
    else
        data_->write(s, b->nr, b->buf, cb);
}

void pool_core::mapping_step(const std::shared_ptr<mapping>& m, int r) {
    if (r && !m->err) m->err = r;
    if (--m->pending == 0) complete_mapping(m);
}

// Every step is done: map the block, then let the waiting bios go to it (pool.md §5.3, §5.4).
void pool_core::complete_mapping(const std::shared_ptr<mapping>& m) {
    bio* holder = m->holder;
    int err = m->err;
    if (!err && !writable_mode()) err = -EIO;
    if (!err) {
        try {
            std::unique_lock lk(md_lock_);
            auto it = pins_.find(m->data_block);
            if (m->epoch == abort_epoch_ && it != pins_.end()) {
                if (--it->second == 0) pins_.erase(it);
            }
            md_->insert(m->tc->id(), m->vblock, m->data_block);  // takes over the reference
        } catch (const std::exception& e) {
            metadata_operation_failed("dm_thin_insert_block", e.what());
            err = -EIO;
        }
    } else if (m->epoch == abort_epoch_ && !md_broken_.load() && mode_.load() != pool_mode::fail) {
        try {
            std::unique_lock lk(md_lock_);
            unpin(m->data_block, m->epoch);
        } catch (const std::exception& e) {
            metadata_operation_failed("dm_pool_dec_data_block", e.what());
        }
    }

    std::vector<bio*> phys_waiters;
    if (m->pcell) phys_waiters = prison_.release_no_holder(m->pcell);
    if (err) {
        fail_holder(holder, m->vcell, err);
        return defer_bios(phys_waiters);
    }
    if (m->overwrite) {
        remap_cell(m->vcell, m->data_block, false, false);
        if (holder->fua)
            fua_written(holder);
        else
            finish_bio(holder, 0);
    } else {
        remap_cell(m->vcell, m->data_block, false, true);
    }
    defer_bios(phys_waiters);
}

// pool.md §5.4: a write to a shared block gets a copy of its own.
void pool_core::break_sharing(bio* b, cell* vc, const lookup_result& r) {
    dev_id dev = b->tc->id();
    cell* pc;
    if (!prison_.detain(cell_key::phys(dev, r.data_block), b, &pc)) {
        // Already being broken: b waits in the data block's cell and is looked up again after.
        return defer_bios(prison_.release_no_holder(vc));
    }
    std::uint64_t db;
    switch (alloc_data_block(db)) {
    case alloc_result::ok: break;
    case alloc_result::no_space: {
        auto w1 = prison_.release_no_holder(pc);
        auto w2 = prison_.release_no_holder(vc);
        no_space_for(b);
        defer_bios(w1);
        return defer_bios(w2);
    }
    case alloc_result::failed:
        defer_bios(prison_.release_no_holder(pc));
        return fail_holder(b, vc, -EIO);
    }
    auto m = std::make_shared<mapping>();
    m->tc = b->tc;
    m->holder = b;
    m->vblock = b->vblock;
    m->data_block = db;
    m->epoch = abort_epoch_;
    m->vcell = vc;
    m->pcell = pc;
    m->pending = 2;  // the earlier shared reads, and the copy (or overwrite)

    // Reads of the old block issued before now must be done before the new mapping may drop
    // the old block's last reference (rule 7); in parallel with the copy.
    deferred_set::job quiesced = [this, m] { mapping_step(m, 0); };
    if (!shared_read_ds_.add_work(quiesced)) --m->pending;

    if (offset_of(b->sector) == 0 && b->nr == bs_) {
        --m->pending;  // start_overwrite counts its own step
        return start_overwrite(m);
    }
    if (b->op == io_op::write && bs_ <= MAX_MERGED_COPY_SECTORS) return start_merged_copy(m, r.data_block);
    data_->copy(*data_, sector_of(r.data_block), sector_of(db), bs_,
                [this, m](int res) { post([this, m, res] { mapping_step(m, res); }); });
}

// A partial write to a shared block: the old block is read into a buffer, the write laid over it,
// and the result written once to the new block, which then is the holder's write (as an
// overwrite). One read and one write instead of copy-then-write: a third less latency for the
// first write after a snapshot. The holder counts in the all-I/O set from now on, as an
// overwrite's does from its issue.
void pool_core::start_merged_copy(const std::shared_ptr<mapping>& m, std::uint64_t old_block) {
    m->overwrite = true;
    bio* b = m->holder;
    b->all_io = int(all_io_ds_.inc());
    std::size_t bytes = std::size_t(bs_) * SECTOR_SIZE;
    std::shared_ptr<std::uint8_t> buf(static_cast<std::uint8_t*>(std::aligned_alloc(4096, bytes)), std::free);
    auto written = [this, m, b, buf](int r) {
        if (b->all_io >= 0) {
            post_jobs(all_io_ds_.dec(unsigned(b->all_io)));
            b->all_io = -1;
        }
        post([this, m, r] { mapping_step(m, r); });
    };
    if (!buf) return written(-ENOMEM);
    std::uint64_t offset = offset_of(b->sector) * SECTOR_SIZE;
    data_->read(sector_of(old_block), bs_, buf.get(), [this, m, b, buf, offset, written](int r) {
        if (r) return written(r);
        std::memcpy(buf.get() + offset, b->buf, b->nr * SECTOR_SIZE);
        data_->write(sector_of(m->data_block), bs_, buf.get(), written);
    });
}

// ---- flush and FUA (pool.md §5.6) -------------------------------------------------------------

void pool_core::process_flush(bio* b) {
    dev_id dev = b->tc->id();
    if (aborted_with_changes_.count(dev)) return finish_bio(b, -EIO);
    bool changed = false;
    if (!md_broken_.load() && md_->device_exists(dev)) changed = md_->device_changed(dev);
    if (changed)
        commit_waiters_.push_back(b);
    else
        flush_waiters_.push_back(b);
}

// A FUA write reached the data device: it is done when durable.
void pool_core::fua_written(bio* b) {
    if (mode_.load() == pool_mode::fail) return finish_bio(b, -EIO);
    process_flush(b);
}

void pool_core::process_commit_waiters() {
    if (!commit_waiters_.empty()) {
        std::vector<bio*> v;
        v.swap(commit_waiters_);
        int r = commit_now() ? 0 : -EIO;
        for (bio* b : v) finish_bio(b, r);
    }
    if (!flush_waiters_.empty()) {
        auto v = std::make_shared<std::vector<bio*>>();
        v->swap(flush_waiters_);
        data_->flush([this, v](int r) {
            for (bio* b : *v) finish_bio(b, r);
        });
    }
}

} // namespace thin::pool::detail
