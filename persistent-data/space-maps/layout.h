#pragma once
// On-disk pieces shared by the disk and metadata space maps (format.md §4.2, §4.3, §4.6).
//
// Bitmap block (salt 240779):
//   off  size  field
//     0     4  csum
//     4     4  not_used (0)
//     8     8  blocknr
//    16  4080  510 u64 LE words, 32 two-bit entries each (16320 entries)
// Entry k of a word: bit 2k has weight 2, bit 2k+1 weight 1 (the reverse of LSB-first order);
// 0 free, 1, 2, 3 = "count >= 3, see the overflow tree".
//
// Index entry (16 bytes; values of the data map's index tree, slots of the metadata index block):
//   off  size  field
//     0     8  blocknr           block holding the bitmap
//     8     4  nr_free           zero entries over all 16320 (kernel convention)
//    12     4  none_free_before  every entry below this is known to be non-zero (a hint)
//
// Metadata index block (salt 160478):
//   off  size  field
//     0     4  csum
//     4     4  padding (0)
//     8     8  blocknr
//    16  4080  index entries 0..254 (unused ones zero)
#include "persistent-data/endian.h"
#include "persistent-data/space_map.h"

#include <cstdint>
#include <cstring>

namespace pdata::sm {

constexpr unsigned WORDS_PER_BITMAP = 510;
constexpr unsigned ENTRIES_PER_WORD = 32;
constexpr std::size_t BITMAP_HEADER_SIZE = 16;
static_assert(WORDS_PER_BITMAP * ENTRIES_PER_WORD == ENTRIES_PER_BITMAP);
static_assert(BITMAP_HEADER_SIZE + 8 * WORDS_PER_BITMAP == MD_BLOCK_SIZE);

constexpr std::size_t INDEX_ENTRY_SIZE = 16;
constexpr std::size_t INDEX_BLOCK_HEADER_SIZE = 16;
constexpr unsigned MAX_METADATA_BITMAPS = 255;
constexpr block_address MAX_METADATA_BLOCKS = block_address(MAX_METADATA_BITMAPS) * ENTRIES_PER_BITMAP;

// Overflow tree values (u32 counts) and data index tree values (index entries).
constexpr std::uint32_t OVERFLOW_VALUE_SIZE = 4;
constexpr std::uint32_t INDEX_VALUE_SIZE = 16;

// "No block yet" for a bitmap location (a bitmap created by extend that has not been placed).
constexpr block_address NO_BLOCK = ~block_address(0);

struct index_entry {
    block_address blocknr = 0;
    std::uint32_t nr_free = 0;
    std::uint32_t none_free_before = 0;

    void pack(std::uint8_t* out) const {
        store_le64(out, blocknr);
        store_le32(out + 8, nr_free);
        store_le32(out + 12, none_free_before);
    }
    static index_entry unpack(const std::uint8_t* in) {
        return {load_le64(in), load_le32(in + 8), load_le32(in + 12)};
    }
};

// ---- two-bit entries in a word ----
constexpr std::uint64_t LOW_BITS = 0x5555555555555555ull;  // bit 2k of every entry

// Value of entry k (0..31) of w.
inline unsigned entry_get(std::uint64_t w, unsigned k) {
    return unsigned(((w >> (2 * k)) & 1) << 1) | unsigned((w >> (2 * k + 1)) & 1);
}
// w with entry k set to v (0..3).
inline std::uint64_t entry_set(std::uint64_t w, unsigned k, unsigned v) {
    std::uint64_t bits = std::uint64_t((v >> 1) & 1) | (std::uint64_t(v & 1) << 1);
    return (w & ~(std::uint64_t(3) << (2 * k))) | (bits << (2 * k));
}
// Bit 2k set iff entry k is non-zero.
inline std::uint64_t nonzero_mask(std::uint64_t w) { return (w | (w >> 1)) & LOW_BITS; }

} // namespace pdata::sm
