#pragma once
// The in-memory state shared by the disk and metadata space maps, kept in the on-disk form so a
// commit only copies words out: per bitmap 510 words of two-bit entries (format.md §4.2), the
// per-bitmap index information (§4.3), the counts >= 3 of entries that read 3 (§4.4) and what is
// needed for the allocation rule of §7.4 (a block is allocatable only if its count is 0 now and
// was 0 at the last commit): a bitmap's words are copied on its first change in a transaction,
// unless they were all zero then.
//
// Counts >= 3 ("overflow counts") live in one of two places, chosen per bitmap:
//  - sparse: a hash table block -> count (23-46 bytes per entry), while the bitmap has fewer than
//    DENSE_THRESHOLD entries of 3;
//  - dense: once it has DENSE_THRESHOLD, a byte per entry of the bitmap (16320 bytes) holding
//    min(count, 255); counts >= 255 are also kept in the hash table. Pools whose data blocks are
//    shared by many devices have most entries at 3, and a byte each is far cheaper than a hash
//    slot. A dense bitmap goes back to sparse at a commit when few entries of 3 remain.
// The overflow changes since the last commit are listed (block numbers, with repeats) until the
// list grows past a quarter of the committed overflow population (at least 16384); after that the
// map only remembers that the overflow tree must be rebuilt.
//
// inc/dec/set are O(1) amortised and allocate only when a bitmap is first touched in a
// transaction, when a count crosses 3, or when a bitmap turns dense.
#include "persistent-data/space-maps/layout.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace pdata::sm {

// Open-addressing hash table block -> non-zero u32 (linear probing, backward-shift deletion).
class count_table {
public:
    count_table();

    // 0 when b is absent.
    std::uint32_t get(block_address b) const;
    // count 0 removes b.
    void set(block_address b, std::uint32_t count);
    std::size_t size() const { return used_; }
    // Every (block, count), in no particular order.
    template <typename Fn>
    void for_each(Fn&& fn) const {
        for (auto& s : slots_)
            if (s.key != EMPTY) fn(s.key, s.count);
    }
    // Releases memory when the table is mostly empty.
    void shrink();
    void clear();

private:
    static constexpr block_address EMPTY = ~block_address(0);
    struct slot {
        block_address key = EMPTY;
        std::uint32_t count = 0;
    };
    std::size_t home(block_address b) const { return std::size_t((b * 0x9E3779B97F4A7C15ull) >> shift_); }
    slot* find(block_address b);
    const slot* find(block_address b) const;
    void rehash(std::size_t nr_slots);

    std::vector<slot> slots_;
    unsigned shift_;
    std::size_t used_ = 0;
};

struct bitmap_state {
    block_address location = NO_BLOCK;  // where the committed (or freshly placed) copy lives
    std::uint32_t nr_free = ENTRIES_PER_BITMAP;
    std::uint32_t none_free_before = 0;
    std::uint32_t nr_three = 0;          // entries that read 3 (their counts are overflow counts)
    bool dirty = false;                  // must be written (and its index entry updated)
    bool committed_zero = false;         // changed in this transaction; every entry was 0 at the commit
    std::unique_ptr<std::uint64_t[]> committed;  // words at the last commit; set once changed
    std::unique_ptr<std::uint8_t[]> dense;       // min(count, 255) per entry of 3 (0 elsewhere)
};

class ref_counts {
public:
    // A bitmap switches to a dense overflow array when it has this many entries of 3.
    static constexpr std::uint32_t DENSE_THRESHOLD = 512;

    explicit ref_counts(block_address nr_blocks = 0);

    block_address nr_blocks() const { return nr_blocks_; }
    block_address nr_allocated() const { return nr_allocated_; }
    unsigned nr_bitmaps() const { return unsigned(bitmaps_.size()); }

    // Throw std::out_of_range for b >= nr_blocks, std::logic_error for u32 over/underflow.
    std::uint32_t get(block_address b) const;
    void set(block_address b, std::uint32_t count);
    void inc(block_address b, std::uint32_t n);
    void dec(block_address b, std::uint32_t n);
    // inc/dec by 1 of every block in [begin, end); whole words of entries below 2 (inc) or of 1s
    // and 2s (dec) are done at once. On an error, the blocks before the failing one are done.
    void inc_range(block_address begin, block_address end);
    void dec_range(block_address begin, block_address end);

    // Finds a block in [begin, end) with count 0 now and at the last commit and sets it to 1.
    std::optional<block_address> allocate_in(block_address begin, block_address end);
    // Same over the whole map, from the cursor and wrapping (format.md §7.4); moves the cursor.
    std::optional<block_address> allocate();

    // Grows by extra free blocks; returns the index of the first new bitmap (new bitmaps have
    // location NO_BLOCK, nr_free 16320, none_free_before 0, and are not marked dirty).
    unsigned extend(block_address extra);

    bitmap_state& bitmap(unsigned i) { return bitmaps_[i]; }
    const bitmap_state& bitmap(unsigned i) const { return bitmaps_[i]; }
    const std::uint64_t* words(unsigned i) const { return &words_[std::size_t(i) * WORDS_PER_BITMAP]; }
    index_entry entry(unsigned i) const {
        return {bitmaps_[i].location, bitmaps_[i].nr_free, bitmaps_[i].none_free_before};
    }
    // Loading: raw access to the words; call finish_load() once every bitmap is in, then
    // load_overflow_count() for each entry of 3.
    std::uint64_t* words_for_load(unsigned i) { return &words_[std::size_t(i) * WORDS_PER_BITMAP]; }
    // Clears entries beyond nr_blocks, recomputes nr_free, none_free_before (exact), the entries
    // of 3 and nr_allocated from the words (tolerating inconsistent on-disk index entries).
    void finish_load();
    // The committed count (>= 3) of b, whose entry is 3, read from the overflow tree.
    void load_overflow_count(block_address b, std::uint32_t count);
    // A key of the committed overflow tree that does not belong there (its entry is not 3, or it
    // is beyond the end): it is removed at the next commit.
    void add_stray_overflow(block_address b);

    // The two-bit bitmap entry of b (3 = the count is an overflow count).
    unsigned raw_entry(block_address b) const { check(b); return entry_of(b); }
    // Block numbers whose entry is 3, in increasing order.
    template <typename Fn>
    void for_each_entry_three(Fn&& fn) const;

    // ---- overflow counts (format.md §4.4) ----
    // Number of entries of 3.
    block_address nr_overflow() const { return nr_overflow_; }
    // The overflow count of b, 0 if its entry is not 3 (or none was loaded), b may be beyond the end.
    std::uint32_t overflow_count(block_address b) const;
    // Every (block, count) whose entry is 3, in increasing block order.
    template <typename Fn>
    void for_each_overflow(Fn&& fn) const;
    // Anything to change in the overflow tree since the last commit.
    bool overflow_changed() const { return overflow_untracked_ || !overflow_changes_.empty() || !strays_.empty(); }
    // Too many changes were made to list them: the tree must be rebuilt from for_each_overflow.
    bool overflow_untracked() const { return overflow_untracked_; }
    // When tracked: every block whose overflow-tree entry may differ from the committed tree,
    // strictly increasing (sorts the list in place).
    const std::vector<block_address>& overflow_changes();
    // Whether b has an entry in the committed overflow tree.
    bool in_committed_overflow(block_address b) const;
    // Entries of the committed overflow tree.
    block_address committed_nr_overflow() const { return committed_nr_overflow_; }

    // Marks bitmap i as needing a write without changing its content (new, relocated).
    void mark_dirty(unsigned i);
    // Bitmaps marked dirty since the last commit, each once, in the order they became dirty
    // (the list grows while a commit allocates).
    const std::vector<unsigned>& dirty_bitmaps() const { return dirty_; }
    bool changed() const { return !dirty_.empty() || overflow_changed(); }

    // The current counts become the committed state.
    void commit();

private:
    void check(block_address b) const;
    void touch(unsigned i);
    unsigned entry_of(block_address b) const;
    unsigned committed_entry_of(block_address b) const;
    // Sets the two-bit entry j of bitmap i from old_v to v (keeping nr_free, none_free_before,
    // nr_allocated and nr_three), copying the committed words first.
    void set_entry(unsigned i, std::uint32_t j, unsigned old_v, unsigned v);
    // Stores c (>= 3, 0 = none) as the overflow count of entry j of bitmap i (block b).
    void store_overflow(unsigned i, std::uint32_t j, block_address b, std::uint32_t c);
    std::uint32_t load_overflow(unsigned i, std::uint32_t j, block_address b) const;
    void note_overflow_change(block_address b);
    // Count of b (entry v) set to count.
    void set_count(unsigned i, std::uint32_t j, block_address b, unsigned v, std::uint32_t count);
    void make_dense(unsigned i);
    void make_sparse(unsigned i);
    std::optional<std::uint32_t> scan(unsigned i, std::uint32_t begin, std::uint32_t end) const;

    block_address nr_blocks_;
    block_address nr_allocated_ = 0;
    block_address cursor_ = 0;
    std::vector<std::uint64_t> words_;
    std::vector<bitmap_state> bitmaps_;
    std::vector<unsigned> dirty_;
    std::vector<std::unique_ptr<std::uint64_t[]>> spare_;  // recycled committed-word buffers

    count_table table_;  // overflow counts of sparse bitmaps, counts >= 255 of dense ones
    block_address nr_overflow_ = 0;
    block_address committed_nr_overflow_ = 0;
    std::vector<block_address> overflow_changes_;  // with repeats until overflow_changes()
    std::size_t overflow_changes_limit_ = 0;
    bool overflow_untracked_ = false;
    std::vector<block_address> strays_;  // sorted at use
};

template <typename Fn>
void ref_counts::for_each_entry_three(Fn&& fn) const {
    for (unsigned i = 0; i < nr_bitmaps(); ++i) {
        if (!bitmaps_[i].nr_three) continue;
        const std::uint64_t* w = words(i);
        block_address base = block_address(i) * ENTRIES_PER_BITMAP;
        for (unsigned wi = 0; wi < WORDS_PER_BITMAP; ++wi) {
            std::uint64_t three = w[wi] & (w[wi] >> 1) & LOW_BITS;
            while (three) {
                unsigned bit = unsigned(__builtin_ctzll(three));
                three &= three - 1;
                fn(base + wi * ENTRIES_PER_WORD + bit / 2);
            }
        }
    }
}

template <typename Fn>
void ref_counts::for_each_overflow(Fn&& fn) const {
    for (unsigned i = 0; i < nr_bitmaps(); ++i) {
        const bitmap_state& s = bitmaps_[i];
        if (!s.nr_three) continue;
        const std::uint64_t* w = words(i);
        block_address base = block_address(i) * ENTRIES_PER_BITMAP;
        for (unsigned wi = 0; wi < WORDS_PER_BITMAP; ++wi) {
            std::uint64_t three = w[wi] & (w[wi] >> 1) & LOW_BITS;
            while (three) {
                unsigned bit = unsigned(__builtin_ctzll(three));
                three &= three - 1;
                std::uint32_t j = wi * ENTRIES_PER_WORD + bit / 2;
                fn(base + j, load_overflow(i, j, base + j));
            }
        }
    }
}

} // namespace pdata::sm
