// Deleting a (multi-level) tree (format.md §7.3). A shared node only loses one reference; an
// unshared one first releases what it references (children, next-level subtrees, bottom-level
// values through the value type) and is then freed. An explicit stack keeps deep or wide trees
// off the call stack.
#include "persistent-data/btree/btree.h"

#include <string>
#include <vector>

namespace pdata::btree {

void del(const info& inf, block_address root) {
    struct pending {
        block_address b;
        unsigned level;
    };
    transaction_manager& tm = *inf.tm;
    std::vector<pending> stack;
    stack.push_back({root, 0});
    while (!stack.empty()) {
        pending p = stack.back();
        stack.pop_back();
        std::uint32_t count = tm.ref_count(p.b);
        if (count == 0) throw corrupt_block(p.b, "deleting a btree node whose reference count is 0");
        if (count == 1) {
            read_ref r = tm.read_lock(p.b, btree_node_validator());
            node_ref n(r.data());
            unsigned nr = n.nr_entries();
            if (n.is_internal()) {
                if (n.value_size() != 8)
                    throw corrupt_block(p.b, "internal btree node has value_size " + std::to_string(n.value_size()));
                for (unsigned i = nr; i-- > 0;) stack.push_back({n.value64(i), p.level});
            } else {
                std::uint32_t vs = detail::level_value_size(inf, p.level);
                if (n.value_size() != vs)
                    throw corrupt_block(p.b, "btree leaf has value_size " + std::to_string(n.value_size()) +
                                                 ", expected " + std::to_string(vs));
                if (p.level + 1 < inf.levels) {
                    for (unsigned i = nr; i-- > 0;) stack.push_back({n.value64(i), p.level + 1});
                } else if (inf.vt.dec && nr) {
                    inf.vt.dec(n.value(0), nr);
                }
            }
        }
        tm.dec(p.b);
    }
}

} // namespace pdata::btree
