#pragma once
// Recounts every reference of a pool's metadata from scratch (format.md §7.1): the metadata blocks
// referenced by the superblock, the metadata snapshot copy, every b-tree node and both space maps'
// own structures, and the data blocks referenced by distinct level-2 leaves. thin_check compares
// the result with the on-disk space maps.
#include "persistent-data/block_manager.h"
#include "persistent-data/btree/walk.h"
#include "thin/metadata/superblock.h"

#include <cstdint>
#include <string>
#include <vector>

namespace thin {

struct damage_report {
    std::string structure;  // "mapping tree", "device details", "metadata space map", ...
    std::vector<std::uint64_t> path;
    pdata::btree::key_range lost;
    pdata::block_address block;
    std::string what;
};

struct recount_result {
    std::vector<std::uint32_t> metadata_counts;  // indexed by metadata block
    std::vector<std::uint32_t> data_counts;      // indexed by data block (sized to the data sm)
    std::vector<damage_report> damage;
    std::vector<std::string> warnings;
    std::uint64_t nr_mappings = 0;                     // over all devices, current superblock only
    std::vector<std::pair<std::uint64_t, std::uint64_t>> mappings_per_device;  // dev -> count
    std::uint64_t data_blocks_out_of_range = 0;
};

// Walks everything reachable from sb (block 0's superblock) and its metadata snapshot, if any.
recount_result recount_references(pdata::block_manager& bm, const superblock& sb);

// Reads the counts stored in a space map of the on-disk format (bitmaps + overflow tree).
// metadata == true: bitmap_root is the index block; else the index b-tree.
std::vector<std::uint32_t> read_space_map_counts(pdata::block_manager& bm, const pdata::sm_root& root,
                                                 bool metadata);

} // namespace thin
