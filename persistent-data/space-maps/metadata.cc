#include "persistent-data/space-maps/metadata.h"
#include "persistent-data/space-maps/common.h"
#include "persistent-data/space-maps/tree_io.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace pdata {

namespace {

using namespace sm;

block_address nr_bitmaps_for(block_address nr_blocks) {
    return (nr_blocks + ENTRIES_PER_BITMAP - 1) / ENTRIES_PER_BITMAP;
}

class metadata_space_map final : public counted_space_map {
public:
    // A new map: every bitmap is placed at the first commit.
    metadata_space_map(block_manager& bm, block_address nr_blocks)
        : counted_space_map(nr_blocks), bm_(bm) {
        root_.nr_blocks = nr_blocks;
        for (unsigned i = 0; i < counts_.nr_bitmaps(); ++i) counts_.mark_dirty(i);
    }

    // An existing map.
    metadata_space_map(block_manager& bm, const sm_root& root)
        : counted_space_map(root.nr_blocks), bm_(bm), root_(root), committed_(true) {
        unsigned n = counts_.nr_bitmaps();
        std::vector<block_address> locations(n);
        {
            read_ref r = bm_.read_lock(root.bitmap_root, index_validator());
            for (unsigned i = 0; i < n; ++i)
                locations[i] = index_entry::unpack(r.data() + INDEX_BLOCK_HEADER_SIZE + INDEX_ENTRY_SIZE * i).blocknr;
        }
        load_bitmaps(bm_, counts_, locations);
        load_overflow(bm_, counts_, root.ref_count_root, &overflow_nodes_);
        root_.nr_allocated = counts_.nr_allocated();
    }

    void extend(block_address extra) override {
        block_address room = MAX_METADATA_BLOCKS - counts_.nr_blocks();
        extra = std::min(extra, room);
        if (!extra) return;
        // New bitmaps are placed (allocated from the new area, among others) at the next commit.
        unsigned first = counts_.extend(extra);
        for (unsigned i = first; i < counts_.nr_bitmaps(); ++i) counts_.mark_dirty(i);
    }

    void commit() override;
    sm_root root() const override { return root_; }

private:
    block_address allocate_own() {
        auto b = counts_.allocate();
        if (!b) throw no_space("out of metadata space while committing the metadata space map");
        return *b;
    }
    // Releases one of the map's own blocks of the last commit (count exactly 1, so releasing never
    // changes an overflow count).
    void release_own(block_address b) {
        std::uint32_t c = counts_.get(b);
        if (c != 1)
            throw corrupt_block(b, "metadata space map block has reference count " + std::to_string(c) +
                                       ", wanted 1");
        counts_.dec(b, 1);
    }
    block_address rewrite_overflow_tree();

    block_manager& bm_;
    sm_root root_;                // the last commit
    bool committed_ = false;      // root_ names structures on disk
    std::vector<block_address> overflow_nodes_;  // every node of the committed overflow tree
};

block_address metadata_space_map::rewrite_overflow_tree() {
    for (block_address b : overflow_nodes_) release_own(b);
    overflow_nodes_.clear();

    std::vector<std::uint64_t> keys;
    std::vector<std::uint8_t> values;
    keys.reserve(counts_.nr_overflow());
    values.reserve(counts_.nr_overflow() * OVERFLOW_VALUE_SIZE);
    counts_.for_each_overflow([&](block_address b, std::uint32_t c) {
        keys.push_back(b);
        std::uint8_t v[OVERFLOW_VALUE_SIZE];
        store_le32(v, c);
        values.insert(values.end(), v, v + OVERFLOW_VALUE_SIZE);
    });

    std::size_t nr_nodes = tree_node_count(keys.size(), OVERFLOW_VALUE_SIZE);
    for (std::size_t i = 0; i < nr_nodes; ++i) overflow_nodes_.push_back(allocate_own());
    return write_tree(bm_, keys, values.data(), OVERFLOW_VALUE_SIZE, overflow_nodes_);
}

void metadata_space_map::commit() {
    if (committed_ && !counts_.changed()) {
        root_.nr_blocks = counts_.nr_blocks();
        return;
    }

    // 1. Index block (first, so a fresh map is laid out as the kernel's: index, overflow root,
    //    bitmaps).
    if (committed_) release_own(root_.bitmap_root);
    block_address index = allocate_own();

    // 2. Overflow tree. The map's own changes (releases of count-1 blocks, allocations) never
    //    touch counts >= 3, so the tree written here stays exact through the steps below.
    block_address overflow_root = root_.ref_count_root;
    if (!committed_ || counts_.overflow_changed()) overflow_root = rewrite_overflow_tree();

    // 3. Bitmaps: each changed one moves once; moving changes others, which join the list.
    const std::vector<unsigned>& dirty = counts_.dirty_bitmaps();
    for (std::size_t k = 0; k < dirty.size(); ++k) {
        unsigned i = dirty[k];
        block_address old = counts_.bitmap(i).location;
        block_address nb = allocate_own();
        if (old != NO_BLOCK) release_own(old);
        counts_.bitmap(i).location = nb;
    }

    // 4. Write. Nothing changes counts any more.
    for (unsigned i : dirty) {
        write_ref w = bm_.write_lock_zero(counts_.bitmap(i).location, bitmap_validator());
        fill_bitmap_block(w.data(), counts_, i);
    }
    {
        write_ref w = bm_.write_lock_zero(index, index_validator());
        for (unsigned i = 0; i < counts_.nr_bitmaps(); ++i)
            counts_.entry(i).pack(w.data() + INDEX_BLOCK_HEADER_SIZE + INDEX_ENTRY_SIZE * i);
    }

    root_ = sm_root{counts_.nr_blocks(), counts_.nr_allocated(), index, overflow_root};
    committed_ = true;
    counts_.commit();
}

} // namespace

std::unique_ptr<space_map> create_metadata_space_map(block_manager& bm, block_address nr_blocks) {
    nr_blocks = std::min(nr_blocks, MAX_METADATA_BLOCKS);
    if (nr_blocks > bm.nr_blocks())
        throw std::invalid_argument("metadata space map of " + std::to_string(nr_blocks) +
                                    " blocks on a device of " + std::to_string(bm.nr_blocks()));
    // Superblock, index block, overflow root and the bitmaps.
    block_address need = 3 + nr_bitmaps_for(nr_blocks);
    if (nr_blocks < need)
        throw no_space("metadata device too small: " + std::to_string(nr_blocks) + " blocks, need at least " +
                       std::to_string(need));
    return std::make_unique<metadata_space_map>(bm, nr_blocks);
}

std::unique_ptr<space_map> open_metadata_space_map(block_manager& bm, const sm_root& root) {
    if (root.nr_blocks > MAX_METADATA_BLOCKS)
        throw corrupt_block(root.bitmap_root, "metadata space map of " + std::to_string(root.nr_blocks) +
                                                  " blocks (at most " + std::to_string(MAX_METADATA_BLOCKS) + ")");
    return std::make_unique<metadata_space_map>(bm, root);
}

} // namespace pdata
