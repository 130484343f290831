#pragma once
// thin_rmap (tools.md §9): which thin blocks map the given data blocks.
//
// A run is consecutive data blocks mapped from consecutive virtual blocks of one device, all inside
// the requested regions (regions are half-open data block ranges; a run may cross from one region
// into an adjacent one). Every distinct leaf is read once, in disk order, whatever the number of
// devices sharing it; only mappings inside the regions are kept (as runs), so memory follows the
// answer, not the pool.
#include "thin/metadata/mapping.h"

#include "persistent-data/block_manager.h"

#include <cstdint>
#include <string>
#include <vector>

namespace thin::cli {
class text_output;
}

namespace thin::rmap {

struct region {
    std::uint64_t begin = 0;  // first data block
    std::uint64_t end = 0;    // one past the last
    bool operator==(const region&) const = default;
};

// Parses "<begin>..<end>" with 0.9.0's rules (leading blanks and a sign allowed before each
// number, anything after the second number ignored). Throws std::invalid_argument with
// "badly formed region (no dots)", "(couldn't parse numbers)" or "(end <= begin)".
region parse_region(const std::string& text);

struct run {
    std::uint64_t data_begin = 0;
    std::uint64_t length = 0;
    dev_id dev = 0;
    std::uint64_t virt_begin = 0;
    bool operator==(const run&) const = default;
};

struct rmap_options {
    // 0.9.0 walks the mapping tree visiting each node once, so a leaf shared by several devices is
    // reported only for the lowest-numbered device whose tree holds it (byte-compatible default).
    // With all_devices every device that maps a block is reported.
    bool all_devices = false;
};

struct rmap_stats {
    std::uint64_t leaves = 0;
    std::uint64_t internal_nodes = 0;
};

// Every run inside the regions over the devices of the mapping tree at mapping_root (see
// rmap_options), sorted by data begin, then device, then virtual begin (0.9.0's order).
std::vector<run> reverse_map(pdata::block_manager& bm, pdata::block_address mapping_root,
                             std::vector<region> regions, const rmap_options& opts = {},
                             rmap_stats* stats = nullptr);

// "data <db>..<de> -> thin(<dev>) <vb>..<ve>\n" per run.
void write_runs(cli::text_output& out, const std::vector<run>& runs);

} // namespace thin::rmap
