#pragma once
// thin_check as a library (tools.md §3, format.md §10, in the stricter Rust column): the superblock,
// the device details tree, both levels of the mapping tree of the superblock and of its metadata
// snapshot, the details' mapped_blocks, data blocks within the data device, and the reference
// counts of both space maps against a recount (design.md §2 for how it reads). Problems go to a
// reporter as lines naming the structure, device, key range and block; the result carries the
// verdict and what --auto-repair needs.
#include "thin/check/report.h"
#include "thin/check/sm_check.h"

#include "persistent-data/io_engine.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>

namespace thin::check {

struct check_options {
    bool super_block_only = false;
    // Superblock, details tree and the top level of the mapping tree only (no space maps).
    bool skip_mappings = false;
    // Check the trees of the metadata snapshot instead (no space-map checks).
    bool use_metadata_snap = false;
    std::optional<block_address> override_mapping_root;
    std::optional<block_address> override_details_root;
    // Threads reading leaves; 0 = as many as the machine has, at most 2.
    unsigned threads = 0;
    // Leaf-reading progress (done, total).
    std::function<void(std::uint64_t, std::uint64_t)> progress;
};

struct check_result {
    severity worst = severity::none;
    bool superblock_ok = false;
    bool needs_check = false;             // NEEDS_CHECK was set (not an error)
    std::uint64_t transaction_id = 0;
    std::uint64_t metadata_free_blocks = 0;
    std::uint64_t nr_devices = 0;
    std::uint64_t nr_mappings = 0;        // over the current superblock's devices
    std::uint64_t nr_leaves = 0;          // distinct level-2 leaves read
    bool space_maps_checked = false;
    difference_list metadata_differences;
    difference_list data_differences;
    // Every fatal problem found is a stored count where nothing refers to the block, so
    // repairing those (--auto-repair) leaves clean metadata.
    bool only_repairable_errors = false;
    bool has_repairable_differences() const;
};

// Checks the metadata behind engine. out (optional) receives the TRANSACTION_ID= and
// METADATA_FREE_BLOCKS= lines as soon as the superblock has been read. Never throws for
// damaged metadata (that is reported); throws for programming errors and out-of-memory only.
check_result check_metadata(std::shared_ptr<pdata::io_engine> engine, const check_options& opts, reporter& rep,
                            std::ostream* out = nullptr);

} // namespace thin::check
