#pragma once
// The thin metadata API (design.md §1): a pool's devices and mappings over the persistent-data
// library, in the kernel's on-disk format. One writer at a time; every change belongs to the open
// transaction until commit() (space maps, then every block but the superblock, flush, superblock,
// flush). abort() returns to the last committed state.
#include "thin/metadata/mapping.h"
#include "thin/metadata/superblock.h"

#include "persistent-data/block_manager.h"
#include "persistent-data/btree/btree.h"
#include "persistent-data/io_engine.h"
#include "persistent-data/space_map.h"
#include "persistent-data/transaction_manager.h"

#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <vector>

namespace thin {

// A request the kernel would refuse (bad id, existing device, ...), with the errno it would use.
class metadata_error : public std::runtime_error {
public:
    metadata_error(int err, const std::string& what) : std::runtime_error(what), errno_(err) {}
    int error_code() const { return errno_; }
private:
    int errno_;
};

constexpr std::uint32_t MIN_DATA_BLOCK_SIZE = 128;         // sectors (64 KiB)
constexpr std::uint32_t MAX_DATA_BLOCK_SIZE = 2097152;     // sectors (1 GiB)
constexpr pdata::block_address MAX_METADATA_BLOCKS = 255ull * 16320;  // format.md §1

// Throws metadata_error(EINVAL) unless 128 <= sectors <= 2097152 and a multiple of 128.
void validate_data_block_size(std::uint32_t sectors);

struct lookup_result {
    std::uint64_t data_block;
    std::uint32_t time;
    bool shared;  // the mapping predates the device's last snapshot (format.md §5.4)
};

// found / not_found / would_block (the fast path's non-blocking lookup).
using lookup_status = pdata::btree::lookup_status;

struct open_options {
    bool read_only = false;
    // Format when block 0 is all zeros (as a read-write kernel pool load does).
    bool format_if_unformatted = false;
    std::uint32_t data_block_size = 0;        // 0: take it from the superblock; else must match
    pdata::block_address nr_data_blocks = 0;  // for formatting
    // A superblock with NEEDS_CHECK set opens read-only only, unless this is set.
    bool ignore_needs_check = false;
    std::size_t cache_blocks = 16384;
};

class metadata {
public:
    // Formats the device behind engine (all of it, up to MAX_METADATA_BLOCKS) and commits.
    static std::unique_ptr<metadata> format(std::shared_ptr<pdata::io_engine> engine,
                                            std::uint32_t data_block_size,
                                            pdata::block_address nr_data_blocks,
                                            std::size_t cache_blocks = 16384);
    // Opens existing metadata: refuses bad magic/checksum/blocknr, unsupported incompat flags (and
    // compat_ro flags when writable), a data block size that differs from opts, and NEEDS_CHECK.
    static std::unique_ptr<metadata> open(std::shared_ptr<pdata::io_engine> engine, const open_options& opts);
    ~metadata();

    // ---- devices ----
    void create_thin(dev_id dev);
    void create_snap(dev_id dev, dev_id origin);
    void delete_device(dev_id dev);
    bool device_exists(dev_id dev) const;
    std::vector<dev_id> devices() const;
    device_details details(dev_id dev) const;
    bool device_changed(dev_id dev) const;  // changed in the open transaction

    // ---- mappings ----
    std::optional<lookup_result> lookup(dev_id dev, std::uint64_t vblock) const;
    // The pool's fast-path lookup (pool.md §7.3 rule 9): only blocks already cached are read, the
    // device never is; would_block otherwise (also for an unknown device or damage, which the
    // blocking lookup reports). Never throws. Safe alongside other const calls; not alongside
    // changes.
    lookup_status try_lookup(dev_id dev, std::uint64_t vblock, lookup_result& out) const noexcept;
    // The first mapping of dev at or after vblock.
    struct mapping_at {
        std::uint64_t vblock;
        lookup_result r;
    };
    std::optional<mapping_at> lookup_next(dev_id dev, std::uint64_t vblock) const;
    // Maps vblock to data_block at the current time. The mapping takes over the caller's reference
    // to data_block (from alloc_data_block); a different block mapped before is released.
    void insert(dev_id dev, std::uint64_t vblock, std::uint64_t data_block);
    bool remove(dev_id dev, std::uint64_t vblock);
    // Unmaps [begin, end); returns how many mappings were removed.
    std::uint64_t remove_range(dev_id dev, std::uint64_t begin, std::uint64_t end);
    std::optional<std::uint64_t> highest_mapped(dev_id dev) const;
    std::uint64_t mapped_blocks(dev_id dev) const { return details(dev).mapped_blocks; }
    // Calls fn(vblock, block_time) for every mapping of dev in order; fn returns false to stop.
    void for_each_mapping(dev_id dev, const std::function<bool(std::uint64_t, block_time)>& fn) const;

    // ---- data space ----
    // A data block free now and at the last commit, with count 1; nullopt when the pool is full.
    std::optional<std::uint64_t> alloc_data_block();
    std::uint64_t nr_data_blocks() const;
    std::uint64_t nr_free_data_blocks() const;
    std::uint32_t data_block_ref_count(std::uint64_t b) const;
    void resize_data(std::uint64_t new_nr_blocks);  // growing only
    // References to data blocks held outside the mapping trees (the pool's allocations whose
    // mapping is not inserted yet, discards in flight to the data device). They do not mark the
    // transaction changed: the pool drops them around each commit so the committed space map
    // never counts a block no mapping references.
    void inc_data_block(std::uint64_t b);
    void dec_data_block(std::uint64_t b);

    // ---- metadata space ----
    pdata::block_address nr_metadata_blocks() const;
    pdata::block_address nr_free_metadata_blocks() const;
    // The pool hides min(4096, nr_metadata_blocks / 10) blocks (pool.md §5.7); free beyond it.
    pdata::block_address metadata_reserve() const;
    pdata::block_address nr_free_metadata_beyond_reserve() const;
    // Grow to the engine's current size (capped at MAX_METADATA_BLOCKS).
    void resize_metadata();

    // ---- pool state ----
    std::uint64_t transaction_id() const { return sb_.trans_id; }
    // Compare-and-swap, as the kernel's set_transaction_id message.
    void set_transaction_id(std::uint64_t old_id, std::uint64_t new_id);
    std::uint32_t time() const { return sb_.time; }
    std::uint32_t data_block_size() const { return sb_.data_block_size; }
    bool needs_check() const { return sb_.needs_check(); }
    void set_needs_check();
    bool read_only() const { return read_only_; }
    bool changed() const { return changed_; }
    const superblock& current_superblock() const { return sb_; }

    // ---- bulk restore (thin_restore, thin_repair) ----
    // Sets the superblock's time, transaction id and flags (0 or FLAG_NEEDS_CHECK) of a pool being
    // rebuilt from a dump.
    void set_restored_state(std::uint32_t time, std::uint64_t trans_id, std::uint32_t flags);
    struct installed_device {
        dev_id id;
        pdata::block_address root;  // level-2 tree built through transaction_manager()
        device_details details;     // used as given (mapped_blocks must match the tree)
    };
    // Installs devices whose level-2 trees were built outside this API (btree::builder), with
    // a level-1 tree and a details tree built bottom-up, replacing the empty ones. Only on a pool
    // without devices; ids strictly ascending and at most MAX_DEV_ID. The level-1 tree takes over
    // the caller's references to the roots.
    void install_devices(const std::vector<installed_device>& devs);

    // ---- metadata snapshot ----
    // Commits, then makes a frozen copy of the superblock and its trees (format.md §9).
    void reserve_metadata_snap();
    void release_metadata_snap();
    pdata::block_address metadata_snap() const { return sb_.metadata_snap; }

    // ---- transactions ----
    void commit();
    void abort();

    // For tests and checkers.
    pdata::space_map& metadata_space_map() { return *md_sm_; }
    pdata::space_map& data_space_map() { return *data_sm_; }
    pdata::block_manager& block_manager() { return *bm_; }
    pdata::transaction_manager& transaction_manager() { return *tm_; }

private:
    struct device_state {
        device_details d;
        bool changed = false;
    };
    metadata(std::shared_ptr<pdata::io_engine> engine, std::size_t cache_blocks, bool read_only);
    void load();
    void setup_infos();
    void check_writable() const;
    device_state& dev(dev_id d);
    const device_state& dev(dev_id d) const;
    void check_new_dev_id(dev_id d) const;
    void write_details();

    std::shared_ptr<pdata::io_engine> engine_;
    std::unique_ptr<pdata::block_manager> bm_;
    std::unique_ptr<pdata::space_map> md_sm_;
    std::unique_ptr<pdata::transaction_manager> tm_;
    std::unique_ptr<pdata::space_map> data_sm_;
    pdata::btree::info mapping_info_;  // 2 levels: dev -> vblock -> block_time
    pdata::btree::info top_info_;      // level 1 alone: dev -> level-2 root
    pdata::btree::info details_info_;  // dev -> device_details
    superblock sb_;
    std::map<dev_id, device_state> devices_;
    bool read_only_;
    bool changed_ = false;
};

} // namespace thin
