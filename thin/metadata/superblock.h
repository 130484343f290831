#pragma once
// The dm-thin superblock (format.md §3), block 0 of the metadata device.
//
//   off  size  field
//     0     4  csum (salt 160774)
//     4     4  flags (bit 0 NEEDS_CHECK)
//     8     8  blocknr
//    16    16  uuid
//    32     8  magic 27022010
//    40     4  version (2)
//    44     4  time
//    48     8  trans_id
//    56     8  metadata_snap (held root)
//    64   128  data_space_map_root      (first 32 bytes meaningful; the rest kept verbatim)
//   192   128  metadata_space_map_root  (likewise)
//   320     8  data_mapping_root
//   328     8  device_details_root
//   336     4  data_block_size (sectors)
//   340     4  metadata_block_size (8)
//   344     8  metadata_nr_blocks
//   352     4  compat_flags
//   356     4  compat_ro_flags
//   360     4  incompat_flags
#include "persistent-data/space_map.h"
#include "persistent-data/validator.h"

#include <array>
#include <cstdint>

namespace thin {

using pdata::block_address;

constexpr std::uint64_t SUPERBLOCK_MAGIC = 27022010;
constexpr block_address SUPERBLOCK_LOCATION = 0;
constexpr std::uint32_t SUPERBLOCK_VERSION = 2;
constexpr std::uint32_t FLAG_NEEDS_CHECK = 1;
constexpr std::size_t SM_ROOT_AREA = 128;

struct superblock {
    std::uint32_t flags = 0;
    block_address blocknr = 0;
    std::array<std::uint8_t, 16> uuid{};
    std::uint64_t magic = SUPERBLOCK_MAGIC;
    std::uint32_t version = SUPERBLOCK_VERSION;
    std::uint32_t time = 0;
    std::uint64_t trans_id = 0;
    block_address metadata_snap = 0;
    // Whole 128-byte areas: bytes 32..127 are kept verbatim (kernel garbage, format.md §3).
    std::array<std::uint8_t, SM_ROOT_AREA> data_sm_root{};
    std::array<std::uint8_t, SM_ROOT_AREA> metadata_sm_root{};
    block_address data_mapping_root = 0;
    block_address device_details_root = 0;
    std::uint32_t data_block_size = 0;
    std::uint32_t metadata_block_size = pdata::SECTORS_PER_MD_BLOCK;
    std::uint64_t metadata_nr_blocks = 0;
    std::uint32_t compat_flags = 0;
    std::uint32_t compat_ro_flags = 0;
    std::uint32_t incompat_flags = 0;

    bool needs_check() const { return flags & FLAG_NEEDS_CHECK; }
    pdata::sm_root data_sm() const { return pdata::sm_root::unpack(data_sm_root.data()); }
    pdata::sm_root metadata_sm() const { return pdata::sm_root::unpack(metadata_sm_root.data()); }
    // Sets the first 32 bytes and zeroes the rest of the area (what writers should do).
    void set_data_sm(const pdata::sm_root& r);
    void set_metadata_sm(const pdata::sm_root& r);

    // Unpacks a 4096-byte block (no validation) / packs into one (the tail is zeroed; csum and
    // blocknr are stamped by the validator when the block is written).
    static superblock unpack(const std::uint8_t* block);
    void pack(std::uint8_t* block) const;
};

// Checksum + blocknr + magic (the kernel's superblock validator).
const pdata::validator& superblock_validator();

bool block_is_all_zero(const std::uint8_t* block);

} // namespace thin
