#pragma once
// The sink of thin_restore (and of repair): emitter IR events → freshly formatted binary metadata.
//
//  - begin_superblock validates the data block size like the kernel (128..2097152 sectors, a
//    multiple of 128) and nr_data_blocks (at most 2^40, and no more than the output's room for
//    the data space map allows: thin_repair's rule, repair/data_size.h), formats the whole output
//    (up to 4,161,600 blocks), then zeroes block 0 on disk so the output never looks valid until
//    the final commit;
//  - each device's level-2 tree is built bottom-up with full leaves while its mappings stream in;
//    a run of mappings that repeats a whole leaf of an earlier device's tree (same origin blocks,
//    data blocks and times) references that leaf instead of copying it, as a snapshot's tree does
//    in the kernel (pdata::btree::sharing_builder). A data block's count is the number of leaves
//    that map it, so a shared leaf's mappings are counted once;
//  - mapped_blocks is recomputed from the mappings (the XML value is ignored, as thin_restore
//    0.9.0 does); duplicate device ids, mappings beyond nr_data_blocks, overlapping or unordered
//    mappings, origin runs past block 2^64-1, and times beyond 24 bits are errors;
//  - end_superblock builds the level-1 and details trees, writes version 2, metadata_snap 0, the
//    XML's time, transaction and flags, and commits.
#include "thin/ir/emitter.h"
#include "thin/metadata/metadata.h"

#include "persistent-data/btree/leaf_sharing.h"
#include "persistent-data/io_engine.h"

#include <map>
#include <memory>
#include <optional>

namespace thin::restore {

struct restore_options {
    // Overrides of the XML's superblock values.
    std::optional<std::uint64_t> transaction_id;
    std::optional<std::uint32_t> data_block_size;
    std::optional<std::uint64_t> nr_data_blocks;
    std::size_t cache_blocks = 1024;  // metadata blocks cached while building
};

class restore_emitter : public emitter {
public:
    restore_emitter(std::shared_ptr<pdata::io_engine> output, restore_options opts);
    ~restore_emitter() override;

    void begin_superblock(const superblock_info& sb) override;
    void end_superblock() override;
    void begin_device(const device_info& dev) override;
    void end_device() override;
    void range_map(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time) override;

    // True once end_superblock has committed the metadata.
    bool committed() const { return committed_; }
    // Whether anything has been written to the output yet.
    bool started() const { return md_ != nullptr; }
    // Drops the metadata without writing anything more (after a failure).
    void abandon();

private:
    std::shared_ptr<pdata::io_engine> output_;
    restore_options opts_;
    std::unique_ptr<metadata> md_;
    pdata::space_map* data_sm_ = nullptr;
    std::uint64_t nr_data_blocks_ = 0;

    std::map<dev_id, metadata::installed_device> devices_;
    bool in_device_ = false;
    metadata::installed_device cur_{};
    std::unique_ptr<pdata::btree::leaf_catalog> leaves_;  // every device's leaves, for the next ones
    std::unique_ptr<pdata::btree::sharing_builder> builder_;
    // Data blocks the current device's own leaves map, counted in runs of consecutive blocks.
    std::uint64_t run_begin_ = 0, run_len_ = 0;
    void take_refs(const std::uint8_t* values, unsigned count);
    void flush_run();
    // The device's last mapped origin block, when it has any: the next mapping must start above
    // it. (Not "the next free block": after a mapping of block 2^64-1 there is none.)
    std::optional<std::uint64_t> last_vblock_;
    bool committed_ = false;
};

} // namespace thin::restore
