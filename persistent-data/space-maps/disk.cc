#include "persistent-data/space-maps/disk.h"
#include "persistent-data/btree/btree.h"
#include "persistent-data/btree/builder.h"
#include "persistent-data/space-maps/common.h"
#include "persistent-data/space-maps/tree_io.h"

#include <string>

namespace pdata {

namespace {

using namespace sm;

btree::info tree_info(transaction_manager& tm, std::uint32_t value_size) {
    btree::info inf;
    inf.tm = &tm;
    inf.levels = 1;
    inf.vt.size = value_size;  // index entries and overflow counts are not reference counted
    return inf;
}

class disk_space_map final : public counted_space_map {
public:
    // A new map with empty trees and no blocks.
    explicit disk_space_map(transaction_manager& tm)
        : counted_space_map(0), tm_(tm), index_info_(tree_info(tm, INDEX_VALUE_SIZE)),
          overflow_info_(tree_info(tm, OVERFLOW_VALUE_SIZE)) {
        root_.bitmap_root = btree::empty_tree(index_info_);
        root_.ref_count_root = btree::empty_tree(overflow_info_);
    }

    disk_space_map(transaction_manager& tm, const sm_root& root)
        : counted_space_map(root.nr_blocks), tm_(tm), index_info_(tree_info(tm, INDEX_VALUE_SIZE)),
          overflow_info_(tree_info(tm, OVERFLOW_VALUE_SIZE)), root_(root) {
        unsigned n = counts_.nr_bitmaps();
        std::vector<block_address> locations(n);
        std::uint64_t seen = 0;
        read_tree(tm_.bm(), root.bitmap_root, INDEX_VALUE_SIZE, [&](std::uint64_t key, const std::uint8_t* v) {
            if (key >= n || key != seen)
                throw corrupt_block(root.bitmap_root, "data space map index has key " + std::to_string(key) +
                                                          ", wanted " + std::to_string(seen) + " (" +
                                                          std::to_string(n) + " bitmaps)");
            locations[key] = index_entry::unpack(v).blocknr;
            ++seen;
        });
        if (seen != n)
            throw corrupt_block(root.bitmap_root, "data space map index has " + std::to_string(seen) +
                                                      " entries, wanted " + std::to_string(n));
        load_bitmaps(tm_.bm(), counts_, locations);
        load_overflow(tm_.bm(), counts_, root.ref_count_root);
        root_.nr_allocated = counts_.nr_allocated();
    }

    void extend(block_address extra) override {
        unsigned first = counts_.extend(extra);
        for (unsigned i = first; i < counts_.nr_bitmaps(); ++i) {
            // A zeroed bitmap now (format.md §4.5); its index entry is inserted at commit.
            write_ref w = tm_.new_block(bitmap_validator());
            counts_.bitmap(i).location = w.location();
            counts_.mark_dirty(i);
        }
    }

    void commit() override;
    sm_root root() const override { return root_; }

private:
    block_address commit_overflow(block_address root);
    block_address rebuild_overflow(block_address root);

    transaction_manager& tm_;
    btree::info index_info_;
    btree::info overflow_info_;
    sm_root root_;  // the last commit
};

void disk_space_map::commit() {
    block_address index_root = root_.bitmap_root;
    for (unsigned i : counts_.dirty_bitmaps()) {
        bitmap_state& s = counts_.bitmap(i);
        write_ref w;
        if (s.location != NO_BLOCK && tm_.is_shadow(s.location) && tm_.ref_count(s.location) == 1) {
            // Placed in this transaction: overwrite in place.
            w = tm_.bm().write_lock_zero(s.location, bitmap_validator());
        } else {
            // The whole content is rewritten, so a new block replaces a shadow copy.
            w = tm_.new_block(bitmap_validator());
            if (s.location != NO_BLOCK) tm_.dec(s.location);
            s.location = w.location();
        }
        fill_bitmap_block(w.data(), counts_, i);
        w.release();

        std::uint8_t value[INDEX_ENTRY_SIZE];
        counts_.entry(i).pack(value);
        std::uint64_t key = i;
        index_root = btree::insert(index_info_, index_root, &key, value);
    }

    block_address overflow_root = root_.ref_count_root;
    if (counts_.overflow_changed()) overflow_root = commit_overflow(overflow_root);

    root_ = sm_root{counts_.nr_blocks(), counts_.nr_allocated(), index_root, overflow_root};
    counts_.commit();
}

// One insert or remove per changed key costs a descent with shadowing; writing the whole tree
// costs a key-ordered pass over the counts and a block per 336 entries. Per-key updates win only
// for changes to a small part of the tree.
constexpr std::size_t REBUILD_FRACTION = 32;  // rebuild when changed keys >= tree entries / this (bench/sm_bench)

block_address disk_space_map::commit_overflow(block_address root) {
    if (counts_.overflow_untracked()) return rebuild_overflow(root);
    const std::vector<block_address>& keys = counts_.overflow_changes();
    if (keys.size() * REBUILD_FRACTION >= counts_.committed_nr_overflow()) return rebuild_overflow(root);
    for (block_address b : keys) {
        std::uint64_t key = b;
        if (std::uint32_t c = counts_.overflow_count(b)) {
            std::uint8_t value[OVERFLOW_VALUE_SIZE];
            store_le32(value, c);
            root = btree::insert(overflow_info_, root, &key, value);
        } else if (counts_.in_committed_overflow(b)) {
            root = btree::remove(overflow_info_, root, &key);
        }
    }
    return root;
}

// A new tree from every count (fully packed leaves), then the old one is released.
block_address disk_space_map::rebuild_overflow(block_address root) {
    btree::builder b(tm_, OVERFLOW_VALUE_SIZE);
    counts_.for_each_overflow([&](block_address blk, std::uint32_t c) {
        std::uint8_t value[OVERFLOW_VALUE_SIZE];
        store_le32(value, c);
        b.push_back(blk, value);
    });
    block_address new_root = b.finish();
    btree::del(overflow_info_, root);
    return new_root;
}

} // namespace

std::unique_ptr<space_map> create_disk_space_map(transaction_manager& tm, block_address nr_blocks) {
    auto sm = std::make_unique<disk_space_map>(tm);
    sm->extend(nr_blocks);
    sm->commit();
    return sm;
}

std::unique_ptr<space_map> open_disk_space_map(transaction_manager& tm, const sm_root& root) {
    return std::make_unique<disk_space_map>(tm, root);
}

} // namespace pdata
