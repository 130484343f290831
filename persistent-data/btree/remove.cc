// B-tree removal (format.md §6.3, §7.2).
//
// A removal first checks read-only that there is something to remove, so a no-op writes nothing.
// It then shadows the path from the root to the bottom-level leaf, takes the entries out of the
// leaf (dec'ing their values through the value type) and repairs occupancy bottom-up along the
// path it still holds: a non-root node left under max_entries / 3 entries is merged with a
// sibling when the two fit in 2 * (max_entries / 3) + 1 entries, otherwise the two share their
// entries evenly (each then holds more than max_entries / 3). An emptied node is simply dropped.
//
// Why bottom-up rather than the kernel's top-down pre-balancing: remove_range takes whole runs out
// of a leaf at once, so the number of entries a node loses is only known at the leaf; and a sibling
// is shadowed only when a node really underflows, not on every descent.
//
// Reference counts: a merged-away node is dec'd as a block only; its children or values now belong
// to the node that absorbed them. An internal root left with one child is replaced by that child.
#include "persistent-data/btree/btree.h"

#include <string>
#include <vector>

namespace pdata::btree {

namespace {

constexpr unsigned MAX_DEPTH = 64;

const validator& nv() { return btree_node_validator(); }

template <typename B>
void check_node(basic_node<B> n, block_address b, std::uint32_t leaf_value_size) {
    if (n.is_internal()) {
        if (n.value_size() != 8)
            throw corrupt_block(b, "internal btree node has value_size " + std::to_string(n.value_size()));
        if (n.nr_entries() == 0) throw corrupt_block(b, "internal btree node has no entries");
    } else if (n.value_size() != leaf_value_size) {
        throw corrupt_block(b, "btree leaf has value_size " + std::to_string(n.value_size()) + ", expected " +
                                   std::to_string(leaf_value_size));
    }
}

void check_depth(unsigned depth, block_address b) {
    if (depth >= MAX_DEPTH) throw corrupt_block(b, "btree deeper than " + std::to_string(MAX_DEPTH) + " levels");
}

template <typename B>
unsigned min_entries(basic_node<B> n) { return n.max_entries() / 3; }

// First index of n with key >= k (nr_entries when there is none).
template <typename B>
unsigned first_at_or_after(basic_node<B> n, std::uint64_t k) {
    int i = n.lower_bound(k);
    if (i >= 0 && n.key(i) == k) return unsigned(i);
    return unsigned(i + 1);
}

// ---- read-only searches ----

// Finds key in one level's tree. leaf_out gets the u64 leaf value (meaningful for 8-byte values).
bool find_in_level(transaction_manager& tm, block_address b, std::uint64_t key, std::uint32_t leaf_vs,
                   std::uint64_t* leaf_out) {
    for (unsigned depth = 0;; ++depth) {
        check_depth(depth, b);
        read_ref r = tm.read_lock(b, nv());
        node_ref n(r.data());
        check_node(n, b, leaf_vs);
        int i = n.lower_bound(key);
        if (i < 0) return false;
        if (n.is_leaf()) {
            if (n.key(i) != key) return false;
            if (leaf_out) *leaf_out = n.value64(i);
            return true;
        }
        b = n.value64(i);
    }
}

// The root of the bottom-level tree named by keys[0 .. levels-2].
bool find_bottom_root(const info& inf, block_address root, const std::uint64_t* keys, block_address& out) {
    for (unsigned level = 0; level + 1 < inf.levels; ++level) {
        std::uint64_t sub;
        if (!find_in_level(*inf.tm, root, keys[level], 8, &sub)) return false;
        root = sub;
    }
    out = root;
    return true;
}

// The first key >= begin in the tree at b.
bool next_key(transaction_manager& tm, block_address b, std::uint64_t begin, std::uint32_t leaf_vs,
              unsigned depth, std::uint64_t& out) {
    check_depth(depth, b);
    read_ref r = tm.read_lock(b, nv());
    node_ref n(r.data());
    check_node(n, b, leaf_vs);
    if (n.is_leaf()) {
        unsigned i = first_at_or_after(n, begin);
        if (i >= n.nr_entries()) return false;
        out = n.key(i);
        return true;
    }
    int i = n.lower_bound(begin);
    // Child i may hold only keys below begin; then the answer is the first key of a later child.
    for (unsigned c = i < 0 ? 0 : unsigned(i); c < n.nr_entries(); ++c)
        if (next_key(tm, n.value64(c), begin, leaf_vs, depth + 1, out)) return true;
    return false;
}

// ---- the writable path ----

struct path {
    std::vector<write_ref> nodes;  // nodes[0] is the root, nodes.back() the leaf
    std::vector<unsigned> index;   // index[j]: the entry of nodes[j] that leads to nodes[j + 1]
};

// Shadows every node from root to the leaf where key belongs; root becomes the shadow's location.
void shadow_path(const info& inf, unsigned level, block_address& root, std::uint64_t key, path& p) {
    std::uint32_t leaf_vs = detail::level_value_size(inf, level);
    write_ref w = detail::shadow_node(inf, level, root);
    root = w.location();
    for (unsigned depth = 0;; ++depth) {
        check_depth(depth, w.location());
        node_mut n(w.data());
        check_node(n, w.location(), leaf_vs);
        if (n.is_leaf()) {
            p.nodes.push_back(std::move(w));
            return;
        }
        int i = n.lower_bound(key);
        unsigned c = i < 0 ? 0 : unsigned(i);
        write_ref child = detail::shadow_node(inf, level, n.value64(c));
        n.set_value64(c, child.location());
        p.nodes.push_back(std::move(w));
        p.index.push_back(c);
        w = std::move(child);
    }
}

// Removes entries [from, to) of n (values are not touched otherwise).
void erase_entries(node_mut n, unsigned from, unsigned to) {
    unsigned nr = n.nr_entries();
    if (to < nr) copy_entries(n, from, node_ref(n.raw()), to, nr - to);
    n.set_nr_entries(nr - (to - from));
}

// Moves the last `count` entries of l to the front of r.
void move_tail_to_front(node_mut l, node_mut r, unsigned count) {
    unsigned nl = l.nr_entries(), nr = r.nr_entries();
    copy_entries(r, count, node_ref(r.raw()), 0, nr);
    copy_entries(r, 0, node_ref(l.raw()), nl - count, count);
    l.set_nr_entries(nl - count);
    r.set_nr_entries(nr + count);
}

// Moves the first `count` entries of r to the end of l.
void move_front_to_tail(node_mut l, node_mut r, unsigned count) {
    unsigned nl = l.nr_entries();
    copy_entries(l, nl, node_ref(r.raw()), 0, count);
    l.set_nr_entries(nl + count);
    erase_entries(r, 0, count);
}

// Frees a node whose entries (if any) have been handed over elsewhere: only the block is dec'd.
void drop_node(const info& inf, write_ref& ref) {
    block_address b = ref.location();
    ref.release();
    inf.tm->dec(b);
}

// Child i of parent (x, already shadowed) is under-full: merge it with a sibling or share the
// sibling's entries with it.
void rebalance_child(const info& inf, unsigned level, node_mut parent, unsigned i, write_ref& x_ref) {
    node_mut x(x_ref.data());
    if (parent.nr_entries() < 2) return;  // no sibling; only a root can have one child (collapsed later)
    if (x.nr_entries() == 0) {
        parent.remove_at(i);
        drop_node(inf, x_ref);
        return;
    }

    bool sibling_left = i > 0;
    unsigned si = sibling_left ? i - 1 : i + 1;
    write_ref s_ref = detail::shadow_node(inf, level, parent.value64(si));
    parent.set_value64(si, s_ref.location());
    node_mut s(s_ref.data());
    if (s.flags() != x.flags() || s.value_size() != x.value_size() || s.max_entries() != x.max_entries())
        throw corrupt_block(s_ref.location(), "btree sibling nodes of different kinds");

    write_ref& l_ref = sibling_left ? s_ref : x_ref;
    write_ref& r_ref = sibling_left ? x_ref : s_ref;
    unsigned ri = sibling_left ? i : i + 1;
    node_mut l(l_ref.data()), r(r_ref.data());
    unsigned nl = l.nr_entries(), nr = r.nr_entries(), total = nl + nr;

    if (total <= 2 * min_entries(l) + 1) {
        copy_entries(l, nl, node_ref(r.raw()), 0, nr);
        l.set_nr_entries(total);
        parent.remove_at(ri);
        drop_node(inf, r_ref);
        return;
    }
    unsigned target_left = total / 2;
    if (nl > target_left)
        move_tail_to_front(l, r, nl - target_left);
    else if (nl < target_left)
        move_front_to_tail(l, r, target_left - nl);
    parent.set_key(ri, r.key(0));
}

// After the leaf at the end of p lost entries: restores minimum occupancy up the path.
void fix_up(const info& inf, unsigned level, path& p) {
    for (std::size_t j = p.nodes.size() - 1; j >= 1; --j) {
        node_ref x(p.nodes[j].data());
        if (x.nr_entries() >= min_entries(x)) break;
        rebalance_child(inf, level, node_mut(p.nodes[j - 1].data()), p.index[j - 1], p.nodes[j]);
    }
}

// An internal root with a single child is replaced by the child (the tree's reference to the old
// root becomes its reference to the child).
block_address collapse_root(const info& inf, block_address root) {
    for (unsigned depth = 0;; ++depth) {
        check_depth(depth, root);
        block_address child;
        {
            read_ref r = inf.tm->read_lock(root, nv());
            node_ref n(r.data());
            if (!n.is_internal() || n.nr_entries() != 1) return root;
            child = n.value64(0);
        }
        if (inf.tm->ref_count(root) > 1) inf.tm->inc(child);  // the old root lives on elsewhere
        inf.tm->dec(root);
        root = child;
    }
}

// ---- bottom-level operations (the key is known to be there / the range non-empty) ----

block_address remove_bottom(const info& inf, block_address root, std::uint64_t key) {
    unsigned level = inf.levels - 1;
    {
        path p;
        shadow_path(inf, level, root, key, p);
        node_mut leaf(p.nodes.back().data());
        int i = leaf.find(key);
        if (i < 0) throw corrupt_block(p.nodes.back().location(), "btree key vanished during removal");
        if (inf.vt.dec) inf.vt.dec(leaf.value(i), 1);
        leaf.remove_at(i);
        fix_up(inf, level, p);
    }
    return collapse_root(inf, root);
}

block_address remove_range_bottom(const info& inf, block_address root, std::uint64_t begin, std::uint64_t end,
                                  std::uint64_t& removed) {
    unsigned level = inf.levels - 1;
    std::uint64_t k;
    while (begin < end && next_key(*inf.tm, root, begin, inf.vt.size, 0, k) && k < end) {
        bool more;
        {
            path p;
            shadow_path(inf, level, root, k, p);
            node_mut leaf(p.nodes.back().data());
            unsigned nr = leaf.nr_entries();
            unsigned from = first_at_or_after(leaf, k);
            unsigned to = first_at_or_after(leaf, end);
            if (from >= to) throw corrupt_block(p.nodes.back().location(), "btree key vanished during removal");
            // Entries past the run are >= end: nothing further to remove.
            more = to == nr;
            std::uint64_t last = leaf.key(to - 1);
            if (last == UINT64_MAX) more = false;
            begin = last + 1;
            if (inf.vt.dec) inf.vt.dec(leaf.value(from), to - from);
            erase_entries(leaf, from, to);
            removed += to - from;
            fix_up(inf, level, p);
        }
        root = collapse_root(inf, root);
        if (!more) break;
    }
    return root;
}

// Shadows the upper levels' path to the subtree named by keys and replaces the subtree root with
// what `bottom` returns. The upper leaf slot is overwritten without a dec: shadowing the subtree
// already moved its count.
template <typename F>
block_address modify_subtree(const info& inf, unsigned level, block_address root, const std::uint64_t* keys,
                             const F& bottom) {
    if (level + 1 == inf.levels) return bottom(root);
    write_ref w = detail::shadow_node(inf, level, root);
    block_address new_root = w.location();
    for (unsigned depth = 0;; ++depth) {
        check_depth(depth, w.location());
        node_mut n(w.data());
        check_node(n, w.location(), 8);
        int i = n.lower_bound(keys[level]);
        if (i < 0 || (n.is_leaf() && n.key(i) != keys[level]))
            throw corrupt_block(w.location(), "btree key vanished during removal");
        if (n.is_leaf()) {
            block_address sub = modify_subtree(inf, level + 1, n.value64(i), keys, bottom);
            n.set_value64(i, sub);
            return new_root;
        }
        write_ref child = detail::shadow_node(inf, level, n.value64(i));
        n.set_value64(i, child.location());
        w = std::move(child);
    }
}

void check_info(const info& inf) {
    if (!inf.tm || inf.levels < 1 || inf.levels > 8)
        throw std::invalid_argument("btree info: needs a transaction manager and 1..8 levels");
}

} // namespace

block_address remove(const info& inf, block_address root, const std::uint64_t* keys, bool* removed) {
    check_info(inf);
    if (removed) *removed = false;
    block_address sub;
    std::uint64_t key = keys[inf.levels - 1];
    if (!find_bottom_root(inf, root, keys, sub) || !find_in_level(*inf.tm, sub, key, inf.vt.size, nullptr))
        return root;
    auto bottom = [&](block_address r) { return remove_bottom(inf, r, key); };
    root = modify_subtree(inf, 0, root, keys, bottom);
    if (removed) *removed = true;
    return root;
}

block_address remove_range(const info& inf, block_address root, const std::uint64_t* keys, std::uint64_t begin,
                           std::uint64_t end, std::uint64_t* nr_removed) {
    check_info(inf);
    if (nr_removed) *nr_removed = 0;
    if (begin >= end) return root;
    block_address sub;
    std::uint64_t first;
    if (!find_bottom_root(inf, root, keys, sub) || !next_key(*inf.tm, sub, begin, inf.vt.size, 0, first) ||
        first >= end)
        return root;
    std::uint64_t removed = 0;
    auto bottom = [&](block_address r) { return remove_range_bottom(inf, r, begin, end, removed); };
    root = modify_subtree(inf, 0, root, keys, bottom);
    if (nr_removed) *nr_removed = removed;
    return root;
}

} // namespace pdata::btree
