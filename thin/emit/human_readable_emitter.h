#pragma once
// The emitter IR as thin_dump 0.9.0's `-f human_readable` text (tools.md §2.4), byte for byte:
//
//   begin superblock: "<uuid>", <time>, <transaction>, <flags>, <version>, <data_block_size>, <nr_data_blocks>
//   device: <dev_id>
//   mapped_blocks: <n>
//   transaction: <n>
//   creation time: <n>
//   snap time: <n>
//       (<vb>..<ve>) -> (<db>..<de>), <time>      a run of two or more (inclusive ends)
//       <vb> -> <db>, <time>                      a single mapping
//   <blank line ends each device>
//   end superblock
#include "thin/emit/output_buffer.h"
#include "thin/emit/run_merger.h"
#include "thin/ir/emitter.h"

namespace thin::emit {

class human_readable_emitter : public emitter {
public:
    explicit human_readable_emitter(std::FILE* out) : out_(out) {}

    void begin_superblock(const superblock_info& sb) override;
    void end_superblock() override;
    void begin_device(const device_info& dev) override;
    void end_device() override;
    void range_map(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time) override;

    void flush() { out_.flush(); }

private:
    void print(const run& r);
    output_buffer out_;
    run_merger runs_;
};

} // namespace thin::emit
