#pragma once
// Reference-counting space maps (format.md §4, §7). One interface, three implementations:
//  - core (in memory only: checkers' recounts, tests),
//  - disk (the data space map: index b-tree + bitmaps + overflow tree, persisted through the tm),
//  - metadata (self-hosting: index block + bitmaps + overflow tree, counts its own blocks).
// Counts are exact u32; a block may be handed out by new_block() only when its count is 0 both now
// and in the last committed state (format.md §7.4).
#include "persistent-data/types.h"

#include <cstdint>
#include <cstring>
#include <optional>

namespace pdata {

// First 32 bytes of a 128-byte space-map root area of the superblock (format.md §4.1).
//  off size field
//    0    8 nr_blocks
//    8    8 nr_allocated
//   16    8 bitmap_root      (metadata: index block; data: index b-tree root)
//   24    8 ref_count_root   (overflow b-tree root)
struct sm_root {
    std::uint64_t nr_blocks = 0;
    std::uint64_t nr_allocated = 0;
    std::uint64_t bitmap_root = 0;
    std::uint64_t ref_count_root = 0;

    static constexpr std::size_t DISK_SIZE = 32;
    void pack(std::uint8_t* out) const;          // writes 32 bytes
    static sm_root unpack(const std::uint8_t* in);
    bool operator==(const sm_root&) const = default;
};

constexpr std::uint32_t ENTRIES_PER_BITMAP = 16320;  // (4096 - 16) * 4

class space_map {
public:
    virtual ~space_map() = default;

    virtual block_address nr_blocks() const = 0;
    // Blocks with count 0 now (includes blocks freed in this transaction, format.md §7.5).
    virtual block_address nr_free() const = 0;
    block_address nr_allocated() const { return nr_blocks() - nr_free(); }

    virtual std::uint32_t get_count(block_address b) const = 0;
    virtual void set_count(block_address b, std::uint32_t count) = 0;
    virtual void inc(block_address b, std::uint32_t n = 1) = 0;
    // Throws std::logic_error when the count would go below zero.
    virtual void dec(block_address b, std::uint32_t n = 1) = 0;
    // inc/dec of every block in [begin, end).
    virtual void inc_range(block_address begin, block_address end);
    virtual void dec_range(block_address begin, block_address end);

    // Allocates (count 0 -> 1) a block free now and in the last committed state, searching from an
    // internal cursor and wrapping (format.md §7.4). nullopt when there is none.
    virtual std::optional<block_address> new_block() = 0;
    // Same, restricted to [begin, end).
    virtual std::optional<block_address> new_block_in(block_address begin, block_address end) = 0;

    bool count_is_more_than_one(block_address b) const { return get_count(b) > 1; }

    // Grows the map by extra blocks (all free).
    virtual void extend(block_address extra) = 0;

    // Persists the map (no-op for core maps) and makes the current counts the committed state.
    virtual void commit() = 0;
    // The root describing the last commit(). Only for persistent maps.
    virtual sm_root root() const = 0;
};

} // namespace pdata
