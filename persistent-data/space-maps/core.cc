#include "persistent-data/space-maps/core.h"

#include <stdexcept>

namespace pdata {

core_space_map::core_space_map(block_address nr_blocks)
    : counts_(nr_blocks, 0), committed_used_(nr_blocks, false) {}

void core_space_map::check(block_address b) const {
    if (b >= counts_.size())
        throw std::out_of_range("space map: block " + std::to_string(b) + " is beyond the end (" +
                                std::to_string(counts_.size()) + " blocks)");
}

std::uint32_t core_space_map::get_count(block_address b) const {
    check(b);
    return counts_[b];
}

void core_space_map::set_count(block_address b, std::uint32_t count) {
    check(b);
    if (counts_[b] == 0 && count != 0) ++allocated_;
    if (counts_[b] != 0 && count == 0) --allocated_;
    counts_[b] = count;
}

void core_space_map::inc(block_address b, std::uint32_t n) {
    check(b);
    if (counts_[b] > UINT32_MAX - n)
        throw std::logic_error("space map: reference count of block " + std::to_string(b) + " overflows");
    set_count(b, counts_[b] + n);
}

void core_space_map::dec(block_address b, std::uint32_t n) {
    check(b);
    if (counts_[b] < n)
        throw std::logic_error("space map: reference count of block " + std::to_string(b) +
                               " would go below zero");
    set_count(b, counts_[b] - n);
}

std::optional<block_address> core_space_map::new_block_in(block_address begin, block_address end) {
    end = std::min<block_address>(end, counts_.size());
    for (block_address b = begin; b < end; ++b) {
        if (counts_[b] == 0 && !committed_used_[b]) {
            set_count(b, 1);
            return b;
        }
    }
    return std::nullopt;
}

std::optional<block_address> core_space_map::new_block() {
    auto b = new_block_in(cursor_, counts_.size());
    if (!b) b = new_block_in(0, cursor_);
    if (b) cursor_ = *b + 1;
    return b;
}

void core_space_map::extend(block_address extra) {
    counts_.resize(counts_.size() + extra, 0);
    committed_used_.resize(counts_.size(), false);
}

void core_space_map::commit() {
    for (block_address b = 0; b < counts_.size(); ++b) committed_used_[b] = counts_[b] != 0;
}

} // namespace pdata
