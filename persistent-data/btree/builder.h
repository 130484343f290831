#pragma once
// Bottom-up construction of a single-level b-tree from sorted input (restore, repair, space-map
// overflow trees): leaves are filled to max_entries and the last two nodes of each level are
// rebalanced so no non-root node is under 1/3 full. An existing leaf can be taken in by reference
// (push_leaf), so a tree can share leaves with trees built before it. Memory stays flat as input
// grows: two nodes per level.
#include "persistent-data/btree/btree.h"

#include <functional>
#include <memory>
#include <vector>

namespace pdata::btree {

class builder {
public:
    // Called with values the tree copied out of a leaf given to push_leaf: the tree now holds a
    // reference to each of them.
    using copy_refs_fn = std::function<void(const std::uint8_t* values, unsigned count)>;
    // Called once for every leaf the builder writes, when its contents are final.
    using leaf_fn = std::function<void(block_address, node_ref)>;

    // The tree takes over the caller's references to the values pushed (no vt.inc is called).
    builder(transaction_manager& tm, std::uint32_t value_size, copy_refs_fn copy_refs = {}, leaf_fn on_leaf = {});
    ~builder();
    builder(const builder&) = delete;
    builder& operator=(const builder&) = delete;

    // Keys must be strictly increasing; throws std::invalid_argument otherwise.
    void push_back(std::uint64_t key, const std::uint8_t* value);
    // Adds an existing leaf whose keys all follow the keys pushed so far. The tree references the
    // block (its metadata count goes up by one when the tree takes it), not the values in it, as a
    // snapshot shares its origin's leaves. Where a node next to it would be under 1/3 full, the
    // leaf's entries are copied into the tree's own nodes instead and copy_refs is called for
    // them. Throws std::invalid_argument for a block that is not a leaf of this value size, holds
    // fewer than max_entries / 3 entries, or whose first key is not above the last key.
    void push_leaf(block_address leaf);
    // Root of the finished tree (an empty leaf when nothing was pushed). Call once.
    block_address finish();

    std::uint64_t size() const { return count_; }

private:
    struct level;
    transaction_manager& tm_;
    std::uint32_t value_size_;
    copy_refs_fn copy_refs_;
    leaf_fn on_leaf_;
    std::vector<std::unique_ptr<level>> levels_;
    std::uint64_t count_ = 0;
    std::uint64_t last_key_ = 0;
    bool finished_ = false;
    level& get_level(unsigned lvl);
    void add(unsigned lvl, std::uint64_t key, const std::uint8_t* value);
    void close_cur(unsigned lvl);
    block_address take_prev(unsigned lvl, std::uint64_t& first);
    void link(unsigned lvl, std::uint64_t first, block_address b);
    void pass_up_prev(unsigned lvl);
    void pass_up_cur(unsigned lvl);
    block_address write_node(unsigned lvl, const std::uint8_t* node);
    void fix_underfull(level& l);
    void unshare_prev(level& l);
};

} // namespace pdata::btree
