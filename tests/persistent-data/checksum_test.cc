#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"
#include "persistent-data/types.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

using namespace pdata;

TEST(Crc32c, StandardCheckValue) {
    const char* s = "123456789";
    EXPECT_EQ(crc32c(s, 9), 0xE3069283u);
}

TEST(Crc32c, RawRegisterAfter4092Zeros) {
    // format.md §2: the register after 4092 zero bytes, before the salt.
    std::vector<unsigned char> z(4092, 0);
    EXPECT_EQ(crc32c_update(0xFFFFFFFFu, z.data(), z.size()), 0x58CDA791u);
}

TEST(BlockChecksum, SaltsOfZeroBlocks) {
    std::vector<unsigned char> b(MD_BLOCK_SIZE, 0);
    EXPECT_EQ(block_checksum(b.data(), block_salt::superblock), 1490015127u);
    EXPECT_EQ(block_checksum(b.data(), block_salt::btree_node), 1489796738u);
    EXPECT_EQ(block_checksum(b.data(), block_salt::bitmap), 1489898266u);
    EXPECT_EQ(block_checksum(b.data(), block_salt::index), 1490015567u);
}

TEST(BlockChecksum, CsumFieldIsNotCovered) {
    std::vector<unsigned char> b(MD_BLOCK_SIZE, 0);
    auto before = block_checksum(b.data(), block_salt::btree_node);
    store_le32(b.data(), 0xdeadbeef);
    EXPECT_EQ(block_checksum(b.data(), block_salt::btree_node), before);
    b[4095] = 1;
    EXPECT_NE(block_checksum(b.data(), block_salt::btree_node), before);
}

TEST(BlockChecksum, SuperblockWorkedExample) {
    // The thin_restore 0.9.0 superblock of format.md §3; its checksum is 0xF2970D1C.
    std::vector<unsigned char> b(MD_BLOCK_SIZE, 0);
    store_le64(&b[32], 27022010);
    store_le32(&b[40], 2);
    store_le32(&b[44], 1);
    store_le64(&b[48], 3);
    store_le64(&b[0x40], 1000); store_le64(&b[0x48], 5); store_le64(&b[0x50], 4); store_le64(&b[0x58], 5);
    store_le64(&b[0xc0], 1024); store_le64(&b[0xc8], 12); store_le64(&b[0xd0], 1); store_le64(&b[0xd8], 2);
    store_le64(&b[0x140], 7); store_le64(&b[0x148], 6);
    store_le32(&b[0x150], 128); store_le32(&b[0x154], 8); store_le64(&b[0x158], 1024);
    EXPECT_EQ(block_checksum(b.data(), block_salt::superblock), 0xF2970D1Cu);
}

TEST(Crc32c, HardwareAndTableAgree) {
    // Whatever path is in use, unaligned lengths and offsets give the same as a bytewise reference.
    std::vector<unsigned char> d(1000);
    for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<unsigned char>(i * 7 + 3);
    for (size_t off = 0; off < 9; ++off) {
        for (size_t len : {0ul, 1ul, 7ul, 8ul, 9ul, 63ul, 500ul}) {
            std::uint32_t ref = 0xFFFFFFFFu;
            for (size_t i = 0; i < len; ++i) {
                ref ^= d[off + i];
                for (int k = 0; k < 8; ++k) ref = (ref & 1) ? (ref >> 1) ^ 0x82F63B78u : ref >> 1;
            }
            EXPECT_EQ(crc32c_update(0xFFFFFFFFu, d.data() + off, len), ref) << off << " " << len;
        }
    }
}
