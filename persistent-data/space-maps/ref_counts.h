#pragma once
// The in-memory state shared by the disk and metadata space maps, kept in the on-disk form so a
// commit only copies words out: per bitmap 510 words of two-bit entries (format.md §4.2), the
// per-bitmap index information (§4.3), an overflow table of counts >= 3 (§4.4) and what is needed
// for the allocation rule of §7.4 (a block is allocatable only if its count is 0 now and was 0 at
// the last commit): a bitmap's words are copied on its first change in a transaction.
//
// Memory: nr_blocks / 4 bytes, plus 4 KiB per bitmap changed in the open transaction, plus 23-46
// bytes per overflow entry. inc/dec/set are O(1) and allocate nothing unless a count crosses 3
// or a bitmap is first touched in the transaction.
#include "persistent-data/space-maps/layout.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace pdata::sm {

// Open-addressing hash table block -> count for the counts >= 3. Remembers which keys changed since
// the last commit and which are in the committed overflow tree, so commits touch only changes.
class overflow_table {
public:
    overflow_table();

    // 0 when b has no overflow count.
    std::uint32_t get(block_address b) const;
    // count >= 3 stores it; count 0 forgets b (its bitmap entry no longer says 3).
    void set(block_address b, std::uint32_t count);
    // An entry read from the committed tree (clean, on disk).
    void load(block_address b, std::uint32_t count);

    // Number of blocks with an overflow count.
    std::size_t size() const { return live_; }
    bool changed() const { return !dirty_.empty(); }

    struct change {
        block_address block;
        std::uint32_t count;  // 0: no longer in overflow
        bool on_disk;         // present in the committed tree
    };
    // Every key changed since the last commit, once each (in no particular order).
    template <typename Fn>
    void for_each_change(Fn&& fn) const {
        for (std::size_t i = 0; i < dirty_.size(); ++i) {
            const slot* s = find(dirty_[i]);
            fn(change{s->key, s->count, (s->flags & ON_DISK) != 0});
        }
    }
    // Every (block, count >= 3), in no particular order.
    template <typename Fn>
    void for_each(Fn&& fn) const {
        for (auto& s : slots_)
            if (s.key != EMPTY && s.count) fn(s.key, s.count);
    }
    // The current entries become the committed ones.
    void commit();
    // Forgets everything.
    void clear();

private:
    static constexpr block_address EMPTY = ~block_address(0);
    enum : std::uint32_t { DIRTY = 1, ON_DISK = 2 };
    struct slot {
        block_address key = EMPTY;
        std::uint32_t count = 0;  // 0: removed since the commit (the slot stays until commit())
        std::uint32_t flags = 0;
    };
    std::size_t home(block_address b) const;
    const slot* find(block_address b) const;
    slot* find(block_address b) { return const_cast<slot*>(std::as_const(*this).find(b)); }
    slot& insert_new(block_address b);
    void erase(slot* s);
    void grow();

    std::vector<slot> slots_;
    unsigned shift_;
    std::size_t used_ = 0;  // occupied slots
    std::size_t live_ = 0;  // slots with count >= 3
    // Keys changed since the commit. Their slots stay (count 0 if removed) until commit(), so
    // each key is listed once.
    std::vector<block_address> dirty_;
};

struct bitmap_state {
    block_address location = NO_BLOCK;  // where the committed (or freshly placed) copy lives
    std::uint32_t nr_free = ENTRIES_PER_BITMAP;
    std::uint32_t none_free_before = 0;
    bool dirty = false;                       // must be written (and its index entry updated)
    std::unique_ptr<std::uint64_t[]> committed;  // words at the last commit; set once changed
};

class ref_counts {
public:
    explicit ref_counts(block_address nr_blocks = 0);

    block_address nr_blocks() const { return nr_blocks_; }
    block_address nr_allocated() const { return nr_allocated_; }
    unsigned nr_bitmaps() const { return unsigned(bitmaps_.size()); }

    // Throw std::out_of_range for b >= nr_blocks, std::logic_error for u32 over/underflow.
    std::uint32_t get(block_address b) const;
    void set(block_address b, std::uint32_t count);
    void inc(block_address b, std::uint32_t n);
    void dec(block_address b, std::uint32_t n);

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
    // Loading: raw access to the words; call finish_load() once every bitmap is in.
    std::uint64_t* words_for_load(unsigned i) { return &words_[std::size_t(i) * WORDS_PER_BITMAP]; }
    // Clears entries beyond nr_blocks, recomputes nr_free, none_free_before (exact) and
    // nr_allocated from the words (tolerating inconsistent on-disk index entries).
    void finish_load();
    // The two-bit bitmap entry of b (3 = the count is in the overflow table).
    unsigned raw_entry(block_address b) const { check(b); return entry_of(b); }
    // Block numbers whose entry is 3 (they must have an overflow count).
    template <typename Fn>
    void for_each_entry_three(Fn&& fn) const;

    // Marks bitmap i as needing a write without changing its content (new, relocated).
    void mark_dirty(unsigned i);
    // Bitmaps marked dirty since the last commit, each once, in the order they became dirty
    // (the list grows while a commit allocates).
    const std::vector<unsigned>& dirty_bitmaps() const { return dirty_; }
    bool changed() const { return !dirty_.empty() || overflow_.changed(); }

    overflow_table& overflow() { return overflow_; }
    const overflow_table& overflow() const { return overflow_; }

    // The current counts become the committed state.
    void commit();

private:
    void check(block_address b) const;
    void touch(unsigned i);
    unsigned entry_of(block_address b) const;
    void set_entry(block_address b, unsigned old_v, unsigned v);
    std::optional<std::uint32_t> scan(unsigned i, std::uint32_t begin, std::uint32_t end) const;

    block_address nr_blocks_;
    block_address nr_allocated_ = 0;
    block_address cursor_ = 0;
    std::vector<std::uint64_t> words_;
    std::vector<bitmap_state> bitmaps_;
    std::vector<unsigned> dirty_;
    std::vector<std::unique_ptr<std::uint64_t[]>> spare_;  // recycled committed-word buffers
    overflow_table overflow_;
};

template <typename Fn>
void ref_counts::for_each_entry_three(Fn&& fn) const {
    for (std::size_t wi = 0; wi < words_.size(); ++wi) {
        std::uint64_t w = words_[wi];
        std::uint64_t three = w & (w >> 1) & LOW_BITS;
        while (three) {
            unsigned bit = unsigned(__builtin_ctzll(three));
            three &= three - 1;
            std::size_t i = wi / WORDS_PER_BITMAP;
            fn(block_address(i) * ENTRIES_PER_BITMAP + (wi % WORDS_PER_BITMAP) * ENTRIES_PER_WORD + bit / 2);
        }
    }
}

} // namespace pdata::sm
