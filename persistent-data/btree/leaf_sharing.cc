#include "persistent-data/btree/leaf_sharing.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace pdata::btree {

leaf_catalog::leaf_catalog(std::uint32_t value_size)
    : value_size_(value_size), min_entries_(max_entries_for(value_size) / 3) {}

// FNV-1a: values are short, and a collision only costs reading a leaf that then does not match.
std::uint64_t leaf_catalog::digest(const std::uint8_t* value) const {
    std::uint64_t h = 14695981039346656037ull;
    for (std::uint32_t i = 0; i < value_size_; ++i) h = (h ^ value[i]) * 1099511628211ull;
    return h;
}

void leaf_catalog::add(block_address b, node_ref n) {
    if (n.nr_entries() >= min_entries_) pending_.push_back({n.key(0), digest(n.value(0)), b});
}

void leaf_catalog::seal() {
    if (pending_.empty()) return;
    // A tree's leaves come in key order: one merge keeps the catalog sorted, earlier trees first
    // among equal keys.
    std::size_t mid = sorted_.size();
    sorted_.insert(sorted_.end(), pending_.begin(), pending_.end());
    pending_.clear();
    pending_.shrink_to_fit();
    std::inplace_merge(sorted_.begin(), sorted_.begin() + mid, sorted_.end(),
                       [](const leaf& a, const leaf& b) { return a.first_key < b.first_key; });
}

sharing_builder::sharing_builder(transaction_manager& tm, std::uint32_t value_size, leaf_catalog& catalog,
                                 refs_fn take_refs)
    : tm_(tm), value_size_(value_size), catalog_(catalog), take_refs_(std::move(take_refs)),
      b_(tm, value_size, take_refs_, [this](block_address b, node_ref n) { catalog_.add(b, n); }) {
    catalog_.seal();
}

void sharing_builder::push_back(std::uint64_t key, const std::uint8_t* value) {
    if (finished_) throw std::logic_error("sharing builder: push_back after finish");
    if (matched_) {
        node_ref c(cand_node_.get());
        bool same = key == c.key(matched_) && std::memcmp(value, c.value(matched_), value_size_) == 0;
        if (same || try_switch(key, value)) {
            if (++matched_ == node_ref(cand_node_.get()).nr_entries()) {
                b_.push_leaf(catalog_.leaves()[cand_].block);
                matched_ = 0;
                ++shared_;
            }
            return;
        }
        give_up();
    }
    if (try_start(key, value)) return;
    b_.push_back(key, value);
    take_refs_(value, 1);
}

void sharing_builder::load(std::size_t i) {
    read_ref r = tm_.read_lock(catalog_.leaves()[i].block, btree_node_validator());
    std::memcpy(cand_node_.get(), r.data(), MD_BLOCK_SIZE);
    cand_ = i;
}

// Starts comparing with a catalogued leaf that begins with (key, value), if there is one.
bool sharing_builder::try_start(std::uint64_t key, const std::uint8_t* value) {
    const auto& leaves = catalog_.leaves();
    while (cursor_ < leaves.size() && leaves[cursor_].first_key < key) ++cursor_;
    if (cursor_ == leaves.size() || leaves[cursor_].first_key != key) return false;
    const std::uint64_t d = catalog_.digest(value);
    for (std::size_t i = cursor_; i < leaves.size() && leaves[i].first_key == key; ++i) {
        if (leaves[i].first_value != d) continue;
        load(i);
        if (std::memcmp(node_ref(cand_node_.get()).value(0), value, value_size_) != 0) continue;
        matched_ = 1;
        return true;
    }
    return false;
}

// The leaf being compared with differs at entry matched_: another leaf with the same first
// matched_ entries (several devices may have rewritten different parts of one leaf) may go on
// with (key, value).
bool sharing_builder::try_switch(std::uint64_t key, const std::uint8_t* value) {
    const auto& leaves = catalog_.leaves();
    const std::size_t was_i = cand_;
    const leaf_catalog::leaf was = leaves[was_i];
    aligned_block seen;  // the leaf compared so far, kept once another is loaded over it
    for (std::size_t i = was_i + 1; i < leaves.size() && leaves[i].first_key == was.first_key; ++i) {
        if (leaves[i].first_value != was.first_value) continue;
        if (!seen) {
            seen = make_aligned_block(false);
            std::memcpy(seen.get(), cand_node_.get(), MD_BLOCK_SIZE);
        }
        load(i);
        node_ref c(cand_node_.get()), s(seen.get());
        if (c.nr_entries() <= matched_ || c.key(matched_) != key ||
            std::memcmp(c.value(matched_), value, value_size_) != 0)
            continue;
        bool prefix = std::memcmp(c.raw() + NODE_HEADER_SIZE, s.raw() + NODE_HEADER_SIZE, 8 * std::size_t(matched_)) == 0 &&
                      std::memcmp(c.value(0), s.value(0), std::size_t(value_size_) * matched_) == 0;
        if (prefix) return true;
    }
    if (seen) {  // give_up replays what was seen
        std::memcpy(cand_node_.get(), seen.get(), MD_BLOCK_SIZE);
        cand_ = was_i;
    }
    return false;
}

// The entries held back go in as ordinary ones.
void sharing_builder::give_up() {
    node_ref c(cand_node_.get());
    for (unsigned i = 0; i < matched_; ++i) b_.push_back(c.key(i), c.value(i));
    take_refs_(c.value(0), matched_);
    matched_ = 0;
}

block_address sharing_builder::finish() {
    if (finished_) throw std::logic_error("sharing builder: finish called twice");
    finished_ = true;
    if (matched_) give_up();
    block_address root = b_.finish();
    catalog_.seal();
    return root;
}

} // namespace pdata::btree
