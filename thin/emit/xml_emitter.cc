#include "thin/emit/xml_emitter.h"

namespace thin::emit {

void xml_emitter::begin_superblock(const superblock_info& sb) {
    xml_superblock_info x;
    x.uuid = sb.uuid;
    x.time = sb.time;
    x.transaction = sb.transaction;
    x.flags = sb.flags;
    x.version = sb.version;
    x.data_block_size = sb.data_block_size;
    x.nr_data_blocks = sb.nr_data_blocks;
    w_.begin_superblock(x);
}

void xml_emitter::end_superblock() { w_.end_superblock(); }

void xml_emitter::begin_device(const device_info& dev) {
    w_.begin_device({dev.dev_id, dev.mapped_blocks, dev.transaction, dev.creation_time, dev.snap_time});
}

void xml_emitter::end_device() { w_.end_device(); }

void xml_emitter::range_map(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time) {
    w_.map_range(vbegin, dbegin, len, time);
}

} // namespace thin::emit
