#include "thin/check/repair.h"

#include "thin/metadata/superblock.h"

#include "persistent-data/endian.h"

#include "persistent-data/block_manager.h"
#include "persistent-data/space-maps/disk.h"
#include "persistent-data/space-maps/metadata.h"
#include "persistent-data/transaction_manager.h"

namespace thin::check {

using namespace pdata;

void repair_leaks(std::shared_ptr<io_engine> engine, const difference_list& metadata, const difference_list& data) {
    block_manager bm(std::move(engine));
    superblock sb;
    {
        read_ref r = bm.read_lock(SUPERBLOCK_LOCATION, superblock_validator());
        sb = superblock::unpack(r.data());
    }
    auto md_sm = open_metadata_space_map(bm, sb.metadata_sm());
    transaction_manager tm(bm, *md_sm);
    auto data_sm = open_disk_space_map(tm, sb.data_sm());

    for (auto& d : data.ranges())
        if (d.repairable())
            for (block_address b = d.begin; b < d.end; ++b) data_sm->set_count(b, 0);
    for (auto& d : metadata.ranges())
        if (d.repairable())
            for (block_address b = d.begin; b < d.end; ++b) md_sm->set_count(b, 0);

    data_sm->commit();
    md_sm->commit();
    tm.pre_commit();
    sb.blocknr = SUPERBLOCK_LOCATION;
    sb.flags &= ~FLAG_NEEDS_CHECK;
    sb.set_data_sm(data_sm->root());
    sb.set_metadata_sm(md_sm->root());
    write_ref w = bm.write_lock_zero(SUPERBLOCK_LOCATION, superblock_validator());
    sb.pack(w.data());
    tm.commit(std::move(w));
}

bool clear_needs_check(io_engine& engine) {
    auto buf = make_aligned_block(false);
    engine.read(SUPERBLOCK_LOCATION, buf.get());
    superblock_validator().check(buf.get(), SUPERBLOCK_LOCATION);
    superblock sb = superblock::unpack(buf.get());
    if (!sb.needs_check()) return false;
    sb.flags &= ~FLAG_NEEDS_CHECK;
    // Only the flags change: every other byte (the space-map root areas' tails included) is kept.
    store_le32(buf.get() + 4, sb.flags);
    superblock_validator().prepare(buf.get(), SUPERBLOCK_LOCATION);
    engine.write(SUPERBLOCK_LOCATION, buf.get());
    engine.flush();
    return true;
}

} // namespace thin::check
