#pragma once
// A whole-device scan of damaged metadata (thin_repair, thin_dump --repair): every block is read
// once, in order, and classified by the salt of its checksum (format.md §2). What the scan keeps:
//  - superblock copies (salt, magic and self-location good) other than block 0: metadata
//    snapshot copies, current or stale;
//  - the b-tree nodes, compactly, so the roots of device-details trees and of level-1 mapping
//    trees can be recognised without reading the device again:
//      details leaf  = leaf of value_size 24;
//      level-1 leaf  = leaf of value_size 8 whose keys are possible device ids (<= 2^24-1) and whose
//                      values are all b-tree nodes of value_size 8 (level-2 roots); a level-2 leaf
//                      almost never passes, as its values (data_block << 24 | time) are above any
//                      metadata block number once data_block > 0;
//      internal nodes take the kind of their first child that is a good node.
//    A candidate root is a node of one of those kinds that no internal node of the same kind
//    points at (old copies of trees left by copy-on-write are candidates too; the caller ranks
//    them).
#include "thin/metadata/superblock.h"

#include "persistent-data/block_manager.h"

#include <functional>
#include <vector>

namespace thin::repair {

struct scanned_superblock {
    pdata::block_address location;
    superblock sb;
};

struct scan_result {
    pdata::block_address nr_blocks = 0;
    std::uint64_t btree_nodes = 0;
    std::vector<scanned_superblock> superblock_copies;  // by location
    std::vector<pdata::block_address> details_roots;    // by location
    std::vector<pdata::block_address> mapping_roots;    // level-1 roots, by location
};

// Reads every block of the device behind bm (bypassing its cache). progress(done, total) is
// called now and then when set. Unreadable blocks are skipped.
scan_result scan_metadata(pdata::block_manager& bm,
                          const std::function<void(std::uint64_t, std::uint64_t)>& progress = {});

} // namespace thin::repair
