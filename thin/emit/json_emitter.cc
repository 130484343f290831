#include "thin/emit/json_emitter.h"

namespace thin::emit {

void json_emitter::field(const char* name, std::uint64_t v, bool first) {
    if (!first) out_.put(", ");
    out_.put('"');
    out_.put(name);
    out_.put("\": ");
    out_.put_uint(v);
}

void json_emitter::string(std::string_view s) {
    static const char hex[] = "0123456789abcdef";
    out_.put('"');
    for (char c : s) {
        unsigned char u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out_.put('\\');
            out_.put(c);
        } else if (u < 0x20) {
            out_.put("\\u00");
            out_.put(hex[u >> 4]);
            out_.put(hex[u & 15]);
        } else {
            out_.put(c);
        }
    }
    out_.put('"');
}

void json_emitter::begin_superblock(const superblock_info& sb) {
    out_.put("{\n  \"superblock\": {\"uuid\": ");
    string(sb.uuid);
    field("time", sb.time);
    field("transaction", sb.transaction);
    field("flags", sb.flags);
    field("version", sb.version);
    field("data_block_size", sb.data_block_size);
    field("nr_data_blocks", sb.nr_data_blocks);
    out_.put("},\n  \"devices\": [");
    first_device_ = true;
}

void json_emitter::end_superblock() { out_.put(first_device_ ? "]\n}\n" : "\n  ]\n}\n"); }

void json_emitter::begin_device(const device_info& dev) {
    out_.put(first_device_ ? "\n    {" : ",\n    {");
    first_device_ = false;
    field("dev_id", dev.dev_id, true);
    field("mapped_blocks", dev.mapped_blocks);
    field("transaction", dev.transaction);
    field("creation_time", dev.creation_time);
    field("snap_time", dev.snap_time);
    out_.put(", \"mappings\": [");
    first_run_ = true;
}

void json_emitter::end_device() {
    run r;
    if (runs_.take(&r)) print(r);
    out_.put(first_run_ ? "]}" : "\n    ]}");
}

void json_emitter::range_map(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time) {
    run r;
    if (runs_.add(vbegin, dbegin, len, time, &r)) print(r);
}

void json_emitter::print(const run& r) {
    out_.put(first_run_ ? "\n      {" : ",\n      {");
    first_run_ = false;
    field("origin_begin", r.vbegin, true);
    field("data_begin", r.dbegin);
    field("length", r.len);
    field("time", r.time);
    out_.put('}');
}

} // namespace thin::emit
