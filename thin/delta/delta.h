#pragma once
// thin_delta (tools.md §7): the differences between two devices' mappings.
//
// Every virtual block mapped in either tree is classified: same (both map it to the same data
// block), different (both map it, to different data blocks), left_only, right_only. The answer is
// a sequence of pieces in virtual block order. A piece is the stretch of one class over which
// neither side's run (consecutive virtual blocks mapped to consecutive data blocks) starts or
// ends - exactly the ranges thin_delta 0.9.0 produces by walking both run lists in step; the
// verbose output prints pieces as they are, the short output merges contiguous pieces of a class.
//
// Both trees are read in step, leaves in key order through a batched reader (disk order within a
// batch); a leaf both trees share (same block) is read once and all of it is `same`.
#include "thin/metadata/superblock.h"

#include "persistent-data/block_manager.h"
#include "persistent-data/io_engine.h"

#include <cstdint>
#include <memory>
#include <string>

namespace thin::cli {
class text_output;
}

namespace thin::delta {

enum class kind { same, different, left_only, right_only };
const char* kind_name(kind k);

struct piece {
    kind k = kind::same;
    std::uint64_t begin = 0;
    std::uint64_t length = 0;
    std::uint64_t left_data = 0;   // data block of `begin` in the left tree (same, different, left_only)
    std::uint64_t right_data = 0;  // in the right tree (same, different, right_only)
    bool operator==(const piece&) const = default;
};

class piece_sink {
public:
    virtual ~piece_sink() = default;
    virtual void add(const piece& p) = 0;
};

struct diff_stats {
    std::uint64_t leaves_read = 0;    // leaf blocks read
    std::uint64_t shared_leaves = 0;  // leaves both trees share (compared without decoding twice)
    std::uint64_t internal_nodes = 0;
};

// Compares the level-2 trees at left_root and right_root (both already known to exist).
diff_stats diff_trees(pdata::block_manager& bm, pdata::block_address left_root, pdata::block_address right_root,
                      piece_sink& out);

// Which subtree a side names, for the output: a device (--snapN) or a raw root (--rootN).
struct side {
    bool is_root = false;
    std::uint64_t value = 0;  // dev id or root block
};

enum class format { xml, json };

struct report_options {
    format fmt = format::xml;
    bool verbose = false;
};

// Writes the header (superblock, diff element), then takes pieces, then finish() closes.
class emitter : public piece_sink {
public:
    virtual void finish() = 0;
};
std::unique_ptr<emitter> make_emitter(cli::text_output& out, const report_options& opts, const superblock& sb,
                                      side left, side right);

} // namespace thin::delta
