#include "thin/check/recount.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/endian.h"
#include "persistent-data/space_map.h"
#include "thin/metadata/mapping.h"

#include <functional>
#include <map>
#include <unordered_map>

namespace thin {

using namespace pdata;
using pdata::btree::key_range;
using pdata::btree::node_ref;

namespace {

constexpr std::size_t INDEX_ENTRIES_OFFSET = 16;
constexpr std::size_t MAX_METADATA_INDEX_ENTRIES = 255;

void bump(std::vector<std::uint32_t>& counts, block_address b, recount_result& r, const char* what) {
    if (b >= counts.size()) {
        r.damage.push_back({what, {}, {}, b, "reference to block " + std::to_string(b) + " beyond the end (" +
                                                 std::to_string(counts.size()) + " blocks)"});
        return;
    }
    ++counts[b];
}

// Counts the references made by the nodes of a tree (children, and for upper levels the subtree
// roots), once per distinct node; values go to on_value. The tree's root reference is the
// caller's to count.
class counting_visitor : public btree::walk_visitor {
public:
    counting_visitor(recount_result& r, std::vector<bool>& seen, const char* structure, unsigned levels)
        : r_(r), seen_(seen), structure_(structure), levels_(levels) {}

    std::function<void(const std::vector<std::uint64_t>&, std::uint64_t, const std::uint8_t*, bool first)> on_value;

    bool visit_node(unsigned level, const std::vector<std::uint64_t>&, block_address b, node_ref n) override {
        first_ = b >= seen_.size() || !seen_[b];
        if (b < seen_.size()) seen_[b] = true;
        if (!first_) return keep_walking_shared;
        if (n.is_internal() || level + 1 < levels_) {
            for (unsigned i = 0; i < n.nr_entries(); ++i) bump(r_.metadata_counts, n.value64(i), r_, structure_);
        }
        return true;
    }
    void visit_value(const std::vector<std::uint64_t>& path, std::uint64_t key, const std::uint8_t* v) override {
        if (on_value) on_value(path, key, v, first_);
    }
    void visit_damage(const std::vector<std::uint64_t>& path, key_range lost, block_address b,
                      const std::string& what) override {
        r_.damage.push_back({structure_, path, lost, b, what});
    }
    void visit_warning(const std::vector<std::uint64_t>&, block_address b, const std::string& what) override {
        r_.warnings.push_back(std::string(structure_) + ": block " + std::to_string(b) + ": " + what);
    }

    bool keep_walking_shared = false;

private:
    recount_result& r_;
    std::vector<bool>& seen_;
    const char* structure_;
    unsigned levels_;
    bool first_ = true;
};

struct sm_structure {
    std::vector<block_address> bitmaps;  // by bitmap index
};

// Locates the bitmaps of a space map and counts the references its own structures make.
sm_structure walk_space_map(block_manager& bm, const sm_root& root, bool metadata, recount_result* r,
                            std::vector<bool>* seen, std::unordered_map<block_address, std::uint32_t>* overflow) {
    sm_structure s;
    const char* name = metadata ? "metadata space map" : "data space map";
    std::uint64_t nr_bitmaps = (root.nr_blocks + ENTRIES_PER_BITMAP - 1) / ENTRIES_PER_BITMAP;
    if (r) bump(r->metadata_counts, root.bitmap_root, *r, name);
    if (metadata) {
        if (nr_bitmaps > MAX_METADATA_INDEX_ENTRIES)
            throw corrupt_block(0, "metadata space map has " + std::to_string(root.nr_blocks) +
                                       " blocks, more than one index block can describe");
        read_ref idx = bm.read_lock(root.bitmap_root, index_validator());
        for (std::uint64_t i = 0; i < nr_bitmaps; ++i)
            s.bitmaps.push_back(load_le64(idx.data() + INDEX_ENTRIES_OFFSET + 16 * i));
    } else {
        s.bitmaps.assign(nr_bitmaps, 0);
        recount_result scratch;
        std::vector<bool> local_seen;
        counting_visitor index(r ? *r : scratch, seen ? *seen : local_seen, name, 1);
        index.on_value = [&](const std::vector<std::uint64_t>&, std::uint64_t key, const std::uint8_t* val, bool) {
            if (key < s.bitmaps.size()) s.bitmaps[key] = load_le64(val);
        };
        btree::walk(bm, root.bitmap_root, btree::walk_options{1, 16}, index);
    }
    if (r)
        for (auto b : s.bitmaps) bump(r->metadata_counts, b, *r, name);
    if (r) bump(r->metadata_counts, root.ref_count_root, *r, name);
    recount_result scratch;
    std::vector<bool> local_seen;
    counting_visitor ov(r ? *r : scratch, seen ? *seen : local_seen, name, 1);
    ov.on_value = [&](const std::vector<std::uint64_t>&, std::uint64_t key, const std::uint8_t* val, bool) {
        if (overflow) (*overflow)[key] = load_le32(val);
    };
    btree::walk(bm, root.ref_count_root, btree::walk_options{1, 4}, ov);
    return s;
}

} // namespace

std::vector<std::uint32_t> read_space_map_counts(block_manager& bm, const sm_root& root, bool metadata) {
    std::unordered_map<block_address, std::uint32_t> overflow;
    sm_structure s = walk_space_map(bm, root, metadata, nullptr, nullptr, &overflow);
    std::vector<std::uint32_t> counts(root.nr_blocks, 0);
    for (std::uint64_t i = 0; i < s.bitmaps.size(); ++i) {
        read_ref bm_ref = bm.read_lock(s.bitmaps[i], bitmap_validator());
        const std::uint8_t* words = bm_ref.data() + 16;
        std::uint64_t base = i * ENTRIES_PER_BITMAP;
        for (std::uint32_t j = 0; j < ENTRIES_PER_BITMAP && base + j < root.nr_blocks; ++j) {
            std::uint64_t w = load_le64(words + 8 * (j / 32));
            unsigned k = j % 32;
            std::uint32_t c = static_cast<std::uint32_t>(((w >> (2 * k)) & 1) << 1 | ((w >> (2 * k + 1)) & 1));
            if (c == 3) {
                auto it = overflow.find(base + j);
                if (it == overflow.end())
                    throw corrupt_block(s.bitmaps[i], "bitmap entry " + std::to_string(base + j) +
                                                          " says count >= 3 but the overflow tree has no entry");
                c = it->second;
            }
            counts[base + j] = c;
        }
    }
    return counts;
}

recount_result recount_references(block_manager& bm, const superblock& sb) {
    recount_result r;
    sm_root md_root = sb.metadata_sm();
    sm_root data_root = sb.data_sm();
    r.metadata_counts.assign(std::max<std::uint64_t>(md_root.nr_blocks, 1), 0);
    r.data_counts.assign(data_root.nr_blocks, 0);
    std::vector<bool> seen(r.metadata_counts.size(), false);

    ++r.metadata_counts[0];  // the superblock itself
    walk_space_map(bm, md_root, true, &r, &seen, nullptr);
    walk_space_map(bm, data_root, false, &r, &seen, nullptr);

    auto walk_pool_trees = [&](const superblock& s, bool current) {
        bump(r.metadata_counts, s.data_mapping_root, r, "mapping tree");
        bump(r.metadata_counts, s.device_details_root, r, "device details");

        counting_visitor details(r, seen, "device details", 1);
        btree::walk(bm, s.device_details_root, btree::walk_options{1, device_details::DISK_SIZE}, details);

        std::map<std::uint64_t, std::uint64_t> per_dev;
        counting_visitor mappings(r, seen, "mapping tree", 2);
        // Every device's mapping count needs its whole tree, even through leaves shared with
        // another device; references are still counted once per distinct node.
        mappings.keep_walking_shared = true;
        mappings.on_value = [&](const std::vector<std::uint64_t>& path, std::uint64_t, const std::uint8_t* v, bool first) {
            if (current) ++per_dev[path.empty() ? 0 : path[0]];
            if (!first) return;
            std::uint64_t d = block_time::unpack(load_le64(v)).data_block;
            if (d >= r.data_counts.size()) {
                ++r.data_blocks_out_of_range;
                return;
            }
            ++r.data_counts[d];
        };
        btree::walk(bm, s.data_mapping_root, btree::walk_options{2, 8}, mappings);
        if (current) {
            for (auto& [d, n] : per_dev) {
                r.mappings_per_device.emplace_back(d, n);
                r.nr_mappings += n;
            }
        }
    };

    walk_pool_trees(sb, true);
    if (sb.metadata_snap) {
        bump(r.metadata_counts, sb.metadata_snap, r, "metadata snapshot");
        read_ref snap = bm.read_lock(sb.metadata_snap, superblock_validator());
        superblock copy = superblock::unpack(snap.data());
        snap.release();
        walk_pool_trees(copy, false);
    }
    return r;
}

} // namespace thin
