#pragma once
// Reading the mapping trees of many devices fast (design.md §2): walk the internal levels first,
// one height at a time and each height in disk order, so every node is read once however many
// devices share it; then read the leaves in batches, sorted by block. Used by thin_ls, thin_rmap and
// thin_delta. Readers here are strict: a node that fails a check ends the run (pdata::corrupt_block
// naming the block, the devices and the key range) - these tools report, they do not repair.
#include "thin/metadata/mapping.h"

#include "persistent-data/block_manager.h"
#include "persistent-data/btree/node.h"
#include "persistent-data/io_engine.h"

#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <vector>

namespace thin {

using pdata::block_address;

// The device details tree (format.md §5.1), in device order.
std::map<dev_id, device_details> read_device_details(pdata::block_manager& bm, block_address details_root);

// The top level of the mapping tree (format.md §5.2): each device's level-2 root.
std::map<dev_id, block_address> read_mapping_roots(pdata::block_manager& bm, block_address mapping_root);

// One distinct level-2 leaf and who reaches it.
struct mapping_leaf {
    block_address block = 0;
    // Every key of the leaf must lie in [first, last] (the parents' ranges, intersected).
    std::uint64_t first = 0;
    std::uint64_t last = std::numeric_limits<std::uint64_t>::max();
    std::uint32_t owners = 0;  // index into mapping_leaves::owner_sets
};

struct mapping_leaves {
    std::vector<mapping_leaf> leaves;               // sorted by block
    std::vector<std::vector<dev_id>> owner_sets;    // each sorted, distinct
    std::uint64_t internal_nodes = 0;               // distinct internal nodes read
};

// Walks the internal nodes of every given device's level-2 tree (dev -> root) and lists the
// distinct leaves with the set of devices that reach each. Checks each internal node: b-tree
// validator, flags, value_size 8, keys strictly increasing and inside the parent's range, all leaves
// at one depth.
mapping_leaves collect_mapping_leaves(pdata::block_manager& bm, const std::map<dev_id, block_address>& roots);

// The checks on a level-2 leaf read by a leaf_reader: a leaf, value_size 8, keys strictly
// increasing within [first, last]. Throws pdata::corrupt_block.
void check_mapping_leaf(pdata::btree::node_ref n, block_address b, std::uint64_t first, std::uint64_t last);

// The highest mapped virtual block of a level-2 tree (the last key of its rightmost leaf), or
// nullopt when the tree is empty.
std::optional<std::uint64_t> highest_mapped_block(pdata::block_manager& bm, block_address root);

// Reads leaf blocks in a given order, batch by batch: each batch is read sorted by block number
// (one read_many), validated (checksum, blocknr, node header), then handed out in the given
// order. Going back to a block before the current batch reads it alone.
class leaf_reader {
public:
    leaf_reader(pdata::io_engine& engine, std::vector<block_address> order, std::size_t batch = 512);
    std::size_t size() const { return order_.size(); }
    block_address block(std::size_t i) const { return order_[i]; }
    // The data of block(i); valid until the next call.
    const std::uint8_t* get(std::size_t i);
    std::uint64_t reads() const { return reads_; }

private:
    void load_batch(std::size_t from);

    pdata::io_engine& engine_;
    std::vector<block_address> order_;
    std::size_t batch_;
    pdata::aligned_block buf_;  // batch_ blocks
    std::size_t lo_ = 0, hi_ = 0;  // order_[lo_, hi_) are in buf_
    std::vector<bool> validated_;
    pdata::aligned_block single_;
    std::uint64_t reads_ = 0;
};

} // namespace thin
