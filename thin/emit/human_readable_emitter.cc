#include "thin/emit/human_readable_emitter.h"

namespace thin::emit {

void human_readable_emitter::begin_superblock(const superblock_info& sb) {
    out_.put("begin superblock: \"");
    out_.put(sb.uuid);
    out_.put("\", ");
    out_.put_uint(sb.time);
    out_.put(", ");
    out_.put_uint(sb.transaction);
    out_.put(", ");
    out_.put_uint(sb.flags);
    out_.put(", ");
    out_.put_uint(sb.version);
    out_.put(", ");
    out_.put_uint(sb.data_block_size);
    out_.put(", ");
    out_.put_uint(sb.nr_data_blocks);
    out_.put('\n');
}

void human_readable_emitter::end_superblock() { out_.put("end superblock\n"); }

void human_readable_emitter::begin_device(const device_info& dev) {
    out_.put("device: ");
    out_.put_uint(dev.dev_id);
    out_.put("\nmapped_blocks: ");
    out_.put_uint(dev.mapped_blocks);
    out_.put("\ntransaction: ");
    out_.put_uint(dev.transaction);
    out_.put("\ncreation time: ");
    out_.put_uint(dev.creation_time);
    out_.put("\nsnap time: ");
    out_.put_uint(dev.snap_time);
    out_.put('\n');
}

void human_readable_emitter::end_device() {
    run r;
    if (runs_.take(&r)) print(r);
    out_.put('\n');
}

void human_readable_emitter::range_map(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len,
                                       std::uint32_t time) {
    run r;
    if (runs_.add(vbegin, dbegin, len, time, &r)) print(r);
}

void human_readable_emitter::print(const run& r) {
    out_.put("    ");
    if (r.len == 1) {
        out_.put_uint(r.vbegin);
        out_.put(" -> ");
        out_.put_uint(r.dbegin);
    } else {
        out_.put('(');
        out_.put_uint(r.vbegin);
        out_.put("..");
        out_.put_uint(r.vbegin + r.len - 1);
        out_.put(") -> (");
        out_.put_uint(r.dbegin);
        out_.put("..");
        out_.put_uint(r.dbegin + r.len - 1);
        out_.put(')');
    }
    out_.put(", ");
    out_.put_uint(r.time);
    out_.put('\n');
}

} // namespace thin::emit
