// Bottom-up b-tree construction. Each level keeps at most two nodes: the one being filled (`cur`)
// and the last closed one (`prev`), built in memory or an existing leaf taken by reference.
// `prev` is handed to the level above (written to a new block, or referenced) only when the node
// after it closes, so a node that would close under 1/3 full can still borrow from its left
// neighbour, or merge into it. Blocks are allocated as nodes are passed up, so nothing is ever
// allocated and then dropped, and every node written is final. Memory is two blocks per level.
//
// The invariant that makes the borrowing work: a `prev` built here holds at least max/3 entries
// (a shared leaf is refused below that), so prev + an under-full cur either fit in one node or
// split into two halves above max/3 each.
#include "persistent-data/btree/builder.h"

#include <cstring>
#include <stdexcept>

namespace pdata::btree {

struct builder::level {
    enum class slot { none, own, shared };
    std::uint32_t flags;
    std::uint32_t value_size;
    std::uint32_t max_entries;
    slot prev = slot::none;
    aligned_block prev_node = make_aligned_block(true);  // when prev == own
    block_address shared = 0;                            // when prev == shared
    std::uint64_t shared_first = 0;                      // its first key
    bool has_cur = false;
    aligned_block cur_node = make_aligned_block(true);   // never empty once has_cur

    unsigned min_entries() const { return max_entries / 3; }
    unsigned cur_entries() const { return node_ref(cur_node.get()).nr_entries(); }
    void start(aligned_block& node) const {
        std::memset(node.get(), 0, MD_BLOCK_SIZE);
        node_mut(node.get()).init(flags, value_size);
    }
};

builder::builder(transaction_manager& tm, std::uint32_t value_size, copy_refs_fn copy_refs, leaf_fn on_leaf)
    : tm_(tm), value_size_(value_size), copy_refs_(std::move(copy_refs)), on_leaf_(std::move(on_leaf)) {
    if (max_entries_for(value_size) < 3)
        throw std::invalid_argument("btree builder: value size " + std::to_string(value_size) + " is too large");
}

builder::~builder() = default;

builder::level& builder::get_level(unsigned lvl) {
    if (lvl == levels_.size()) {
        auto l = std::make_unique<level>();
        l->flags = lvl == 0 ? LEAF_NODE : INTERNAL_NODE;
        l->value_size = lvl == 0 ? value_size_ : 8;
        l->max_entries = max_entries_for(l->value_size);
        levels_.push_back(std::move(l));
    }
    return *levels_[lvl];  // stable: levels are heap-allocated, add(lvl + 1) may grow levels_
}

void builder::push_back(std::uint64_t key, const std::uint8_t* value) {
    if (finished_) throw std::logic_error("btree builder: push_back after finish");
    if (count_ && key <= last_key_)
        throw std::invalid_argument("btree builder: key " + std::to_string(key) +
                                    " is not greater than the previous key " + std::to_string(last_key_));
    add(0, key, value);
    last_key_ = key;
    ++count_;
}

void builder::add(unsigned lvl, std::uint64_t key, const std::uint8_t* value) {
    level& l = get_level(lvl);
    if (l.has_cur && l.cur_entries() == l.max_entries) close_cur(lvl);
    if (!l.has_cur) {
        l.start(l.cur_node);
        l.has_cur = true;
    }
    node_mut n(l.cur_node.get());
    unsigned i = n.nr_entries();
    n.set_key(i, key);
    n.set_value(i, value);
    n.set_nr_entries(i + 1);
}

void builder::push_leaf(block_address leaf) {
    if (finished_) throw std::logic_error("btree builder: push_leaf after finish");
    read_ref r = tm_.read_lock(leaf, btree_node_validator());
    node_ref n(r.data());
    level& l = get_level(0);
    auto refuse = [&](const std::string& why) {
        throw std::invalid_argument("btree builder: block " + std::to_string(leaf) + " " + why);
    };
    if (!n.is_leaf() || n.value_size() != value_size_)
        refuse("is not a leaf of " + std::to_string(value_size_) + "-byte values");
    const unsigned nr = n.nr_entries();
    if (nr < l.min_entries() || nr > l.max_entries)
        refuse("holds " + std::to_string(nr) + " entries, not " + std::to_string(l.min_entries()) + ".." +
               std::to_string(l.max_entries));
    if (count_ && n.key(0) <= last_key_)
        refuse("starts at key " + std::to_string(n.key(0)) + ", not above the previous key " +
               std::to_string(last_key_));

    if (l.has_cur && l.cur_entries() < l.min_entries()) {
        if (l.prev == level::slot::none) {
            // The tree's first node is too small to close before the leaf, and there is nothing
            // on its left to borrow from: the leaf's entries join it instead.
            for (unsigned i = 0; i < nr; ++i) add(0, n.key(i), n.value(i));
            if (copy_refs_) copy_refs_(n.value(0), nr);
            last_key_ = n.key(nr - 1);
            count_ += nr;
            return;
        }
        fix_underfull(l);
    }
    if (l.has_cur) close_cur(0);
    if (l.prev != level::slot::none) pass_up_prev(0);
    l.prev = level::slot::shared;
    l.shared = leaf;
    l.shared_first = n.key(0);
    last_key_ = n.key(nr - 1);
    count_ += nr;
}

// cur becomes prev; the old prev goes up.
void builder::close_cur(unsigned lvl) {
    level& l = *levels_[lvl];
    if (l.prev != level::slot::none) pass_up_prev(lvl);
    std::swap(l.prev_node, l.cur_node);
    l.prev = level::slot::own;
    l.has_cur = false;
}

block_address builder::write_node(unsigned lvl, const std::uint8_t* node) {
    write_ref w = tm_.new_block(btree_node_validator());
    std::memcpy(w.data(), node, MD_BLOCK_SIZE);
    if (lvl == 0 && on_leaf_) on_leaf_(w.location(), node_ref(w.data()));
    return w.location();
}

// prev as a block of the tree, and its first key: a node built here is written out, a shared
// leaf gains the reference.
block_address builder::take_prev(unsigned lvl, std::uint64_t& first) {
    level& l = *levels_[lvl];
    const bool own = l.prev == level::slot::own;
    l.prev = level::slot::none;
    if (own) {
        first = node_ref(l.prev_node.get()).key(0);
        return write_node(lvl, l.prev_node.get());
    }
    first = l.shared_first;
    tm_.inc(l.shared);
    return l.shared;
}

// Adds (first key, block) to the level above lvl.
void builder::link(unsigned lvl, std::uint64_t first, block_address b) {
    std::uint8_t v[8];
    store_le64(v, b);
    add(lvl + 1, first, v);
}

void builder::pass_up_prev(unsigned lvl) {
    std::uint64_t first;
    block_address b = take_prev(lvl, first);
    link(lvl, first, b);
}

void builder::pass_up_cur(unsigned lvl) {
    level& l = *levels_[lvl];
    std::uint64_t first = node_ref(l.cur_node.get()).key(0);
    block_address b = write_node(lvl, l.cur_node.get());
    l.has_cur = false;
    link(lvl, first, b);
}

// A shared prev becomes a copy built here (its values gain references through copy_refs).
void builder::unshare_prev(level& l) {
    read_ref r = tm_.read_lock(l.shared, btree_node_validator());
    node_ref s(r.data());
    l.start(l.prev_node);
    node_mut p(l.prev_node.get());
    copy_entries(p, 0, s, 0, s.nr_entries());
    p.set_nr_entries(s.nr_entries());
    if (copy_refs_) copy_refs_(s.value(0), s.nr_entries());
    l.prev = level::slot::own;
}

// cur is under 1/3 full and has a left neighbour: merge the two when they fit in one node (cur is
// gone), otherwise move entries from the tail of prev to the head of cur so both end up with half.
void builder::fix_underfull(level& l) {
    if (l.prev == level::slot::shared) unshare_prev(l);
    node_mut p(l.prev_node.get());
    node_mut c(l.cur_node.get());
    unsigned pn = p.nr_entries(), cn = c.nr_entries();
    if (pn + cn <= l.max_entries) {
        copy_entries(p, pn, c, 0, cn);
        p.set_nr_entries(pn + cn);
        l.has_cur = false;
        return;
    }
    unsigned move = (pn + cn) / 2 - cn;
    copy_entries(c, move, c, 0, cn);
    copy_entries(c, 0, p, pn - move, move);
    c.set_nr_entries(cn + move);
    p.set_nr_entries(pn - move);
    // Clear the vacated slots so the output does not depend on history.
    std::memset(p.raw() + NODE_HEADER_SIZE + 8 * std::size_t(pn - move), 0, 8 * std::size_t(move));
    std::memset(p.value(pn - move), 0, std::size_t(l.value_size) * move);
}

block_address builder::finish() {
    if (finished_) throw std::logic_error("btree builder: finish called twice");
    finished_ = true;
    if (levels_.empty()) {
        write_ref w = tm_.new_block(btree_node_validator());
        node_mut(w.data()).init(LEAF_NODE, value_size_);
        return w.location();
    }
    for (unsigned lvl = 0;; ++lvl) {
        level& l = *levels_[lvl];
        if (l.has_cur && l.prev != level::slot::none && l.cur_entries() < l.min_entries()) fix_underfull(l);
        bool top = lvl + 1 == levels_.size();
        bool two = l.has_cur && l.prev != level::slot::none;
        if (top && !two) {
            // One node left at the top: the root.
            std::uint64_t first;
            block_address root = l.has_cur ? write_node(lvl, l.cur_node.get()) : take_prev(lvl, first);
            levels_.clear();
            return root;
        }
        if (l.prev != level::slot::none) pass_up_prev(lvl);
        if (l.has_cur) pass_up_cur(lvl);
    }
}

} // namespace pdata::btree
