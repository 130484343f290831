#include "persistent-data/space-maps/ref_counts.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pdata::sm {

namespace {

constexpr std::uint64_t ZERO_WORDS[WORDS_PER_BITMAP] = {};
constexpr std::size_t MIN_TABLE_SLOTS = 16;
constexpr std::size_t MIN_CHANGES_LIMIT = 16384;
constexpr std::uint8_t DENSE_BIG = 255;  // dense byte meaning "count >= 255, see the table"

// Low bit (2k) of each of the entries k0 <= k < k1 of a word.
std::uint64_t entries_mask(unsigned k0, unsigned k1) {
    std::uint64_t hi = k1 >= ENTRIES_PER_WORD ? ~std::uint64_t(0) : (std::uint64_t(1) << (2 * k1)) - 1;
    std::uint64_t lo = (std::uint64_t(1) << (2 * k0)) - 1;
    return hi & ~lo & LOW_BITS;
}

[[noreturn]] void throw_missing(block_address b) {
    throw std::logic_error("space map: block " + std::to_string(b) +
                           " is marked as overflowing but has no overflow count");
}

} // namespace

// ---------------------------------------------------------------- count_table

count_table::count_table() : slots_(MIN_TABLE_SLOTS), shift_(60) {}

const count_table::slot* count_table::find(block_address b) const {
    std::size_t mask = slots_.size() - 1;
    for (std::size_t i = home(b);; i = (i + 1) & mask) {
        const slot& s = slots_[i];
        if (s.key == b) return &s;
        if (s.key == EMPTY) return nullptr;
    }
}

count_table::slot* count_table::find(block_address b) {
    return const_cast<slot*>(std::as_const(*this).find(b));
}

std::uint32_t count_table::get(block_address b) const {
    const slot* s = find(b);
    return s ? s->count : 0;
}

void count_table::rehash(std::size_t nr_slots) {
    std::vector<slot> old(nr_slots);
    old.swap(slots_);
    shift_ = 64 - unsigned(__builtin_ctzll(nr_slots));
    std::size_t mask = slots_.size() - 1;
    for (auto& s : old) {
        if (s.key == EMPTY) continue;
        std::size_t i = home(s.key);
        while (slots_[i].key != EMPTY) i = (i + 1) & mask;
        slots_[i] = s;
    }
}

void count_table::set(block_address b, std::uint32_t count) {
    std::size_t mask = slots_.size() - 1;
    std::size_t i = home(b);
    for (;; i = (i + 1) & mask) {
        if (slots_[i].key == b) break;
        if (slots_[i].key == EMPTY) {
            if (!count) return;
            if ((used_ + 1) * 10 > slots_.size() * 7) {  // load factor <= 0.7
                rehash(slots_.size() * 2);
                set(b, count);
                return;
            }
            slots_[i] = slot{b, count};
            ++used_;
            return;
        }
    }
    if (count) {
        slots_[i].count = count;
        return;
    }
    // Backward-shift deletion keeps probe chains intact without tombstones.
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

void count_table::shrink() {
    std::size_t n = slots_.size();
    while (n > MIN_TABLE_SLOTS && used_ * 10 <= (n / 2) * 3) n /= 2;  // stays <= 0.6 full
    if (n != slots_.size()) rehash(n);
}

void count_table::clear() {
    slots_.assign(MIN_TABLE_SLOTS, slot{});
    shift_ = 60;
    used_ = 0;
}

// ---------------------------------------------------------------- ref_counts

ref_counts::ref_counts(block_address nr_blocks) : nr_blocks_(0), overflow_changes_limit_(MIN_CHANGES_LIMIT) {
    extend(nr_blocks);
}

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

unsigned ref_counts::committed_entry_of(block_address b) const {
    unsigned i = unsigned(b / ENTRIES_PER_BITMAP);
    unsigned j = unsigned(b % ENTRIES_PER_BITMAP);
    const bitmap_state& s = bitmaps_[i];
    if (s.committed_zero) return 0;
    const std::uint64_t* w = s.committed ? s.committed.get() : words(i);
    return entry_get(w[j / ENTRIES_PER_WORD], j % ENTRIES_PER_WORD);
}

// ---- overflow storage

std::uint32_t ref_counts::load_overflow(unsigned i, std::uint32_t j, block_address b) const {
    const bitmap_state& s = bitmaps_[i];
    if (s.dense) {
        std::uint8_t d = s.dense[j];
        if (d != DENSE_BIG) return d;
    }
    return table_.get(b);
}

void ref_counts::store_overflow(unsigned i, std::uint32_t j, block_address b, std::uint32_t c) {
    bitmap_state& s = bitmaps_[i];
    if (!s.dense) {
        table_.set(b, c);
    } else if (c >= DENSE_BIG) {
        s.dense[j] = DENSE_BIG;
        table_.set(b, c);
    } else {
        if (s.dense[j] == DENSE_BIG) table_.set(b, 0);
        s.dense[j] = std::uint8_t(c);
    }
}

void ref_counts::make_dense(unsigned i) {
    bitmap_state& s = bitmaps_[i];
    s.dense.reset(new std::uint8_t[ENTRIES_PER_BITMAP]());
    const std::uint64_t* w = words(i);
    block_address base = block_address(i) * ENTRIES_PER_BITMAP;
    for (unsigned wi = 0; wi < WORDS_PER_BITMAP; ++wi) {
        std::uint64_t three = w[wi] & (w[wi] >> 1) & LOW_BITS;
        while (three) {
            std::uint32_t j = wi * ENTRIES_PER_WORD + unsigned(__builtin_ctzll(three)) / 2;
            three &= three - 1;
            std::uint32_t c = table_.get(base + j);
            if (c < DENSE_BIG) {
                s.dense[j] = std::uint8_t(c);
                if (c) table_.set(base + j, 0);
            } else {
                s.dense[j] = DENSE_BIG;
            }
        }
    }
}

void ref_counts::make_sparse(unsigned i) {
    bitmap_state& s = bitmaps_[i];
    const std::uint64_t* w = words(i);
    block_address base = block_address(i) * ENTRIES_PER_BITMAP;
    for (unsigned wi = 0; wi < WORDS_PER_BITMAP; ++wi) {
        std::uint64_t three = w[wi] & (w[wi] >> 1) & LOW_BITS;
        while (three) {
            std::uint32_t j = wi * ENTRIES_PER_WORD + unsigned(__builtin_ctzll(three)) / 2;
            three &= three - 1;
            std::uint8_t d = s.dense[j];
            if (d != DENSE_BIG && d) table_.set(base + j, d);
        }
    }
    s.dense.reset();
}

void ref_counts::note_overflow_change(block_address b) {
    if (overflow_untracked_) return;
    if (!overflow_changes_.empty() && overflow_changes_.back() == b) return;
    if (overflow_changes_.size() >= overflow_changes_limit_) {
        // Listing more would cost more than rebuilding the tree at the commit.
        overflow_untracked_ = true;
        std::vector<block_address>().swap(overflow_changes_);
        return;
    }
    overflow_changes_.push_back(b);
}

std::uint32_t ref_counts::overflow_count(block_address b) const {
    if (b >= nr_blocks_ || entry_of(b) != 3) return 0;
    return load_overflow(unsigned(b / ENTRIES_PER_BITMAP), std::uint32_t(b % ENTRIES_PER_BITMAP), b);
}

const std::vector<block_address>& ref_counts::overflow_changes() {
    if (!strays_.empty()) {
        if (!std::is_sorted(strays_.begin(), strays_.end())) std::sort(strays_.begin(), strays_.end());
        overflow_changes_.insert(overflow_changes_.end(), strays_.begin(), strays_.end());
    }
    std::sort(overflow_changes_.begin(), overflow_changes_.end());
    overflow_changes_.erase(std::unique(overflow_changes_.begin(), overflow_changes_.end()), overflow_changes_.end());
    return overflow_changes_;
}

bool ref_counts::in_committed_overflow(block_address b) const {
    if (!strays_.empty() && std::binary_search(strays_.begin(), strays_.end(), b)) return true;
    return b < nr_blocks_ && committed_entry_of(b) == 3;
}

void ref_counts::load_overflow_count(block_address b, std::uint32_t count) {
    check(b);
    store_overflow(unsigned(b / ENTRIES_PER_BITMAP), std::uint32_t(b % ENTRIES_PER_BITMAP), b, count);
}

void ref_counts::add_stray_overflow(block_address b) {
    if (!strays_.empty() && strays_.back() >= b) {
        strays_.push_back(b);
        std::sort(strays_.begin(), strays_.end());
        strays_.erase(std::unique(strays_.begin(), strays_.end()), strays_.end());
    } else {
        strays_.push_back(b);
    }
    ++committed_nr_overflow_;
}

// ---- counts

std::uint32_t ref_counts::get(block_address b) const {
    check(b);
    unsigned v = entry_of(b);
    if (v < 3) return v;
    std::uint32_t c = load_overflow(unsigned(b / ENTRIES_PER_BITMAP), std::uint32_t(b % ENTRIES_PER_BITMAP), b);
    if (c < 3) throw_missing(b);
    return c;
}

void ref_counts::touch(unsigned i) {
    bitmap_state& s = bitmaps_[i];
    if (s.committed || s.committed_zero) return;
    if (s.nr_free == ENTRIES_PER_BITMAP) {
        // Nothing to copy: every entry was 0 at the commit (nr_free is exact).
        s.committed_zero = true;
    } else {
        if (!spare_.empty()) {
            s.committed = std::move(spare_.back());
            spare_.pop_back();
        } else {
            s.committed.reset(new std::uint64_t[WORDS_PER_BITMAP]);
        }
        std::memcpy(s.committed.get(), words(i), 8 * WORDS_PER_BITMAP);
    }
    mark_dirty(i);
}

void ref_counts::mark_dirty(unsigned i) {
    if (bitmaps_[i].dirty) return;
    bitmaps_[i].dirty = true;
    dirty_.push_back(i);
}

void ref_counts::set_entry(unsigned i, std::uint32_t j, unsigned old_v, unsigned v) {
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
    if (v == 3 && old_v != 3) {
        ++nr_overflow_;
        if (++s.nr_three >= DENSE_THRESHOLD && !s.dense) make_dense(i);
    } else if (old_v == 3 && v != 3) {
        --nr_overflow_;
        --s.nr_three;
    }
}

void ref_counts::set_count(unsigned i, std::uint32_t j, block_address b, unsigned v, std::uint32_t count) {
    unsigned nv = std::min<std::uint32_t>(count, 3);
    if (v == 3 && nv != 3) store_overflow(i, j, b, 0);
    if (nv != v) set_entry(i, j, v, nv);
    if (nv == 3) store_overflow(i, j, b, count);
    if (v == 3 || nv == 3) note_overflow_change(b);
}

void ref_counts::set(block_address b, std::uint32_t count) {
    check(b);
    unsigned i = unsigned(b / ENTRIES_PER_BITMAP);
    std::uint32_t j = std::uint32_t(b % ENTRIES_PER_BITMAP);
    set_count(i, j, b, entry_of(b), count);
}

void ref_counts::inc(block_address b, std::uint32_t n) {
    check(b);
    if (n == 0) return;
    unsigned i = unsigned(b / ENTRIES_PER_BITMAP);
    std::uint32_t j = std::uint32_t(b % ENTRIES_PER_BITMAP);
    unsigned v = entry_of(b);
    if (v + n <= 2) {
        set_entry(i, j, v, v + n);
        return;
    }
    std::uint32_t cur = v;
    if (v == 3) {
        bitmap_state& s = bitmaps_[i];
        if (s.dense && s.dense[j] >= 3 && n < std::uint32_t(DENSE_BIG - s.dense[j])) {
            s.dense[j] = std::uint8_t(s.dense[j] + n);
            note_overflow_change(b);
            return;
        }
        cur = load_overflow(i, j, b);
        if (cur < 3) throw_missing(b);
    }
    if (cur > UINT32_MAX - n)
        throw std::logic_error("space map: reference count of block " + std::to_string(b) + " overflows");
    set_count(i, j, b, v, cur + n);
}

void ref_counts::dec(block_address b, std::uint32_t n) {
    check(b);
    if (n == 0) return;
    unsigned i = unsigned(b / ENTRIES_PER_BITMAP);
    std::uint32_t j = std::uint32_t(b % ENTRIES_PER_BITMAP);
    unsigned v = entry_of(b);
    std::uint32_t cur = v;
    if (v == 3) {
        bitmap_state& s = bitmaps_[i];
        if (s.dense && s.dense[j] != DENSE_BIG && s.dense[j] >= 3 && n <= std::uint32_t(s.dense[j] - 3)) {
            s.dense[j] = std::uint8_t(s.dense[j] - n);
            note_overflow_change(b);
            return;
        }
        cur = load_overflow(i, j, b);
        if (cur < 3) throw_missing(b);
    }
    if (cur < n)
        throw std::logic_error("space map: reference count of block " + std::to_string(b) +
                               " would go below zero");
    if (v < 3) set_entry(i, j, v, v - n);
    else set_count(i, j, b, 3, cur - n);
}

void ref_counts::inc_range(block_address begin, block_address end) {
    if (begin >= end) return;
    check(end - 1);
    for (block_address b = begin; b < end;) {
        unsigned i = unsigned(b / ENTRIES_PER_BITMAP);
        std::uint32_t j = std::uint32_t(b % ENTRIES_PER_BITMAP);
        unsigned wi = j / ENTRIES_PER_WORD, k0 = j % ENTRIES_PER_WORD;
        unsigned k1 = unsigned(std::min<block_address>(ENTRIES_PER_WORD, k0 + (end - b)));
        std::uint64_t range = entries_mask(k0, k1);
        std::uint64_t& w = words_[std::size_t(i) * WORDS_PER_BITMAP + wi];
        if ((w & range) == 0) {
            // Every entry in range is 0 or 1 (no weight-2 bit): 0 -> 1 sets the weight-1 bit,
            // 1 -> 2 moves it to the weight-2 bit.
            touch(i);
            std::uint64_t ones = (w >> 1) & range;
            std::uint64_t fresh = range & ~ones;
            w = ((w | (fresh << 1)) & ~(ones << 1)) | ones;
            if (fresh) {
                bitmap_state& s = bitmaps_[i];
                unsigned nr = unsigned(__builtin_popcountll(fresh));
                s.nr_free -= nr;
                nr_allocated_ += nr;
                // As if allocated one by one: the hint moves over a run of fresh entries at it.
                std::uint32_t first = wi * ENTRIES_PER_WORD;
                if (s.none_free_before >= first + k0 && s.none_free_before < first + k1) {
                    unsigned k = s.none_free_before - first;
                    std::uint64_t stop = ~(fresh >> (2 * k)) & LOW_BITS;
                    s.none_free_before += stop ? unsigned(__builtin_ctzll(stop)) / 2 : ENTRIES_PER_WORD - k;
                }
            }
        } else {
            for (unsigned k = k0; k < k1; ++k) inc(b + (k - k0), 1);
        }
        b += k1 - k0;
    }
}

void ref_counts::dec_range(block_address begin, block_address end) {
    if (begin >= end) return;
    check(end - 1);
    for (block_address b = begin; b < end;) {
        unsigned i = unsigned(b / ENTRIES_PER_BITMAP);
        std::uint32_t j = std::uint32_t(b % ENTRIES_PER_BITMAP);
        unsigned wi = j / ENTRIES_PER_WORD, k0 = j % ENTRIES_PER_WORD;
        unsigned k1 = unsigned(std::min<block_address>(ENTRIES_PER_WORD, k0 + (end - b)));
        std::uint64_t range = entries_mask(k0, k1);
        std::uint64_t& w = words_[std::size_t(i) * WORDS_PER_BITMAP + wi];
        std::uint64_t twos = w & range;           // weight-2 bits
        std::uint64_t ones = (w >> 1) & range;    // weight-1 bits
        if ((twos ^ ones) == range) {
            // Every entry in range is 1 or 2: 1 -> 0 clears the weight-1 bit, 2 -> 1 moves the
            // weight-2 bit to the weight-1 bit.
            touch(i);
            w = (w & ~(ones << 1) & ~twos) | (twos << 1);
            if (ones) {
                bitmap_state& s = bitmaps_[i];
                unsigned nr = unsigned(__builtin_popcountll(ones));
                s.nr_free += nr;
                nr_allocated_ -= nr;
                std::uint32_t first = wi * ENTRIES_PER_WORD + unsigned(__builtin_ctzll(ones)) / 2;
                s.none_free_before = std::min(s.none_free_before, first);
            }
        } else {
            for (unsigned k = k0; k < k1; ++k) dec(b + (k - k0), 1);
        }
        b += k1 - k0;
    }
}

// ---- allocation

// First entry in [begin, end) of bitmap i that is zero now and was zero at the last commit.
std::optional<std::uint32_t> ref_counts::scan(unsigned i, std::uint32_t begin, std::uint32_t end) const {
    const bitmap_state& s = bitmaps_[i];
    const std::uint64_t* w = words(i);
    const std::uint64_t* c = s.committed_zero ? ZERO_WORDS : s.committed ? s.committed.get() : w;
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
                set_entry(i, *j, 0, 1);
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
    nr_overflow_ = 0;
    cursor_ = 0;
    table_.clear();
    strays_.clear();
    std::vector<block_address>().swap(overflow_changes_);
    overflow_untracked_ = false;
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
        std::uint32_t used = 0, three = 0, nfb = ENTRIES_PER_BITMAP;
        for (std::uint32_t wi = 0; wi < WORDS_PER_BITMAP; ++wi) {
            std::uint64_t nz = nonzero_mask(w[wi]);
            used += unsigned(__builtin_popcountll(nz));
            three += unsigned(__builtin_popcountll(w[wi] & (w[wi] >> 1) & LOW_BITS));
            std::uint64_t zero = ~nz & LOW_BITS;
            if (nfb == ENTRIES_PER_BITMAP && zero)
                nfb = wi * ENTRIES_PER_WORD + unsigned(__builtin_ctzll(zero)) / 2;
        }
        bitmap_state& s = bitmaps_[i];
        s.nr_free = ENTRIES_PER_BITMAP - used;
        s.none_free_before = nfb;
        s.nr_three = three;
        s.dense.reset();
        if (three >= DENSE_THRESHOLD) make_dense(i);
        nr_allocated_ += used;
        nr_overflow_ += three;
    }
    committed_nr_overflow_ = nr_overflow_;
    overflow_changes_limit_ = std::max<std::size_t>(MIN_CHANGES_LIMIT, committed_nr_overflow_ / 4);
}

void ref_counts::commit() {
    for (unsigned i : dirty_) {
        bitmap_state& s = bitmaps_[i];
        s.dirty = false;
        s.committed_zero = false;
        if (s.committed) {
            if (spare_.size() < 64) spare_.push_back(std::move(s.committed));
            else s.committed.reset();
        }
        // Hysteresis: back to the table only well below the threshold.
        if (s.dense && s.nr_three < DENSE_THRESHOLD / 4) make_sparse(i);
    }
    dirty_.clear();
    committed_nr_overflow_ = nr_overflow_;
    overflow_changes_limit_ = std::max<std::size_t>(MIN_CHANGES_LIMIT, committed_nr_overflow_ / 4);
    overflow_untracked_ = false;
    overflow_changes_.clear();
    if (overflow_changes_.capacity() > MIN_CHANGES_LIMIT) std::vector<block_address>().swap(overflow_changes_);
    strays_.clear();
    table_.shrink();
}

} // namespace pdata::sm
