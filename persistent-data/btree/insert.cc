// B-tree insertion (format.md §6.5): top-down with preemptive splitting, so a node is never full
// when an entry has to be added to it. Every node on the path is shadowed (format.md §7.2).
//
// Policy for a full node on the path (leaf: only when the key is not already there):
//  - the root: its entries move into two new children and it becomes an internal node of 2;
//  - any other node: entries move into an unshared sibling with at least 8 free slots (left
//    first, then right) so the two end up even; otherwise it splits in two.
// Both keep every non-root node at least half (split) or near-half (redistribution) full.
// Inserting a key below every key lowers keys[0] of the internal nodes on the path, so a parent
// key never exceeds its child's first key.
#include "persistent-data/btree/btree.h"

#include <string>

namespace pdata::btree {

namespace {

constexpr unsigned MAX_DEPTH = 64;
constexpr unsigned MIN_FREE_FOR_REDISTRIBUTION = 8;

const validator& nv() { return btree_node_validator(); }

bool needs_room(node_ref n, std::uint64_t key) {
    return n.nr_entries() >= n.max_entries() && !(n.is_leaf() && n.find(key) >= 0);
}

void check_node(node_ref n, block_address b, std::uint32_t leaf_value_size) {
    if (n.is_internal()) {
        if (n.value_size() != 8)
            throw corrupt_block(b, "internal btree node has value_size " + std::to_string(n.value_size()));
        if (n.nr_entries() == 0) throw corrupt_block(b, "internal btree node has no entries");
    } else if (n.value_size() != leaf_value_size) {
        throw corrupt_block(b, "btree leaf has value_size " + std::to_string(n.value_size()) + ", expected " +
                                   std::to_string(leaf_value_size));
    }
}

// Moves entries [from, nr) of n `by` slots to the right (making room at the front).
void shift_right(node_mut n, unsigned by) {
    unsigned nr = n.nr_entries();
    std::memmove(n.raw() + NODE_HEADER_SIZE + 8 * by, n.raw() + NODE_HEADER_SIZE, 8 * std::size_t(nr));
    std::memmove(n.value(by), n.value(0), std::size_t(n.value_size()) * nr);
}

// Drops the first `by` entries of n.
void shift_left(node_mut n, unsigned by) {
    unsigned nr = n.nr_entries();
    std::memmove(n.raw() + NODE_HEADER_SIZE, n.raw() + NODE_HEADER_SIZE + 8 * by, 8 * std::size_t(nr - by));
    std::memmove(n.value(0), n.value(by), std::size_t(n.value_size()) * (nr - by));
    n.set_nr_entries(nr - by);
}

void insert_child(node_mut parent, unsigned i, std::uint64_t key, block_address child) {
    std::uint8_t v[8];
    store_le64(v, child);
    parent.insert_at(i, key, v);
}

// The full root becomes an internal node over two new children holding its entries.
void split_root(const info& inf, write_ref& root) {
    node_mut n(root.data());
    unsigned nr = n.nr_entries();
    unsigned nl = nr / 2;
    write_ref lw = inf.tm->new_block(nv());
    write_ref rw = inf.tm->new_block(nv());
    node_mut l(lw.data()), r(rw.data());
    l.init(n.flags(), n.value_size());
    copy_entries(l, 0, n, 0, nl);
    l.set_nr_entries(nl);
    r.init(n.flags(), n.value_size());
    copy_entries(r, 0, n, nl, nr - nl);
    r.set_nr_entries(nr - nl);

    n.init(INTERNAL_NODE, 8);
    n.set_key(0, l.key(0));
    n.set_value64(0, lw.location());
    n.set_key(1, r.key(0));
    n.set_value64(1, rw.location());
    n.set_nr_entries(2);
}

// Number of entries of the node at b, when it is unshared (otherwise it must not be touched).
bool unshared_entries(const info& inf, block_address b, node_ref like, unsigned& nr) {
    if (inf.tm->ref_count(b) != 1) return false;
    read_ref r = inf.tm->read_lock(b, nv());
    node_ref s(r.data());
    if (s.flags() != like.flags() || s.value_size() != like.value_size() || s.max_entries() != like.max_entries())
        throw corrupt_block(b, "btree node differs in kind from its sibling");
    nr = s.nr_entries();
    return true;
}

// child (entry i of parent, already shadowed) is full: make room and return the node the key
// now belongs in. parent is not full.
write_ref make_room(const info& inf, unsigned level, node_mut parent, unsigned i, write_ref child,
                    std::uint64_t key) {
    node_mut c(child.data());
    unsigned cn = c.nr_entries();
    unsigned max = c.max_entries();

    unsigned sn;
    if (i > 0 && unshared_entries(inf, parent.value64(i - 1), node_ref(c.raw()), sn) && max - sn >= MIN_FREE_FOR_REDISTRIBUTION) {
        block_address lb = parent.value64(i - 1);
        write_ref lw = detail::shadow_node(inf, level, lb);
        if (lw.location() != lb) parent.set_value64(i - 1, lw.location());
        node_mut l(lw.data());
        unsigned move = (sn + cn) / 2 - sn;
        copy_entries(l, sn, c, 0, move);
        l.set_nr_entries(sn + move);
        shift_left(c, move);
        parent.set_key(i, c.key(0));
        if (key < c.key(0)) return lw;
        return child;
    }

    if (i + 1 < parent.nr_entries() && unshared_entries(inf, parent.value64(i + 1), node_ref(c.raw()), sn) &&
        max - sn >= MIN_FREE_FOR_REDISTRIBUTION) {
        block_address rb = parent.value64(i + 1);
        write_ref rw = detail::shadow_node(inf, level, rb);
        if (rw.location() != rb) parent.set_value64(i + 1, rw.location());
        node_mut r(rw.data());
        unsigned move = (sn + cn) / 2 - sn;
        shift_right(r, move);
        copy_entries(r, 0, c, cn - move, move);
        r.set_nr_entries(sn + move);
        c.set_nr_entries(cn - move);
        parent.set_key(i + 1, r.key(0));
        if (key >= r.key(0)) return rw;
        return child;
    }

    write_ref sw = inf.tm->new_block(nv());
    node_mut s(sw.data());
    s.init(c.flags(), c.value_size());
    unsigned keep = cn / 2;
    copy_entries(s, 0, c, keep, cn - keep);
    s.set_nr_entries(cn - keep);
    c.set_nr_entries(keep);
    insert_child(parent, i + 1, s.key(0), sw.location());
    if (key >= s.key(0)) return sw;
    return child;
}

// Shadows the path to `key` in the single-level tree at `level` rooted at root (updated to the
// new root), making room on the way. Returns the leaf; index is where key is or belongs.
write_ref descend(const info& inf, unsigned level, block_address& root, std::uint64_t key, unsigned& index,
                  bool& found) {
    std::uint32_t vs = detail::level_value_size(inf, level);
    write_ref w = detail::shadow_node(inf, level, root);
    root = w.location();
    check_node(node_ref(w.data()), root, vs);
    if (needs_room(node_ref(w.data()), key)) split_root(inf, w);

    for (unsigned depth = 0;; ++depth) {
        node_mut n(w.data());
        // Appending (sequential writes) is the common case: try the last entry before searching.
        unsigned nr = n.nr_entries();
        int i = (nr && key >= n.key(nr - 1)) ? int(nr - 1) : n.lower_bound(key);
        if (n.is_leaf()) {
            found = i >= 0 && n.key(i) == key;
            index = found ? unsigned(i) : unsigned(i + 1);
            return w;
        }
        if (depth >= MAX_DEPTH)
            throw corrupt_block(w.location(), "btree is deeper than " + std::to_string(MAX_DEPTH) + " nodes");
        if (i < 0) {
            i = 0;
            n.set_key(0, key);
        }
        block_address c = n.value64(i);
        write_ref cw = detail::shadow_node(inf, level, c);
        if (cw.location() != c) n.set_value64(i, cw.location());
        check_node(node_ref(cw.data()), cw.location(), vs);
        if (needs_room(node_ref(cw.data()), key)) cw = make_room(inf, level, n, unsigned(i), std::move(cw), key);
        w = std::move(cw);
    }
}

bool values_equal(const value_type& vt, const std::uint8_t* a, const std::uint8_t* b) {
    if (vt.equal) return vt.equal(a, b);
    return std::memcmp(a, b, vt.size) == 0;
}

} // namespace

block_address insert(const info& inf, block_address root, const std::uint64_t* keys, const std::uint8_t* value,
                     bool* inserted) {
    block_address new_root = root;
    write_ref upper;        // the previous level's leaf, holding the current subtree's root
    unsigned upper_index = 0;
    block_address sub = root;

    for (unsigned level = 0; level < inf.levels; ++level) {
        block_address r = sub;
        unsigned index;
        bool found;
        write_ref leaf = descend(inf, level, r, keys[level], index, found);
        if (level == 0)
            new_root = r;
        else if (r != sub)
            node_mut(upper.data()).set_value64(upper_index, r);  // the shadow moved the reference

        node_mut n(leaf.data());
        if (level + 1 < inf.levels) {
            if (found) {
                sub = n.value64(index);
            } else {
                write_ref e = inf.tm->new_block(nv());
                node_mut(e.data()).init(LEAF_NODE, detail::level_value_size(inf, level + 1));
                sub = e.location();
                std::uint8_t v[8];
                store_le64(v, sub);
                n.insert_at(index, keys[level], v);
            }
            upper = std::move(leaf);
            upper_index = index;
            continue;
        }

        if (found) {
            std::uint8_t* old = n.value(index);
            if (!values_equal(inf.vt, old, value) && inf.vt.dec) inf.vt.dec(old, 1);
            n.set_value(index, value);
        } else {
            n.insert_at(index, keys[level], value);
        }
        if (inserted) *inserted = !found;
    }
    return new_root;
}

} // namespace pdata::btree
