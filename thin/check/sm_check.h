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
#include <memory>
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

// The counts a space map's overflow tree holds (format.md §4.3), kept compactly: a pool with a held
// snapshot can have most of its blocks at count 3, so a node-based hash table per entry would cost
// ~30 bytes a block. Instead each region of ENTRIES_PER_BITMAP blocks that has any entry gets a
// nibble per block (0: no entry, 1..14: count 2+v, 15: see below), allocated on first use. Counts
// of 17 and more live in a small hash table until a region has many of them; then the region gets a
// byte per block as well (count - 17, 255: in the hash table). Counts below 3 (corrupt, but
// possible) and keys beyond the map go to the hash table too.
class overflow_counts {
public:
    static constexpr std::uint64_t REGION = 16320;  // pdata::ENTRIES_PER_BITMAP

    explicit overflow_counts(std::uint64_t nr_blocks = 0);

    void set(std::uint64_t b, std::uint32_t count);
    // False when the tree has no entry for b.
    bool find(std::uint64_t b, std::uint32_t& count) const {
        if (b < nr_blocks_) {
            std::uint64_t r = b / REGION;
            if (r >= regions_.size() || !regions_[r].nibbles) return false;
            const region& reg = regions_[r];
            std::uint64_t i = b % REGION;
            unsigned v = (reg.nibbles[i >> 1] >> (unsigned(i & 1) << 2)) & 0xf;
            if (v == 0) return false;
            if (v != ESCAPED) {
                count = v + 2;
                return true;
            }
            if (reg.bytes && reg.bytes[i] != 0xff) {
                count = reg.bytes[i] + 2u + ESCAPED;
                return true;
            }
        }
        auto it = big_.find(b);
        if (it == big_.end()) return false;
        count = it->second;
        return true;
    }
    std::uint64_t size() const { return size_; }

private:
    static constexpr unsigned ESCAPED = 15;
    static constexpr std::uint32_t BYTES_AFTER = 256;  // escaped entries in a region before it gets bytes
    struct region {
        std::unique_ptr<std::uint8_t[]> nibbles;
        std::unique_ptr<std::uint8_t[]> bytes;
        std::uint32_t nr_escaped = 0;
    };
    void set_nibble(region& reg, std::uint64_t i, unsigned v) {
        std::uint8_t& byte = reg.nibbles[i >> 1];
        unsigned shift = unsigned(i & 1) << 2;
        byte = std::uint8_t((byte & ~(0xfu << shift)) | (v << shift));
    }
    void give_bytes(region& reg, std::uint64_t r);

    std::uint64_t nr_blocks_;
    std::uint64_t size_ = 0;
    std::vector<region> regions_;
    std::unordered_map<std::uint64_t, std::uint32_t> big_;
};

struct space_map_layout {
    bool usable = false;                 // the bitmaps could be located
    std::vector<block_address> bitmaps;  // by bitmap index; NO_BLOCK where the index has no entry
    overflow_counts overflow;            // counts >= 3
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
