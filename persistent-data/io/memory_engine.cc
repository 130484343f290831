#include "persistent-data/io_engine.h"

#include <algorithm>
#include <cstring>

namespace pdata {

aligned_block make_aligned_block(bool zero) {
    void* p = std::aligned_alloc(MD_BLOCK_SIZE, MD_BLOCK_SIZE);
    if (!p) throw std::bad_alloc();
    if (zero) std::memset(p, 0, MD_BLOCK_SIZE);
    return aligned_block(static_cast<std::uint8_t*>(p));
}

void io_engine::read_many(std::span<const io_request> reqs) {
    for (auto& r : reqs) read(r.block, r.buf);
}

void io_engine::write_many(std::span<const io_request> reqs) {
    for (auto& r : reqs) write(r.block, r.buf);
}

memory_engine::memory_engine(block_address nr_blocks)
    : data_(new std::uint8_t[nr_blocks * MD_BLOCK_SIZE]()), nr_blocks_(nr_blocks) {}

block_address memory_engine::nr_blocks() { return nr_blocks_; }

void memory_engine::check_range(block_address b) const {
    if (b >= nr_blocks_)
        throw io_error("memory device: block " + std::to_string(b) + " is beyond the end (" +
                       std::to_string(nr_blocks_) + " blocks)");
}

void memory_engine::read(block_address b, void* buf) {
    check_range(b);
    std::memcpy(buf, data_.get() + b * MD_BLOCK_SIZE, MD_BLOCK_SIZE);
}

void memory_engine::write(block_address b, const void* buf) {
    check_range(b);
    std::memcpy(data_.get() + b * MD_BLOCK_SIZE, buf, MD_BLOCK_SIZE);
    ++writes_;
}

void memory_engine::flush() { ++flushes_; }

void memory_engine::resize(block_address nr_blocks) {
    std::unique_ptr<std::uint8_t[]> d(new std::uint8_t[nr_blocks * MD_BLOCK_SIZE]());
    std::memcpy(d.get(), data_.get(), std::min(nr_blocks, nr_blocks_) * MD_BLOCK_SIZE);
    data_ = std::move(d);
    nr_blocks_ = nr_blocks;
}

std::uint8_t* memory_engine::raw(block_address b) {
    check_range(b);
    return data_.get() + b * MD_BLOCK_SIZE;
}

} // namespace pdata
