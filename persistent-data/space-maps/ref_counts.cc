#include "persistent-data/space-maps/ref_counts.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pdata::sm {

// ---------------------------------------------------------------- overflow_table

overflow_table::overflow_table() : slots_(16), shift_(60) {}

std::size_t overflow_table::home(block_address b) const {
    return std::size_t((b * 0x9E3779B97F4A7C15ull) >> shift_);
}

const overflow_table::slot* overflow_table::find(block_address b) const {
    std::size_t mask = slots_.size() - 1;
    for (std::size_t i = home(b);; i = (i + 1) & mask) {
        const slot& s = slots_[i];
        if (s.key == b) return &s;
        if (s.key == EMPTY) return nullptr;
    }
}

overflow_table::slot& overflow_table::insert_new(block_address b) {
    if ((used_ + 1) * 10 > slots_.size() * 7) grow();  // load factor <= 0.7
    std::size_t mask = slots_.size() - 1;
    std::size_t i = home(b);
    while (slots_[i].key != EMPTY) i = (i + 1) & mask;
    slots_[i] = slot{b, 0, 0};
    ++used_;
    return slots_[i];
}

void overflow_table::grow() {
    std::vector<slot> old(slots_.size() * 2);
    old.swap(slots_);
    --shift_;
    std::size_t mask = slots_.size() - 1;
    for (auto& s : old) {
        if (s.key == EMPTY) continue;
        std::size_t i = home(s.key);
        while (slots_[i].key != EMPTY) i = (i + 1) & mask;
        slots_[i] = s;
    }
}

// Backward-shift deletion keeps probe chains intact without tombstones.
void overflow_table::erase(slot* s) {
    std::size_t mask = slots_.size() - 1;
    std::size_t i = std::size_t(s - slots_.data());
    for (std::size_t j = (i + 1) & mask; slots_[j].key != EMPTY; j = (j + 1) & mask) {
        std::size_t k = home(slots_[j].key);
        // Slot j may move to the hole at i only if its home is not cyclically within (i, j].
        bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            slots_[i] = slots_[j];
            i = j;
        }
    }
    slots_[i] = slot{};
    --used_;
}

std::uint32_t overflow_table::get(block_address b) const {
    const slot* s = find(b);
    return s ? s->count : 0;
}

void overflow_table::set(block_address b, std::uint32_t count) {
    slot* s = find(b);
    if (!s) {
        if (count == 0) return;
        s = &insert_new(b);
    }
    if (s->count == 0 && count != 0) ++live_;
    if (s->count != 0 && count == 0) --live_;
    s->count = count;
    if (!(s->flags & DIRTY)) {
        s->flags |= DIRTY;
        dirty_.push_back(b);
    }
}

void overflow_table::load(block_address b, std::uint32_t count) {
    slot* s = find(b);
    if (!s) s = &insert_new(b);
    if (s->count == 0) ++live_;
    s->count = count;
    s->flags = ON_DISK;
}

void overflow_table::commit() {
    for (block_address b : dirty_) {
        slot* s = find(b);
        if (s->count == 0) erase(s);
        else s->flags = ON_DISK;
    }
    dirty_.clear();
}

void overflow_table::clear() {
    slots_.assign(16, slot{});
    shift_ = 60;
    used_ = live_ = 0;
    dirty_.clear();
}

// ---------------------------------------------------------------- ref_counts

ref_counts::ref_counts(block_address nr_blocks) : nr_blocks_(0) { extend(nr_blocks); }

void ref_counts::check(block_address b) const {
    if (b >= nr_blocks_)
        throw std::out_of_range("space map: block " + std::to_string(b) + " is beyond the end (" +
                                std::to_string(nr_blocks_) + " blocks)");
}

unsigned ref_counts::entry_of(block_address b) const {
    std::size_t i = std::size_t(b / ENTRIES_PER_BITMAP);
    unsigned j = unsigned(b % ENTRIES_PER_BITMAP);
    return entry_get(words_[i * WORDS_PER_BITMAP + j / ENTRIES_PER_WORD], j % ENTRIES_PER_WORD);
}

std::uint32_t ref_counts::get(block_address b) const {
    check(b);
    unsigned v = entry_of(b);
    if (v < 3) return v;
    std::uint32_t c = overflow_.get(b);
    if (c < 3)
        throw std::logic_error("space map: block " + std::to_string(b) +
                               " is marked as overflowing but has no overflow count");
    return c;
}

void ref_counts::touch(unsigned i) {
    bitmap_state& s = bitmaps_[i];
    if (s.committed) return;
    if (!spare_.empty()) {
        s.committed = std::move(spare_.back());
        spare_.pop_back();
    } else {
        s.committed.reset(new std::uint64_t[WORDS_PER_BITMAP]);
    }
    std::memcpy(s.committed.get(), words(i), 8 * WORDS_PER_BITMAP);
    mark_dirty(i);
}

void ref_counts::mark_dirty(unsigned i) {
    if (bitmaps_[i].dirty) return;
    bitmaps_[i].dirty = true;
    dirty_.push_back(i);
}

void ref_counts::set_entry(block_address b, unsigned old_v, unsigned v) {
    unsigned i = unsigned(b / ENTRIES_PER_BITMAP);
    std::uint32_t j = std::uint32_t(b % ENTRIES_PER_BITMAP);
    touch(i);
    std::uint64_t& w = words_[std::size_t(i) * WORDS_PER_BITMAP + j / ENTRIES_PER_WORD];
    w = entry_set(w, j % ENTRIES_PER_WORD, v);
    bitmap_state& s = bitmaps_[i];
    if (old_v == 0 && v != 0) {
        --s.nr_free;
        ++nr_allocated_;
        if (s.none_free_before == j) s.none_free_before = j + 1;
    } else if (old_v != 0 && v == 0) {
        ++s.nr_free;
        --nr_allocated_;
        s.none_free_before = std::min(s.none_free_before, j);
    }
}

void ref_counts::set(block_address b, std::uint32_t count) {
    check(b);
    unsigned old_v = entry_of(b);
    unsigned v = std::min<std::uint32_t>(count, 3);
    if (count >= 3) overflow_.set(b, count);
    else if (old_v == 3) overflow_.set(b, 0);
    if (v != old_v) set_entry(b, old_v, v);
}

void ref_counts::inc(block_address b, std::uint32_t n) {
    check(b);
    if (n == 0) return;
    unsigned v = entry_of(b);
    if (v + n <= 2) {
        set_entry(b, v, v + n);
        return;
    }
    std::uint32_t cur = get(b);
    if (cur > UINT32_MAX - n)
        throw std::logic_error("space map: reference count of block " + std::to_string(b) + " overflows");
    set(b, cur + n);
}

void ref_counts::dec(block_address b, std::uint32_t n) {
    check(b);
    if (n == 0) return;
    unsigned v = entry_of(b);
    std::uint32_t cur = v < 3 ? v : get(b);
    if (cur < n)
        throw std::logic_error("space map: reference count of block " + std::to_string(b) +
                               " would go below zero");
    if (v < 3) set_entry(b, v, v - n);
    else set(b, cur - n);
}

// First entry in [begin, end) of bitmap i that is zero now and was zero at the last commit.
std::optional<std::uint32_t> ref_counts::scan(unsigned i, std::uint32_t begin, std::uint32_t end) const {
    const std::uint64_t* w = words(i);
    const std::uint64_t* c = bitmaps_[i].committed ? bitmaps_[i].committed.get() : w;
    std::uint32_t first = begin / ENTRIES_PER_WORD, last = (end - 1) / ENTRIES_PER_WORD;
    for (std::uint32_t wi = first; wi <= last; ++wi) {
        std::uint64_t avail = ~nonzero_mask(w[wi] | c[wi]) & LOW_BITS;
        if (wi == first) avail &= ~std::uint64_t(0) << (2 * (begin % ENTRIES_PER_WORD));
        if (wi == last && end % ENTRIES_PER_WORD)
            avail &= (std::uint64_t(1) << (2 * (end % ENTRIES_PER_WORD))) - 1;
        if (avail) return wi * ENTRIES_PER_WORD + unsigned(__builtin_ctzll(avail)) / 2;
    }
    return std::nullopt;
}

std::optional<block_address> ref_counts::allocate_in(block_address begin, block_address end) {
    end = std::min(end, nr_blocks_);
    for (block_address b = begin; b < end;) {
        unsigned i = unsigned(b / ENTRIES_PER_BITMAP);
        block_address base = block_address(i) * ENTRIES_PER_BITMAP;
        const bitmap_state& s = bitmaps_[i];
        std::uint32_t lim = std::uint32_t(std::min<block_address>(end - base, ENTRIES_PER_BITMAP));
        std::uint32_t start = std::max(std::uint32_t(b - base), s.none_free_before);
        if (s.nr_free && start < lim) {
            if (auto j = scan(i, start, lim)) {
                set_entry(base + *j, 0, 1);
                return base + *j;
            }
        }
        b = base + ENTRIES_PER_BITMAP;
    }
    return std::nullopt;
}

std::optional<block_address> ref_counts::allocate() {
    if (cursor_ >= nr_blocks_) cursor_ = 0;
    auto r = allocate_in(cursor_, nr_blocks_);
    if (!r && cursor_) r = allocate_in(0, cursor_);
    if (r) cursor_ = *r + 1;
    return r;
}

unsigned ref_counts::extend(block_address extra) {
    unsigned first_new = nr_bitmaps();
    nr_blocks_ += extra;
    std::size_t need = std::size_t((nr_blocks_ + ENTRIES_PER_BITMAP - 1) / ENTRIES_PER_BITMAP);
    words_.resize(need * WORDS_PER_BITMAP, 0);
    bitmaps_.resize(need);
    return first_new;
}

void ref_counts::finish_load() {
    nr_allocated_ = 0;
    cursor_ = 0;
    for (unsigned i = 0; i < nr_bitmaps(); ++i) {
        std::uint64_t* w = words_for_load(i);
        block_address base = block_address(i) * ENTRIES_PER_BITMAP;
        std::uint32_t valid = std::uint32_t(std::min<block_address>(nr_blocks_ - base, ENTRIES_PER_BITMAP));
        for (std::uint32_t wi = 0; wi < WORDS_PER_BITMAP; ++wi) {
            std::uint32_t first_entry = wi * ENTRIES_PER_WORD;
            if (first_entry >= valid) w[wi] = 0;
            else if (valid - first_entry < ENTRIES_PER_WORD)
                w[wi] &= (std::uint64_t(1) << (2 * (valid - first_entry))) - 1;
        }
        std::uint32_t used = 0, nfb = ENTRIES_PER_BITMAP;
        for (std::uint32_t wi = 0; wi < WORDS_PER_BITMAP; ++wi) {
            std::uint64_t nz = nonzero_mask(w[wi]);
            used += unsigned(__builtin_popcountll(nz));
            std::uint64_t zero = ~nz & LOW_BITS;
            if (nfb == ENTRIES_PER_BITMAP && zero)
                nfb = wi * ENTRIES_PER_WORD + unsigned(__builtin_ctzll(zero)) / 2;
        }
        bitmaps_[i].nr_free = ENTRIES_PER_BITMAP - used;
        bitmaps_[i].none_free_before = nfb;
        nr_allocated_ += used;
    }
}

void ref_counts::commit() {
    for (unsigned i : dirty_) {
        bitmap_state& s = bitmaps_[i];
        s.dirty = false;
        if (s.committed) {
            if (spare_.size() < 64) spare_.push_back(std::move(s.committed));
            else s.committed.reset();
        }
    }
    dirty_.clear();
    overflow_.commit();
}

} // namespace pdata::sm
