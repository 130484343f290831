#include "thin/cli/metadata_source.h"

#include "thin/cli/common.h"

namespace thin::cli {

using namespace pdata;

namespace {

superblock read_superblock(block_manager& bm, block_address b) {
    read_ref r = bm.read_lock(b, superblock_validator());
    return superblock::unpack(r.data());
}

} // namespace

metadata_source::metadata_source(std::shared_ptr<io_engine> engine, const snapshot_request& snap,
                                 std::size_t cache_blocks)
    : engine_(std::move(engine)), bm_(std::make_unique<pdata::block_manager>(engine_, cache_blocks)) {
    live_ = read_superblock(*bm_, SUPERBLOCK_LOCATION);
    sb_ = live_;
    if (!snap.use) return;
    if (!live_.metadata_snap) throw tool_error("no current metadata snap");
    if (snap.block && *snap.block != live_.metadata_snap)
        throw tool_error("metadata snapshot does not match that in superblock");
    if (live_.metadata_snap >= bm_->nr_blocks())
        throw tool_error("metadata snapshot block " + std::to_string(live_.metadata_snap) +
                         " is beyond the end of the metadata (" + std::to_string(bm_->nr_blocks()) + " blocks)");
    location_ = live_.metadata_snap;
    sb_ = read_superblock(*bm_, location_);
    from_snapshot_ = true;
}

std::unique_ptr<metadata_source> metadata_source::open(const std::string& tool, const std::string& path,
                                                       const snapshot_request& snap, std::size_t cache_blocks) {
    require_binary_metadata(tool, path);
    return std::make_unique<metadata_source>(open_input(path, snap.use), snap, cache_blocks);
}

} // namespace thin::cli
