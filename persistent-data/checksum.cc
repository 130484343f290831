#include "persistent-data/checksum.h"
#include "persistent-data/types.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <nmmintrin.h>
#endif

namespace pdata {
namespace {

constexpr std::uint32_t POLY = 0x82F63B78;  // reflected Castagnoli polynomial

// Slicing-by-8 tables, built at compile time.
constexpr std::array<std::array<std::uint32_t, 256>, 8> make_tables() {
    std::array<std::array<std::uint32_t, 256>, 8> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
        std::uint32_t c = i;
        for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i)
        for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    return t;
}
constexpr auto TABLES = make_tables();

std::uint32_t crc_table(std::uint32_t crc, const unsigned char* p, std::size_t len) {
    while (len >= 8) {
        std::uint64_t w;
        std::memcpy(&w, p, 8);
        w ^= crc;
        crc = TABLES[7][w & 0xff] ^ TABLES[6][(w >> 8) & 0xff] ^ TABLES[5][(w >> 16) & 0xff] ^
              TABLES[4][(w >> 24) & 0xff] ^ TABLES[3][(w >> 32) & 0xff] ^ TABLES[2][(w >> 40) & 0xff] ^
              TABLES[1][(w >> 48) & 0xff] ^ TABLES[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) crc = (crc >> 8) ^ TABLES[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) std::uint32_t crc_hw(std::uint32_t crc, const unsigned char* p,
                                                        std::size_t len) {
    std::uint64_t c = crc;
    while (len >= 8) {
        std::uint64_t w;
        std::memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    std::uint32_t c32 = static_cast<std::uint32_t>(c);
    while (len--) c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}

bool detect_sse42() {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    return (c & bit_SSE4_2) != 0;
}
#endif

const bool HAVE_HW =
#if defined(__x86_64__)
    detect_sse42();
#else
    false;
#endif

} // namespace

bool crc32c_hardware() { return HAVE_HW; }

std::uint32_t crc32c_update(std::uint32_t crc, const void* data, std::size_t len) {
    auto p = static_cast<const unsigned char*>(data);
#if defined(__x86_64__)
    if (HAVE_HW) return crc_hw(crc, p, len);
#endif
    return crc_table(crc, p, len);
}

std::uint32_t crc32c(const void* data, std::size_t len) {
    return ~crc32c_update(0xFFFFFFFFu, data, len);
}

std::uint32_t block_checksum(const void* block, block_salt salt) {
    auto p = static_cast<const unsigned char*>(block);
    return crc32c_update(0xFFFFFFFFu, p + 4, MD_BLOCK_SIZE - 4) ^ static_cast<std::uint32_t>(salt);
}

} // namespace pdata
