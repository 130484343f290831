// Read-only questions about the pool's devices for front ends: which sectors of a thin device are
// provisioned (NBD block status) and what each device holds (the daemon's status). Both read the
// metadata under the shared lock, so they wait for metadata I/O but never for the data path.
#include "thin/pool/core.h"

namespace thin::pool::detail {

namespace {
void append(std::vector<extent>& out, std::uint64_t sector, std::uint64_t nr, extent_state st) {
    if (nr == 0) return;
    if (!out.empty() && out.back().state == st && out.back().sector + out.back().nr_sectors == sector) {
        out.back().nr_sectors += nr;
        return;
    }
    out.push_back(extent{sector, nr, st});
}
} // namespace

std::vector<extent> pool_core::thin_extents(const thin_impl* tc, std::uint64_t sector, std::uint64_t nr) const {
    std::vector<extent> out;
    std::uint64_t size = tc->nr_sectors();
    if (sector >= size) return out;
    std::uint64_t end = sector + std::min(nr, size - sector);
    // Unmapped sectors read from the external origin below its end, as zeros past it.
    auto unmapped = [&](std::uint64_t b, std::uint64_t e) {
        std::uint64_t split = tc->origin() ? std::clamp(tc->origin_sectors(), b, e) : b;
        append(out, b, split - b, extent_state::origin);
        append(out, split, e - split, extent_state::unmapped);
    };
    std::shared_lock lk(md_lock_);
    if (mode_.load() == pool_mode::fail || md_broken_.load() || !md_) {
        // Nothing known: "allocated" is the answer that never makes a client skip data.
        append(out, sector, end - sector, extent_state::mapped);
        return out;
    }
    std::uint64_t pos = sector;
    try {
        while (pos < end) {
            auto next = md_->lookup_next(tc->id(), block_of(pos));
            std::uint64_t mapped_from = next ? std::max(pos, sector_of(next->vblock)) : end;
            if (mapped_from >= end) {
                unmapped(pos, end);
                break;
            }
            unmapped(pos, mapped_from);
            std::uint64_t mapped_to = std::min(end, sector_of(next->vblock + 1));
            append(out, mapped_from, mapped_to - mapped_from, extent_state::mapped);
            pos = mapped_to;
        }
    } catch (const std::exception&) {
        append(out, pos, end - pos, extent_state::mapped);
    }
    return out;
}

std::vector<device_info> pool_core::devices(bool count_exclusive) {
    std::set<dev_id> active;
    {
        std::lock_guard rl(registry_mutex_);
        for (auto& [id, a] : active_) active.insert(id);
    }
    std::vector<device_info> out;
    std::shared_lock lk(md_lock_);
    if (md_broken_.load() || !md_) throw pool_error(EIO, "the pool's metadata is unusable");
    try {
        for (dev_id id : md_->devices()) {
            device_details d = md_->details(id);
            device_info i;
            i.id = id;
            i.mapped_blocks = d.mapped_blocks;
            i.transaction_id = d.transaction_id;
            i.creation_time = d.creation_time;
            i.snapshotted_time = d.snapshotted_time;
            i.highest_mapped_block = md_->highest_mapped(id);
            i.active = active.count(id) != 0;
            if (count_exclusive) {
                std::uint64_t n = 0;
                md_->for_each_mapping(id, [&](std::uint64_t, block_time bt) {
                    if (md_->data_block_ref_count(bt.data_block) == 1) ++n;
                    return true;
                });
                i.exclusive_blocks = n;
            }
            out.push_back(i);
        }
    } catch (const pool_error&) {
        throw;
    } catch (const std::exception& e) {
        throw pool_error(EIO, std::string("reading the device details failed: ") + e.what());
    }
    return out;
}

} // namespace thin::pool::detail
