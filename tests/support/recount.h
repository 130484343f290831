#pragma once
// Test helpers that recompute what a b-tree's owner must agree with: reference counts of metadata
// blocks and of values (format.md §7.1), and the structural rules of every node (format.md §6.3,
// §6.4). They read nodes through the block manager only, independently of the btree code.
#include "persistent-data/block_manager.h"
#include "persistent-data/space_map.h"

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace thinpool_test {

// A tree whose root holds one reference (a superblock slot, a snapshot, a test's variable).
struct tree_root {
    pdata::block_address root;
    unsigned levels = 1;
    std::uint32_t value_size = 8;  // bottom level's
};

// The counted resource a bottom-level value refers to (e.g. a data block), or nullopt.
using value_block_fn = std::function<std::optional<std::uint64_t>(const std::uint8_t* value)>;

struct recount_result {
    std::vector<std::uint32_t> metadata;           // expected count of every metadata block
    std::map<std::uint64_t, std::uint32_t> values;  // expected count of every value block (non-zero only)
};

// Counts, over every distinct node reachable from the roots, one reference per slot (internal
// children, upper-level subtree roots), plus one per listed root; and one value reference per
// bottom-level slot of every distinct leaf.
recount_result recount(pdata::block_manager& bm, pdata::block_address nr_blocks, const std::vector<tree_root>& roots,
                       const value_block_fn& value_block = {});

// Mismatches between expected counts and a space map ("block 12: expected 1, space map 2").
std::vector<std::string> compare_counts(const std::vector<std::uint32_t>& expected, const pdata::space_map& sm);
std::vector<std::string> compare_counts(const std::map<std::uint64_t, std::uint32_t>& expected,
                                        const pdata::space_map& sm);

struct tree_shape {
    unsigned depth = 0;          // nodes from the top-level root to a top-level leaf
    std::uint64_t nodes = 0;     // every level
    std::uint64_t leaves = 0;    // bottom-level leaves
    std::uint64_t entries = 0;   // bottom-level entries
};

// Checks every node: flags, value_size and max_entries of its level, keys strictly increasing,
// parent key <= first key, keys below the next parent key, leaves all at one depth, non-root
// nodes at least max_entries / 3 full. Problems are appended to `problems`.
tree_shape check_tree(pdata::block_manager& bm, const tree_root& t, std::vector<std::string>& problems);

} // namespace thinpool_test
