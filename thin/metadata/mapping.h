#pragma once
// Thin device details (format.md §5.1) and the block_time mapping value (§5.3).
//
// device_details, 24 bytes:        block_time, u64:
//   off size field                   bits  0..23  time (24 bits)
//     0    8 mapped_blocks           bits 24..63  data block (40 bits)
//     8    8 transaction_id
//    16    4 creation_time
//    20    4 snapshotted_time
#include "persistent-data/endian.h"

#include <cstdint>

namespace thin {

using dev_id = std::uint64_t;
constexpr dev_id MAX_DEV_ID = (1u << 24) - 1;        // the kernel accepts 0 .. 2^24-1
constexpr std::uint32_t MAX_TIME = (1u << 24) - 1;   // the 24-bit time of a mapping
constexpr std::uint64_t MAX_DATA_BLOCK = (1ull << 40) - 1;

struct device_details {
    std::uint64_t mapped_blocks = 0;
    std::uint64_t transaction_id = 0;
    std::uint32_t creation_time = 0;
    std::uint32_t snapshotted_time = 0;

    static constexpr std::uint32_t DISK_SIZE = 24;
    void pack(std::uint8_t* out) const {
        pdata::store_le64(out, mapped_blocks);
        pdata::store_le64(out + 8, transaction_id);
        pdata::store_le32(out + 16, creation_time);
        pdata::store_le32(out + 20, snapshotted_time);
    }
    static device_details unpack(const std::uint8_t* in) {
        return {pdata::load_le64(in), pdata::load_le64(in + 8), pdata::load_le32(in + 16),
                pdata::load_le32(in + 20)};
    }
    bool operator==(const device_details&) const = default;
};

struct block_time {
    std::uint64_t data_block = 0;
    std::uint32_t time = 0;

    std::uint64_t pack() const { return (data_block << 24) | time; }
    static block_time unpack(std::uint64_t v) { return {v >> 24, static_cast<std::uint32_t>(v & MAX_TIME)}; }
    bool operator==(const block_time&) const = default;
};

} // namespace thin
