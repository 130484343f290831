// Helpers shared by the btree operations: per-level value types and shadowing with child counts.
#include "persistent-data/btree/btree.h"

namespace pdata::btree::detail {

std::uint32_t level_value_size(const info& inf, unsigned level) {
    return level + 1 < inf.levels ? 8 : inf.vt.size;
}

value_type level_value_type(const info& inf, unsigned level) {
    if (level + 1 >= inf.levels) return inf.vt;
    value_type vt;
    vt.size = 8;
    transaction_manager* tm = inf.tm;
    vt.inc = [tm](const std::uint8_t* v, unsigned n) {
        for (unsigned i = 0; i < n; ++i) tm->inc(load_le64(v + 8 * i));
    };
    info sub = inf;
    sub.levels = inf.levels - level - 1;  // the subtree below this level
    vt.dec = [sub](const std::uint8_t* v, unsigned n) {
        for (unsigned i = 0; i < n; ++i) del(sub, load_le64(v + 8 * i));
    };
    return vt;
}

write_ref shadow_node(const info& inf, unsigned level, block_address b) {
    bool inc_children = false;
    write_ref w = inf.tm->shadow(b, btree_node_validator(), inc_children);
    if (inc_children) {
        node_ref n(w.data());
        if (n.is_internal()) {
            for (unsigned i = 0; i < n.nr_entries(); ++i) inf.tm->inc(n.value64(i));
        } else {
            auto vt = level_value_type(inf, level);
            if (vt.inc && n.nr_entries()) vt.inc(n.value(0), n.nr_entries());
        }
    }
    return w;
}

} // namespace pdata::btree::detail
