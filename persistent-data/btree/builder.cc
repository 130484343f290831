// Bottom-up b-tree construction. Each level keeps at most two nodes write-locked: the one being
// filled (`cur`) and the last full one (`prev`). `prev` is handed to the level above only when
// `cur` fills in turn, so at finish() the last two nodes of every level are still at hand and an
// under-full last node can borrow from its neighbour. Everything else has been released to the
// block manager, which writes it back as the cache needs room: memory is two blocks per level.
#include "persistent-data/btree/builder.h"

#include <cstring>
#include <stdexcept>

namespace pdata::btree {

struct builder::level {
    std::uint32_t flags;
    std::uint32_t value_size;
    std::uint32_t max_entries;
    write_ref prev;  // full, not yet passed up
    write_ref cur;   // being filled; never empty once it exists
};

builder::builder(transaction_manager& tm, std::uint32_t value_size) : tm_(tm), value_size_(value_size) {
    if (max_entries_for(value_size) < 3)
        throw std::invalid_argument("btree builder: value size " + std::to_string(value_size) + " is too large");
}

builder::~builder() = default;

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
    if (lvl == levels_.size()) {
        auto l = std::make_unique<level>();
        l->flags = lvl == 0 ? LEAF_NODE : INTERNAL_NODE;
        l->value_size = lvl == 0 ? value_size_ : 8;
        l->max_entries = max_entries_for(l->value_size);
        levels_.push_back(std::move(l));
    }
    level& l = *levels_[lvl];  // stable: levels are heap-allocated, add(lvl + 1) may grow levels_
    if (l.cur && node_ref(l.cur.data()).nr_entries() == l.max_entries) {
        if (l.prev) pass_up(lvl, l.prev);
        l.prev = std::move(l.cur);
    }
    if (!l.cur) {
        l.cur = tm_.new_block(btree_node_validator());
        node_mut(l.cur.data()).init(l.flags, l.value_size);
    }
    node_mut n(l.cur.data());
    unsigned i = n.nr_entries();
    n.set_key(i, key);
    n.set_value(i, value);
    n.set_nr_entries(i + 1);
}

// Adds (first key, block) of a finished node to the level above and lets the node go.
void builder::pass_up(unsigned lvl, write_ref& node) {
    std::uint64_t first = node_ref(node.data()).key(0);
    std::uint8_t v[8];
    store_le64(v, node.location());
    node.release();
    add(lvl + 1, first, v);
}

// Moves entries from the tail of prev to the head of cur so that both end up at least 1/3 full
// (an even split of the two: prev is full, so both get more than max / 2).
void builder::rebalance(level& l) {
    node_mut p(l.prev.data());
    node_mut c(l.cur.data());
    unsigned pn = p.nr_entries(), cn = c.nr_entries();
    if (cn >= l.max_entries / 3) return;
    unsigned total = pn + cn;
    unsigned move = total / 2 - cn;
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
        bool top = lvl + 1 == levels_.size();
        if (top && !l.prev) {
            block_address root = l.cur.location();
            levels_.clear();
            return root;
        }
        if (l.prev) {
            rebalance(l);
            pass_up(lvl, l.prev);
        }
        pass_up(lvl, l.cur);
    }
}

} // namespace pdata::btree
