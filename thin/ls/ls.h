#pragma once
// thin_ls (tools.md §8): one row per thin device with the chosen fields.
//
// EXCLUSIVE_* counts a device's mappings whose data block is referenced by exactly one device
// mapping in the whole pool (0.9.0's rule); SHARED_* = mapped_blocks - exclusive. Counting reads
// every distinct leaf once: a leaf reached from k devices adds k to each of its data blocks in a
// 2-bit saturating array (0, 1, "2 or more"); a leaf reached from two or more devices cannot hold
// an exclusive mapping, so only single-owner leaves are read again to count them.
#include "thin/metadata/mapping.h"
#include "thin/metadata/superblock.h"

#include "persistent-data/block_manager.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace thin::ls {

enum class field {
    dev,
    mapped_blocks, exclusive_blocks, shared_blocks, highest_block,
    mapped_sectors, exclusive_sectors, shared_sectors, highest_sector,
    mapped_bytes, exclusive_bytes, shared_bytes, highest_byte,
    mapped, exclusive, shared, highest_mapped,
    transaction, create_time, snap_time,
};

// Field names in the order --help lists them (0.9.0's sixteen, then the four HIGHEST_*).
const std::vector<field>& all_fields();
const std::vector<field>& default_fields();  // DEV,MAPPED,CREATE_TIME,SNAP_TIME
const char* field_name(field f);

// Splits on ',' the way 0.9.0 does (a trailing comma ends the list, any other empty name is an
// error) and looks every name up (exact, upper case). Throws std::invalid_argument("unknown field").
std::vector<field> parse_fields(const std::string& list);

// 0.9.0's human-readable size: 702087168 -> "670MiB", 4194304 -> "4096KiB", 0 -> "0".
std::string pretty_size(std::uint64_t bytes);

struct device_row {
    dev_id dev = 0;
    device_details details;
    std::uint64_t exclusive_blocks = 0;       // with counting fields only
    std::optional<std::uint64_t> highest;     // highest mapped virtual block; nullopt if none
};

bool needs_counting(const std::vector<field>& fields);  // any EXCLUSIVE_* / SHARED_*
bool needs_highest(const std::vector<field>& fields);

struct scan_stats {
    std::uint64_t leaves = 0;          // distinct leaves
    std::uint64_t leaf_reads = 0;      // leaf blocks read (single-owner leaves twice)
    std::uint64_t internal_nodes = 0;
};

// Reads what the fields need from the trees of sb (live or snapshot copy). nr_data_blocks sizes
// the counting array (it grows if a mapping lies beyond it; 0 = unknown).
std::vector<device_row> scan(pdata::block_manager& bm, const superblock& sb, std::uint64_t nr_data_blocks,
                             const std::vector<field>& fields, scan_stats* stats = nullptr);

// The value of a cell as 0.9.0 prints it (HIGHEST_* of a device with no mappings count as block
// 0, as the Rust tools do).
std::string cell(const device_row& r, field f, std::uint32_t data_block_size);

// The grid (right-justified columns, every cell followed by one space, header row unless
// no_headers). Nothing at all when fields is empty.
std::string format_table(const std::vector<device_row>& rows, const std::vector<field>& fields,
                         std::uint32_t data_block_size, bool headers);

// JSON (not in 0.9.0): an array of objects, one per device, keyed by field name; plain numbers
// for counts, strings for the human-readable fields.
std::string format_json(const std::vector<device_row>& rows, const std::vector<field>& fields,
                        std::uint32_t data_block_size);

} // namespace thin::ls
