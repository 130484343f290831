#pragma once
// Turning fuzzer input into metadata blocks that get past the checksum.
//
// A random block almost never carries a valid salted checksum, so the validators would reject
// nearly every input at the first check and the fuzzer would never reach the code behind them.
// Inputs are therefore records of one kind byte followed by a 4096-byte block; the kind byte says
// which validator stamps the block (blocknr and checksum) before the code under test sees it.
// A kind the stamping does not know leaves the block exactly as given, so bad checksums and bad
// self-locations are still exercised.
#include "persistent-data/btree/node.h"
#include "persistent-data/validator.h"
#include "thin/metadata/superblock.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace fuzz {

constexpr std::size_t BLOCK = 4096;
constexpr std::size_t RECORD = 1 + BLOCK;

enum kind : std::uint8_t { raw = 0, superblock = 1, node = 2, bitmap = 3, index = 4 };
// Set on a kind byte: stamp the checksum but keep the blocknr field as given.
constexpr std::uint8_t KEEP_BLOCKNR = 0x80;

inline const pdata::checksummed_validator* stamper(std::uint8_t k) {
    switch (k & 7) {
    case superblock: return static_cast<const pdata::checksummed_validator*>(&thin::superblock_validator());
    case node: return &pdata::btree::btree_node_validator();
    case bitmap: return &pdata::bitmap_validator();
    case index: return &pdata::index_validator();
    default: return nullptr;
    }
}

// Stamps block (BLOCK bytes, location b) as kind k says.
inline void stamp(std::uint8_t k, std::uint8_t* block, pdata::block_address b) {
    const pdata::checksummed_validator* v = stamper(k);
    if (!v) return;
    if (k & KEEP_BLOCKNR)
        pdata::store_le32(block, pdata::block_checksum(block, v->salt()));
    else
        v->prepare(block, b);
}

// Splits data into records (the last one zero-padded), stamps each, and returns at most
// max_blocks blocks (at least one).
inline std::vector<std::uint8_t> blocks_from(const std::uint8_t* data, std::size_t size, std::size_t max_blocks) {
    std::size_t n = std::clamp<std::size_t>((size + RECORD - 1) / RECORD, 1, max_blocks);
    std::vector<std::uint8_t> out(n * BLOCK, 0);
    for (std::size_t i = 0; i < n; ++i) {
        std::size_t off = i * RECORD;
        if (off >= size) break;
        std::uint8_t k = data[off];
        std::size_t len = std::min(BLOCK, size - off - 1);
        std::memcpy(out.data() + i * BLOCK, data + off + 1, len);
        stamp(k, out.data() + i * BLOCK, i);
    }
    return out;
}

} // namespace fuzz
