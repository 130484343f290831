#pragma once
// What the disk and metadata space maps share: the space_map interface over ref_counts, and the
// loading of bitmaps and overflow counts at open.
#include "persistent-data/block_manager.h"
#include "persistent-data/space-maps/ref_counts.h"
#include "persistent-data/space_map.h"

#include <vector>

namespace pdata::sm {

class counted_space_map : public space_map {
public:
    explicit counted_space_map(block_address nr_blocks) : counts_(nr_blocks) {}

    block_address nr_blocks() const override { return counts_.nr_blocks(); }
    block_address nr_free() const override { return counts_.nr_blocks() - counts_.nr_allocated(); }
    std::uint32_t get_count(block_address b) const override { return counts_.get(b); }
    void set_count(block_address b, std::uint32_t count) override { counts_.set(b, count); }
    void inc(block_address b, std::uint32_t n = 1) override { counts_.inc(b, n); }
    void dec(block_address b, std::uint32_t n = 1) override { counts_.dec(b, n); }
    void inc_range(block_address begin, block_address end) override { counts_.inc_range(begin, end); }
    void dec_range(block_address begin, block_address end) override { counts_.dec_range(begin, end); }
    std::optional<block_address> new_block() override { return counts_.allocate(); }
    std::optional<block_address> new_block_in(block_address begin, block_address end) override {
        return counts_.allocate_in(begin, end);
    }

protected:
    ref_counts counts_;
};

// Reads bitmap i from locations[i] into counts (whose nr_blocks is already right), records the
// locations, and recomputes the per-bitmap and total counts (ref_counts::finish_load).
void load_bitmaps(block_manager& bm, ref_counts& counts, const std::vector<block_address>& locations);

// Reads the overflow tree at root into counts (after load_bitmaps): entries whose bitmap entry is
// 3 become the overflow counts; stray entries (entry not 3, or beyond the end) are scheduled for
// removal. Throws corrupt_block when a bitmap entry of 3 has no count >= 3 in the tree. nodes
// (optional) receives the tree's nodes.
void load_overflow(block_manager& bm, ref_counts& counts, block_address root,
                   std::vector<block_address>* nodes = nullptr);

// Fills a zeroed bitmap block with the words of bitmap i (the validator stamps the header).
void fill_bitmap_block(std::uint8_t* block, const ref_counts& counts, unsigned i);

} // namespace pdata::sm
