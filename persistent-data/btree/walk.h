#pragma once
// A read-only, damage-tolerant walk of a (multi-level) b-tree: good values and damage are reported
// separately, so check, dump, repair, rmap and ls share one walker (design.md §1).
#include "persistent-data/block_manager.h"
#include "persistent-data/btree/node.h"

#include <optional>
#include <string>
#include <vector>

namespace pdata::btree {

// Keys k with begin <= k < end; end == nullopt means "to the end of the key space".
struct key_range {
    std::uint64_t begin = 0;
    std::optional<std::uint64_t> end;
    bool operator==(const key_range&) const = default;
};
std::string to_string(const key_range& r);

class walk_visitor {
public:
    virtual ~walk_visitor() = default;
    // Every node that was read and passed the checks, before its entries are visited. `level` is
    // the tree level (0 = top), `path` the keys of the levels above. Return false to skip the
    // node's entries (for example a node already seen through another path).
    virtual bool visit_node(unsigned level, const std::vector<std::uint64_t>& path, block_address b,
                            node_ref n) {
        (void)level; (void)path; (void)b; (void)n;
        return true;
    }
    // A bottom-level value. path holds the keys of the levels above (levels - 1 of them).
    virtual void visit_value(const std::vector<std::uint64_t>& path, std::uint64_t key,
                             const std::uint8_t* value) = 0;
    // A node that could not be read or failed a check: the keys in `lost` (within the subtree at
    // `path`) are gone. b is the bad block.
    virtual void visit_damage(const std::vector<std::uint64_t>& path, key_range lost, block_address b,
                              const std::string& what) = 0;
    // A non-fatal problem (an under-full non-root node, max_entries not a multiple of 3).
    virtual void visit_warning(const std::vector<std::uint64_t>& path, block_address b,
                               const std::string& what) {
        (void)path; (void)b; (void)what;
    }
};

struct walk_options {
    unsigned levels = 1;
    std::uint32_t value_size = 8;  // bottom level's
};

// Walks the tree at root. Checks every node: validator (checksum, blocknr, header), value_size of
// its level, node kind consistent with depth (all leaves at one depth), keys strictly increasing,
// keys within the range the parent gives (parent key <= first key, last key < next parent key).
void walk(block_manager& bm, block_address root, const walk_options& opts, walk_visitor& v);

} // namespace pdata::btree
