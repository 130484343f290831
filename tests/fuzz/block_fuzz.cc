// One metadata block through every validator and reader of a single block: the superblock
// (validator, unpack, space-map roots), b-tree nodes (validator, the checker's node_problem, key and
// value access, lower_bound), space-map bitmaps and index blocks, and the pack classifier.
// Input: kind byte + 4096-byte block (fuzz_blocks.h); the block is given location kind >> 3 & 7
// so both the matching and the wrong self-location are tried.
#include "fuzz/fuzz_blocks.h"

#include "persistent-data/space-maps/layout.h"
#include "thin/check/mapping_check.h"
#include "thin/metadata/mapping.h"
#include "thin/pack/pack.h"

#include <exception>

namespace {

// Keeps results alive so the reads are not optimised away.
volatile std::uint64_t sink;

void try_validator(const pdata::validator& v, const std::uint8_t* b, pdata::block_address loc) {
    try {
        v.check(b, loc);
        sink = sink + 1;
    } catch (const std::exception&) {
    }
}

void read_superblock(const std::uint8_t* b) {
    thin::superblock sb = thin::superblock::unpack(b);
    pdata::sm_root d = sb.data_sm(), m = sb.metadata_sm();
    sink = sink + sb.trans_id + d.nr_blocks + d.bitmap_root + m.nr_allocated + m.ref_count_root;
    // unpack and pack must round-trip the fields they know (the csum is left to the validator).
    std::uint8_t again[fuzz::BLOCK];
    sb.pack(again);
    if (thin::superblock::unpack(again).data_mapping_root != sb.data_mapping_root) __builtin_trap();
}

void read_node(const std::uint8_t* b, pdata::block_address loc) {
    for (std::uint32_t vs : {8u, 16u, 24u, 4u})
        sink = sink + thin::check::node_problem(b, loc, vs).size();
    try {
        pdata::btree::btree_node_validator().check(b, loc);
    } catch (const std::exception&) {
        return;
    }
    // Past the validator the header is sane, so every entry is inside the block.
    pdata::btree::node_ref n(b);
    for (unsigned i = 0; i < n.nr_entries(); ++i) {
        sink = sink + n.key(i);
        if (n.value_size() >= 8) sink = sink + n.value64(i);
        if (n.value_size() >= thin::device_details::DISK_SIZE)
            sink = sink + thin::device_details::unpack(n.value(i)).mapped_blocks;
        if (n.value_size() >= pdata::sm::INDEX_ENTRY_SIZE)
            sink = sink + pdata::sm::index_entry::unpack(n.value(i)).nr_free;
    }
    if (n.nr_entries()) sink = sink + n.lower_bound(n.key(n.nr_entries() / 2)) + n.find(n.key(0));
}

void read_bitmap(const std::uint8_t* b) {
    for (unsigned w = 0; w < pdata::sm::WORDS_PER_BITMAP; ++w) {
        std::uint64_t word = pdata::load_le64(b + pdata::sm::BITMAP_HEADER_SIZE + 8 * w);
        sink = sink + pdata::sm::nonzero_mask(word) + pdata::sm::entry_get(word, w % 32);
    }
}

void read_index(const std::uint8_t* b) {
    for (unsigned i = 0; i < pdata::sm::MAX_METADATA_BITMAPS; ++i) {
        auto e = pdata::sm::index_entry::unpack(b + pdata::sm::INDEX_BLOCK_HEADER_SIZE + i * pdata::sm::INDEX_ENTRY_SIZE);
        sink = sink + e.blocknr + e.nr_free + e.none_free_before;
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    std::uint8_t k = data[0];
    pdata::block_address loc = (k >> 3) & 7;
    alignas(8) std::uint8_t block[fuzz::BLOCK] = {};
    std::memcpy(block, data + 1, std::min(fuzz::BLOCK, size - 1));
    fuzz::stamp(k, block, loc);

    try_validator(thin::superblock_validator(), block, loc);
    try_validator(pdata::btree::btree_node_validator(), block, loc);
    try_validator(pdata::bitmap_validator(), block, loc);
    try_validator(pdata::index_validator(), block, loc);
    sink = sink + static_cast<unsigned>(thin::pack::classify_block(block));

    read_superblock(block);
    read_node(block, loc);
    read_bitmap(block);
    read_index(block);
    return 0;
}
