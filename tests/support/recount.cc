#include "tests/support/recount.h"

#include "persistent-data/btree/node.h"

#include <set>

namespace thinpool_test {

using namespace pdata;
using pdata::btree::node_ref;

namespace {

std::uint32_t level_vs(const tree_root& t, unsigned level) { return level + 1 < t.levels ? 8 : t.value_size; }

} // namespace

recount_result recount(block_manager& bm, block_address nr_blocks, const std::vector<tree_root>& roots,
                       const value_block_fn& value_block) {
    recount_result res;
    res.metadata.assign(nr_blocks, 0);
    std::vector<bool> seen(nr_blocks, false);
    struct item {
        block_address b;
        unsigned level;
        const tree_root* t;
    };
    std::vector<item> todo;
    for (auto& t : roots) {
        ++res.metadata.at(t.root);
        todo.push_back({t.root, 0, &t});
    }
    while (!todo.empty()) {
        item it = todo.back();
        todo.pop_back();
        if (seen.at(it.b)) continue;
        seen[it.b] = true;
        read_ref r = bm.read_lock(it.b, btree::btree_node_validator());
        node_ref n(r.data());
        for (unsigned i = 0; i < n.nr_entries(); ++i) {
            if (n.is_internal()) {
                ++res.metadata.at(n.value64(i));
                todo.push_back({n.value64(i), it.level, it.t});
            } else if (it.level + 1 < it.t->levels) {
                ++res.metadata.at(n.value64(i));
                todo.push_back({n.value64(i), it.level + 1, it.t});
            } else if (value_block) {
                if (auto d = value_block(n.value(i))) ++res.values[*d];
            }
        }
    }
    return res;
}

std::vector<std::string> compare_counts(const std::vector<std::uint32_t>& expected, const space_map& sm) {
    std::vector<std::string> out;
    for (block_address b = 0; b < sm.nr_blocks(); ++b) {
        std::uint32_t e = b < expected.size() ? expected[b] : 0;
        std::uint32_t got = sm.get_count(b);
        if (e != got && out.size() < 20)
            out.push_back("block " + std::to_string(b) + ": expected " + std::to_string(e) + ", space map " +
                          std::to_string(got));
    }
    return out;
}

std::vector<std::string> compare_counts(const std::map<std::uint64_t, std::uint32_t>& expected, const space_map& sm) {
    std::vector<std::uint32_t> v(sm.nr_blocks(), 0);
    std::vector<std::string> out;
    for (auto& [b, c] : expected) {
        if (b >= v.size())
            out.push_back("value block " + std::to_string(b) + " is beyond the space map");
        else
            v[b] = c;
    }
    auto more = compare_counts(v, sm);
    out.insert(out.end(), more.begin(), more.end());
    return out;
}

namespace {

struct checker {
    block_manager& bm;
    const tree_root& t;
    std::vector<std::string>& problems;
    tree_shape shape;
    std::set<block_address> subtrees_done;

    void problem(block_address b, const std::string& what) {
        if (problems.size() < 50) problems.push_back("block " + std::to_string(b) + ": " + what);
    }

    // Checks the single-level tree at root (tree level `level`); returns its depth.
    unsigned check_level_tree(block_address root, unsigned level) {
        int leaf_depth = -1;
        check_node(root, level, 1, true, 0, std::nullopt, leaf_depth);
        return leaf_depth < 0 ? 0 : unsigned(leaf_depth);
    }

    void check_node(block_address b, unsigned level, unsigned depth, bool is_root, std::uint64_t lo,
                    std::optional<std::uint64_t> hi, int& leaf_depth) {
        if (depth > 32) {
            problem(b, "too deep");
            return;
        }
        read_ref r = bm.read_lock(b, btree::btree_node_validator());
        node_ref n(r.data());
        ++shape.nodes;
        unsigned nr = n.nr_entries();
        if (n.max_entries() % 3 != 0) problem(b, "max_entries not a multiple of 3");
        if (n.is_internal()) {
            if (n.value_size() != 8 || n.max_entries() != 252) problem(b, "internal node value_size/max_entries");
            if (nr == 0) problem(b, "empty internal node");
        } else {
            std::uint32_t vs = level_vs(t, level);
            if (n.value_size() != vs) problem(b, "leaf value_size " + std::to_string(n.value_size()));
            if (n.max_entries() != btree::max_entries_for(vs)) problem(b, "leaf max_entries");
        }
        if (load_le32(n.raw() + 28) != 0) problem(b, "padding not zero");
        if (!is_root && nr < n.max_entries() / 3)
            problem(b, "under-full non-root node: " + std::to_string(nr) + " entries");
        for (unsigned i = 0; i < nr; ++i) {
            std::uint64_t k = n.key(i);
            if (i > 0 && k <= n.key(i - 1)) problem(b, "keys not strictly increasing at " + std::to_string(i));
            if (k < lo) problem(b, "key " + std::to_string(k) + " below the parent key " + std::to_string(lo));
            if (hi && k >= *hi) problem(b, "key " + std::to_string(k) + " not below the next parent key");
        }
        if (n.is_leaf()) {
            if (leaf_depth < 0)
                leaf_depth = int(depth);
            else if (leaf_depth != int(depth))
                problem(b, "leaves at different depths");
            if (level + 1 < t.levels) {
                for (unsigned i = 0; i < nr; ++i) {
                    block_address sub = n.value64(i);
                    if (!subtrees_done.insert(sub).second) continue;
                    check_level_tree(sub, level + 1);
                }
            } else {
                ++shape.leaves;
                shape.entries += nr;
            }
            return;
        }
        for (unsigned i = 0; i < nr; ++i) {
            std::optional<std::uint64_t> next_hi = i + 1 < nr ? std::optional(n.key(i + 1)) : hi;
            check_node(n.value64(i), level, depth + 1, false, n.key(i), next_hi, leaf_depth);
        }
    }
};

} // namespace

tree_shape check_tree(block_manager& bm, const tree_root& t, std::vector<std::string>& problems) {
    checker c{bm, t, problems, {}, {}};
    c.shape.depth = c.check_level_tree(t.root, 0);
    return c.shape;
}

} // namespace thinpool_test
