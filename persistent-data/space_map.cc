#include "persistent-data/space_map.h"
#include "persistent-data/endian.h"

namespace pdata {

void sm_root::pack(std::uint8_t* out) const {
    store_le64(out + 0, nr_blocks);
    store_le64(out + 8, nr_allocated);
    store_le64(out + 16, bitmap_root);
    store_le64(out + 24, ref_count_root);
}

sm_root sm_root::unpack(const std::uint8_t* in) {
    sm_root r;
    r.nr_blocks = load_le64(in + 0);
    r.nr_allocated = load_le64(in + 8);
    r.bitmap_root = load_le64(in + 16);
    r.ref_count_root = load_le64(in + 24);
    return r;
}

void space_map::inc_range(block_address begin, block_address end) {
    for (auto b = begin; b < end; ++b) inc(b);
}

void space_map::dec_range(block_address begin, block_address end) {
    for (auto b = begin; b < end; ++b) dec(b);
}

} // namespace pdata
