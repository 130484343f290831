#include "thin/trim/trim.h"

#include "persistent-data/btree/walk.h"
#include "persistent-data/space-maps/layout.h"
#include "thin/cli/common.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace thin::trim {

using namespace pdata;

namespace {

// Collects the data space map's index entries (key = bitmap number); any damage is fatal.
class index_collector : public btree::walk_visitor {
public:
    std::vector<std::pair<std::uint64_t, block_address>> bitmaps;

    void visit_value(const std::vector<std::uint64_t>&, std::uint64_t key, const std::uint8_t* value) override {
        bitmaps.emplace_back(key, sm::index_entry::unpack(value).blocknr);
    }
    void visit_damage(const std::vector<std::uint64_t>&, btree::key_range lost, block_address b,
                      const std::string& what) override {
        throw std::runtime_error("data space map index: block " + std::to_string(b) + ": " + what +
                                 " (bitmaps " + btree::to_string(lost) + " lost)");
    }
};

std::vector<block_address> bitmap_locations(block_manager& bm, const sm_root& root) {
    const std::uint64_t wanted = (root.nr_blocks + ENTRIES_PER_BITMAP - 1) / ENTRIES_PER_BITMAP;
    std::vector<block_address> locations;
    if (wanted == 0) return locations;
    index_collector c;
    btree::walk(bm, root.bitmap_root, btree::walk_options{1, sm::INDEX_VALUE_SIZE}, c);
    for (std::uint64_t i = 0; i < c.bitmaps.size() && i < wanted; ++i) {
        if (c.bitmaps[i].first != i)
            throw std::runtime_error("data space map index: bitmap " + std::to_string(i) + " is missing");
        locations.push_back(c.bitmaps[i].second);
    }
    if (locations.size() < wanted)
        throw std::runtime_error("data space map index: " + std::to_string(wanted) + " bitmaps needed for " +
                                 std::to_string(root.nr_blocks) + " data blocks, " +
                                 std::to_string(locations.size()) + " found");
    return locations;
}

} // namespace

void for_each_free_run(block_manager& bm, const superblock& sb, const std::function<void(const block_run&)>& on_run) {
    const sm_root root = sb.data_sm();
    const std::vector<block_address> bitmaps = bitmap_locations(bm, root);

    // First pass: every bitmap must read and validate before anything is discarded.
    bm.prefetch(bitmaps);
    for (block_address b : bitmaps) bm.read_lock(b, bitmap_validator());

    bool in_run = false;
    std::uint64_t run_begin = 0;
    auto used = [&](std::uint64_t block) {
        if (in_run) on_run({run_begin, block});
        in_run = false;
    };
    auto free_at = [&](std::uint64_t block) {
        if (!in_run) run_begin = block;
        in_run = true;
    };
    for (std::uint64_t i = 0; i < bitmaps.size(); ++i) {
        read_ref r = bm.read_lock(bitmaps[i], bitmap_validator());
        const std::uint8_t* words = r.data() + sm::BITMAP_HEADER_SIZE;
        const std::uint64_t first = i * ENTRIES_PER_BITMAP;
        const std::uint64_t entries = std::min<std::uint64_t>(ENTRIES_PER_BITMAP, root.nr_blocks - first);
        for (std::uint64_t j = 0; j < entries; j += sm::ENTRIES_PER_WORD) {
            std::uint64_t w = load_le64(words + 8 * (j / sm::ENTRIES_PER_WORD));
            std::uint64_t nz = sm::nonzero_mask(w);
            unsigned n = static_cast<unsigned>(std::min<std::uint64_t>(sm::ENTRIES_PER_WORD, entries - j));
            if (n == sm::ENTRIES_PER_WORD && nz == 0) {
                free_at(first + j);
                continue;
            }
            if (n == sm::ENTRIES_PER_WORD && nz == sm::LOW_BITS) {
                used(first + j);
                continue;
            }
            for (unsigned k = 0; k < n; ++k) {
                if ((nz >> (2 * k)) & 1)
                    used(first + j + k);
                else
                    free_at(first + j + k);
            }
        }
    }
    if (in_run) on_run({run_begin, root.nr_blocks});
}

data_device::data_device(const std::string& path) : path_(path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) < 0) throw cli::tool_error(path + ": " + std::strerror(errno));
    block_ = S_ISBLK(st.st_mode);
    if (!block_ && !S_ISREG(st.st_mode)) throw cli::tool_error(path + ": not a block device or regular file");
    fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC | (block_ ? O_EXCL : 0));
    if (fd_ < 0) throw cli::tool_error(path + ": cannot open for writing: " + std::strerror(errno));
    if (block_) {
        if (::ioctl(fd_, BLKGETSIZE64, &size_) < 0) {
            int err = errno;
            ::close(fd_);
            throw cli::tool_error(path + ": cannot get device size: " + std::strerror(err));
        }
    } else {
        size_ = static_cast<std::uint64_t>(st.st_size);
    }
}

data_device::~data_device() {
    if (fd_ >= 0) ::close(fd_);
}

void data_device::discard(std::uint64_t offset, std::uint64_t len) {
    if (len == 0) return;
    if (block_) {
        std::uint64_t range[2] = {offset, len};
        if (::ioctl(fd_, BLKDISCARD, range) < 0)
            throw cli::tool_error(path_ + ": BLKDISCARD of " + std::to_string(len) + " bytes at offset " +
                                  std::to_string(offset) + " failed: " + std::strerror(errno));
    } else {
        if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                        static_cast<off_t>(len)) < 0)
            throw cli::tool_error(path_ + ": punching a hole of " + std::to_string(len) + " bytes at offset " +
                                  std::to_string(offset) + " failed: " + std::strerror(errno));
    }
}

trim_stats trim(const trim_options& opts) {
    cli::require_binary_metadata("thin_trim", opts.metadata_dev);
    block_manager bm(cli::open_input(opts.metadata_dev));
    superblock sb;
    {
        read_ref r = bm.read_lock(SUPERBLOCK_LOCATION, superblock_validator());
        sb = superblock::unpack(r.data());
    }
    if (sb.needs_check())
        throw cli::tool_error(opts.metadata_dev +
                              ": the superblock has NEEDS_CHECK set; run thin_check (and thin_repair) first");
    if (sb.data_block_size == 0) throw cli::tool_error(opts.metadata_dev + ": superblock data_block_size is 0");

    trim_stats stats;
    const sm_root root = sb.data_sm();
    stats.nr_data_blocks = root.nr_blocks;
    const std::uint64_t block_bytes = std::uint64_t(sb.data_block_size) * 512;
    unsigned __int128 wanted = static_cast<unsigned __int128>(root.nr_blocks) * block_bytes;
    data_device dev(opts.data_dev);
    if (wanted > dev.size_bytes()) {
        std::string w;
        for (unsigned __int128 v = wanted; v; v /= 10) w.insert(w.begin(), char('0' + int(v % 10)));
        throw cli::tool_error("unexpected data device size, wanted " + w + " bytes");
    }
    for_each_free_run(bm, sb, [&](const block_run& r) {
        dev.discard(r.begin * block_bytes, (r.end - r.begin) * block_bytes);
        ++stats.runs;
        stats.discarded_blocks += r.end - r.begin;
    });
    return stats;
}

} // namespace thin::trim
