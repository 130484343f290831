#pragma once
// The compact arrays a check recounts references into (format.md §7.1).
//  - metadata_refs: an exact u32 count per metadata block, and a bitset of the nodes already met,
//    so a node reachable along several paths contributes its references once.
//  - data_counts: four bits per data block; counts of 15 and more keep the excess in a hash table
//    (a data block is counted once per distinct leaf holding it, so large counts are rare). Half a
//    byte instead of four bytes keeps a 16 TiB pool of 64 KiB blocks at 128 MiB rather than 1 GiB.
#include "persistent-data/types.h"

#include <array>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <memory>
#include <unordered_map>
#include <vector>

namespace thin::check {

using pdata::block_address;

// calloc'd arrays: pages never written (blocks no reference reaches) stay unallocated.
template <typename T>
struct calloc_array {
    explicit calloc_array(std::uint64_t n)
        : p_(n ? static_cast<T*>(std::calloc(n, sizeof(T))) : nullptr) {
        if (n && !p_) throw std::bad_alloc();
    }
    T& operator[](std::uint64_t i) { return p_.get()[i]; }
    const T& operator[](std::uint64_t i) const { return p_.get()[i]; }

private:
    struct deleter {
        void operator()(T* p) const { std::free(p); }
    };
    std::unique_ptr<T, deleter> p_;
};

class bitset {
public:
    explicit bitset(std::uint64_t n = 0) : n_(n), words_((n + 63) / 64) {}
    std::uint64_t size() const { return n_; }
    bool test(std::uint64_t i) const { return (words_[i >> 6] >> (i & 63)) & 1; }
    void set(std::uint64_t i) { words_[i >> 6] |= std::uint64_t(1) << (i & 63); }
    // Sets bit i and says whether it was clear.
    bool test_and_set(std::uint64_t i) {
        std::uint64_t m = std::uint64_t(1) << (i & 63);
        bool was = words_[i >> 6] & m;
        words_[i >> 6] |= m;
        return !was;
    }

private:
    std::uint64_t n_;
    calloc_array<std::uint64_t> words_;
};

class metadata_refs {
public:
    explicit metadata_refs(block_address nr_blocks) : n_(nr_blocks), counts_(nr_blocks), seen_(nr_blocks) {}

    block_address nr_blocks() const { return n_; }
    bool in_range(block_address b) const { return b < n_; }
    // False when b is beyond the end: nothing is counted, the reference is remembered as bad.
    bool inc(block_address b) {
        if (b >= n_) {
            if (beyond_.size() < 16) beyond_.push_back(b);
            ++nr_beyond_;
            return false;
        }
        ++counts_[b];
        return true;
    }
    // References to blocks beyond the end (the first few of them, and how many in all).
    const std::vector<block_address>& beyond_end() const { return beyond_; }
    std::uint64_t nr_beyond_end() const { return nr_beyond_; }
    std::uint32_t get(block_address b) const { return counts_[b]; }
    // First sight of node b (true once per block); blocks beyond the end are never "seen".
    bool first_sight(block_address b) { return b < n_ && seen_.test_and_set(b); }

private:
    block_address n_;
    calloc_array<std::uint32_t> counts_;
    bitset seen_;
    std::vector<block_address> beyond_;
    std::uint64_t nr_beyond_ = 0;
};

class data_counts {
public:
    // calloc: pages of a sparse pool that are never counted into stay unallocated.
    explicit data_counts(std::uint64_t nr_blocks)
        : n_(nr_blocks), nibbles_(static_cast<std::uint8_t*>(std::calloc(nr_blocks / 2 + 1, 1))) {
        if (!nibbles_) throw std::bad_alloc();
    }

    std::uint64_t nr_blocks() const { return n_; }
    void inc(std::uint64_t b) {
        std::uint8_t& byte = nibbles_[b >> 1];
        unsigned shift = unsigned(b & 1) << 2;
        if (((byte >> shift) & 0xf) != SATURATED) byte = std::uint8_t(byte + (1u << shift));
        else ++excess_[b];
    }
    std::uint32_t get(std::uint64_t b) const {
        unsigned c = (nibbles_[b >> 1] >> (unsigned(b & 1) << 2)) & 0xf;
        if (c != SATURATED) return c;
        auto it = excess_.find(b);
        return SATURATED + (it == excess_.end() ? 0 : it->second);
    }
    static constexpr unsigned SATURATED = 15;

    // The space-map bitmap word (format.md §4.2) for blocks first .. first+31 when all their counts
    // are below 3 (first a multiple of 32, first + 32 <= nr_blocks); false otherwise.
    bool bitmap_word(std::uint64_t first, std::uint64_t& word) const {
        static const auto table = make_word_table();
        const std::uint8_t* p = nibbles_.get() + first / 2;
        std::uint64_t w = 0;
        for (unsigned j = 0; j < 16; ++j) {
            std::uint8_t t = table[p[j]];
            if (t == 0xff) return false;
            w |= std::uint64_t(t) << (4 * j);
        }
        word = w;
        return true;
    }

private:
    // Byte of two nibble counts -> the 4 bitmap bits of those two entries (0xff if a count > 2).
    // An entry's value v occupies bits 2k (weight 2) and 2k+1 (weight 1).
    static std::array<std::uint8_t, 256> make_word_table() {
        std::array<std::uint8_t, 256> t{};
        for (unsigned x = 0; x < 256; ++x) {
            unsigned lo = x & 0xf, hi = x >> 4;
            auto bits = [](unsigned v) { return ((v >> 1) & 1) | ((v & 1) << 1); };
            t[x] = (lo > 2 || hi > 2) ? 0xff : static_cast<std::uint8_t>(bits(lo) | (bits(hi) << 2));
        }
        return t;
    }
    struct free_deleter {
        void operator()(std::uint8_t* p) const { std::free(p); }
    };
    std::uint64_t n_;
    std::unique_ptr<std::uint8_t[], free_deleter> nibbles_;
    std::unordered_map<std::uint64_t, std::uint32_t> excess_;
};

} // namespace thin::check
