#pragma once
// Copy-on-write transactions over the block manager (design.md §1, layer 4; format.md §7.2, §8).
// Shadowing is the only way to get a writable copy of an existing block: a block allocated or
// shadowed in this transaction and not shared is written in place, anything else is copied to a
// block that is free both now and in the committed state. The commit itself (space maps, then
// everything but the superblock, flush, superblock, flush) is driven by the owner of the
// superblock through pre_commit()/commit().
#include "persistent-data/block_manager.h"
#include "persistent-data/space_map.h"

#include <unordered_set>

namespace pdata {

class transaction_manager {
public:
    transaction_manager(block_manager& bm, space_map& metadata_sm);

    block_manager& bm() { return bm_; }
    space_map& sm() { return sm_; }

    // A new zeroed block with count 1. Throws no_space when the metadata device is full.
    write_ref new_block(const validator& v);

    // A writable copy of orig. inc_children is set when orig was shared (count > 1 before the
    // shadow), in which case the caller must increment every block or value the node references.
    write_ref shadow(block_address orig, const validator& v, bool& inc_children);

    read_ref read_lock(block_address b, const validator& v) { return bm_.read_lock(b, v); }

    void inc(block_address b) { sm_.inc(b); }
    void dec(block_address b) { sm_.dec(b); }
    std::uint32_t ref_count(block_address b) const { return sm_.get_count(b); }

    // True when b was allocated or shadowed in the open transaction.
    bool is_shadow(block_address b) const { return shadows_.count(b) != 0; }

    // Writes every dirty block and flushes (step 3 of format.md §8.1). Call after the space maps
    // have been committed and before the superblock is written.
    void pre_commit();
    // Writes the superblock (already filled in superblock_ref), flushes, starts a new transaction.
    void commit(write_ref superblock_ref);
    // Forgets the open transaction's blocks (abort); the owner reopens its structures from disk.
    void abort();

private:
    block_manager& bm_;
    space_map& sm_;
    std::unordered_set<block_address> shadows_;
};

} // namespace pdata
