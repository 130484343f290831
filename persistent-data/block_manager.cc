#include "persistent-data/block_manager.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace pdata {

using detail::cache_entry;

read_ref& read_ref::operator=(read_ref&& o) noexcept {
    if (this != &o) {
        release();
        bm_ = o.bm_;
        e_ = o.e_;
        o.bm_ = nullptr;
        o.e_ = nullptr;
    }
    return *this;
}

void read_ref::release() {
    if (e_) bm_->unlock_read(e_);
    bm_ = nullptr;
    e_ = nullptr;
}

write_ref& write_ref::operator=(write_ref&& o) noexcept {
    if (this != &o) {
        release();
        bm_ = o.bm_;
        e_ = o.e_;
        o.bm_ = nullptr;
        o.e_ = nullptr;
    }
    return *this;
}

void write_ref::release() {
    if (e_) bm_->unlock_write(e_);
    bm_ = nullptr;
    e_ = nullptr;
}

block_manager::block_manager(std::shared_ptr<io_engine> engine, std::size_t max_cached_blocks)
    : engine_(std::move(engine)), max_cached_(std::max<std::size_t>(max_cached_blocks, 16)),
      nr_blocks_(engine_->nr_blocks()) {}

block_manager::~block_manager() = default;

block_address block_manager::nr_blocks() const {
    std::lock_guard lk(mutex_);
    return nr_blocks_;
}

void block_manager::check_bounds(block_address b) const {
    if (b >= nr_blocks_) {
        // The device may have grown since we last looked.
        auto self = const_cast<block_manager*>(this);
        self->nr_blocks_ = self->engine_->nr_blocks();
        if (b >= nr_blocks_)
            throw corrupt_block(b, "block is beyond the end of the metadata device (" +
                                       std::to_string(nr_blocks_) + " blocks)");
    }
}

cache_entry* block_manager::get_entry(block_address b, bool read_from_disk) {
    check_bounds(b);
    auto it = entries_.find(b);
    if (it != entries_.end()) {
        cache_entry* e = it->second.get();
        if (e->in_lru) {
            lru_.erase(e->lru_pos);
            e->in_lru = false;
        }
        return e;
    }
    evict_if_needed();
    auto e = std::make_unique<cache_entry>();
    e->block = b;
    e->data = make_aligned_block(!read_from_disk);
    if (read_from_disk) {
        engine_->read(b, e->data.get());
        ++reads_;
    }
    cache_entry* raw = e.get();
    entries_.emplace(b, std::move(e));
    return raw;
}

read_ref block_manager::read_lock(block_address b, const validator& v) {
    std::lock_guard lk(mutex_);
    bool fresh = entries_.find(b) == entries_.end();
    cache_entry* e = get_entry(b, true);
    if (e->writer) {
        make_unreferenced(e);
        throw std::logic_error("block " + std::to_string(b) + " is write-locked; cannot read-lock it");
    }
    if (fresh || (e->v != &v && !e->dirty)) {
        try {
            v.check(e->data.get(), b);
        } catch (...) {
            if (fresh) {
                entries_.erase(b);
            } else {
                make_unreferenced(e);
            }
            throw;
        }
    }
    // A dirty block keeps its writer's validator: that is how it gets stamped at write-back.
    if (!e->dirty) e->v = &v;
    ++e->readers;
    return read_ref(this, e);
}

read_ref block_manager::try_read_lock(block_address b, const validator& v) noexcept {
    std::lock_guard lk(mutex_);
    auto it = entries_.find(b);
    if (it == entries_.end()) return {};
    cache_entry* e = it->second.get();
    if (e->writer) return {};
    if (e->v != &v && !e->dirty) {
        // Prefetched (never validated) or last used with another validator: checking costs no I/O.
        try {
            v.check(e->data.get(), b);
        } catch (...) {
            return {};
        }
        e->v = &v;
    }
    if (e->in_lru) {
        lru_.erase(e->lru_pos);
        e->in_lru = false;
    }
    ++e->readers;
    return read_ref(this, e);
}

write_ref block_manager::write_lock(block_address b, const validator& v) {
    std::lock_guard lk(mutex_);
    bool fresh = entries_.find(b) == entries_.end();
    cache_entry* e = get_entry(b, true);
    if (e->writer || e->readers) {
        make_unreferenced(e);
        throw std::logic_error("block " + std::to_string(b) + " is already locked; cannot write-lock it");
    }
    if (fresh || (e->v != &v && !e->dirty)) {
        try {
            v.check(e->data.get(), b);
        } catch (...) {
            if (fresh) entries_.erase(b); else make_unreferenced(e);
            throw;
        }
    }
    e->v = &v;
    e->writer = true;
    e->dirty = true;
    return write_ref(this, e);
}

write_ref block_manager::write_lock_zero(block_address b, const validator& v) {
    std::lock_guard lk(mutex_);
    cache_entry* e = get_entry(b, false);
    if (e->writer || e->readers) {
        make_unreferenced(e);
        throw std::logic_error("block " + std::to_string(b) + " is already locked; cannot write-lock it");
    }
    std::memset(e->data.get(), 0, MD_BLOCK_SIZE);
    e->v = &v;
    e->writer = true;
    e->dirty = true;
    return write_ref(this, e);
}

void block_manager::prefetch(std::span<const block_address> blocks) {
    std::vector<block_address> todo;
    {
        std::lock_guard lk(mutex_);
        for (auto b : blocks) {
            check_bounds(b);
            if (!entries_.count(b)) todo.push_back(b);
        }
    }
    std::sort(todo.begin(), todo.end());
    todo.erase(std::unique(todo.begin(), todo.end()), todo.end());
    // Never prefetch more than half the cache: the rest is for blocks in use.
    if (todo.size() > max_cached_ / 2) todo.resize(max_cached_ / 2);
    std::vector<aligned_block> bufs;
    std::vector<io_request> reqs;
    for (auto b : todo) {
        bufs.push_back(make_aligned_block(false));
        reqs.push_back({b, bufs.back().get()});
    }
    engine_->read_many(reqs);
    std::lock_guard lk(mutex_);
    reads_ += todo.size();
    for (std::size_t i = 0; i < todo.size(); ++i) {
        if (entries_.count(todo[i])) continue;
        evict_if_needed();
        auto e = std::make_unique<cache_entry>();
        e->block = todo[i];
        e->data = std::move(bufs[i]);
        e->v = nullptr;  // validated at first lock
        cache_entry* raw = e.get();
        entries_.emplace(todo[i], std::move(e));
        lru_.push_back(raw);
        raw->lru_pos = std::prev(lru_.end());
        raw->in_lru = true;
    }
}

void block_manager::unlock_read(cache_entry* e) {
    std::lock_guard lk(mutex_);
    --e->readers;
    if (!e->readers) make_unreferenced(e);
}

void block_manager::unlock_write(cache_entry* e) {
    std::lock_guard lk(mutex_);
    e->writer = false;
    make_unreferenced(e);
}

void block_manager::make_unreferenced(cache_entry* e) {
    if (e->readers || e->writer || e->in_lru) return;
    lru_.push_back(e);
    e->lru_pos = std::prev(lru_.end());
    e->in_lru = true;
}

void block_manager::evict_if_needed() {
    if (entries_.size() < max_cached_ || lru_.empty()) return;
    // Evict a batch of least recently used blocks; dirty ones are written first (they are only
    // ever blocks of the open transaction, never the committed superblock's).
    std::size_t target = std::max<std::size_t>(1, max_cached_ / 16);
    std::vector<cache_entry*> victims;
    for (auto it = lru_.begin(); it != lru_.end() && victims.size() < target; ++it) victims.push_back(*it);
    std::vector<cache_entry*> dirty;
    for (auto* e : victims)
        if (e->dirty) dirty.push_back(e);
    write_back(dirty);
    for (auto* e : victims) {
        lru_.erase(e->lru_pos);
        entries_.erase(e->block);
    }
}

void block_manager::write_back(std::vector<cache_entry*>& dirty) {
    if (dirty.empty()) return;
    std::sort(dirty.begin(), dirty.end(), [](auto* a, auto* b) { return a->block < b->block; });
    std::vector<io_request> reqs;
    reqs.reserve(dirty.size());
    for (auto* e : dirty) {
        if (e->v) e->v->prepare(e->data.get(), e->block);
        reqs.push_back({e->block, e->data.get()});
    }
    engine_->write_many(reqs);
    writes_ += reqs.size();
    for (auto* e : dirty) e->dirty = false;
}

void block_manager::flush() {
    std::lock_guard lk(mutex_);
    std::vector<cache_entry*> dirty;
    for (auto& [b, e] : entries_) {
        if (!e->dirty) continue;
        if (e->writer) throw std::logic_error("flush with block " + std::to_string(b) + " still write-locked");
        dirty.push_back(e.get());
    }
    write_back(dirty);
    engine_->flush();
}

void block_manager::discard_dirty() {
    std::lock_guard lk(mutex_);
    // Check first, so a refusal leaves the cache as it was.
    for (auto& [b, e] : entries_)
        if (e->dirty && (e->readers || e->writer))
            throw std::logic_error("discard with block " + std::to_string(b) + " still locked");
    for (auto it = entries_.begin(); it != entries_.end();) {
        cache_entry* e = it->second.get();
        if (e->dirty) {
            if (e->in_lru) lru_.erase(e->lru_pos);
            it = entries_.erase(it);
        } else {
            ++it;
        }
    }
}

void block_manager::invalidate_clean() {
    std::lock_guard lk(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {
        cache_entry* e = it->second.get();
        if (!e->dirty && e->in_lru) {
            lru_.erase(e->lru_pos);
            it = entries_.erase(it);
        } else {
            ++it;
        }
    }
}

std::size_t block_manager::cached_blocks() const {
    std::lock_guard lk(mutex_);
    return entries_.size();
}

} // namespace pdata
