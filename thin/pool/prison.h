#pragma once
// The bio prison (pool.md §7.1): range locks on virtual or physical blocks of one thin device.
// A cell is held by one bio (the holder); bios that ask for an overlapping range while it is held
// wait in the cell and come back to the worker when it is released.
//
// Ranges are at most 1024 blocks and never cross a 1024-aligned boundary, so every pair of
// conflicting keys falls in the same 1024-block region: the prison is sharded by region, each
// shard a mutex and an ordered map of the (pairwise disjoint) cells held in it.
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace thin::pool {

constexpr std::uint64_t PRISON_MAX_RANGE = 1024;

struct cell_key {
    bool physical = false;  // data blocks, else virtual blocks
    std::uint64_t dev = 0;
    std::uint64_t begin = 0, end = 0;  // [begin, end)

    static cell_key virt(std::uint64_t dev, std::uint64_t b) { return {false, dev, b, b + 1}; }
    static cell_key phys(std::uint64_t dev, std::uint64_t b) { return {true, dev, b, b + 1}; }
};

template <class T>
class bio_prison {
public:
    struct cell {
        cell_key key;
        T* holder = nullptr;
        std::vector<T*> waiters;
    };

    bio_prison() = default;
    bio_prison(const bio_prison&) = delete;
    bio_prison& operator=(const bio_prison&) = delete;
    ~bio_prison() {
        for (auto& s : shards_)
            for (auto& [k, c] : s.cells) delete c;
    }

    // Acquired (true): *out is a new cell held by b. Busy (false): b now waits in the conflicting
    // cell (*out, not to be touched: another thread holds it); the caller forgets b, which comes
    // back on release.
    bool detain(const cell_key& k, T* b, cell** out) {
        check(k);
        shard& s = shard_of(k);
        std::lock_guard lk(s.m);
        if (cell* c = find_conflict(s, k)) {
            c->waiters.push_back(b);
            *out = c;
            return false;
        }
        *out = insert(s, k, b);
        return true;
    }

    // A cell held by holder (may be null), or nullptr when the range is contended; nothing waits.
    cell* try_acquire(const cell_key& k, T* holder = nullptr) {
        check(k);
        shard& s = shard_of(k);
        std::lock_guard lk(s.m);
        if (find_conflict(s, k)) return nullptr;
        return insert(s, k, holder);
    }

    // Frees the cell; returns holder (if any) then waiters, for reprocessing (or erroring).
    std::vector<T*> release(cell* c) {
        std::vector<T*> r;
        {
            shard& s = shard_of(c->key);
            std::lock_guard lk(s.m);
            if (c->holder) r.push_back(c->holder);
            r.insert(r.end(), c->waiters.begin(), c->waiters.end());
            erase(s, c);
        }
        delete c;
        return r;
    }

    // Frees the cell; returns only the waiters (the holder is the caller's business).
    std::vector<T*> release_no_holder(cell* c) {
        std::vector<T*> r;
        {
            shard& s = shard_of(c->key);
            std::lock_guard lk(s.m);
            r = std::move(c->waiters);
            erase(s, c);
        }
        delete c;
        return r;
    }

    // Calls fn on the holder (if with_holder and set) and every waiter under the shard lock, then
    // frees the cell, so nothing can slip in between (pool.md §7.3 rule 3: bios about to be issued
    // are counted while the range is still locked). fn must not block or call back into the prison.
    template <class F>
    void release_visit(cell* c, bool with_holder, F&& fn) {
        {
            shard& s = shard_of(c->key);
            std::lock_guard lk(s.m);
            if (with_holder && c->holder) fn(c->holder);
            for (T* w : c->waiters) fn(w);
            erase(s, c);
        }
        delete c;
    }

    std::size_t size() const {
        std::size_t n = 0;
        for (auto& s : shards_) {
            std::lock_guard lk(s.m);
            n += s.cells.size();
        }
        return n;
    }

private:
    static constexpr unsigned NR_SHARDS = 64;
    using map_key = std::tuple<bool, std::uint64_t, std::uint64_t>;  // physical, dev, begin
    struct shard {
        mutable std::mutex m;
        std::map<map_key, cell*> cells;
    };

    static void check(const cell_key& k) {
        if (k.end <= k.begin || k.end - k.begin > PRISON_MAX_RANGE ||
            (k.begin / PRISON_MAX_RANGE) != ((k.end - 1) / PRISON_MAX_RANGE))
            throw std::invalid_argument("bio prison: bad range [" + std::to_string(k.begin) + ", " +
                                        std::to_string(k.end) + ")");
    }

    shard& shard_of(const cell_key& k) {
        std::uint64_t region = k.begin / PRISON_MAX_RANGE;
        std::uint64_t h = (region * 0x9E3779B97F4A7C15ull) ^ (k.dev * 0xC2B2AE3D27D4EB4Full) ^ (k.physical ? 1 : 0);
        return shards_[(h >> 32) % NR_SHARDS];
    }

    // Held cells of one kind and device are disjoint: only the last one starting before k.end can
    // overlap [k.begin, k.end).
    static cell* find_conflict(shard& s, const cell_key& k) {
        auto it = s.cells.lower_bound(map_key{k.physical, k.dev, k.end});
        if (it == s.cells.begin()) return nullptr;
        --it;
        const cell_key& o = it->second->key;
        if (o.physical != k.physical || o.dev != k.dev) return nullptr;
        return o.end > k.begin ? it->second : nullptr;
    }

    static cell* insert(shard& s, const cell_key& k, T* holder) {
        auto* c = new cell{k, holder, {}};
        s.cells.emplace(map_key{k.physical, k.dev, k.begin}, c);
        return c;
    }

    static void erase(shard& s, cell* c) { s.cells.erase(map_key{c->key.physical, c->key.dev, c->key.begin}); }

    std::array<shard, NR_SHARDS> shards_;
};

} // namespace thin::pool
