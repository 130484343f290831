#pragma once
// A deterministic generator of thin metadata (per seed), for tests and the thin_generate_metadata
// developer command. It drives the thin::metadata API the way a pool would (create origins,
// snapshots and snapshots of snapshots, sequential and random writes that allocate a new data block
// when the target is unmapped or shared, discards, deletes, commits, a held metadata snapshot) and
// keeps its OWN record of what the metadata must then contain, computed without the b-tree code:
// the mappings of every device, the device details (format.md §5.4 time rules) and the superblock
// fields. That record can be written as the XML that thin_dump 0.9.0 would print.
//
// With a null metadata pointer the generator only builds the record (data blocks come from a
// simple counter), which gives models for restore tests without touching the b-tree code.
#include "thin/generate/record.h"

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace thin {
class metadata;
}

namespace thin::generate {

// ---------------------------------------------------------------------------------------------
// A small PRNG with a fixed output sequence on every platform and library version
// (xoshiro256** seeded through splitmix64).
class rng {
public:
    explicit rng(std::uint64_t seed);
    std::uint64_t next();
    std::uint64_t below(std::uint64_t n);  // uniform in [0, n); n > 0
    bool chance(double p);                 // true with probability p
private:
    std::array<std::uint64_t, 4> s_;
};

// ---------------------------------------------------------------------------------------------
// What to generate. Phases, in order: create the origins; writes to the origins (bursts to a
// randomly chosen origin, discards mixed in); snapshots, each followed by writes spread over the
// snapshot and its parent; (hold a metadata snapshot, then more writes); deletes; set the final
// transaction id and commit. Every phase ends with a commit, and commit_interval adds more.
// Each commit also advances the transaction id by one, so devices carry different ones.
struct shape {
    std::string name = "custom";
    std::uint64_t seed = 1;
    std::uint32_t data_block_size = 128;   // sectors
    std::uint64_t nr_data_blocks = 0;      // 0: every write can allocate, plus slack
    std::uint64_t metadata_blocks = 0;     // 0: estimated from the work (the file is sparse)

    unsigned origins = 1;
    std::uint64_t writes_per_origin = 1000;
    std::uint64_t virtual_blocks = 0;      // per device; 0: writes_per_origin (x2 when random)
    bool random = false;                   // random positions, else a cursor per origin
    unsigned max_burst = 0;                // blocks per burst; 0: 256 sequential, 8 random

    unsigned snapshots = 0;
    unsigned snapshot_depth = 1;           // 1: snapshots of origins only; n: chains n deep
    std::uint64_t writes_per_snapshot = 0;

    double discard_probability = 0;        // per burst: discard a range instead of writing
    unsigned max_discard = 64;
    unsigned deletes = 0;                  // devices deleted near the end

    bool hold_metadata_snap = false;
    std::uint64_t writes_after_hold = 0;

    std::uint64_t commit_interval = 0;     // operations between commits; 0: phase ends only
    std::optional<std::uint64_t> final_transaction;  // default: one past the last
    bool check_lookups = true;             // compare metadata::lookup with the record per write
};

// Names of the built-in shapes (shapes.cc) and the shape for a name (nullopt if unknown).
std::vector<std::string> shape_names();
std::optional<shape> named_shape(std::string_view name);
std::string describe_shape(std::string_view name);  // one line, for --help

// Defaults filled in: virtual_blocks, max_burst, nr_data_blocks, metadata_blocks.
shape resolve(shape s);

struct generate_stats {
    std::uint64_t writes = 0;          // block writes issued
    std::uint64_t allocations = 0;     // writes that allocated a data block
    std::uint64_t discards = 0;        // discard requests
    std::uint64_t discarded = 0;       // mappings removed by them
    std::uint64_t snapshots = 0;
    std::uint64_t deletes = 0;
    std::uint64_t commits = 0;
};

// The metadata and the record disagree, or the generator cannot go on (data space exhausted).
class generate_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class generator {
public:
    // md may be null (record only). The shape is resolve()d first. md, when given, must be a
    // freshly formatted pool with the shape's data block size and nr_data_blocks.
    generator(const shape& s, thin::metadata* md);
    void run();

    const shape& resolved_shape() const { return shape_; }
    const pool_record& record() const { return live_; }
    // The state at reserve_metadata_snap (what thin_dump -m must show), if one is held.
    const std::optional<pool_record>& held_snapshot() const { return held_; }
    const generate_stats& stats() const { return stats_; }

private:
    struct device_state {
        unsigned depth = 0;  // 0 for origins
        std::uint64_t cursor = 0;
        std::uint64_t remaining = 0;
    };

    dev_id new_dev_id();
    void create_origin();
    void create_snapshot();
    void write_burst(dev_id d, std::uint64_t vblock, std::uint64_t len);
    void write_block(dev_id d, std::uint64_t vblock);
    void discard(dev_id d);
    void delete_device(dev_id d);
    void hold();
    void op_done();
    void commit();
    std::uint64_t alloc();
    dev_id pick_device();
    std::uint64_t burst_length(std::uint64_t limit);

    shape shape_;
    thin::metadata* md_;
    rng rng_;
    pool_record live_;
    std::optional<pool_record> held_;
    std::map<dev_id, device_state> state_;
    generate_stats stats_;
    dev_id next_id_ = 0;
    std::uint64_t ops_ = 0;
    std::uint64_t model_next_block_ = 0;
};

// Checks that md's devices, details and mappings equal the record; throws generate_error naming
// the first difference.
void verify(const thin::metadata& md, const pool_record& expected);

// The whole job on a file: a regular file is created or truncated to the shape's metadata size
// (sparse), a block device is used whole; then format, generate, commit and close.
struct generated_file {
    std::unique_ptr<generator> gen;
    std::uint64_t metadata_blocks = 0;       // size of the metadata space map
    std::uint64_t metadata_blocks_used = 0;
    std::uint64_t data_blocks_used = 0;
};
generated_file generate_file(const std::string& path, const shape& s);

} // namespace thin::generate
