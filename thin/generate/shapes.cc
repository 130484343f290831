// The built-in generator shapes and the defaults a shape leaves open (thin/generate/generator.h).
#include "thin/generate/generator.h"

#include "thin/metadata/metadata.h"

#include <algorithm>

namespace thin::generate {

// ---------------------------------------------------------------------------------------------
// shapes

namespace {
struct named {
    const char* name;
    const char* description;
    shape (*make)();
};

const named SHAPES[] = {
    {"tiny", "1 origin, 100 sequential writes",
     [] {
         shape s;
         s.writes_per_origin = 100;
         return s;
     }},
    {"sequential", "1 origin, 100000 sequential writes",
     [] {
         shape s;
         s.writes_per_origin = 100000;
         return s;
     }},
    {"random", "1 origin, 100000 random writes over 200000 blocks",
     [] {
         shape s;
         s.writes_per_origin = 100000;
         s.random = true;
         return s;
     }},
    {"multilevel",
     "2 origins x 80000 sequential writes (3-level trees), 2 snaps",
     [] {
         shape s;
         s.origins = 2;
         s.writes_per_origin = 80000;
         s.snapshots = 2;
         s.writes_per_snapshot = 3000;
         s.discard_probability = 0.01;
         s.max_discard = 200;
         s.commit_interval = 20000;
         return s;
     }},
    {"bitmaps",
     "3 origins x 13000 random writes; 50000 data, 40000 md blocks",
     [] {
         shape s;
         s.origins = 3;
         s.writes_per_origin = 13000;
         s.random = true;
         s.nr_data_blocks = 50000;
         s.metadata_blocks = 40000;
         s.snapshots = 2;
         s.writes_per_snapshot = 2000;
         s.commit_interval = 5000;
         return s;
     }},
    {"refcounts",
     "1 origin, 24 snapshots up to 4 deep (blocks shared widely)",
     [] {
         shape s;
         s.writes_per_origin = 3000;
         s.snapshots = 24;
         s.snapshot_depth = 4;
         s.writes_per_snapshot = 40;
         s.max_burst = 16;
         return s;
     }},
    {"held",
     "2 origins, 3 snaps, held metadata snap, writes, 2 deletes",
     [] {
         shape s;
         s.origins = 2;
         s.writes_per_origin = 4000;
         s.random = true;
         s.snapshots = 3;
         s.snapshot_depth = 2;
         s.writes_per_snapshot = 500;
         s.hold_metadata_snap = true;
         s.writes_after_hold = 3000;
         s.deletes = 2;
         return s;
     }},
    {"deletes",
     "4 origins, 6 snaps, random writes, discards, 5 deletes",
     [] {
         shape s;
         s.origins = 4;
         s.writes_per_origin = 2500;
         s.random = true;
         s.snapshots = 6;
         s.snapshot_depth = 3;
         s.writes_per_snapshot = 300;
         s.discard_probability = 0.05;
         s.deletes = 5;
         s.commit_interval = 500;
         return s;
     }},
    {"odd-block-size", "384-sector data blocks, 2 origins, 2 snapshots",
     [] {
         shape s;
         s.data_block_size = 384;
         s.origins = 2;
         s.writes_per_origin = 5000;
         s.snapshots = 2;
         s.writes_per_snapshot = 500;
         s.discard_probability = 0.02;
         return s;
     }},
    {"huge", "1 origin, 10 million sequential writes (lookups unchecked)",
     [] {
         shape s;
         s.writes_per_origin = 10'000'000;
         s.check_lookups = false;
         return s;
     }},
    {"scattered",
     "1 origin, 100000 random 1-block writes (no runs, unchecked)",
     [] {
         // Every write is its own burst at a random place in twice as many virtual blocks, so
         // neither the virtual nor the data blocks of neighbouring mappings are consecutive:
         // no range mappings in the dump. For benchmarks (bench/tools), which scale it with
         // --mappings, --snapshots and --hold-metadata-snap.
         shape s;
         s.writes_per_origin = 100000;
         s.random = true;
         s.max_burst = 1;
         s.check_lookups = false;
         return s;
     }},
};
} // namespace

std::vector<std::string> shape_names() {
    std::vector<std::string> names;
    for (const auto& n : SHAPES)
        names.push_back(n.name);
    return names;
}

std::optional<shape> named_shape(std::string_view name) {
    for (const auto& n : SHAPES) {
        if (name == n.name) {
            shape s = n.make();
            s.name = n.name;
            return s;
        }
    }
    return std::nullopt;
}

std::string describe_shape(std::string_view name) {
    for (const auto& n : SHAPES)
        if (name == n.name)
            return n.description;
    return {};
}

shape resolve(shape s) {
    if (s.snapshots && !s.origins)
        throw std::invalid_argument("snapshots need at least one origin");
    if (s.snapshots && !s.snapshot_depth)
        throw std::invalid_argument("snapshot depth must be at least 1");
    if (!(s.discard_probability >= 0 && s.discard_probability < 1))
        throw std::invalid_argument("discard probability must be at least 0 and below 1");
    if (!s.virtual_blocks)
        s.virtual_blocks = std::max<std::uint64_t>(1, s.random ? 2 * s.writes_per_origin : s.writes_per_origin);
    if (!s.max_burst)
        s.max_burst = s.random ? 8 : 256;
    if (!s.max_discard)
        s.max_discard = 1;
    std::uint64_t origin_writes = s.origins * s.writes_per_origin;
    std::uint64_t other_writes = s.snapshots * s.writes_per_snapshot + (s.hold_metadata_snap ? s.writes_after_hold : 0);
    if (!s.nr_data_blocks) {
        std::uint64_t w = origin_writes + other_writes;
        s.nr_data_blocks = w + w / 8 + 1024;
    }
    if (s.nr_data_blocks > MAX_DATA_BLOCK)
        throw std::invalid_argument("too many data blocks (at most " + std::to_string(MAX_DATA_BLOCK) + ")");
    if (!s.metadata_blocks) {
        // Leaves are at least a third full (84 of 252 entries) and usually about half; shared
        // leaves get copied by the writes that break sharing. Generous: the file is sparse.
        std::uint64_t est = 4096 + origin_writes / (s.random ? 24 : 40) + 6 * other_writes + 16 * s.snapshots;
        s.metadata_blocks = std::min<std::uint64_t>(est, MAX_METADATA_BLOCKS);
    }
    return s;
}

} // namespace thin::generate
