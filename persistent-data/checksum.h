#pragma once
// CRC-32C (Castagnoli) and the salted block checksum of format.md §2.
#include <cstddef>
#include <cstdint>

namespace pdata {

// Raw CRC-32C register update: no initial or final inversion. The caller chooses the seed.
std::uint32_t crc32c_update(std::uint32_t crc, const void* data, std::size_t len);

// The usual iSCSI CRC-32C (init 0xFFFFFFFF, final inversion); crc32c("123456789") == 0xE3069283.
std::uint32_t crc32c(const void* data, std::size_t len);

// Salts of the metadata block kinds.
enum class block_salt : std::uint32_t {
    superblock = 160774,
    btree_node = 121107,
    bitmap = 240779,
    index = 160478,
};

// Checksum of a 4096-byte metadata block as stored at offset 0: CRC-32C over bytes 4..4095 with
// register 0xFFFFFFFF and no final inversion, XOR the salt.
std::uint32_t block_checksum(const void* block, block_salt salt);

// True when the CPU's SSE4.2 crc32 instruction is used.
bool crc32c_hardware();

} // namespace pdata
