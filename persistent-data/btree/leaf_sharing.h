#pragma once
// Building trees that share leaves with trees built before them, as the kernel's snapshots do:
// a snapshot's tree references its origin's nodes until a write breaks the sharing, so a restore
// that wrote every tree in full would store the shared runs once per device.
//
// leaf_catalog records the leaves of finished trees. sharing_builder takes sorted entries like
// builder; from a key that starts a catalogued leaf on, it compares the entries it is given with
// that leaf's, holding them back. When the whole leaf has been repeated it takes the leaf by
// reference (builder::push_leaf); at the first difference the held entries go in as ordinary ones.
// Only leaves at least 1/3 full are catalogued (a shared leaf must be a valid non-root node).
//
// References: a value that ends up in a node the tree wrote (pushed, or copied out of a shared
// leaf) is reported to take_refs; the values of a leaf taken by reference are not (the leaf holds
// them once, whoever references it: the kernel's counting).
#include "persistent-data/btree/builder.h"

#include <vector>

namespace pdata::btree {

class leaf_catalog {
public:
    explicit leaf_catalog(std::uint32_t value_size);
    // A final leaf of the tree being built; searchable from the next tree on (see seal).
    void add(block_address b, node_ref n);
    // Makes the leaves added so far searchable. sharing_builder calls it when a tree is finished.
    void seal();

    struct leaf {
        std::uint64_t first_key;
        std::uint64_t first_value;  // a digest of the first value: most candidates fail on it unread
        block_address block;
    };
    std::uint64_t digest(const std::uint8_t* value) const;
    // Catalogued leaves ordered by first key (and by the order they were added for equal keys).
    const std::vector<leaf>& leaves() const { return sorted_; }
    std::size_t size() const { return sorted_.size(); }

private:
    std::uint32_t value_size_;
    std::uint32_t min_entries_;
    std::vector<leaf> sorted_;
    std::vector<leaf> pending_;
};

class sharing_builder {
public:
    using refs_fn = builder::copy_refs_fn;
    sharing_builder(transaction_manager& tm, std::uint32_t value_size, leaf_catalog& catalog, refs_fn take_refs);

    // Keys strictly increasing (std::invalid_argument otherwise).
    void push_back(std::uint64_t key, const std::uint8_t* value);
    // Root of the finished tree; its leaves join the catalog.
    block_address finish();

    // Leaves taken by reference so far.
    std::uint64_t shared_leaves() const { return shared_; }

private:
    transaction_manager& tm_;
    std::uint32_t value_size_;
    leaf_catalog& catalog_;
    refs_fn take_refs_;
    builder b_;
    std::size_t cursor_ = 0;  // first catalogued leaf whose first key may still come
    // The leaf being compared with (a copy), when matched_ > 0.
    aligned_block cand_node_ = make_aligned_block(true);
    unsigned matched_ = 0;    // entries of it repeated so far; 0 = not matching
    std::uint64_t shared_ = 0;
    bool finished_ = false;

    std::size_t cand_ = 0;     // its index in the catalog
    bool try_start(std::uint64_t key, const std::uint8_t* value);
    bool try_switch(std::uint64_t key, const std::uint8_t* value);
    void load(std::size_t i);
    void give_up();
};

} // namespace pdata::btree
