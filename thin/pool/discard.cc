// Discards (pool.md §5.5, §7.3 rule 4): whole blocks are unmapped once every earlier I/O is done;
// with passdown, the freed data blocks are discarded on the data device too, pinned meanwhile so
// they cannot be reallocated, and only where nobody else still references them.
#include "thin/pool/core.h"

#include <cerrno>

namespace thin::pool::detail {

// One discard bio with passdown: holds the virtual range until every piece is done.
struct pool_core::discard_op {
    bio* b = nullptr;
    cell* vcell = nullptr;
    unsigned remaining = 1;  // pieces + the setup itself
    int err = 0;
};

// A run of virtual blocks mapped to consecutive data blocks inside one 1024-block data region.
struct pool_core::discard_piece {
    std::shared_ptr<discard_op> op;
    std::uint64_t vbegin = 0, vend = 0;
    std::uint64_t dbegin = 0;
    cell* pcell = nullptr;
    std::uint64_t epoch = 0;
    bool pinned = false;
    unsigned pending = 0;
};

void pool_core::process_discard(bio* b, cell* c) {
    pool_mode m = mode_.load();
    if (m == pool_mode::read_only || m == pool_mode::out_of_metadata_space) {
        // Completed, no effect.
        if (c) defer_bios(prison_.release_no_holder(c));
        return finish_bio(b, 0);
    }
    dev_id dev = b->tc->id();
    if (!c && !prison_.detain(cell_key{false, dev, b->vblock, b->vend}, b, &c)) return;
    if (passdown())
        discard_passdown(b, c);
    else
        discard_no_passdown(b, c);
}

void pool_core::discard_no_passdown(bio* b, cell* c) {
    // Every I/O issued before must be done before the blocks may be unmapped (and reused).
    deferred_set::job j = [this, b, c] { discard_unmap(b, c); };
    if (!all_io_ds_.add_work(j)) discard_unmap(b, c);
}

void pool_core::discard_unmap(bio* b, cell* c) {
    int err = 0;
    pool_mode m = mode_.load();
    if (m == pool_mode::fail) {
        err = -EIO;
    } else if (writable_mode()) {
        try {
            std::unique_lock lk(md_lock_);
            md_->remove_range(b->tc->id(), b->vblock, b->vend);
        } catch (const std::exception& e) {
            metadata_operation_failed("dm_thin_remove_range", e.what());
            err = -EIO;
        }
    }
    auto waiters = prison_.release_no_holder(c);
    finish_bio(b, err);
    defer_bios(waiters);
}

void pool_core::discard_passdown(bio* b, cell* c) {
    dev_id dev = b->tc->id();
    struct run {
        std::uint64_t vbegin, vend, dbegin;
        bool shared;
    };
    std::vector<run> runs;
    try {
        std::shared_lock lk(md_lock_);
        std::uint64_t v = b->vblock;
        while (v < b->vend) {
            auto mp = md_->lookup_next(dev, v);
            if (!mp || mp->vblock >= b->vend) break;
            std::uint64_t vb = mp->vblock, db = mp->r.data_block;
            if (!runs.empty()) {
                run& last = runs.back();
                bool contiguous = last.vend == vb && last.dbegin + (last.vend - last.vbegin) == db &&
                                  last.shared == mp->r.shared && db % PRISON_MAX_RANGE != 0;
                if (contiguous) {
                    last.vend = vb + 1;
                    v = vb + 1;
                    continue;
                }
            }
            runs.push_back(run{vb, vb + 1, db, mp->r.shared});
            v = vb + 1;
        }
    } catch (const std::exception& e) {
        metadata_operation_failed("dm_thin_find_mapped_range", e.what());
        return fail_holder(b, c, -EIO);
    }

    auto op = std::make_shared<discard_op>();
    op->b = b;
    op->vcell = c;
    for (const run& r : runs) {
        // A data range someone else holds (sharing being broken, another discard) is skipped.
        cell* pc = prison_.try_acquire(cell_key{true, dev, r.dbegin, r.dbegin + (r.vend - r.vbegin)}, nullptr);
        if (!pc) continue;
        auto p = std::make_shared<discard_piece>();
        p->op = op;
        p->vbegin = r.vbegin;
        p->vend = r.vend;
        p->dbegin = r.dbegin;
        p->pcell = pc;
        ++op->remaining;
        deferred_set::job j = [this, p] { discard_piece_unmap(p); };
        if (!all_io_ds_.add_work(j)) discard_piece_unmap(p);
    }
    discard_op_put(op);
}

void pool_core::discard_piece_unmap(const std::shared_ptr<discard_piece>& p) {
    std::uint64_t len = p->vend - p->vbegin;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> to_discard;  // [begin, end) data blocks
    if (mode_.load() == pool_mode::fail) {
        p->op->err = -EIO;
        return discard_piece_end(p);
    }
    if (!writable_mode()) return discard_piece_end(p);
    try {
        std::unique_lock lk(md_lock_);
        md_->remove_range(p->op->b->tc->id(), p->vbegin, p->vend);
        // Pinned while the discard is in flight, so they cannot be reallocated under it.
        p->epoch = abort_epoch_;
        for (std::uint64_t i = 0; i < len; ++i) pin(p->dbegin + i);
        p->pinned = true;
        // Passed down only where nobody else (another device, the metadata snapshot) still
        // references the block: the count is then just our pin.
        std::uint64_t start = 0;
        bool in_run = false;
        for (std::uint64_t i = 0; i < len; ++i) {
            bool alone = md_->data_block_ref_count(p->dbegin + i) == 1;
            if (alone && !in_run) start = i, in_run = true;
            if (!alone && in_run) to_discard.emplace_back(p->dbegin + start, p->dbegin + i), in_run = false;
        }
        if (in_run) to_discard.emplace_back(p->dbegin + start, p->dbegin + len);
    } catch (const std::exception& e) {
        metadata_operation_failed("dm_thin_remove_range", e.what());
        p->op->err = -EIO;
        return discard_piece_end(p);
    }
    if (to_discard.empty()) return discard_piece_end(p);
    p->pending = unsigned(to_discard.size());
    for (auto [db, de] : to_discard) {
        // Errors of the data device's discard are ignored.
        data_->discard(sector_of(db), sector_of(de - db), [this, p](int) {
            post([this, p] {
                if (--p->pending == 0) discard_piece_end(p);
            });
        });
    }
}

void pool_core::discard_piece_end(const std::shared_ptr<discard_piece>& p) {
    if (p->pinned) {
        p->pinned = false;
        if (p->epoch == abort_epoch_ && !md_broken_.load() && mode_.load() != pool_mode::fail) {
            try {
                std::unique_lock lk(md_lock_);
                for (std::uint64_t i = 0; i < p->vend - p->vbegin; ++i) unpin(p->dbegin + i, p->epoch);
            } catch (const std::exception& e) {
                metadata_operation_failed("dm_pool_dec_data_range", e.what());
            }
        }
    }
    defer_bios(prison_.release_no_holder(p->pcell));
    p->pcell = nullptr;
    discard_op_put(p->op);
}

void pool_core::discard_op_put(const std::shared_ptr<discard_op>& d) {
    if (--d->remaining) return;
    auto waiters = prison_.release_no_holder(d->vcell);
    finish_bio(d->b, d->err);
    defer_bios(waiters);
}

} // namespace thin::pool::detail
