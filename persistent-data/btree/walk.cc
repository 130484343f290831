// The damage-tolerant b-tree walk (format.md §6.3, §6.4, §10).
//
// Each node is responsible for a key range handed down by its parent: [0, end) for a root,
// [key_i, key_{i+1}) for child i of an internal node (the last child inherits the parent's end).
// A node that cannot be read or fails a check loses exactly that range; the walk then carries on
// with its siblings. Depth is small (a tree of 2^64 keys is about a dozen nodes deep), so the walk
// recurses and keeps the read references of the path it is on.
#include "persistent-data/btree/walk.h"

#include <algorithm>
#include <stdexcept>

namespace pdata::btree {

std::string to_string(const key_range& r) {
    std::string s = "[" + std::to_string(r.begin) + "..";
    if (r.end)
        s += std::to_string(*r.end) + ")";
    else
        s += "-]";
    return s;
}

namespace {

// Deeper than this is a loop or garbage: a valid tree never comes close (252^8 > 2^63).
constexpr unsigned MAX_TREE_DEPTH = 32;

class walker {
public:
    walker(block_manager& bm, const walk_options& opts, walk_visitor& v) : bm_(bm), opts_(opts), v_(v) {
        path_.reserve(opts.levels);
        ancestors_.reserve(64);
    }

    void walk_tree(unsigned level, block_address root) {
        tree t;
        walk_node(level, t, 0, root, key_range{0, std::nullopt});
    }

private:
    // Per (sub)tree state: the depth of its leaves, fixed by the first good leaf met.
    struct tree {
        int leaf_depth = -1;
    };

    std::uint32_t leaf_value_size(unsigned level) const {
        return level + 1 < opts_.levels ? 8 : opts_.value_size;
    }

    // Empty when the node is good; otherwise why it is not.
    std::string check_node(unsigned level, const tree& t, unsigned depth, node_ref n, const key_range& r) const {
        if (t.leaf_depth >= 0) {
            unsigned ld = static_cast<unsigned>(t.leaf_depth);
            if (n.is_leaf() && depth != ld)
                return "leaf at depth " + std::to_string(depth) + " where an internal node is expected (leaves are at depth " +
                       std::to_string(ld) + ")";
            if (n.is_internal() && depth >= ld)
                return "internal node at depth " + std::to_string(depth) + " where a leaf is expected";
        }
        std::uint32_t want_vs = n.is_internal() ? 8 : leaf_value_size(level);
        if (n.value_size() != want_vs)
            return std::string(n.is_internal() ? "internal node" : "leaf") + " has value_size " +
                   std::to_string(n.value_size()) + ", expected " + std::to_string(want_vs);
        unsigned nr = n.nr_entries();
        for (unsigned i = 1; i < nr; ++i)
            if (n.key(i) <= n.key(i - 1))
                return "keys out of order: key[" + std::to_string(i - 1) + "] = " + std::to_string(n.key(i - 1)) +
                       ", key[" + std::to_string(i) + "] = " + std::to_string(n.key(i));
        if (nr) {
            if (n.key(0) < r.begin)
                return "first key " + std::to_string(n.key(0)) + " is below the parent key " + std::to_string(r.begin);
            if (r.end && n.key(nr - 1) >= *r.end)
                return "last key " + std::to_string(n.key(nr - 1)) + " is not below the next parent key " +
                       std::to_string(*r.end);
        }
        return {};
    }

    void warnings(unsigned depth, block_address b, node_ref n) {
        if (n.max_entries() % 3 != 0)
            v_.visit_warning(path_, b, "max_entries " + std::to_string(n.max_entries()) + " is not a multiple of 3");
        if (depth > 0 && n.nr_entries() < n.max_entries() / 3)
            v_.visit_warning(path_, b, "under-full node: " + std::to_string(n.nr_entries()) + " entries, fewer than max_entries " +
                                           std::to_string(n.max_entries()) + " / 3");
    }

    void walk_node(unsigned level, tree& t, unsigned depth, block_address b, const key_range& r) {
        if (std::find(ancestors_.begin(), ancestors_.end(), b) != ancestors_.end()) {
            v_.visit_damage(path_, r, b, "cycle: the node is its own ancestor");
            return;
        }
        if (depth >= MAX_TREE_DEPTH) {
            v_.visit_damage(path_, r, b, "tree deeper than " + std::to_string(MAX_TREE_DEPTH) + " levels");
            return;
        }

        read_ref ref;
        try {
            ref = bm_.read_lock(b, btree_node_validator());
        } catch (const corrupt_block& e) {
            v_.visit_damage(path_, r, b, e.problem());
            return;
        } catch (const io_error& e) {
            v_.visit_damage(path_, r, b, e.what());
            return;
        }
        node_ref n(ref.data());

        std::string problem = check_node(level, t, depth, n, r);
        if (!problem.empty()) {
            v_.visit_damage(path_, r, b, problem);
            return;
        }
        if (n.is_leaf() && t.leaf_depth < 0) t.leaf_depth = static_cast<int>(depth);
        warnings(depth, b, n);

        if (!v_.visit_node(level, path_, b, n)) return;

        unsigned nr = n.nr_entries();
        if (n.is_internal()) {
            ancestors_.push_back(b);
            for (unsigned i = 0; i < nr; ++i) {
                key_range cr{n.key(i), i + 1 < nr ? std::optional<std::uint64_t>(n.key(i + 1)) : r.end};
                walk_node(level, t, depth + 1, n.value64(i), cr);
            }
            ancestors_.pop_back();
        } else if (level + 1 < opts_.levels) {
            ancestors_.push_back(b);
            for (unsigned i = 0; i < nr; ++i) {
                path_.push_back(n.key(i));
                walk_tree(level + 1, n.value64(i));
                path_.pop_back();
            }
            ancestors_.pop_back();
        } else {
            for (unsigned i = 0; i < nr; ++i) v_.visit_value(path_, n.key(i), n.value(i));
        }
    }

    block_manager& bm_;
    walk_options opts_;
    walk_visitor& v_;
    std::vector<std::uint64_t> path_;         // keys of the levels above the current tree
    std::vector<block_address> ancestors_;    // nodes on the way down from the top root
};

} // namespace

void walk(block_manager& bm, block_address root, const walk_options& opts, walk_visitor& v) {
    if (opts.levels < 1 || opts.levels > 8)
        throw std::invalid_argument("btree walk: levels must be 1..8, not " + std::to_string(opts.levels));
    walker w(bm, opts, v);
    w.walk_tree(0, root);
}

} // namespace pdata::btree
