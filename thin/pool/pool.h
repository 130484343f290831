#pragma once
// The live pool (design.md §1 thin/pool; behaviour: spec/pool.md): what the kernel's thin-pool and
// thin targets do, in process. One pool object per metadata+data device pair; thin devices are
// activated from it and take asynchronous requests.
//
// Threads (pool.md §7.3 rule 9, 11):
//   - callers of thin_device::submit run the fast path: virtual cell, non-blocking lookup, physical
//     cell, all-I/O count, remap, issue. Anything else goes to the worker.
//   - one worker thread owns every metadata change: provisioning, breaking sharing, discards,
//     commits, messages, periodic commit, the no-space timer.
//   - the data device's completion thread runs completions, which only move work to lists and
//     wake the worker, or complete caller requests.
// Public methods are thread-safe. Callbacks (request completion, events) run on internal threads:
// they must not call back into the pool synchronously (status(), message(), close()), except
// submit(), which is always allowed.
#include "thin/pool/data_device.h"
#include "thin/metadata/mapping.h"

#include "persistent-data/io_engine.h"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace thin::pool {

// A refusal with the kernel's message (pool.md §1, §2) and errno (EINVAL, EBUSY, EEXIST, ENODATA,
// EOPNOTSUPP, EPERM, ENOSPC, EIO).
class pool_error : public std::runtime_error {
public:
    pool_error(int err, const std::string& what) : std::runtime_error(what), errno_(err) {}
    int error_code() const { return errno_; }
private:
    int errno_;
};

struct pool_features {
    bool skip_block_zeroing = false;
    bool ignore_discard = false;
    bool no_discard_passdown = false;
    bool read_only = false;
    bool error_if_no_space = false;
};

enum class pool_mode { write, out_of_data_space, out_of_metadata_space, read_only, fail };
const char* to_string(pool_mode m);

enum class pool_event_kind {
    data_low_water,      // free data blocks <= low water mark (once; re-armed by resize_data, the kernel's resume)
    metadata_low_water,  // free metadata blocks <= min(1024, nr/4) (once; re-armed by resize_metadata)
    mode_changed,        // `mode` is the new mode
};
struct pool_event {
    pool_event_kind kind;
    pool_mode mode;
    std::string message;  // the kernel's log line, e.g. "switching pool to read-only mode"
};

struct pool_options {
    // Devices: paths (block devices or plain files), or engines (tests). Engines win when set.
    std::string metadata_path;
    std::string data_path;
    std::shared_ptr<pdata::io_engine> metadata_engine;
    std::shared_ptr<data_device> data_engine;

    std::uint32_t data_block_size = 128;  // sectors: 128 .. 2097152, a multiple of 128
    std::uint64_t low_water_mark = 0;     // data blocks
    pool_features features;
    // The table length in data blocks (floor(len / block size)); default: the whole data device.
    // Must not exceed the data device.
    std::optional<std::uint64_t> nr_data_blocks;
    // OUT_OF_DATA_SPACE queueing limit; zero queues forever (the module parameter).
    std::chrono::milliseconds no_space_timeout{60000};
    // Periodic commit interval (pool.md §5.6: one second).
    std::chrono::milliseconds commit_period{1000};
    std::size_t metadata_cache_blocks = 16384;
    std::function<void(const pool_event&)> on_event;
    // Log lines the kernel would print (mode switches, low water marks, warnings); default stderr.
    std::function<void(const std::string&)> log;
};

// One I/O request to a thin device. Lengths are in 512-byte sectors; a request may have any
// size and alignment (split on block boundaries inside).
enum class io_op { read, write, flush, discard, write_zeroes };
struct io_request {
    io_op op = io_op::read;
    std::uint64_t sector = 0;
    std::uint64_t nr_sectors = 0;  // 0 for a pure flush
    void* buf = nullptr;           // read: filled; write: nr_sectors * 512 bytes
    bool fua = false;              // write: complete only when durable (data flushed, metadata committed)
    bool preflush = false;         // flush everything completed before, then do the request
    bool no_hole = false;          // write_zeroes: provision the blocks (else unprovisioned blocks that read as
                                   // zeros, no external origin under them, stay unprovisioned)
    // Called once, on an internal thread: 0, -EIO, -ENOSPC, -EOPNOTSUPP (discard disabled), ...
    io_callback done;
};

struct thin_status {
    std::uint64_t mapped_sectors = 0;
    std::optional<std::uint64_t> highest_mapped_sector;  // nullopt: nothing mapped
    bool fail = false;
};

struct pool_status {
    std::uint64_t transaction_id = 0;
    std::uint64_t used_metadata_blocks = 0, total_metadata_blocks = 0;
    std::uint64_t used_data_blocks = 0, total_data_blocks = 0;
    std::optional<std::uint64_t> held_metadata_root;
    pool_mode mode = pool_mode::write;
    bool discard_passdown = true, ignore_discard = false;
    bool error_if_no_space = false;
    bool needs_check = false;
    std::uint64_t metadata_low_water_mark = 0;
};

// Allocation of a thin device's sectors (thin_device::extents): mapped to a data block; not mapped
// and reading as zeros; not mapped and read from the external origin.
enum class extent_state { mapped, unmapped, origin };
struct extent {
    std::uint64_t sector = 0, nr_sectors = 0;
    extent_state state = extent_state::unmapped;
};

// One thin device of the pool (pool::devices).
struct device_info {
    dev_id id = 0;
    std::uint64_t mapped_blocks = 0;
    std::optional<std::uint64_t> exclusive_blocks;  // mapped blocks no other device shares (when asked)
    std::optional<std::uint64_t> highest_mapped_block;
    std::uint64_t transaction_id = 0;
    std::uint32_t creation_time = 0, snapshotted_time = 0;
    bool active = false;
};

class pool;

class thin_device {
public:
    virtual ~thin_device() = default;
    virtual dev_id id() const = 0;
    virtual std::uint64_t nr_sectors() const = 0;
    // Asynchronous; `done` is always called exactly once. Requests past the end complete with
    // -EIO; discards with discards disabled with -EOPNOTSUPP.
    virtual void submit(io_request r) = 0;
    // Status INFO of pool.md §1.2 ("<mapped sectors> <highest mapped sector|->" or "Fail").
    virtual std::string status() const = 0;
    virtual thin_status status_info() const = 0;
    // Allocation of [sector, sector + nr_sectors), clipped to the device: runs in order, merged,
    // covering the range. A hint, as block status is: a block being provisioned or discarded at
    // the same time may show either way. Takes the metadata lock shared; waits for metadata I/O.
    virtual std::vector<extent> extents(std::uint64_t sector, std::uint64_t nr_sectors) const = 0;
    // Change the length (the kernel's reload with another <len>).
    virtual void set_nr_sectors(std::uint64_t n) = 0;
    // Deactivate: waits for in-flight requests; the device id can be deleted afterwards.
    virtual void close() = 0;
};

class pool {
public:
    // Opens (formatting all-zero metadata unless read_only), with the kernel's refusals as
    // pool_error. The pool starts in WRITE (or READ_ONLY: feature, or NEEDS_CHECK set).
    static std::unique_ptr<pool> open(const pool_options& opts);
    virtual ~pool() = default;

    // Activates thin device `id` with a length in sectors and an optional read-only external
    // origin (a path, or a device for tests). pool_error: ENODATA unknown id, EINVAL in FAIL
    // mode, EBUSY already active.
    virtual std::shared_ptr<thin_device> activate(dev_id id, std::uint64_t nr_sectors,
                                                  const std::string& external_origin = {}) = 0;
    virtual std::shared_ptr<thin_device> activate(dev_id id, std::uint64_t nr_sectors,
                                                  std::shared_ptr<data_device> external_origin) = 0;

    // A dm message ("create_thin 0", "create_snap 1 0", "delete 1", "set_transaction_id 0 1",
    // "reserve_metadata_snap", "release_metadata_snap"): throws pool_error with the kernel's errno.
    // A snapshot of an active origin quiesces the origin internally first.
    virtual void message(std::string_view msg) = 0;

    // Several snapshots at one point in time: every active origin among them is quiesced first,
    // all are created, then the origins resume. Pairs are (new id, origin id). Checked as a whole
    // before anything changes (pool_error EEXIST, ENODATA, EINVAL as create_snap would raise).
    virtual void create_snapshots(const std::vector<std::pair<dev_id, dev_id>>& snaps) = 0;

    // Every thin device, by id. count_exclusive walks each device's mappings under the shared
    // metadata lock (the worker waits meanwhile): fine for status, not for a hot path.
    virtual std::vector<device_info> devices(bool count_exclusive = false) = 0;
    virtual std::uint32_t data_block_size() const = 0;  // sectors

    // The status INFO line of pool.md §3 (commits first unless no_flush), and its parts.
    virtual std::string status(bool no_flush = false) = 0;
    virtual pool_status status_info(bool no_flush = false) = 0;
    // The status TABLE line's feature part, e.g. "128 5 1 skip_block_zeroing " (without devices).
    virtual std::string table() const = 0;
    virtual pool_mode mode() const = 0;

    // Live growth: data to `nr_data_blocks` (default: the whole data device); metadata to the
    // metadata device's current size. Refused (pool_error) while NEEDS_CHECK is set or when
    // smaller than now. Leaves OUT_OF_DATA_SPACE / OUT_OF_METADATA_SPACE and releases queued I/O.
    virtual void resize_data(std::optional<std::uint64_t> nr_data_blocks = std::nullopt) = 0;
    virtual void resize_metadata() = 0;

    // Commit now (what a flush to any changed thin does).
    virtual void commit() = 0;

    // Stop: requests to active thins complete (in-flight ones drain), final commit unless
    // read-only or failed. Idempotent; the destructor calls it.
    virtual void close() = 0;

    // Counters for tests and status: commits done, superblock writes.
    virtual std::uint64_t nr_commits() const = 0;
};

// Parses a feature word of the table (case-insensitive); pool_error(EINVAL, "Unrecognised pool
// feature requested") otherwise.
void parse_feature(std::string_view word, pool_features& f);

} // namespace thin::pool
