#pragma once
// An in-memory space map (exact u32 counts, no persistence): recounts in checkers, tests, and the
// metadata space map of read-only tools. commit() makes the current counts the committed state.
#include "persistent-data/space_map.h"

#include <memory>
#include <vector>

namespace pdata {

class core_space_map : public space_map {
public:
    explicit core_space_map(block_address nr_blocks);

    block_address nr_blocks() const override { return counts_.size(); }
    block_address nr_free() const override { return counts_.size() - allocated_; }
    std::uint32_t get_count(block_address b) const override;
    void set_count(block_address b, std::uint32_t count) override;
    void inc(block_address b, std::uint32_t n = 1) override;
    void dec(block_address b, std::uint32_t n = 1) override;
    std::optional<block_address> new_block() override;
    std::optional<block_address> new_block_in(block_address begin, block_address end) override;
    void extend(block_address extra) override;
    void commit() override;
    sm_root root() const override { return sm_root{nr_blocks(), allocated_, 0, 0}; }

private:
    void check(block_address b) const;
    std::vector<std::uint32_t> counts_;
    std::vector<bool> committed_used_;  // count != 0 at the last commit
    block_address allocated_ = 0;
    block_address cursor_ = 0;
};

} // namespace pdata
