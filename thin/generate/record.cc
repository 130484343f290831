#include "thin/generate/record.h"

#include <algorithm>
#include <ostream>
#include <sstream>

namespace thin::generate {

// ---------------------------------------------------------------------------------------------
// device_record

device_record::chunk_map::const_iterator device_record::find_chunk(std::uint64_t index) const {
    if (cache_valid_ && cache_->first == index)
        return cache_;
    auto it = const_cast<chunk_map&>(chunks_).find(index);
    if (it != chunks_.end()) {
        cache_ = it;
        cache_valid_ = true;
    }
    return it;
}

std::optional<block_time> device_record::get(std::uint64_t vblock) const {
    auto it = find_chunk(vblock >> CHUNK_SHIFT);
    if (it == chunks_.end())
        return std::nullopt;
    std::uint64_t v = it->second->values[vblock & (CHUNK_SIZE - 1)];
    if (v == EMPTY)
        return std::nullopt;
    return block_time::unpack(v);
}

device_record::chunk* device_record::writable_chunk(std::uint64_t index) {
    if (!cache_valid_ || cache_->first != index) {
        cache_ = chunks_.try_emplace(index).first;
        cache_valid_ = true;
    }
    auto& p = cache_->second;
    if (!p)
        p = std::make_shared<chunk>();
    else if (p.use_count() > 1)
        p = std::make_shared<chunk>(*p);
    return p.get();
}

bool device_record::set(std::uint64_t vblock, block_time bt) {
    chunk* c = writable_chunk(vblock >> CHUNK_SHIFT);
    std::uint64_t& slot = c->values[vblock & (CHUNK_SIZE - 1)];
    bool was_empty = slot == EMPTY;
    slot = bt.pack();
    if (was_empty) {
        ++c->count;
        ++mapped_;
    }
    return was_empty;
}

bool device_record::erase(std::uint64_t vblock) { return erase_range(vblock, vblock + 1) != 0; }

std::uint64_t device_record::erase_range(std::uint64_t begin, std::uint64_t end) {
    if (begin >= end)
        return 0;
    std::uint64_t removed = 0;
    auto it = chunks_.lower_bound(begin >> CHUNK_SHIFT);
    while (it != chunks_.end() && (it->first << CHUNK_SHIFT) < end) {
        std::uint64_t base = it->first << CHUNK_SHIFT;
        std::uint64_t lo = std::max(begin, base) - base;
        std::uint64_t hi = std::min(end, base + CHUNK_SIZE) - base;
        const chunk* rc = it->second.get();
        bool any = false;
        for (std::uint64_t i = lo; i < hi && !any; ++i)
            any = rc->values[i] != EMPTY;
        if (!any) {
            ++it;
            continue;
        }
        if (it->second.use_count() > 1)
            it->second = std::make_shared<chunk>(*it->second);
        chunk* c = it->second.get();
        for (std::uint64_t i = lo; i < hi; ++i) {
            if (c->values[i] != EMPTY) {
                c->values[i] = EMPTY;
                --c->count;
                ++removed;
            }
        }
        if (c->count == 0) {
            forget();
            it = chunks_.erase(it);
        } else
            ++it;
    }
    mapped_ -= removed;
    return removed;
}

// ---------------------------------------------------------------------------------------------
// pool_record

void pool_record::write_xml(xml_writer& out) const {
    out.begin_superblock({"", time, transaction, flags, version, data_block_size, nr_data_blocks});
    for (const auto& [id, dev] : devices) {
        out.begin_device({id, dev.details.mapped_blocks, dev.details.transaction_id,
                          dev.details.creation_time, dev.details.snapshotted_time});
        dev.mappings.for_each([&](std::uint64_t vb, block_time bt) { out.map(vb, bt.data_block, bt.time); });
        out.end_device();
    }
    out.end_superblock();
}

void pool_record::write_xml(std::ostream& os) const {
    xml_writer w(os);
    write_xml(w);
    w.flush();
}

std::string pool_record::to_xml() const {
    std::ostringstream os;
    write_xml(os);
    return os.str();
}

std::uint64_t pool_record::total_mappings() const {
    std::uint64_t n = 0;
    for (const auto& [id, dev] : devices)
        n += dev.mappings.size();
    return n;
}

} // namespace thin::generate
