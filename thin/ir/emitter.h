#pragma once
// The one intermediate representation of a pool (design.md §1): a stream of events that sources
// produce (the binary metadata walker, the XML parser, the damage-tolerant repair walker) and
// sinks consume (XML, human-readable and JSON emitters, the restore builder). Grammar:
//
//   pool      := begin_superblock device* end_superblock
//   device    := begin_device run* end_device
//   run       := range_map            (vblocks ascending and not overlapping within a device)
#include <cstdint>
#include <optional>
#include <string>

namespace thin {

struct superblock_info {
    std::string uuid;  // dumps always print ""
    std::uint32_t time = 0;
    std::uint64_t transaction = 0;
    std::uint32_t flags = 0;
    std::uint32_t version = 2;
    std::uint32_t data_block_size = 0;
    std::uint64_t nr_data_blocks = 0;
    std::optional<std::uint64_t> metadata_snap;  // never printed by dump; ignored by restore
};

struct device_info {
    std::uint64_t dev_id = 0;
    std::uint64_t mapped_blocks = 0;
    std::uint64_t transaction = 0;
    std::uint32_t creation_time = 0;
    std::uint32_t snap_time = 0;
};

class emitter {
public:
    virtual ~emitter() = default;
    virtual void begin_superblock(const superblock_info& sb) = 0;
    virtual void end_superblock() = 0;
    virtual void begin_device(const device_info& dev) = 0;
    virtual void end_device() = 0;
    // len consecutive virtual blocks from vbegin map to consecutive data blocks from dbegin, all
    // mapped at `time`. Sources may split a run anywhere; sinks merge adjacent runs as they need.
    virtual void range_map(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time) = 0;
};

} // namespace thin
