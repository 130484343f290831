#include "persistent-data/btree/node.h"

namespace pdata::btree {

void node_validator::check(const std::uint8_t* data, block_address b) const {
    checksummed_validator::check(data, b);
    node_ref n(data);
    if (n.flags() != INTERNAL_NODE && n.flags() != LEAF_NODE)
        throw corrupt_block(b, "btree node has bad flags " + std::to_string(n.flags()));
    if (!entries_fit(n.max_entries(), n.value_size()))
        throw corrupt_block(b, "btree node: max_entries " + std::to_string(n.max_entries()) +
                                   " with value_size " + std::to_string(n.value_size()) +
                                   " does not fit in a block");
    if (n.nr_entries() > n.max_entries())
        throw corrupt_block(b, "btree node: nr_entries " + std::to_string(n.nr_entries()) +
                                   " > max_entries " + std::to_string(n.max_entries()));
}

const node_validator& btree_node_validator() {
    static const node_validator v;
    return v;
}

} // namespace pdata::btree
