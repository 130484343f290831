#pragma once
// Little-endian loads and stores for on-disk structures (format.md §0). All supported hosts are
// little-endian, but going through these keeps unaligned access well-defined.
#include <cstdint>
#include <cstring>

namespace pdata {

inline std::uint32_t load_le32(const void* p) { std::uint32_t v; std::memcpy(&v, p, 4); return v; }
inline std::uint64_t load_le64(const void* p) { std::uint64_t v; std::memcpy(&v, p, 8); return v; }
inline void store_le32(void* p, std::uint32_t v) { std::memcpy(p, &v, 4); }
inline void store_le64(void* p, std::uint64_t v) { std::memcpy(p, &v, 8); }

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "thinpool supports little-endian hosts only");

} // namespace pdata
