#pragma once
// thin_trim (tools.md §10): discard the data blocks the committed data space map says are free.
// Every maximal run of data blocks with count 0 is discarded, including a run at the start and one
// at the end of the device (the behaviour of the current tools; 0.9.0 skipped the leading run and
// discarded the last allocated block with the trailing one).
#include "persistent-data/block_manager.h"
#include "thin/metadata/superblock.h"

#include <cstdint>
#include <functional>
#include <string>

namespace thin::trim {

// Data blocks [begin, end).
struct block_run {
    std::uint64_t begin = 0;
    std::uint64_t end = 0;
    bool operator==(const block_run&) const = default;
};

// Calls on_run for every maximal run of free blocks of the data space map of sb, in order. Reads
// and validates the whole index and every bitmap before the first call, so damaged metadata is
// reported before anything is discarded. Throws corrupt_block / std::runtime_error on damage.
void for_each_free_run(pdata::block_manager& bm, const superblock& sb,
                       const std::function<void(const block_run&)>& on_run);

// A data device that can discard byte ranges: BLKDISCARD on a block device, hole punching
// (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) on a regular file.
class data_device {
public:
    explicit data_device(const std::string& path);  // opened read-write, O_EXCL for block devices
    ~data_device();
    data_device(const data_device&) = delete;
    data_device& operator=(const data_device&) = delete;

    std::uint64_t size_bytes() const { return size_; }
    bool is_block_device() const { return block_; }
    void discard(std::uint64_t offset, std::uint64_t len);

private:
    std::string path_;
    int fd_ = -1;
    bool block_ = false;
    std::uint64_t size_ = 0;
};

struct trim_options {
    std::string metadata_dev;
    std::string data_dev;
};

struct trim_stats {
    std::uint64_t nr_data_blocks = 0;
    std::uint64_t runs = 0;
    std::uint64_t discarded_blocks = 0;
};

// The whole tool: checks the metadata (opened exclusively), the data device size
// ("unexpected data device size, wanted N bytes"), then discards every free run.
// Throws thin::cli::tool_error / std::runtime_error with a one-line message.
trim_stats trim(const trim_options& opts);

} // namespace thin::trim
