#pragma once
// thin_dump as library code (tools.md §4): binary metadata → emitter IR. The superblock (or, with
// metadata_snap, the snapshot's copy of it), the details tree and the level-1 mapping tree are read
// and cross-checked first; then each selected device's level-2 tree is walked with the
// damage-tolerant pdata::btree::walk, leaves prefetched in disk order a parent's worth at a time,
// and its mappings are streamed to the emitter as maximal runs. Memory does not grow with the
// number of mappings.
#include "thin/ir/emitter.h"

#include "persistent-data/block_manager.h"

#include <optional>
#include <stdexcept>
#include <vector>

namespace thin::dump {

struct dump_options {
    // -m: dump the metadata snapshot (superblock field metadata_snap) instead of the live trees.
    bool metadata_snap = false;
    // -m <block>: the snapshot must be at this block.
    std::optional<pdata::block_address> metadata_snap_block;
    // --dev-id: only these devices (still in ascending order); empty = every device.
    std::vector<std::uint64_t> dev_ids;
    // --skip-mappings: devices without their mappings (level-2 trees are not read).
    bool skip_mappings = false;
    // Overrides of superblock values.
    std::optional<std::uint64_t> transaction_id;
    std::optional<std::uint32_t> data_block_size;
    std::optional<std::uint64_t> nr_data_blocks;
};

// The metadata is damaged: a block failed its checks or the trees disagree. what() names the
// block, the device and the key range.
class damaged_metadata : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The request cannot be met although the metadata is fine (no metadata snapshot, wrong block).
class dump_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Emits the pool. Throws damaged_metadata (possibly after part of the output was emitted, as
// thin_dump 0.9.0 does) or dump_error (before anything is emitted).
void dump_metadata(pdata::block_manager& bm, const dump_options& opts, emitter& out);

} // namespace thin::dump
