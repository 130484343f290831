// Read-only b-tree operations: empty_tree, lookup, lookup_next, lookup_last, iterate
// (format.md §6.3). Every node is read through the node validator; a node whose kind or value
// size does not fit its position is reported as corrupt rather than misread.
#include "persistent-data/btree/btree.h"

#include <string>

namespace pdata::btree {

namespace {

// A well-formed tree is at most a handful of nodes deep; anything deeper is a cycle or garbage.
constexpr unsigned MAX_DEPTH = 64;

const validator& nv() { return btree_node_validator(); }

void check_node(node_ref n, block_address b, std::uint32_t leaf_value_size, unsigned depth) {
    if (depth > MAX_DEPTH) throw corrupt_block(b, "btree is deeper than " + std::to_string(MAX_DEPTH) + " nodes");
    if (n.is_internal()) {
        if (n.value_size() != 8)
            throw corrupt_block(b, "internal btree node has value_size " + std::to_string(n.value_size()));
        if (n.nr_entries() == 0) throw corrupt_block(b, "internal btree node has no entries");
    } else if (n.value_size() != leaf_value_size) {
        throw corrupt_block(b, "btree leaf has value_size " + std::to_string(n.value_size()) + ", expected " +
                                   std::to_string(leaf_value_size));
    }
}

// Exact lookup of key in the single-level tree at root whose leaves hold vs-byte values.
// Copies the value to out (may be nullptr).
bool lookup_one(transaction_manager& tm, block_address root, std::uint64_t key, std::uint32_t vs,
                std::uint8_t* out) {
    block_address b = root;
    for (unsigned depth = 0;; ++depth) {
        read_ref r = tm.read_lock(b, nv());
        node_ref n(r.data());
        check_node(n, b, vs, depth);
        int i = n.lower_bound(key);
        if (i < 0) return false;
        if (n.is_internal()) {
            b = n.value64(i);
            continue;
        }
        if (n.key(i) != key) return false;
        if (out) std::memcpy(out, n.value(i), vs);
        return true;
    }
}

// Follows keys[0 .. levels-2] down to the root of the bottom-level tree.
bool find_bottom_root(const info& inf, block_address root, const std::uint64_t* keys, block_address& out) {
    block_address b = root;
    for (unsigned level = 0; level + 1 < inf.levels; ++level) {
        std::uint8_t buf[8];
        if (!lookup_one(*inf.tm, b, keys[level], 8, buf)) return false;
        b = load_le64(buf);
    }
    out = b;
    return true;
}

// First entry with key >= k in the subtree at b.
bool next_in(transaction_manager& tm, block_address b, std::uint64_t k, std::uint32_t vs, unsigned depth,
             std::uint64_t* key_out, std::uint8_t* value_out) {
    read_ref r = tm.read_lock(b, nv());
    node_ref n(r.data());
    check_node(n, b, vs, depth);
    int i = n.lower_bound(k);
    if (n.is_leaf()) {
        unsigned j = (i >= 0 && n.key(i) == k) ? unsigned(i) : unsigned(i + 1);
        if (j >= n.nr_entries()) return false;
        if (key_out) *key_out = n.key(j);
        if (value_out) std::memcpy(value_out, n.value(j), vs);
        return true;
    }
    for (unsigned j = i < 0 ? 0 : unsigned(i); j < n.nr_entries(); ++j)
        if (next_in(tm, n.value64(j), k, vs, depth + 1, key_out, value_out)) return true;
    return false;
}

// Highest entry in the subtree at b.
bool last_in(transaction_manager& tm, block_address b, std::uint32_t vs, unsigned depth, std::uint64_t* key_out,
             std::uint8_t* value_out) {
    read_ref r = tm.read_lock(b, nv());
    node_ref n(r.data());
    check_node(n, b, vs, depth);
    unsigned nr = n.nr_entries();
    if (n.is_leaf()) {
        if (nr == 0) return false;
        if (key_out) *key_out = n.key(nr - 1);
        if (value_out) std::memcpy(value_out, n.value(nr - 1), vs);
        return true;
    }
    for (unsigned j = nr; j-- > 0;)
        if (last_in(tm, n.value64(j), vs, depth + 1, key_out, value_out)) return true;
    return false;
}

// In-order visit of the subtree at b; false when fn asked to stop.
bool iterate_in(transaction_manager& tm, block_address b, std::uint32_t vs, unsigned depth, const entry_fn& fn) {
    read_ref r = tm.read_lock(b, nv());
    node_ref n(r.data());
    check_node(n, b, vs, depth);
    unsigned nr = n.nr_entries();
    if (n.is_leaf()) {
        for (unsigned j = 0; j < nr; ++j)
            if (!fn(n.key(j), n.value(j))) return false;
        return true;
    }
    for (unsigned j = 0; j < nr; ++j)
        if (!iterate_in(tm, n.value64(j), vs, depth + 1, fn)) return false;
    return true;
}

// lookup_one over cached blocks only.
lookup_status try_lookup_one(transaction_manager& tm, block_address root, std::uint64_t key, std::uint32_t vs,
                             std::uint8_t* out) {
    block_address b = root;
    for (unsigned depth = 0;; ++depth) {
        read_ref r = tm.bm().try_read_lock(b, nv());
        if (!r) return lookup_status::would_block;
        node_ref n(r.data());
        check_node(n, b, vs, depth);
        int i = n.lower_bound(key);
        if (i < 0) return lookup_status::not_found;
        if (n.is_internal()) {
            b = n.value64(i);
            continue;
        }
        if (n.key(i) != key) return lookup_status::not_found;
        if (out) std::memcpy(out, n.value(i), vs);
        return lookup_status::found;
    }
}

} // namespace

lookup_status try_lookup(const info& inf, block_address root, const std::uint64_t* keys,
                         std::uint8_t* value_out) noexcept {
    try {
        block_address b = root;
        for (unsigned level = 0; level + 1 < inf.levels; ++level) {
            std::uint8_t buf[8];
            lookup_status s = try_lookup_one(*inf.tm, b, keys[level], 8, buf);
            if (s != lookup_status::found) return s;
            b = load_le64(buf);
        }
        return try_lookup_one(*inf.tm, b, keys[inf.levels - 1], inf.vt.size, value_out);
    } catch (...) {
        // Damage: let the blocking lookup find and report it.
        return lookup_status::would_block;
    }
}

block_address empty_tree(const info& inf) {
    write_ref w = inf.tm->new_block(btree_node_validator());
    node_mut n(w.data());
    n.init(LEAF_NODE, detail::level_value_size(inf, 0));
    return w.location();
}

bool lookup(const info& inf, block_address root, const std::uint64_t* keys, std::uint8_t* value_out) {
    block_address b;
    if (!find_bottom_root(inf, root, keys, b)) return false;
    return lookup_one(*inf.tm, b, keys[inf.levels - 1], inf.vt.size, value_out);
}

bool lookup_next(const info& inf, block_address root, const std::uint64_t* keys, std::uint64_t* key_out,
                 std::uint8_t* value_out) {
    block_address b;
    if (!find_bottom_root(inf, root, keys, b)) return false;
    return next_in(*inf.tm, b, keys[inf.levels - 1], inf.vt.size, 0, key_out, value_out);
}

bool lookup_last(const info& inf, block_address root, const std::uint64_t* keys, std::uint64_t* key_out,
                 std::uint8_t* value_out) {
    block_address b;
    if (!find_bottom_root(inf, root, keys, b)) return false;
    return last_in(*inf.tm, b, inf.vt.size, 0, key_out, value_out);
}

void iterate(const info& inf, block_address root, const std::uint64_t* keys, const entry_fn& fn) {
    block_address b;
    if (!find_bottom_root(inf, root, keys, b)) return;
    iterate_in(*inf.tm, b, inf.vt.size, 0, fn);
}

} // namespace pdata::btree
