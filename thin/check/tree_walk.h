#pragma once
// Walks of the small single-level trees (device details, top level of the mapping tree, the space
// maps' index and overflow trees) through pdata's damage-tolerant walker, counting the metadata
// references each distinct node makes (format.md §7.1).
#include "thin/check/counts.h"

#include "persistent-data/btree/walk.h"

#include <functional>
#include <string>

namespace thin::check {

struct tree_walk_callbacks {
    std::function<void(std::uint64_t key, const std::uint8_t* value)> value;
    std::function<void(const pdata::btree::key_range& lost, block_address b, const std::string& what)> damage;
    std::function<void(block_address b, const std::string& what)> warning;
};

// Walks the one-level tree at root whose leaves hold value_size-byte values. md (optional):
// each node met for the first time adds one reference per child slot, and, when
// values_are_blocks, one per value (the top level of the mapping tree references level-2 roots).
// Values of nodes already met are still visited.
void walk_tree(pdata::block_manager& bm, block_address root, std::uint32_t value_size, metadata_refs* md,
               bool values_are_blocks, const tree_walk_callbacks& cb);

} // namespace thin::check
