#include "persistent-data/transaction_manager.h"

#include <cstring>

namespace pdata {

transaction_manager::transaction_manager(block_manager& bm, space_map& metadata_sm)
    : bm_(bm), sm_(metadata_sm) {}

write_ref transaction_manager::new_block(const validator& v) {
    auto b = sm_.new_block();
    if (!b) throw no_space("out of metadata space: no free block on the metadata device");
    shadows_.insert(*b);
    return bm_.write_lock_zero(*b, v);
}

write_ref transaction_manager::shadow(block_address orig, const validator& v, bool& inc_children) {
    std::uint32_t count = sm_.get_count(orig);
    if (count == 0)
        throw corrupt_block(orig, "shadowing a block whose reference count is 0");
    if (is_shadow(orig) && count == 1) {
        inc_children = false;
        return bm_.write_lock(orig, v);
    }
    // Read (and validate) the original before allocating, so a corrupt block costs nothing.
    read_ref src = bm_.read_lock(orig, v);
    auto nb = sm_.new_block();
    if (!nb) throw no_space("out of metadata space: no free block on the metadata device");
    shadows_.insert(*nb);
    write_ref dst = bm_.write_lock_zero(*nb, v);
    std::memcpy(dst.data(), src.data(), MD_BLOCK_SIZE);
    src.release();
    sm_.dec(orig);
    inc_children = count > 1;
    return dst;
}

void transaction_manager::pre_commit() { bm_.flush(); }

void transaction_manager::commit(write_ref superblock_ref) {
    superblock_ref.release();
    bm_.flush();
    shadows_.clear();
}

void transaction_manager::abort() {
    bm_.discard_dirty();
    shadows_.clear();
}

} // namespace pdata
