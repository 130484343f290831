#pragma once
// The metadata a read-only tool works on: the live superblock (block 0) or, with -m/--metadata-snap,
// the metadata snapshot's superblock copy (format.md §9, tools.md §1). Shared by thin_delta,
// thin_ls, thin_rmap and any other tool that only reads the trees.
//
// Opening checks the input first (require_binary_metadata: XML, empty, too small, all zeros, bad
// magic each get one clear line naming the file), opens it O_EXCL unless a snapshot is asked for
// (the kernel holds live metadata exclusively; the snapshot may be read while the pool runs), then
// reads block 0 through the superblock validator.
#include "thin/metadata/superblock.h"

#include "persistent-data/block_manager.h"
#include "persistent-data/io_engine.h"

#include <memory>
#include <optional>
#include <string>

namespace thin::cli {

// What -m/--metadata-snap [block] asked for.
struct snapshot_request {
    bool use = false;                          // -m given
    std::optional<pdata::block_address> block; // -m BLOCK: must equal the superblock's metadata_snap
};

class metadata_source {
public:
    // Throws tool_error for bad input and for a snapshot that is missing ("no current metadata
    // snap") or does not match ("metadata snapshot does not match that in superblock"), and
    // pdata::corrupt_block / io_error when block 0 or the copy cannot be read or fails validation.
    // cache_blocks bounds the block manager used for the small trees and internal nodes.
    static std::unique_ptr<metadata_source> open(const std::string& tool, const std::string& path,
                                                 const snapshot_request& snap, std::size_t cache_blocks = 1024);

    // Over an engine already open (tests): no input sniffing.
    metadata_source(std::shared_ptr<pdata::io_engine> engine, const snapshot_request& snap,
                    std::size_t cache_blocks = 1024);

    pdata::io_engine& engine() { return *engine_; }
    pdata::block_manager& block_manager() { return *bm_; }
    // The superblock whose trees the tool reads: block 0, or the snapshot copy with -m.
    const superblock& sb() const { return sb_; }
    // Block 0, always (with -m it still gives the data device size).
    const superblock& live() const { return live_; }
    bool from_snapshot() const { return from_snapshot_; }
    pdata::block_address location() const { return location_; }

private:
    std::shared_ptr<pdata::io_engine> engine_;
    std::unique_ptr<pdata::block_manager> bm_;
    superblock live_;
    superblock sb_;
    bool from_snapshot_ = false;
    pdata::block_address location_ = 0;
};

} // namespace thin::cli
