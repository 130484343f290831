#pragma once
// The emitter IR as JSON (thin_dump -f json; schema in man/thin_dump.8). One document:
//
//   {
//     "superblock": {"uuid": "", "time": 1, "transaction": 3, "flags": 0, "version": 2,
//                    "data_block_size": 128, "nr_data_blocks": 1000},
//     "devices": [
//       {"dev_id": 0, "mapped_blocks": 5, "transaction": 0, "creation_time": 0, "snap_time": 1,
//        "mappings": [
//          {"origin_begin": 0, "data_begin": 0, "length": 3, "time": 0},
//          ...]},
//       ...]
//   }
//
// Mappings are maximal runs in ascending origin order (length 1 for a single mapping). Numbers
// are JSON integers (u64 values may exceed 2^53: read them with a parser that keeps integers).
#include "thin/emit/output_buffer.h"
#include "thin/emit/run_merger.h"
#include "thin/ir/emitter.h"

namespace thin::emit {

class json_emitter : public emitter {
public:
    explicit json_emitter(std::FILE* out) : out_(out) {}

    void begin_superblock(const superblock_info& sb) override;
    void end_superblock() override;
    void begin_device(const device_info& dev) override;
    void end_device() override;
    void range_map(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time) override;

    void flush() { out_.flush(); }

private:
    void print(const run& r);
    void field(const char* name, std::uint64_t v, bool first = false);
    void string(std::string_view s);
    output_buffer out_;
    run_merger runs_;
    bool first_device_ = true;
    bool first_run_ = true;
};

} // namespace thin::emit
