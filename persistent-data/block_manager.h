#pragma once
// A bounded write-back cache of metadata blocks with RAII references (design.md §1, layer 3).
// Blocks are validated when read from the device and stamped (blocknr, checksum) when written back.
// Many read references or one write reference may be held on a block at a time.
#include "persistent-data/io_engine.h"
#include "persistent-data/validator.h"

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace pdata {

class block_manager;

namespace detail {
struct cache_entry {
    block_address block;
    aligned_block data;
    const validator* v = nullptr;
    unsigned readers = 0;
    bool writer = false;
    bool dirty = false;
    std::list<cache_entry*>::iterator lru_pos;
    bool in_lru = false;
};
} // namespace detail

class read_ref {
public:
    read_ref() = default;
    read_ref(read_ref&& o) noexcept : bm_(o.bm_), e_(o.e_) { o.bm_ = nullptr; o.e_ = nullptr; }
    read_ref& operator=(read_ref&& o) noexcept;
    ~read_ref() { release(); }
    const std::uint8_t* data() const { return e_->data.get(); }
    block_address location() const { return e_->block; }
    explicit operator bool() const { return e_ != nullptr; }
    void release();

private:
    friend class block_manager;
    read_ref(block_manager* bm, detail::cache_entry* e) : bm_(bm), e_(e) {}
    block_manager* bm_ = nullptr;
    detail::cache_entry* e_ = nullptr;
};

class write_ref {
public:
    write_ref() = default;
    write_ref(write_ref&& o) noexcept : bm_(o.bm_), e_(o.e_) { o.bm_ = nullptr; o.e_ = nullptr; }
    write_ref& operator=(write_ref&& o) noexcept;
    ~write_ref() { release(); }
    std::uint8_t* data() const { return e_->data.get(); }
    block_address location() const { return e_->block; }
    explicit operator bool() const { return e_ != nullptr; }
    void release();

private:
    friend class block_manager;
    write_ref(block_manager* bm, detail::cache_entry* e) : bm_(bm), e_(e) {}
    block_manager* bm_ = nullptr;
    detail::cache_entry* e_ = nullptr;
};

class block_manager {
public:
    // max_cached_blocks bounds memory (a few more may be held while every entry is referenced).
    explicit block_manager(std::shared_ptr<io_engine> engine, std::size_t max_cached_blocks = 16384);
    // Dirty blocks not flushed are dropped: an unflushed transaction is an aborted one.
    ~block_manager();
    block_manager(const block_manager&) = delete;
    block_manager& operator=(const block_manager&) = delete;

    block_address nr_blocks() const;
    io_engine& engine() { return *engine_; }

    // Throws corrupt_block (naming the block) when validation fails, io_error on read failure,
    // std::logic_error when the reference would conflict with one already held.
    read_ref read_lock(block_address b, const validator& v);
    write_ref write_lock(block_address b, const validator& v);
    // Write reference to a zeroed block without reading the device (for new blocks).
    write_ref write_lock_zero(block_address b, const validator& v);
    // The fast path's read_lock (pool.md §7.3 rule 9): never touches the device. Returns an empty
    // read_ref when b is not cached, is write-locked, or fails validation (the blocking read_lock
    // is the one that reports that); never throws.
    read_ref try_read_lock(block_address b, const validator& v) noexcept;

    // Reads the given blocks (not yet cached) in batches, in block order; validation happens at lock.
    void prefetch(std::span<const block_address> blocks);

    // Writes every dirty unreferenced block (in block order), then flushes the device.
    void flush();
    // Forgets every dirty block (abort). No references may be held.
    void discard_dirty();
    // Forgets every clean unreferenced block, so later reads go to the device.
    void invalidate_clean();

    std::size_t cached_blocks() const;
    std::uint64_t reads() const { return reads_; }
    std::uint64_t writes() const { return writes_; }

private:
    friend class read_ref;
    friend class write_ref;
    detail::cache_entry* get_entry(block_address b, bool read_from_disk);
    void unlock_read(detail::cache_entry* e);
    void unlock_write(detail::cache_entry* e);
    void make_unreferenced(detail::cache_entry* e);
    void evict_if_needed();
    void write_back(std::vector<detail::cache_entry*>& entries);
    void check_bounds(block_address b) const;

    std::shared_ptr<io_engine> engine_;
    std::size_t max_cached_;
    block_address nr_blocks_;
    mutable std::mutex mutex_;
    std::unordered_map<block_address, std::unique_ptr<detail::cache_entry>> entries_;
    std::list<detail::cache_entry*> lru_;  // unreferenced entries, least recently used first
    std::uint64_t reads_ = 0;
    std::uint64_t writes_ = 0;
};

} // namespace pdata
