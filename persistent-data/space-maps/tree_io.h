#pragma once
// Whole-tree reads and writes of the single-level b-trees owned by the space maps (format.md §4.4,
// §4.5, §6). The metadata space map cannot use the transaction manager (it is the allocator behind
// it), so it writes its overflow tree with write_tree(); both maps load their trees at open with
// read_tree(), which needs only the block manager.
#include "persistent-data/block_manager.h"

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace pdata::sm {

// Visits every leaf entry of the tree at root in key order. Checks every node (validator, value
// size of its kind, all leaves at one depth, keys strictly increasing across the whole tree,
// parent key <= first key of the child); throws corrupt_block naming the node otherwise.
// When nodes is given, the location of every node is appended to it.
void read_tree(block_manager& bm, block_address root, std::uint32_t value_size,
               const std::function<void(std::uint64_t key, const std::uint8_t* value)>& fn,
               std::vector<block_address>* nodes = nullptr);

// Number of nodes write_tree() needs for n entries of value_size bytes.
std::size_t tree_node_count(std::size_t n, std::uint32_t value_size);

// Writes a tree holding entries (keys strictly increasing, value_size bytes each at
// values + i * value_size) into exactly tree_node_count() blocks taken from `blocks`, which must
// be free and are written with bm.write_lock_zero. Leaves and internal nodes are filled evenly, so
// every non-root node is at least half full. Returns the root (an empty leaf when n == 0).
block_address write_tree(block_manager& bm, const std::vector<std::uint64_t>& keys,
                         const std::uint8_t* values, std::uint32_t value_size,
                         const std::vector<block_address>& blocks);

} // namespace pdata::sm
