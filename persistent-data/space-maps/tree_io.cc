#include "persistent-data/space-maps/tree_io.h"
#include "persistent-data/btree/node.h"

#include <string>

namespace pdata::sm {

namespace {

constexpr unsigned MAX_DEPTH = 16;  // far above any real tree; stops cycles in corrupt metadata

struct tree_reader {
    block_manager& bm;
    std::uint32_t value_size;
    const std::function<void(std::uint64_t, const std::uint8_t*)>& fn;
    std::vector<block_address>* nodes;
    int leaf_depth = -1;
    bool have_last = false;
    std::uint64_t last_key = 0;

    void visit(block_address b, unsigned depth, bool has_parent, std::uint64_t parent_key) {
        if (depth > MAX_DEPTH) throw corrupt_block(b, "b-tree deeper than " + std::to_string(MAX_DEPTH) + " levels");
        std::vector<std::pair<std::uint64_t, block_address>> children;
        {
            read_ref r = bm.read_lock(b, btree::btree_node_validator());
            btree::node_ref n(r.data());
            if (nodes) nodes->push_back(b);
            unsigned nr = n.nr_entries();
            if (has_parent && nr > 0 && n.key(0) < parent_key)
                throw corrupt_block(b, "first key " + std::to_string(n.key(0)) + " is below the parent key " +
                                           std::to_string(parent_key));
            if (n.is_leaf()) {
                if (n.value_size() != value_size)
                    throw corrupt_block(b, "leaf value size " + std::to_string(n.value_size()) + ", wanted " +
                                               std::to_string(value_size));
                if (leaf_depth < 0) leaf_depth = int(depth);
                else if (leaf_depth != int(depth)) throw corrupt_block(b, "leaves at different depths");
                for (unsigned i = 0; i < nr; ++i) {
                    std::uint64_t k = n.key(i);
                    if (have_last && k <= last_key)
                        throw corrupt_block(b, "keys out of order (" + std::to_string(k) + " after " +
                                                   std::to_string(last_key) + ")");
                    fn(k, n.value(i));
                    have_last = true;
                    last_key = k;
                }
                return;
            }
            if (n.value_size() != 8)
                throw corrupt_block(b, "internal node value size " + std::to_string(n.value_size()));
            if (nr == 0) throw corrupt_block(b, "empty internal node");
            if (leaf_depth >= 0 && int(depth) >= leaf_depth) throw corrupt_block(b, "leaves at different depths");
            for (unsigned i = 0; i < nr; ++i) {
                if (i && n.key(i) <= n.key(i - 1)) throw corrupt_block(b, "internal keys out of order");
                children.emplace_back(n.key(i), n.value64(i));
            }
        }
        for (auto& [k, child] : children) visit(child, depth + 1, true, k);
    }
};

std::size_t div_up(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

} // namespace

void read_tree(block_manager& bm, block_address root, std::uint32_t value_size,
               const std::function<void(std::uint64_t key, const std::uint8_t* value)>& fn,
               std::vector<block_address>* nodes) {
    tree_reader r{bm, value_size, fn, nodes};
    r.visit(root, 0, false, 0);
}

std::size_t tree_node_count(std::size_t n, std::uint32_t value_size) {
    std::size_t nodes = n ? div_up(n, btree::max_entries_for(value_size)) : 1;
    std::size_t total = nodes;
    while (nodes > 1) {
        nodes = div_up(nodes, btree::max_entries_for(8));
        total += nodes;
    }
    return total;
}

block_address write_tree(block_manager& bm, const std::vector<std::uint64_t>& keys,
                         const std::uint8_t* values, std::uint32_t value_size,
                         const std::vector<block_address>& blocks) {
    std::size_t next = 0;
    auto take = [&]() {
        if (next >= blocks.size()) throw std::logic_error("write_tree: not enough blocks");
        return blocks[next++];
    };

    // Leaves, filled evenly: with L = ceil(n / max) leaves each holds at least max / 2 entries.
    std::size_t n = keys.size();
    std::size_t max = btree::max_entries_for(value_size);
    std::size_t nr_nodes = n ? div_up(n, max) : 1;
    std::vector<std::uint64_t> level_keys, level_blocks;
    for (std::size_t t = 0; t < nr_nodes; ++t) {
        std::size_t lo = t * n / nr_nodes, hi = (t + 1) * n / nr_nodes;
        block_address b = take();
        write_ref w = bm.write_lock_zero(b, btree::btree_node_validator());
        btree::node_mut node(w.data());
        node.init(btree::LEAF_NODE, value_size);
        for (std::size_t i = lo; i < hi; ++i) {
            node.set_key(unsigned(i - lo), keys[i]);
            node.set_value(unsigned(i - lo), values + i * value_size);
        }
        node.set_nr_entries(std::uint32_t(hi - lo));
        level_keys.push_back(lo < hi ? keys[lo] : 0);
        level_blocks.push_back(b);
    }

    // Internal levels until one node is left.
    std::size_t imax = btree::max_entries_for(8);
    while (level_blocks.size() > 1) {
        std::size_t m = level_blocks.size();
        nr_nodes = div_up(m, imax);
        std::vector<std::uint64_t> up_keys, up_blocks;
        for (std::size_t t = 0; t < nr_nodes; ++t) {
            std::size_t lo = t * m / nr_nodes, hi = (t + 1) * m / nr_nodes;
            block_address b = take();
            write_ref w = bm.write_lock_zero(b, btree::btree_node_validator());
            btree::node_mut node(w.data());
            node.init(btree::INTERNAL_NODE, 8);
            for (std::size_t i = lo; i < hi; ++i) {
                node.set_key(unsigned(i - lo), level_keys[i]);
                node.set_value64(unsigned(i - lo), level_blocks[i]);
            }
            node.set_nr_entries(std::uint32_t(hi - lo));
            up_keys.push_back(level_keys[lo]);
            up_blocks.push_back(b);
        }
        level_keys.swap(up_keys);
        level_blocks.swap(up_blocks);
    }
    return level_blocks[0];
}

} // namespace pdata::sm
