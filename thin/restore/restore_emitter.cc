#include "thin/restore/restore_emitter.h"

#include "thin/repair/data_size.h"

#include <stdexcept>

namespace thin::restore {

using namespace pdata;

namespace {

// The data space map keeps every count in memory (2 bits a block: 256 GiB for 2^40 blocks), so a
// data device the output cannot describe must be refused before the metadata is formatted, not
// when the bitmaps fail to fit. what names where the number came from.
void check_data_size(io_engine& output, const std::string& what, std::uint64_t nr_data_blocks) {
    const std::string nr = what + " " + std::to_string(nr_data_blocks);
    if (nr_data_blocks > MAX_DATA_BLOCK + 1)
        throw std::runtime_error(nr + " is too large (data block numbers have 40 bits)");
    const std::uint64_t out_blocks = output.nr_blocks();
    if (repair::output_describes(nr_data_blocks, out_blocks)) return;
    const std::uint64_t usable = std::min<std::uint64_t>(out_blocks, thin::MAX_METADATA_BLOCKS);
    const std::uint64_t fixed = repair::fixed_output_blocks(out_blocks);
    throw std::runtime_error(
        nr + " needs " + std::to_string(repair::data_space_map_blocks(nr_data_blocks)) +
        " metadata blocks for the data space map; the output " + output.name() + " (" + std::to_string(out_blocks) +
        " metadata blocks" + (usable < out_blocks ? ", " + std::to_string(usable) + " of them usable" : "") +
        ") has room for " + std::to_string(usable > fixed ? usable - fixed : 0));
}

} // namespace

restore_emitter::restore_emitter(std::shared_ptr<io_engine> output, restore_options opts)
    : output_(std::move(output)), opts_(opts) {}

restore_emitter::~restore_emitter() = default;

void restore_emitter::abandon() {
    builder_.reset();
    leaves_.reset();
    data_sm_ = nullptr;
    md_.reset();  // the block manager drops dirty blocks: nothing more is written
}

void restore_emitter::begin_superblock(const superblock_info& sb) {
    if (md_) throw std::runtime_error("a second <superblock>");
    std::uint32_t dbs = opts_.data_block_size.value_or(sb.data_block_size);
    validate_data_block_size(dbs);
    nr_data_blocks_ = opts_.nr_data_blocks.value_or(sb.nr_data_blocks);
    check_data_size(*output_, opts_.nr_data_blocks ? "--nr-data-blocks" : "nr_data_blocks", nr_data_blocks_);
    if (sb.flags & ~FLAG_NEEDS_CHECK)
        throw std::runtime_error("unsupported superblock flags " + std::to_string(sb.flags) +
                                 " (only 1, needs_check, is defined)");

    md_ = metadata::format(output_, dbs, nr_data_blocks_, opts_.cache_blocks);
    // format() committed an empty pool: hide it until the restore is complete.
    aligned_block zero = make_aligned_block(true);
    output_->write(0, zero.get());
    output_->flush();
    md_->set_restored_state(sb.time, opts_.transaction_id.value_or(sb.transaction), sb.flags);
    data_sm_ = &md_->data_space_map();
}

void restore_emitter::begin_device(const device_info& dev) {
    if (!md_) throw std::runtime_error("<device> before <superblock>");
    if (in_device_) throw std::runtime_error("<device> inside another <device>");
    if (dev.dev_id > MAX_DEV_ID)
        throw std::runtime_error("dev_id " + std::to_string(dev.dev_id) + " is too large (the kernel's limit is " +
                                 std::to_string(MAX_DEV_ID) + ")");
    if (devices_.count(dev.dev_id))
        throw std::runtime_error("device " + std::to_string(dev.dev_id) + " already exists (duplicate dev_id)");
    in_device_ = true;
    cur_ = metadata::installed_device{dev.dev_id, 0, {}};
    cur_.details.transaction_id = dev.transaction;
    cur_.details.creation_time = dev.creation_time;
    cur_.details.snapshotted_time = dev.snap_time;
    if (!leaves_) leaves_ = std::make_unique<btree::leaf_catalog>(8);
    builder_ = std::make_unique<btree::sharing_builder>(
        md_->transaction_manager(), 8, *leaves_, [this](const std::uint8_t* v, unsigned n) { take_refs(v, n); });
    last_vblock_.reset();
}

void restore_emitter::range_map(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time) {
    if (!in_device_) throw std::runtime_error("mapping outside a <device>");
    if (len == 0) return;
    if (last_vblock_ && vbegin <= *last_vblock_)
        throw std::runtime_error("mapping of origin block " + std::to_string(vbegin) +
                                 " is out of order or overlaps the previous one (origin blocks up to " +
                                 std::to_string(*last_vblock_) + " are already mapped)");
    // The run's last block, vbegin + len - 1, may be 2^64-1 itself.
    if (len - 1 > UINT64_MAX - vbegin)
        throw std::runtime_error("range of " + std::to_string(len) + " origin blocks from " + std::to_string(vbegin) +
                                 " goes past the last origin block, " + std::to_string(UINT64_MAX));
    if (dbegin >= nr_data_blocks_ || len > nr_data_blocks_ - dbegin)
        throw std::runtime_error("mapping beyond end of data device (" +
                                 std::to_string(std::max(dbegin, nr_data_blocks_)) +
                                 " >= " + std::to_string(nr_data_blocks_) + ")");
    if (time > MAX_TIME)
        throw std::runtime_error("time " + std::to_string(time) + " does not fit in the 24 bits of a mapping");

    for (std::uint64_t i = 0; i < len; ++i) {
        std::uint8_t v[8];
        store_le64(v, block_time{dbegin + i, time}.pack());
        builder_->push_back(vbegin + i, v);
    }
    cur_.details.mapped_blocks += len;
    last_vblock_ = vbegin + (len - 1);
}

void restore_emitter::take_refs(const std::uint8_t* values, unsigned count) {
    for (unsigned i = 0; i < count; ++i) {
        std::uint64_t b = block_time::unpack(load_le64(values + 8 * i)).data_block;
        if (run_len_ && b == run_begin_ + run_len_) {
            ++run_len_;
            continue;
        }
        flush_run();
        run_begin_ = b;
        run_len_ = 1;
    }
}

void restore_emitter::flush_run() {
    if (run_len_) data_sm_->inc_range(run_begin_, run_begin_ + run_len_);
    run_len_ = 0;
}

void restore_emitter::end_device() {
    if (!in_device_) throw std::runtime_error("</device> without <device>");
    cur_.root = builder_->finish();
    builder_.reset();
    flush_run();
    devices_.emplace(cur_.id, cur_);
    in_device_ = false;
}

void restore_emitter::end_superblock() {
    if (!md_) throw std::runtime_error("</superblock> without <superblock>");
    if (in_device_) throw std::runtime_error("</superblock> inside a <device>");
    std::vector<metadata::installed_device> devs;
    devs.reserve(devices_.size());
    for (auto& [id, d] : devices_) devs.push_back(d);
    devices_.clear();
    md_->install_devices(devs);
    md_->commit();
    committed_ = true;
}

} // namespace thin::restore
