#pragma once
// The space-map half of a check (format.md §4, §7.1, §10): the references a space map's own
// structures make (index block or index tree, bitmaps, overflow tree), and the comparison of the
// counts its bitmaps and overflow tree hold with the recounted ones. Bitmaps are streamed in
// batches; nothing but the differences is kept.
#include "thin/check/counts.h"
#include "thin/check/report.h"

#include "persistent-data/block_manager.h"
#include "persistent-data/space_map.h"

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace thin::check {

// Blocks [begin, end) whose stored count differs from the recount in the same way.
struct count_difference {
    block_address begin = 0;
    block_address end = 0;
    std::uint32_t expected = 0;  // recounted
    std::uint32_t actual = 0;    // stored in the space map
    // A leak in the reference's sense: stored 1 where nothing refers to the block (non-fatal).
    bool leak() const { return expected == 0 && actual == 1; }
    // What --auto-repair fixes: a stored count where nothing refers to the block.
    bool repairable() const { return expected == 0 && actual > 0; }
    bool operator==(const count_difference&) const = default;
};

class difference_list {
public:
    void add(block_address b, std::uint32_t expected, std::uint32_t actual);
    const std::vector<count_difference>& ranges() const { return ranges_; }
    std::uint64_t nr_blocks() const { return nr_blocks_; }
    bool empty() const { return ranges_.empty(); }

private:
    std::vector<count_difference> ranges_;
    std::uint64_t nr_blocks_ = 0;
};

struct space_map_layout {
    bool usable = false;                 // the bitmaps could be located
    std::vector<block_address> bitmaps;  // by bitmap index; NO_BLOCK where the index has no entry
    std::unordered_map<std::uint64_t, std::uint32_t> overflow;  // counts >= 3
};

// Locates the bitmaps and overflow counts of a space map, adding the metadata references its
// structures make to md. Problems are reported to rep (fatal).
space_map_layout walk_metadata_space_map(pdata::block_manager& bm, const pdata::sm_root& root,
                                         metadata_refs& md, reporter& rep);
space_map_layout walk_data_space_map(pdata::block_manager& bm, const pdata::sm_root& root,
                                     metadata_refs& md, reporter& rep);

// Compares every stored count with the recount; unreadable bitmaps are reported to rep.
void compare_metadata_counts(pdata::block_manager& bm, const space_map_layout& layout, std::uint64_t nr_blocks,
                             const metadata_refs& expected, difference_list& out, reporter& rep);
void compare_data_counts(pdata::block_manager& bm, const space_map_layout& layout, std::uint64_t nr_blocks,
                         const data_counts& expected, difference_list& out, reporter& rep);

} // namespace thin::check
