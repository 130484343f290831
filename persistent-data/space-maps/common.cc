#include "persistent-data/space-maps/common.h"
#include "persistent-data/space-maps/tree_io.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace pdata::sm {

void load_bitmaps(block_manager& bm, ref_counts& counts, const std::vector<block_address>& locations) {
    constexpr std::size_t BATCH = 256;
    for (std::size_t first = 0; first < locations.size(); first += BATCH) {
        std::size_t last = std::min(locations.size(), first + BATCH);
        bm.prefetch(std::span<const block_address>(locations.data() + first, last - first));
        for (std::size_t i = first; i < last; ++i) {
            read_ref r = bm.read_lock(locations[i], bitmap_validator());
            std::memcpy(counts.words_for_load(unsigned(i)), r.data() + BITMAP_HEADER_SIZE,
                        8 * WORDS_PER_BITMAP);
            counts.bitmap(unsigned(i)).location = locations[i];
        }
    }
    counts.finish_load();
}

void load_overflow(block_manager& bm, ref_counts& counts, block_address root,
                   std::vector<block_address>* nodes) {
    read_tree(
        bm, root, OVERFLOW_VALUE_SIZE,
        [&](std::uint64_t b, const std::uint8_t* v) {
            std::uint32_t c = load_le32(v);
            if (b < counts.nr_blocks() && counts.raw_entry(b) == 3) {
                if (c < 3)
                    throw corrupt_block(root, "overflow count of block " + std::to_string(b) + " is " +
                                                  std::to_string(c) + " (below 3)");
                counts.load_overflow_count(b, c);
            } else {
                counts.add_stray_overflow(b);  // not needed: dropped at the next commit
            }
        },
        nodes);
    counts.for_each_entry_three([&](block_address b) {
        if (counts.overflow_count(b) < 3)
            throw corrupt_block(root, "block " + std::to_string(b) +
                                          " has bitmap entry 3 but no count in the overflow tree");
    });
}

void fill_bitmap_block(std::uint8_t* block, const ref_counts& counts, unsigned i) {
    std::memcpy(block + BITMAP_HEADER_SIZE, counts.words(i), 8 * WORDS_PER_BITMAP);
}

} // namespace pdata::sm
