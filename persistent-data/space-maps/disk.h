#pragma once
// The data space map ("disk" space map, format.md §4.5): an index b-tree of bitmap locations
// (key = bitmap index, 16-byte index entries), bitmap blocks and an overflow b-tree of counts >= 3,
// all persisted through the transaction manager (so their metadata blocks are counted in the
// metadata space map). Counts live in memory (nr_blocks / 4 bytes, plus the overflow counts, see
// ref_counts.h); commit() writes changed bitmaps to new blocks, updates the index tree, and either
// updates the overflow tree key by key or, when the changes reach 1/32 of it (or were too many to
// list), writes a new packed tree with btree::builder and deletes the old one. Then root()
// describes them.
#include "persistent-data/space_map.h"
#include "persistent-data/transaction_manager.h"

#include <memory>

namespace pdata {

// Formats a map of nr_blocks blocks (may be 0): an empty index tree, an empty overflow tree and a
// zeroed bitmap per 16320 blocks, then commit()s it so root() is valid.
std::unique_ptr<space_map> create_disk_space_map(transaction_manager& tm, block_address nr_blocks);

// Opens the map committed with root (the data sm root of a superblock). nr_free,
// none_free_before and nr_allocated are recomputed from the bitmaps. Throws corrupt_block.
std::unique_ptr<space_map> open_disk_space_map(transaction_manager& tm, const sm_root& root);

} // namespace pdata
