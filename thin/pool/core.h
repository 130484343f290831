#pragma once
// The pool's internals (pool.md §4-§7): the bios a request is split into, the thin devices and the
// pool core that owns the metadata, the prison, the deferred sets and the worker thread.
//
// Threads and what they may touch:
//   - submitters (thin_device::submit, and callbacks that resubmit) run the fast path: prison,
//     deferred sets, a shared try-lock of the metadata for try_lookup, data-device submission,
//     and push onto the worker's queue;
//   - data-device completion threads only decrement deferred sets, post jobs to the worker and
//     complete requests;
//   - the worker runs everything else; it alone changes the metadata (under the exclusive lock,
//     only for the metadata calls themselves) and it alone touches the fields marked "worker".
// No lock is held while a request's callback runs.
#include "thin/pool/deferred_set.h"
#include "thin/pool/pool.h"
#include "thin/pool/prison.h"

#include "thin/metadata/metadata.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <thread>
#include <vector>

namespace thin::pool::detail {

class pool_core;
class thin_impl;

// One caller request; completes when its last piece has (with the first error).
struct request_ctx {
    io_callback done;
    thin_impl* tc = nullptr;
    std::atomic<unsigned> remaining{0};
    std::atomic<int> error{0};
    // A write/read with PREFLUSH: the data part, submitted once the flush has completed.
    bool data_after_flush = false;
    io_op op = io_op::read;
    std::uint64_t sector = 0, nr = 0;
    std::uint8_t* buf = nullptr;
    bool fua = false;
    bool no_hole = false;
};

// A piece of a request that does not cross a data-block boundary (discards: a run of whole
// blocks inside one 1024-block region).
struct bio {
    request_ctx* ctx = nullptr;
    thin_impl* tc = nullptr;
    io_op op = io_op::read;
    bool fua = false;
    bool no_hole = false;  // write_zeroes: provision even where the block reads as zeros already
    std::uint64_t sector = 0, nr = 0;  // thin device sectors
    std::uint8_t* buf = nullptr;
    std::uint64_t vblock = 0, vend = 0;  // virtual block; discards: [vblock, vend)
    int all_io = -1, shared_read = -1;   // deferred-set generations while counted
};

inline bool is_rw(const bio* b) {
    return b->op == io_op::read || b->op == io_op::write || b->op == io_op::write_zeroes;
}
inline bool is_write(const bio* b) { return b->op == io_op::write || b->op == io_op::write_zeroes; }

using prison_t = bio_prison<bio>;
using cell = prison_t::cell;

class thin_impl : public thin_device, public std::enable_shared_from_this<thin_impl> {
public:
    thin_impl(std::shared_ptr<pool_core> p, dev_id id, std::uint64_t nr_sectors,
              std::shared_ptr<data_device> origin);
    ~thin_impl() override;

    dev_id id() const override { return id_; }
    std::uint64_t nr_sectors() const override { return nr_sectors_.load(); }
    void submit(io_request r) override;
    std::string status() const override;
    thin_status status_info() const override;
    std::vector<extent> extents(std::uint64_t sector, std::uint64_t nr_sectors) const override;
    void set_nr_sectors(std::uint64_t n) override { nr_sectors_.store(n); }
    void close() override;

    // ---- pool side ----
    void request_done();
    // Holds new requests back and waits until those in flight have finished or wait for data
    // space (create_snap of an active origin: bios queued for space have not touched the
    // metadata and are looked up again when they run).
    void quiesce();
    void unquiesce();
    // What quiesce waits for: requests being set up, plus pieces in flight, minus pieces queued
    // for data space. Every transition adds before it subtracts, so zero is never passed through.
    void busy(long delta);

    data_device* origin() const { return origin_.get(); }
    std::uint64_t origin_sectors() const { return origin_sectors_; }

private:
    std::shared_ptr<pool_core> pool_;
    const dev_id id_;
    std::atomic<std::uint64_t> nr_sectors_;
    std::shared_ptr<data_device> origin_;
    std::uint64_t origin_sectors_ = 0;

    mutable std::mutex m_;
    std::condition_variable cv_;
    std::uint64_t in_flight_ = 0;
    std::atomic<long> busy_{0};
    std::atomic<bool> quiescing_{false};
    bool quiesced_ = false;
    bool closed_ = false;
    bool unregistered_ = false;
    std::vector<io_request> held_;
};

class pool_core : public std::enable_shared_from_this<pool_core> {
public:
    static std::shared_ptr<pool_core> open(const pool_options& opts);
    ~pool_core();

    std::shared_ptr<thin_device> activate(dev_id id, std::uint64_t nr_sectors,
                                          std::shared_ptr<data_device> origin, const std::string& origin_path);
    void message(std::string_view msg);
    void create_snapshots(const std::vector<std::pair<dev_id, dev_id>>& snaps);
    std::vector<device_info> devices(bool count_exclusive);
    std::uint32_t data_block_size() const { return bs_; }
    std::string status(bool no_flush);
    pool_status status_info(bool no_flush);
    std::string table() const;
    pool_mode mode() const { return mode_.load(); }
    void resize_data(std::optional<std::uint64_t> nr_data_blocks);
    void resize_metadata();
    void commit();
    void close();
    std::uint64_t nr_commits() const { return nr_commits_.load(); }

    // ---- thin side ----
    void submit(thin_impl* tc, io_request&& r);
    thin_status thin_info(const thin_impl* tc) const;
    std::vector<extent> thin_extents(const thin_impl* tc, std::uint64_t sector, std::uint64_t nr) const;
    // Completes a request that is refused before it is split (closed device), on an internal
    // thread when there still is one.
    void reject(io_request&& r, int err);
    void unregister(thin_impl* tc);
    bool closed() const { return closing_.load(); }
    void keep_until_close(std::shared_ptr<data_device> d);
    void release_md_claim();

private:
    pool_core(const pool_options& opts);

    // ---- block arithmetic (pool.md §5.1) ----
    std::uint64_t block_of(std::uint64_t sector) const {
        return bs_shift_ >= 0 ? sector >> bs_shift_ : sector / bs_;
    }
    std::uint64_t offset_of(std::uint64_t sector) const {
        return bs_shift_ >= 0 ? sector & (bs_ - 1) : sector % bs_;
    }
    std::uint64_t sector_of(std::uint64_t block) const {
        return bs_shift_ >= 0 ? block << bs_shift_ : block * bs_;
    }

    // ---- request plumbing (any thread) ----
    void submit_data(request_ctx* ctx);
    void map_bio(bio* b);                  // the fast path
    void defer(bio* b, cell* c = nullptr);  // to the worker
    void defer_bios(const std::vector<bio*>& bs);
    void issue(bio* b, std::uint64_t data_block);
    void bio_endio(bio* b, int r);          // data I/O of a remapped bio completed
    void finish_bio(bio* b, int r);         // the piece is done
    void post_finish(bio* b, int r);        // finish_bio on the worker
    void complete_request(request_ctx* ctx);
    void complete_ctx_later(request_ctx* ctx, int r);
    bool post(std::function<void()> job);
    void post_jobs(std::vector<deferred_set::job>&& jobs);
    void run_on_worker(const std::function<void()>& fn);

    // ---- worker ----
    void worker_main();
    void process_items(std::vector<std::pair<bio*, cell*>>& items);
    void process_rw(bio* b, cell* c);
    void process_flush(bio* b);
    void process_discard(bio* b, cell* c);
    void process_commit_waiters();
    void do_timers();
    std::optional<std::chrono::steady_clock::time_point> next_deadline() const;

    struct mapping;
    struct discard_op;
    struct discard_piece;
    void remap_cell(cell* c, std::uint64_t data_block, bool shared, bool with_holder);
    void fail_holder(bio* holder, cell* c, int err);
    void read_unmapped(bio* b);
    void provision(bio* b, cell* c);
    void break_sharing(bio* b, cell* vc, const lookup_result& r);
    void start_overwrite(const std::shared_ptr<mapping>& m);
    void start_merged_copy(const std::shared_ptr<mapping>& m, std::uint64_t old_block);
    // Blocks up to this size break sharing of a partial write with one buffered read+write.
    static constexpr std::uint32_t MAX_MERGED_COPY_SECTORS = 2048;  // 1 MiB
    void mapping_step(const std::shared_ptr<mapping>& m, int r);
    void complete_mapping(const std::shared_ptr<mapping>& m);
    void no_space_for(bio* holder);
    void fua_written(bio* b);
    void discard_no_passdown(bio* b, cell* c);
    void discard_unmap(bio* b, cell* c);
    void discard_passdown(bio* b, cell* c);
    void discard_piece_unmap(const std::shared_ptr<discard_piece>& p);
    void discard_piece_end(const std::shared_ptr<discard_piece>& p);
    void discard_op_put(const std::shared_ptr<discard_op>& d);

    enum class alloc_result { ok, no_space, failed };
    alloc_result alloc_data_block(std::uint64_t& out);
    void pin(std::uint64_t b);
    void unpin(std::uint64_t b, std::uint64_t epoch);
    int flush_data_sync();
    bool commit_now();
    // Runs fn (a metadata change that commits by itself) with the pins dropped.
    void with_pins_dropped(const std::function<void()>& fn);
    void metadata_operation_failed(const std::string& op, const std::string& what);
    void set_mode(pool_mode m);
    void check_for_metadata_space();
    void check_for_data_space();
    void check_metadata_low_water();
    void error_retry_list(int err);
    void requeue_retry_list();
    void emit(pool_event_kind k, const std::string& msg);
    void log(const std::string& line) const;
    bool writable_mode() const {
        pool_mode m = mode_.load();
        return m == pool_mode::write || m == pool_mode::out_of_data_space;
    }
    bool passdown() const { return !adjusted_.ignore_discard && !adjusted_.no_discard_passdown; }
    pool_status fill_status();
    void do_message(const std::vector<std::string>& args, bool commit = true);
    // create_snap's quiescing: the active device `id` (waiting out one being destroyed), or null.
    std::shared_ptr<thin_impl> active_for_quiesce(dev_id id);

    // ---- configuration ----
    pool_options opts_;
    pool_features requested_, adjusted_;
    std::uint32_t bs_ = 0;
    int bs_shift_ = -1;

    std::shared_ptr<pdata::io_engine> md_engine_;
    std::string md_claim_;  // this process's claim on the metadata device (pool.md §1.1 EBUSY)
    std::shared_ptr<data_device> data_;
    std::unique_ptr<thin::metadata> md_;
    mutable std::shared_mutex md_lock_;
    std::atomic<bool> md_broken_{false};  // an abort failed: the metadata object is unusable

    prison_t prison_;
    deferred_set all_io_ds_, shared_read_ds_;
    std::atomic<pool_mode> mode_{pool_mode::write};
    std::atomic<std::uint64_t> nr_commits_{0};
    std::atomic<bool> closing_{false};

    // ---- worker queue ----
    std::mutex lock_;
    std::condition_variable cv_;
    std::vector<std::function<void()>> jobs_;
    std::vector<std::pair<bio*, cell*>> deferred_;
    bool stop_ = false;
    bool worker_running_ = false;
    std::thread worker_;
    std::atomic<std::thread::id> worker_id_{};

    // ---- worker state ----
    std::vector<bio*> retry_;           // OUT_OF_DATA_SPACE, queued
    std::vector<bio*> commit_waiters_;  // flush / FUA on a changed device
    std::vector<bio*> flush_waiters_;   // flush / FUA on an unchanged device
    std::map<std::uint64_t, unsigned> pins_;  // data blocks referenced outside the mappings
    std::set<dev_id> aborted_with_changes_;
    std::uint64_t abort_epoch_ = 0;
    bool error_if_no_space_ = false;
    bool no_more_retry_ = false;  // closing: OUT_OF_DATA_SPACE errors at once
    bool data_lwm_fired_ = false, md_lwm_fired_ = false;
    std::optional<std::chrono::steady_clock::time_point> no_space_deadline_;
    std::optional<std::chrono::steady_clock::time_point> changed_since_;

    // ---- devices ----
    std::mutex message_mutex_;   // messages, activation, close
    mutable std::mutex registry_mutex_;
    std::condition_variable registry_cv_;
    struct active_thin {
        thin_impl* raw;
        std::weak_ptr<thin_impl> weak;
    };
    std::map<dev_id, active_thin> active_;
    // Requests accepted and not completed yet (close waits for them).
    std::mutex requests_m_;
    std::condition_variable requests_cv_;
    std::uint64_t requests_ = 0;
    std::vector<std::shared_ptr<data_device>> graveyard_;  // origins of closed thins
};

} // namespace thin::pool::detail
