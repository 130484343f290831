#include "persistent-data/btree/leaf_sharing.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace pdata::btree {

leaf_catalog::leaf_catalog(std::uint32_t value_size) : min_entries_(max_entries_for(value_size) / 3) {}

void leaf_catalog::add(block_address b, node_ref n) {
    if (n.nr_entries() >= min_entries_) pending_.push_back({n.key(0), b});
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
        node_ref c(cand_.get());
        if (key == c.key(matched_) && std::memcmp(value, c.value(matched_), value_size_) == 0) {
            if (++matched_ == c.nr_entries()) {
                b_.push_leaf(cand_block_);
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

// Starts comparing with a catalogued leaf that begins with (key, value), if there is one.
bool sharing_builder::try_start(std::uint64_t key, const std::uint8_t* value) {
    const auto& leaves = catalog_.leaves();
    while (cursor_ < leaves.size() && leaves[cursor_].first_key < key) ++cursor_;
    for (std::size_t i = cursor_; i < leaves.size() && leaves[i].first_key == key; ++i) {
        read_ref r = tm_.read_lock(leaves[i].block, btree_node_validator());
        node_ref n(r.data());
        if (std::memcmp(n.value(0), value, value_size_) != 0) continue;
        std::memcpy(cand_.get(), r.data(), MD_BLOCK_SIZE);
        cand_block_ = leaves[i].block;
        matched_ = 1;
        return true;
    }
    return false;
}

// The entries held back go in as ordinary ones.
void sharing_builder::give_up() {
    node_ref c(cand_.get());
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
