#pragma once
// Copy-on-write b-trees with 64-bit keys (format.md §6, §7.2, §7.3), in the kernel's on-disk format.
//
// A tree is named by its root block; every modifying call shadows the path it touches and returns
// the new root. Multi-level trees (info::levels > 1, the thin mapping tree has 2) take one key per
// level: the leaves of every level but the last hold the u64 roots of the next level's trees, and
// those roots are reference counted as metadata blocks (inc on sharing, delete-subtree on dec).
#include "persistent-data/btree/node.h"
#include "persistent-data/transaction_manager.h"

#include <cstdint>
#include <functional>
#include <optional>

namespace pdata::btree {

// How the bottom level's values are reference counted (format.md §7.2).
struct value_type {
    std::uint32_t size = 8;
    // Called with count contiguous values (size bytes each). inc: the tree gained references to
    // them (a shared leaf was shadowed). dec: it lost them (a value was removed or overwritten, or a
    // leaf deleted). Empty function = no-op.
    std::function<void(const std::uint8_t* values, unsigned count)> inc;
    std::function<void(const std::uint8_t* values, unsigned count)> dec;
    // Overwriting a value with an equal one does not dec the old value. Empty = bytes equal.
    std::function<bool(const std::uint8_t* a, const std::uint8_t* b)> equal;
};

struct info {
    transaction_manager* tm = nullptr;
    unsigned levels = 1;  // 1..8
    value_type vt;        // bottom level; upper levels hold u64 subtree roots
};

// A new tree: one empty leaf (of the top level's value size).
block_address empty_tree(const info& inf);

// keys has info.levels entries. Copies the value into value_out (vt.size bytes) when found.
bool lookup(const info& inf, block_address root, const std::uint64_t* keys, std::uint8_t* value_out);

// The non-blocking lookup of the pool's fast path (pool.md §7.3 rule 9): like lookup, but reads only
// blocks already in the block manager's cache. would_block when a node is not cached (or is
// write-locked, or looks damaged: the blocking lookup reports that). Never throws.
enum class lookup_status { found, not_found, would_block };
lookup_status try_lookup(const info& inf, block_address root, const std::uint64_t* keys,
                         std::uint8_t* value_out) noexcept;

// Inserts or overwrites. Missing upper-level subtrees are created. The tree takes over the
// caller's reference to value (no inc); an overwritten unequal old value is dec'd.
block_address insert(const info& inf, block_address root, const std::uint64_t* keys,
                     const std::uint8_t* value, bool* inserted = nullptr);

// Removes keys (dec'ing the value). Keeps every non-root node at least 1/3 full (format.md §6.3).
block_address remove(const info& inf, block_address root, const std::uint64_t* keys,
                     bool* removed = nullptr);

// Removes every bottom-level key k with begin <= k < end from the subtree named by
// keys[0 .. levels-2] (keys may be nullptr when levels == 1). Values are dec'd.
block_address remove_range(const info& inf, block_address root, const std::uint64_t* keys,
                           std::uint64_t begin, std::uint64_t end, std::uint64_t* nr_removed = nullptr);

// The first bottom-level entry with key >= keys[levels-1] in the subtree named by the other keys.
bool lookup_next(const info& inf, block_address root, const std::uint64_t* keys,
                 std::uint64_t* key_out, std::uint8_t* value_out);

// The highest bottom-level entry of the subtree named by keys[0 .. levels-2] (nullptr if levels 1).
bool lookup_last(const info& inf, block_address root, const std::uint64_t* keys,
                 std::uint64_t* key_out, std::uint8_t* value_out);

// Every bottom-level (key, value) of the subtree named by keys[0 .. levels-2], in key order.
// Return false from fn to stop early.
using entry_fn = std::function<bool(std::uint64_t key, const std::uint8_t* value)>;
void iterate(const info& inf, block_address root, const std::uint64_t* keys, const entry_fn& fn);

// Drops the tree's reference to root (format.md §7.3): a shared node is just decremented; an
// unshared one releases its children (subtrees, values via vt.dec) and is freed.
void del(const info& inf, block_address root);

// ---- helpers shared by the implementation files ----
namespace detail {
// Value type of the leaves at `level` (the subtree-root type above the bottom level).
value_type level_value_type(const info& inf, unsigned level);
std::uint32_t level_value_size(const info& inf, unsigned level);
// Shadows block b of a tree at `level`; when it was shared, increments what it references
// (children of an internal node; values of a leaf through the level's value type).
write_ref shadow_node(const info& inf, unsigned level, block_address b);
} // namespace detail

} // namespace pdata::btree
