// The pool core: opening (pool.md §1.1, §6 preresume), request plumbing, the fast path
// (§7.3 rules 1-3, 9) and the worker loop.
#include "thin/pool/core.h"

#include "persistent-data/types.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <iostream>
#include <set>
#include <sys/stat.h>
#include <system_error>

namespace thin::pool::detail {

using clock = std::chrono::steady_clock;

namespace {
int count_features(const pool_features& f) {
    return int(f.skip_block_zeroing) + int(f.ignore_discard) + int(f.no_discard_passdown) + int(f.read_only) +
           int(f.error_if_no_space);
}

int errno_of(const std::exception& e, int fallback) {
    if (auto* se = dynamic_cast<const std::system_error*>(&e)) return se->code().value() ? se->code().value() : fallback;
    return fallback;
}
// A metadata device serves one pool at a time ("metadata device already in use by a pool"):
// block devices are opened O_EXCL, but files and engines need this process-wide claim.
std::mutex claims_mutex;
std::set<std::string> claims;

std::string claim_key(const pool_options& o) {
    if (o.metadata_engine) return "engine:" + std::to_string(reinterpret_cast<std::uintptr_t>(o.metadata_engine.get()));
    struct stat st;
    if (::stat(o.metadata_path.c_str(), &st) == 0)
        return "file:" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
    return "path:" + o.metadata_path;
}

void release_claim(const std::string& k) {
    if (k.empty()) return;
    std::lock_guard lk(claims_mutex);
    claims.erase(k);
}
} // namespace

// ---- opening -------------------------------------------------------------------------------

pool_core::pool_core(const pool_options& opts) : opts_(opts), requested_(opts.features), adjusted_(opts.features) {}

std::shared_ptr<pool_core> pool_core::open(const pool_options& o) {
    if (count_features(o.features) > 4) throw pool_error(EINVAL, "Invalid number of pool feature arguments");
    if (!o.metadata_engine && !o.data_engine && !o.metadata_path.empty() && o.metadata_path == o.data_path)
        throw pool_error(EINVAL, "Error setting metadata or data device");

    std::shared_ptr<pool_core> c(new pool_core(o));
    {
        std::string k = claim_key(o);
        std::lock_guard lk(claims_mutex);
        if (!claims.insert(k).second) throw pool_error(EBUSY, "metadata device already in use by a pool");
        c->md_claim_ = k;  // released when c goes (or closes)
    }
    if (!c->opts_.log) c->opts_.log = [](const std::string& l) { std::cerr << "thin-pool: " << l << "\n"; };

    // Devices.
    if (o.metadata_engine) {
        c->md_engine_ = o.metadata_engine;
    } else {
        if (o.metadata_path.empty()) throw pool_error(EINVAL, "Error opening metadata block device: none given");
        try {
            pdata::open_options mo;
            mo.mode = o.features.read_only ? pdata::open_mode::read_only : pdata::open_mode::read_write;
            mo.exclusive = true;
            c->md_engine_ = pdata::open_aio_engine(o.metadata_path, mo);
        } catch (const std::exception& e) {
            throw pool_error(errno_of(e, EINVAL), std::string("Error opening metadata block device: ") + e.what());
        }
    }
    if (o.data_engine) {
        c->data_ = o.data_engine;
    } else {
        if (o.data_path.empty()) throw pool_error(EINVAL, "Error getting data device: none given");
        try {
            c->data_ = open_aio_data_device(o.data_path);
        } catch (const std::exception& e) {
            throw pool_error(errno_of(e, EINVAL), std::string("Error getting data device: ") + e.what());
        }
    }

    std::uint32_t bs = o.data_block_size;
    if (bs < MIN_DATA_BLOCK_SIZE || bs > MAX_DATA_BLOCK_SIZE || bs % MIN_DATA_BLOCK_SIZE)
        throw pool_error(EINVAL, "Invalid block size");
    c->bs_ = bs;
    if ((bs & (bs - 1)) == 0) {
        c->bs_shift_ = 0;
        while ((1u << c->bs_shift_) != bs) ++c->bs_shift_;
    }

    std::uint64_t data_sectors = c->data_->nr_sectors();
    std::uint64_t target = o.nr_data_blocks.value_or(data_sectors / bs);
    if (target > data_sectors / bs)
        throw pool_error(EINVAL, "Data device (" + c->data_->name() + ") too small for the pool: " +
                                     std::to_string(target) + " blocks of " + std::to_string(bs) +
                                     " sectors requested, the device holds " + std::to_string(data_sectors / bs));

    // Metadata.
    try {
        open_options mo;
        mo.read_only = o.features.read_only;
        mo.format_if_unformatted = true;
        mo.data_block_size = bs;
        mo.nr_data_blocks = target;
        mo.ignore_needs_check = true;
        mo.cache_blocks = o.metadata_cache_blocks;
        c->md_ = metadata::open(c->md_engine_, mo);
    } catch (const metadata_error& e) {
        throw pool_error(e.error_code(), std::string("Error creating metadata object: ") + e.what());
    } catch (const pdata::io_error& e) {
        throw pool_error(EIO, std::string("Error creating metadata object: ") + e.what());
    } catch (const std::exception& e) {
        throw pool_error(EINVAL, std::string("Error creating metadata object: ") + e.what());
    }

    // Mode and features (pool.md §4, §5.5).
    c->error_if_no_space_ = o.features.error_if_no_space;
    bool needs_check = c->md_->needs_check();
    if (o.features.read_only || needs_check) {
        if (needs_check && !o.features.read_only) c->log("unable to switch pool to write mode until repaired.");
        c->mode_ = pool_mode::read_only;
        c->log("switching pool to read-only mode");
    }
    if (!c->adjusted_.ignore_discard && !c->adjusted_.no_discard_passdown && !c->data_->supports_discard()) {
        c->log("Data device (" + c->data_->name() + ") discard unsupported: Disabling discard passdown.");
        c->adjusted_.no_discard_passdown = true;
    }

    // Preresume: the data and metadata space maps grow to the devices (never shrink).
    std::uint64_t cur = c->md_->nr_data_blocks();
    if (target < cur)
        throw pool_error(EINVAL, "pool target (" + std::to_string(target) + " blocks) too small: expected " +
                                     std::to_string(cur));
    try {
        if (target > cur) {
            if (needs_check) {
                c->log("unable to grow the data device until repaired.");
            } else if (o.features.read_only) {
                c->log("unable to grow the data device in read-only mode.");
            } else {
                if (cur) c->log("growing the data device from " + std::to_string(cur) + " to " + std::to_string(target) + " blocks");
                c->md_->resize_data(target);
            }
        }
        pdata::block_address md_now =
            std::min<pdata::block_address>(c->md_engine_->nr_blocks(), MAX_METADATA_BLOCKS);
        pdata::block_address md_cur = c->md_->nr_metadata_blocks();
        if (md_now < md_cur)
            throw pool_error(EINVAL, "metadata device (" + std::to_string(md_now) + " blocks) too small: expected " +
                                         std::to_string(md_cur));
        if (md_now > md_cur && !needs_check && !o.features.read_only) {
            c->log("growing the metadata device from " + std::to_string(md_cur) + " to " + std::to_string(md_now) + " blocks");
            c->md_->resize_metadata();
        }
    } catch (const pool_error&) {
        throw;
    } catch (const std::exception& e) {
        throw pool_error(EIO, std::string("Error creating metadata object: ") + e.what());
    }
    // No worker yet: the commit runs here, single-threaded.
    if (c->md_->changed() && c->writable_mode() && !c->commit_now())
        throw pool_error(EIO, "Error creating metadata object: commit after growing failed");
    if (c->writable_mode()) c->check_for_metadata_space();

    {
        std::lock_guard lk(c->lock_);
        c->worker_running_ = true;
    }
    c->worker_ = std::thread([p = c.get()] { p->worker_main(); });
    return c;
}

pool_core::~pool_core() {
    close();
    release_md_claim();
}

void pool_core::release_md_claim() {
    release_claim(md_claim_);
    md_claim_.clear();
}

void pool_core::keep_until_close(std::shared_ptr<data_device> d) {
    std::lock_guard lk(registry_mutex_);
    graveyard_.push_back(std::move(d));
}

void pool_core::log(const std::string& line) const {
    try {
        if (opts_.log) opts_.log(line);
    } catch (...) {
    }
}

void pool_core::emit(pool_event_kind k, const std::string& msg) {
    log(msg);
    try {
        if (opts_.on_event) opts_.on_event(pool_event{k, mode_.load(), msg});
    } catch (...) {
    }
}

// ---- plumbing (any thread) -------------------------------------------------------------------

bool pool_core::post(std::function<void()> job) {
    {
        std::lock_guard lk(lock_);
        if (!worker_running_) return false;
        jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
    return true;
}

void pool_core::post_jobs(std::vector<deferred_set::job>&& jobs) {
    if (jobs.empty()) return;
    {
        std::lock_guard lk(lock_);
        for (auto& j : jobs) jobs_.push_back(std::move(j));
    }
    cv_.notify_one();
}

void pool_core::run_on_worker(const std::function<void()>& fn) {
    if (std::this_thread::get_id() == worker_id_.load()) {
        fn();
        return;
    }
    // The failure crosses threads as plain values, not as an exception_ptr (whose reference
    // count lives in the uninstrumented runtime, which ThreadSanitizer cannot follow).
    struct outcome {
        int err = 0;
        std::string what;
    };
    std::promise<outcome> done;
    auto f = done.get_future();
    bool ok = post([&] {
        outcome o;
        try {
            fn();
        } catch (const pool_error& e) {
            o.err = e.error_code();
            o.what = e.what();
        } catch (const std::exception& e) {
            o.err = EIO;
            o.what = e.what();
        } catch (...) {
            o.err = EIO;
            o.what = "unknown error";
        }
        done.set_value(std::move(o));
    });
    if (!ok) throw pool_error(EIO, "the pool is closed");
    outcome o = f.get();
    if (o.err) throw pool_error(o.err, o.what);
}

void pool_core::defer(bio* b, cell* c) {
    {
        std::lock_guard lk(lock_);
        deferred_.emplace_back(b, c);
    }
    cv_.notify_one();
}

void pool_core::defer_bios(const std::vector<bio*>& bs) {
    if (bs.empty()) return;
    {
        std::lock_guard lk(lock_);
        for (bio* b : bs) deferred_.emplace_back(b, nullptr);
    }
    cv_.notify_one();
}

void pool_core::reject(io_request&& r, int err) {
    auto done = std::make_shared<io_callback>(std::move(r.done));
    auto call = [done, err] {
        try {
            if (*done) (*done)(err);
        } catch (...) {
        }
    };
    if (!post(call)) call();
}

void pool_core::complete_ctx_later(request_ctx* ctx, int r) {
    ctx->tc->busy(-1);  // the request's set-up unit: it ends without pieces
    if (r) ctx->error.store(r);
    ctx->remaining.store(1);
    auto job = [this, ctx] { complete_request(ctx); };
    if (!post(job)) complete_request(ctx);
}

void pool_core::complete_request(request_ctx* ctx) {
    int err = ctx->error.load();
    if (ctx->data_after_flush && !err) {
        // The PREFLUSH part is done: now the data (on the worker: never inside a completion of
        // the data device, and the fast path there is as good as anywhere).
        ctx->data_after_flush = false;
        auto job = [this, ctx] { submit_data(ctx); };
        if (post(job)) return;
        err = -EIO;
        ctx->tc->busy(-1);
    }
    io_callback done = std::move(ctx->done);
    thin_impl* tc = ctx->tc;
    delete ctx;
    try {
        if (done) done(err);
    } catch (...) {
    }
    // Before `done` (and whatever it holds) goes: its destruction may close the device.
    tc->request_done();
    std::lock_guard lk(requests_m_);
    if (--requests_ == 0) requests_cv_.notify_all();
}

void pool_core::finish_bio(bio* b, int r) {
    request_ctx* ctx = b->ctx;
    thin_impl* tc = b->tc;
    delete b;
    if (r) {
        int zero = 0;
        ctx->error.compare_exchange_strong(zero, r);
    }
    // Before the count drops: once the request is complete the device may go. A PREFLUSH
    // request's flush is its only piece; the gap until its data is split is still busy.
    if (ctx->data_after_flush && !ctx->error.load()) tc->busy(1);
    tc->busy(-1);
    if (ctx->remaining.fetch_sub(1) == 1) complete_request(ctx);
}

void pool_core::post_finish(bio* b, int r) {
    if (!post([this, b, r] { finish_bio(b, r); })) finish_bio(b, r);
}

void pool_core::bio_endio(bio* b, int r) {
    if (b->all_io >= 0) {
        post_jobs(all_io_ds_.dec(unsigned(b->all_io)));
        b->all_io = -1;
    }
    if (b->shared_read >= 0) {
        post_jobs(shared_read_ds_.dec(unsigned(b->shared_read)));
        b->shared_read = -1;
    }
    if (b->fua && r == 0 && is_write(b)) {
        if (post([this, b] { fua_written(b); })) return;
    }
    finish_bio(b, r);
}

void pool_core::issue(bio* b, std::uint64_t data_block) {
    std::uint64_t s = sector_of(data_block) + offset_of(b->sector);
    auto cb = [this, b](int r) { bio_endio(b, r); };
    switch (b->op) {
    case io_op::read: data_->read(s, b->nr, b->buf, cb); break;
    case io_op::write: data_->write(s, b->nr, b->buf, cb); break;
    case io_op::write_zeroes: data_->write_zeroes(s, b->nr, cb); break;
    default: post_finish(b, -EIO); break;
    }
}

void pool_core::submit(thin_impl* tc, io_request&& r) {
    auto* ctx = new request_ctx;
    ctx->done = std::move(r.done);
    ctx->tc = tc;
    {
        std::lock_guard lk(requests_m_);
        ++requests_;
    }
    if (closing_.load()) return complete_ctx_later(ctx, -EIO);

    bool pure_flush = r.op == io_op::flush || (r.nr_sectors == 0 && r.preflush && r.op != io_op::discard);
    if (!pure_flush) {
        std::uint64_t end = r.sector + r.nr_sectors;
        if (end < r.sector || end > tc->nr_sectors()) return complete_ctx_later(ctx, -EIO);
    }

    if (r.op == io_op::discard) {
        if (adjusted_.ignore_discard) return complete_ctx_later(ctx, -EOPNOTSUPP);
        // Only whole blocks are unmapped (pool.md §5.5); the block layer's split at 1024-block
        // regions (max_discard_sectors, granularity) happens here.
        std::uint64_t begin = block_of(r.sector) + (offset_of(r.sector) ? 1 : 0);
        std::uint64_t end = block_of(r.sector + r.nr_sectors);
        if (begin >= end) return complete_ctx_later(ctx, 0);
        std::vector<bio*> pieces;
        for (std::uint64_t b = begin; b < end;) {
            std::uint64_t e = std::min(end, (b / PRISON_MAX_RANGE + 1) * PRISON_MAX_RANGE);
            auto* p = new bio;
            p->ctx = ctx;
            p->tc = tc;
            p->op = io_op::discard;
            p->vblock = b;
            p->vend = e;
            p->sector = sector_of(b);
            p->nr = sector_of(e - b);
            pieces.push_back(p);
            b = e;
        }
        ctx->remaining.store(unsigned(pieces.size()));
        tc->busy(long(pieces.size()));
        tc->busy(-1);
        for (bio* p : pieces) defer(p);
        return;
    }

    if (pure_flush || (r.preflush && r.nr_sectors)) {
        if (!pure_flush) {
            ctx->data_after_flush = true;
            ctx->op = r.op;
            ctx->sector = r.sector;
            ctx->nr = r.nr_sectors;
            ctx->buf = static_cast<std::uint8_t*>(r.buf);
            ctx->fua = r.fua;
            ctx->no_hole = r.no_hole;
        }
        auto* f = new bio;
        f->ctx = ctx;
        f->tc = tc;
        f->op = io_op::flush;
        ctx->remaining.store(1);  // the flush piece takes over the set-up unit
        defer(f);
        return;
    }
    if (r.nr_sectors == 0) return complete_ctx_later(ctx, 0);

    ctx->op = r.op;
    ctx->sector = r.sector;
    ctx->nr = r.nr_sectors;
    ctx->buf = static_cast<std::uint8_t*>(r.buf);
    ctx->fua = r.fua && r.op != io_op::read;
    ctx->no_hole = r.no_hole;
    submit_data(ctx);
}

void pool_core::submit_data(request_ctx* ctx) {
    // Split on block boundaries (no piece crosses a data block).
    std::vector<bio*> pieces;
    std::uint64_t s = ctx->sector, end = ctx->sector + ctx->nr;
    while (s < end) {
        std::uint64_t n = std::min(end - s, bs_ - offset_of(s));
        auto* b = new bio;
        b->ctx = ctx;
        b->tc = ctx->tc;
        b->op = ctx->op;
        b->fua = ctx->fua;
        b->no_hole = ctx->no_hole;
        b->sector = s;
        b->nr = n;
        b->buf = ctx->buf ? ctx->buf + (s - ctx->sector) * SECTOR_SIZE : nullptr;
        b->vblock = block_of(s);
        b->vend = b->vblock + 1;
        pieces.push_back(b);
        s += n;
    }
    ctx->remaining.store(unsigned(pieces.size()));
    ctx->tc->busy(long(pieces.size()));
    ctx->tc->busy(-1);  // set-up (or the PREFLUSH gap) is over
    for (bio* b : pieces) map_bio(b);
}

// The fast path (pool.md §7.3 rules 1-3, 9): mapped and not shared (or a read) is remapped here,
// without waiting for anything; all else goes to the worker.
void pool_core::map_bio(bio* b) {
    if (mode_.load() == pool_mode::fail) return post_finish(b, -EIO);
    if (b->fua) return defer(b);

    dev_id dev = b->tc->id();
    cell* vc;
    if (!prison_.detain(cell_key::virt(dev, b->vblock), b, &vc)) return;  // waits in the cell

    std::shared_lock lk(md_lock_, std::try_to_lock);
    if (!lk.owns_lock() || md_broken_.load()) return defer(b, vc);
    lookup_result r{};
    lookup_status st = md_->try_lookup(dev, b->vblock, r);
    if (st != lookup_status::found || (r.shared && is_write(b))) {
        lk.unlock();
        return defer(b, vc);
    }
    cell* pc;
    if (!prison_.detain(cell_key::phys(dev, r.data_block), b, &pc)) {
        // Sharing is being broken or a discard holds the data block: b waits there.
        lk.unlock();
        return defer_bios(prison_.release_no_holder(vc));
    }
    // Counted while both cells are held, so a discard cannot slip in before (rule 3).
    b->all_io = int(all_io_ds_.inc());
    if (r.shared) b->shared_read = int(shared_read_ds_.inc());
    lk.unlock();
    defer_bios(prison_.release_no_holder(pc));
    defer_bios(prison_.release_no_holder(vc));
    issue(b, r.data_block);
}

// ---- the worker --------------------------------------------------------------------------------

std::optional<clock::time_point> pool_core::next_deadline() const {
    std::optional<clock::time_point> d;
    if (changed_since_ && writable_mode()) d = *changed_since_ + opts_.commit_period;
    if (no_space_deadline_ && (!d || *no_space_deadline_ < *d)) d = no_space_deadline_;
    return d;
}

void pool_core::worker_main() {
    worker_id_ = std::this_thread::get_id();
    for (;;) {
        std::vector<std::function<void()>> jobs;
        std::vector<std::pair<bio*, cell*>> items;
        {
            std::unique_lock lk(lock_);
            auto deadline = next_deadline();
            while (jobs_.empty() && deferred_.empty() && !stop_) {
                if (deadline) {
                    if (cv_.wait_until(lk, *deadline) == std::cv_status::timeout) break;
                } else {
                    cv_.wait(lk);
                }
            }
            if (stop_ && jobs_.empty() && deferred_.empty()) {
                worker_running_ = false;
                break;
            }
            jobs.swap(jobs_);
            items.swap(deferred_);
        }
        for (auto& j : jobs) {
            try {
                j();
            } catch (const std::exception& e) {
                log(std::string("internal error in the pool worker: ") + e.what());
            } catch (...) {
                log("internal error in the pool worker");
            }
        }
        try {
            process_items(items);
            process_commit_waiters();
            do_timers();
            check_metadata_low_water();
        } catch (const std::exception& e) {
            log(std::string("internal error in the pool worker: ") + e.what());
        }
    }
}

void pool_core::process_items(std::vector<std::pair<bio*, cell*>>& items) {
    if (items.empty()) return;
    // Sorted by device and sector (pool.md §7.3 rule 8).
    std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
        if (a.first->tc != b.first->tc) return std::less<thin_impl*>()(a.first->tc, b.first->tc);
        return a.first->sector < b.first->sector;
    });
    for (auto& [b, c] : items) {
        try {
            if (mode_.load() == pool_mode::fail) {
                if (c) {
                    for (bio* x : prison_.release(c)) finish_bio(x, -EIO);
                } else {
                    finish_bio(b, -EIO);
                }
                continue;
            }
            switch (b->op) {
            case io_op::flush: process_flush(b); break;
            case io_op::discard: process_discard(b, c); break;
            default: process_rw(b, c); break;
            }
        } catch (const std::exception& e) {
            log(std::string("internal error processing a request: ") + e.what());
        }
    }
}

void pool_core::do_timers() {
    auto now = clock::now();
    if (no_space_deadline_ && now >= *no_space_deadline_) {
        no_space_deadline_.reset();
        if (mode_.load() == pool_mode::out_of_data_space && !error_if_no_space_) {
            error_if_no_space_ = true;
            emit(pool_event_kind::mode_changed, "switching pool to out-of-data-space (error IO) mode");
            error_retry_list(-ENOSPC);
        }
    }
    if (!md_broken_.load() && writable_mode()) {
        if (md_->changed()) {
            if (!changed_since_) changed_since_ = now;
            else if (now >= *changed_since_ + opts_.commit_period) commit_now();
        } else {
            changed_since_.reset();
        }
    }
}

void pool_core::check_metadata_low_water() {
    if (md_lwm_fired_ || md_broken_.load() || !writable_mode()) return;
    pdata::block_address nr = md_->nr_metadata_blocks();
    pdata::block_address threshold = std::min<pdata::block_address>(1024, nr / 4);
    if (md_->nr_free_metadata_blocks() <= threshold) {
        md_lwm_fired_ = true;
        emit(pool_event_kind::metadata_low_water, "reached low water mark for metadata device: sending event.");
    }
}

} // namespace thin::pool::detail
