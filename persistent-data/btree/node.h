#pragma once
// B-tree node layout (format.md §6.1):
//
//   off   size              field
//     0   4                 csum (salt 121107)
//     4   4                 flags: 1 = internal, 2 = leaf
//     8   8                 blocknr
//    16   4                 nr_entries
//    20   4                 max_entries
//    24   4                 value_size
//    28   4                 padding (0)
//    32   8 * max_entries   keys
//    32 + 8 * max_entries   values (value_size each)
//
// node_ref views a node read-only, node_mut also edits it. Neither owns the block.
#include "persistent-data/endian.h"
#include "persistent-data/types.h"
#include "persistent-data/validator.h"

#include <cstring>
#include <type_traits>

namespace pdata::btree {

constexpr std::uint32_t INTERNAL_NODE = 1;
constexpr std::uint32_t LEAF_NODE = 2;
constexpr std::size_t NODE_HEADER_SIZE = 32;

constexpr std::uint32_t max_entries_for(std::uint32_t value_size) {
    return 3 * ((static_cast<std::uint32_t>(MD_BLOCK_SIZE - NODE_HEADER_SIZE) / (8 + value_size)) / 3);
}
static_assert(max_entries_for(8) == 252 && max_entries_for(4) == 336 && max_entries_for(16) == 168 &&
              max_entries_for(24) == 126);

// Whether max_entries keys and values of value_size bytes fit in a block after the header. Each
// factor is bounded first: both come from disk, and their product can wrap even in 64 bits.
constexpr bool entries_fit(std::uint32_t max_entries, std::uint32_t value_size) {
    return max_entries <= MD_BLOCK_SIZE && value_size <= MD_BLOCK_SIZE &&
           NODE_HEADER_SIZE + (8ull + value_size) * max_entries <= MD_BLOCK_SIZE;
}
static_assert(entries_fit(254, 8) && !entries_fit(255, 8) && !entries_fit(0xffffffffu, 0xfffffff9u));

template <typename Byte>
class basic_node {
public:
    explicit basic_node(Byte* data) : d_(data) {}
    // A writable view converts to a read-only one.
    template <typename Other>
        requires(std::is_const_v<Byte> && !std::is_const_v<Other>)
    basic_node(basic_node<Other> o) : d_(o.raw()) {}

    Byte* raw() const { return d_; }
    std::uint32_t flags() const { return load_le32(d_ + 4); }
    bool is_leaf() const { return flags() == LEAF_NODE; }
    bool is_internal() const { return flags() == INTERNAL_NODE; }
    block_address blocknr() const { return load_le64(d_ + 8); }
    std::uint32_t nr_entries() const { return load_le32(d_ + 16); }
    std::uint32_t max_entries() const { return load_le32(d_ + 20); }
    std::uint32_t value_size() const { return load_le32(d_ + 24); }

    std::uint64_t key(unsigned i) const { return load_le64(d_ + NODE_HEADER_SIZE + 8 * i); }
    Byte* value(unsigned i) const {
        return d_ + NODE_HEADER_SIZE + 8 * std::size_t(max_entries()) + std::size_t(value_size()) * i;
    }
    // Internal nodes (and leaves of 8-byte values): the value as a u64.
    std::uint64_t value64(unsigned i) const { return load_le64(value(i)); }

    // Greatest i with key(i) <= k, or -1 when k is below every key.
    int lower_bound(std::uint64_t k) const {
        int lo = -1, hi = static_cast<int>(nr_entries());
        while (hi - lo > 1) {
            int mid = lo + (hi - lo) / 2;
            if (key(mid) > k) hi = mid; else lo = mid;
        }
        return lo;
    }
    // Index of k, or -1.
    int find(std::uint64_t k) const {
        int i = lower_bound(k);
        return (i >= 0 && key(i) == k) ? i : -1;
    }

    // ---- mutators (node_mut only) ----
    // Formats an empty node of the given kind; max_entries follows from value_size.
    void init(std::uint32_t flags, std::uint32_t value_size) {
        std::memset(d_ + 4, 0, NODE_HEADER_SIZE - 4);
        store_le32(d_ + 4, flags);
        store_le32(d_ + 20, max_entries_for(value_size));
        store_le32(d_ + 24, value_size);
    }
    void set_flags(std::uint32_t f) { store_le32(d_ + 4, f); }
    void set_nr_entries(std::uint32_t n) { store_le32(d_ + 16, n); }
    void set_key(unsigned i, std::uint64_t k) { store_le64(d_ + NODE_HEADER_SIZE + 8 * i, k); }
    void set_value(unsigned i, const void* v) { std::memcpy(value(i), v, value_size()); }
    void set_value64(unsigned i, std::uint64_t v) { store_le64(value(i), v); }

    // Inserts (k, v) at index i, shifting later entries right. The node must not be full.
    void insert_at(unsigned i, std::uint64_t k, const void* v) {
        unsigned n = nr_entries();
        std::size_t vs = value_size();
        std::memmove(d_ + NODE_HEADER_SIZE + 8 * (i + 1), d_ + NODE_HEADER_SIZE + 8 * i, 8 * (n - i));
        std::memmove(value(i + 1), value(i), vs * (n - i));
        set_key(i, k);
        set_value(i, v);
        set_nr_entries(n + 1);
    }
    // Removes entry i, shifting later entries left.
    void remove_at(unsigned i) {
        unsigned n = nr_entries();
        std::size_t vs = value_size();
        std::memmove(d_ + NODE_HEADER_SIZE + 8 * i, d_ + NODE_HEADER_SIZE + 8 * (i + 1), 8 * (n - i - 1));
        std::memmove(value(i), value(i + 1), vs * (n - i - 1));
        set_nr_entries(n - 1);
    }

private:
    Byte* d_;
};

using node_ref = basic_node<const std::uint8_t>;
using node_mut = basic_node<std::uint8_t>;

// Copies count entries from src[src_i..] to dst[dst_i..] (same value_size; overlapping ranges in
// one node are fine: it moves). Does not change nr_entries.
template <typename S>
void copy_entries(node_mut dst, unsigned dst_i, basic_node<S> src, unsigned src_i, unsigned count) {
    std::memmove(dst.raw() + NODE_HEADER_SIZE + 8 * dst_i, src.raw() + NODE_HEADER_SIZE + 8 * src_i, 8 * count);
    std::memmove(dst.value(dst_i), src.value(src_i), std::size_t(src.value_size()) * count);
}

// Checksum + blocknr (format.md §2) and header sanity (§6.4 a-c): flags exactly 1 or 2,
// 32 + (8 + value_size) * max_entries <= 4096, nr_entries <= max_entries.
class node_validator : public checksummed_validator {
public:
    node_validator() : checksummed_validator("btree node", block_salt::btree_node) {}
    void check(const std::uint8_t* data, block_address b) const override;
};
const node_validator& btree_node_validator();

} // namespace pdata::btree
