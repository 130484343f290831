#pragma once
// The metadata space map (format.md §4.6): counts every metadata block, including its own index
// block, bitmaps and overflow-tree nodes. It cannot allocate through the transaction manager (it
// is the allocator behind it), so commit() places and writes its own blocks directly through the
// block manager:
//   1. the index block moves to a fresh block;
//   2. if any overflow count changed (or on the first commit), the old overflow tree's nodes are
//      released and a new, evenly filled tree of all counts >= 3 is written to fresh blocks;
//   3. every bitmap changed in the transaction moves to a fresh block; those allocations and
//      releases change more bitmaps, which move too, until none is left (each moves once);
//   4. the bitmaps and the index block are written.
// Every allocation obeys format.md §7.4 (free now and at the last commit), so nothing the previous
// superblock references is overwritten, and blocks released here are not reused before the next
// commit. commit() does not flush: the owner flushes, then writes the superblock with root().
#include "persistent-data/block_manager.h"
#include "persistent-data/space_map.h"

#include <memory>

namespace pdata {

// A new map of nr_blocks blocks (capped at 4,161,600 = 255 * 16320), all counts 0. Nothing is
// written until commit(); the caller increments block 0 (the superblock) before allocating.
// root() is {nr_blocks, 0, 0, 0} until the first commit.
// Throws no_space when nr_blocks cannot hold a superblock, an index block, an overflow root and
// the bitmaps; std::invalid_argument when nr_blocks exceeds the device.
std::unique_ptr<space_map> create_metadata_space_map(block_manager& bm, block_address nr_blocks);

// Opens the map committed with root (the metadata sm root of a superblock). nr_free,
// none_free_before and nr_allocated are recomputed from the bitmaps. Throws corrupt_block.
std::unique_ptr<space_map> open_metadata_space_map(block_manager& bm, const sm_root& root);

} // namespace pdata
