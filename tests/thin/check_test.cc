// thin/check: the checker against metadata built with thin::metadata and then damaged block by
// block (checksums re-stamped where the damage must be semantic): each kind of damage gets the
// right severity and a report naming the device, key range and block; clean pools (with snapshots,
// a held metadata snapshot, -m) check clean; --auto-repair and --clear-needs-check-flag fix what
// they should; the kernel fixtures check clean and the corrupted one does not.
#include "thin/check/check.h"
#include "thin/check/mapping_check.h"
#include "thin/check/repair.h"
#include "thin/check/sm_check.h"
#include "thin/metadata/metadata.h"

#include "persistent-data/btree/walk.h"
#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"
#include "persistent-data/io_engine.h"
#include "tests/support/fixtures.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <cstring>
#include <random>
#include <set>
#include <sstream>

using namespace thin;
using namespace thin::check;
using namespace pdata;
using thinpool_test::temp_dir;

namespace {

#define FIXTURE_MISSING()                                                                    \
    do {                                                                                     \
        if (thinpool_test::fixtures_required()) FAIL() << "kernel fixture not found";        \
        GTEST_SKIP() << "kernel fixture not found";                                          \
    } while (0)

using engine_ptr = std::shared_ptr<memory_engine>;

constexpr std::uint64_t NR_DATA_BLOCKS = 100000;

struct outcome {
    check_result r;
    std::string text;  // every reported line
};

outcome run_check(std::shared_ptr<io_engine> e, check_options opts = {}) {
    reporter rep;
    outcome o;
    o.r = check_metadata(e, opts, rep);
    o.text = rep.text();
    return o;
}

bool contains(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

// Devices 1 (sequential), 3 (scattered), 5 = snapshot of 1 followed by writes to 1 (leaves partly
// shared), 7 (empty). Returns the number of mappings per device.
std::map<dev_id, std::uint64_t> build_pool(metadata& md, std::uint64_t n) {
    std::map<dev_id, std::uint64_t> count;
    auto write = [&](dev_id d, std::uint64_t v) {
        auto l = md.lookup(d, v);
        if (l && !l->shared) return;
        auto b = md.alloc_data_block();
        ASSERT_TRUE(b);
        if (!l) ++count[d];
        md.insert(d, v, *b);
    };
    md.create_thin(1);
    md.create_thin(3);
    md.create_thin(7);
    count[1] = count[3] = count[7] = 0;
    for (std::uint64_t v = 0; v < n; ++v) write(1, v);
    std::mt19937_64 rng(7);
    for (std::uint64_t i = 0; i < n / 2; ++i) write(3, rng() % (4 * n));
    md.commit();
    md.create_snap(5, 1);
    count[5] = count[1];
    for (std::uint64_t v = 0; v < n; v += 7) write(1, v);
    md.commit();
    return count;
}

engine_ptr make_pool(std::uint64_t n = 20000, std::map<dev_id, std::uint64_t>* counts = nullptr,
                     bool hold_snap = false) {
    auto e = std::make_shared<memory_engine>(4096);
    auto md = metadata::format(e, 128, NR_DATA_BLOCKS);
    auto c = build_pool(*md, n);
    if (hold_snap) {
        md->reserve_metadata_snap();
        for (std::uint64_t v = 0; v < n; v += 3) {
            auto b = md->alloc_data_block();
            md->insert(3, v, *b);
        }
        md->delete_device(5);
        md->commit();
    }
    if (counts) *counts = c;
    return e;
}

// Leaves of one device's mapping tree with the key range their parent gives them.
struct leaf_info {
    block_address block;
    std::uint64_t begin;
    std::optional<std::uint64_t> end;
    std::uint32_t nr_entries;
};

class leaf_finder : public btree::walk_visitor {
public:
    explicit leaf_finder(dev_id d) : dev_(d) {}
    bool visit_node(unsigned level, const std::vector<std::uint64_t>& path, block_address b, btree::node_ref n) override {
        if (level == 1 && path[0] == dev_) {
            if (n.is_internal())
                for (unsigned i = 0; i < n.nr_entries(); ++i) parent_key_[n.value64(i)] = n.key(i);
            else
                nr_[b] = n.nr_entries();
        }
        return true;
    }
    void visit_value(const std::vector<std::uint64_t>&, std::uint64_t, const std::uint8_t*) override {}
    void visit_damage(const std::vector<std::uint64_t>&, btree::key_range, block_address, const std::string&) override {}

    std::vector<leaf_info> leaves() const {
        std::vector<std::pair<std::uint64_t, block_address>> by_key;
        for (auto& [b, k] : parent_key_)
            if (nr_.count(b)) by_key.push_back({k, b});
        std::sort(by_key.begin(), by_key.end());
        std::vector<leaf_info> out;
        for (std::size_t i = 0; i < by_key.size(); ++i) {
            std::optional<std::uint64_t> end;
            if (i + 1 < by_key.size()) end = by_key[i + 1].first;
            out.push_back({by_key[i].second, by_key[i].first, end, nr_.at(by_key[i].second)});
        }
        return out;
    }

private:
    dev_id dev_;
    std::map<block_address, std::uint64_t> parent_key_;
    std::map<block_address, std::uint32_t> nr_;
};

std::vector<leaf_info> leaves_of(engine_ptr e, dev_id d, bool snapshot = false) {
    block_manager bm(e);
    superblock sb = superblock::unpack(e->raw(0));
    if (snapshot) sb = superblock::unpack(e->raw(sb.metadata_snap));
    leaf_finder f(d);
    btree::walk(bm, sb.data_mapping_root, btree::walk_options{2, 8}, f);
    return f.leaves();
}

void restamp_node(engine_ptr e, block_address b) { btree::btree_node_validator().prepare(e->raw(b), b); }

// Opens the pool read-write, lets fn change it, commits (marking the transaction changed).
void modify(engine_ptr e, const std::function<void(metadata&)>& fn) {
    auto md = metadata::open(e, thin::open_options{});
    fn(*md);
    md->set_transaction_id(md->transaction_id(), md->transaction_id() + 1);
    md->commit();
}

std::string range_text(const leaf_info& l) { return format_range(l.begin, l.end); }

} // namespace

// ---- clean metadata ----

TEST(Check, OverflowCountsMatchAMapModel) {
    // Compact store of the overflow tree's counts: nibbles, per-region bytes, a hash for the rest.
    const std::uint64_t n = 5 * overflow_counts::REGION + 77;
    overflow_counts oc(n);
    std::map<std::uint64_t, std::uint32_t> model;
    std::mt19937_64 rng(7);
    auto put = [&](std::uint64_t b, std::uint32_t c) {
        oc.set(b, c);
        model[b] = c;
    };
    // Region 0: mostly small counts; region 1: many large ones (gets bytes); region 3: huge counts.
    for (int i = 0; i < 3000; ++i) put(rng() % overflow_counts::REGION, 3 + rng() % 14);
    for (int i = 0; i < 3000; ++i) put(overflow_counts::REGION + rng() % overflow_counts::REGION, 3 + rng() % 400);
    for (int i = 0; i < 50; ++i) put(3 * overflow_counts::REGION + rng() % 1000, 100000 + rng() % 5);
    put(4 * overflow_counts::REGION + 5, 1);       // corrupt: below 3
    put(n - 1, 17);
    put(n + 1000, 9);                              // beyond the map
    // Overwrites across the encodings.
    for (int i = 0; i < 2000; ++i) {
        std::uint64_t b = rng() % (2 * overflow_counts::REGION);
        std::uint32_t choices[] = {3, 16, 17, 200, 271, 272, 70000};
        put(b, choices[rng() % 7]);
    }
    EXPECT_EQ(oc.size(), model.size());
    for (std::uint64_t b = 0; b < n; ++b) {
        std::uint32_t c = 0;
        bool found = oc.find(b, c);
        auto it = model.find(b);
        ASSERT_EQ(found, it != model.end()) << b;
        if (found) {
            ASSERT_EQ(c, it->second) << b;
        }
    }
    std::uint32_t c = 0;
    EXPECT_TRUE(oc.find(n + 1000, c));
    EXPECT_EQ(c, 9u);
    EXPECT_FALSE(oc.find(n + 1001, c));
}

TEST(Check, CleanPoolChecksCleanWithOneAndTwoThreads) {
    std::map<dev_id, std::uint64_t> counts;
    auto e = make_pool(20000, &counts);
    for (unsigned threads : {1u, 2u}) {
        check_options opts;
        opts.threads = threads;
        auto o = run_check(e, opts);
        EXPECT_EQ(o.r.worst, severity::none) << o.text;
        EXPECT_TRUE(o.r.space_maps_checked);
        EXPECT_EQ(o.r.nr_devices, 4u);
        std::uint64_t total = 0;
        for (auto& [d, n] : counts) total += n;
        EXPECT_EQ(o.r.nr_mappings, total);
        EXPECT_GT(o.r.nr_leaves, 100u);
        EXPECT_EQ(o.text, "examining superblock\nexamining devices tree\nexamining mapping tree\nchecking space map counts\n");
    }
}

TEST(Check, PrintsTransactionIdAndFreeMetadataBlocks) {
    auto e = make_pool(1000);
    superblock sb = superblock::unpack(e->raw(0));
    reporter rep;
    std::ostringstream out;
    check_metadata(e, {}, rep, &out);
    auto msm = sb.metadata_sm();
    EXPECT_EQ(out.str(), "TRANSACTION_ID=" + std::to_string(sb.trans_id) + "\nMETADATA_FREE_BLOCKS=" +
                             std::to_string(msm.nr_blocks - msm.nr_allocated) + "\n");
}

TEST(Check, HeldMetadataSnapshotChecksCleanAndMetadataSnapChecksTheSnapshot) {
    auto e = make_pool(5000, nullptr, true);
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::none) << o.text;
    check_options m;
    m.use_metadata_snap = true;
    auto s = run_check(e, m);
    EXPECT_EQ(s.r.worst, severity::none) << s.text;
    EXPECT_FALSE(s.r.space_maps_checked);
    EXPECT_EQ(s.r.nr_devices, 4u);  // device 5 still exists in the snapshot
    EXPECT_EQ(o.r.nr_devices, 3u);

    // Damage only the snapshot's view: -m sees it, and so does the full check.
    auto snap_leaves = leaves_of(e, 5, true);
    ASSERT_FALSE(snap_leaves.empty());
    // A leaf of device 5 that device 1 no longer shares (writes broke the sharing)...
    auto live_leaves = leaves_of(e, 1);
    std::set<block_address> live;
    for (auto& l : live_leaves) live.insert(l.block);
    const leaf_info* victim = nullptr;
    for (auto& l : snap_leaves)
        if (!live.count(l.block)) victim = &l;
    ASSERT_TRUE(victim);
    e->raw(victim->block)[100] ^= 0xff;
    auto s2 = run_check(e, m);
    EXPECT_EQ(s2.r.worst, severity::fatal);
    EXPECT_TRUE(contains(s2.text, "thin device 5 is missing mappings " + range_text(*victim))) << s2.text;
    auto o2 = run_check(e);
    EXPECT_EQ(o2.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o2.text, "metadata snapshot: thin device 5 is missing mappings")) << o2.text;
}

TEST(Check, MetadataSnapWithoutSnapshotFails) {
    auto e = make_pool(100);
    check_options m;
    m.use_metadata_snap = true;
    auto o = run_check(e, m);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "no metadata snapshot found")) << o.text;
}

TEST(Check, SuperBlockOnlyAndSkipMappingsStopEarly) {
    auto e = make_pool(2000);
    // Damage a leaf: invisible to both restricted checks.
    auto leaves = leaves_of(e, 3);
    e->raw(leaves[0].block)[200] ^= 1;
    check_options sb_only;
    sb_only.super_block_only = true;
    auto a = run_check(e, sb_only);
    EXPECT_EQ(a.r.worst, severity::none);
    EXPECT_EQ(a.text, "examining superblock\n");
    check_options skip;
    skip.skip_mappings = true;
    auto b = run_check(e, skip);
    EXPECT_EQ(b.r.worst, severity::none) << b.text;
    EXPECT_EQ(b.text, "examining superblock\nexamining devices tree\nexamining top level of mapping tree\n");
    EXPECT_EQ(run_check(e).r.worst, severity::fatal);
}

// ---- superblock ----

TEST(Check, BadSuperblockChecksumIsFatal) {
    auto e = make_pool(100);
    e->raw(0)[48] ^= 1;  // trans_id
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_FALSE(o.r.superblock_ok);
    EXPECT_TRUE(contains(o.text, "  superblock is corrupt\n    bad checksum in superblock, wanted ")) << o.text;
}

TEST(Check, AllZeroSuperblockReportsTheChecksumOfZeros) {
    auto e = std::make_shared<memory_engine>(64);
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "bad checksum in superblock, wanted 1490015127")) << o.text;
}

// The checker's own node reading must not take a header whose sizes wrap 64 bits as fitting.
TEST(Check, NodeWhoseEntrySizesWrapDoesNotFit) {
    alignas(8) std::uint8_t b[MD_BLOCK_SIZE] = {};
    store_le32(b + 4, pdata::btree::LEAF_NODE);
    store_le32(b + 16, 1);
    store_le32(b + 20, 0xffffffffu);
    store_le32(b + 24, 0xfffffff9u);
    pdata::btree::btree_node_validator().prepare(b, 9);
    EXPECT_TRUE(contains(thin::check::node_problem(b, 9, 8), "does not fit in a block"));
}

TEST(Check, CorruptMetadataSnapshotCopyIsFatal) {
    auto e = make_pool(1000, nullptr, true);
    superblock sb = superblock::unpack(e->raw(0));
    e->raw(sb.metadata_snap)[60] ^= 1;
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "metadata snapshot superblock (block " + std::to_string(sb.metadata_snap) + ") is corrupt"))
        << o.text;
}

// ---- trees ----

TEST(Check, BadLeafChecksumNamesTheDeviceRangeAndBlock) {
    auto e = make_pool();
    auto leaves = leaves_of(e, 3);
    ASSERT_GT(leaves.size(), 3u);
    const leaf_info& l = leaves[1];
    e->raw(l.block)[500] ^= 0x40;
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "  thin device 3 is missing mappings " + range_text(l) +
                                     "\n    bad checksum in btree node (block " + std::to_string(l.block) + ")\n"))
        << o.text;
    // Tree damage: the space maps are not compared (the counts would only echo the damage).
    EXPECT_FALSE(o.r.space_maps_checked);
    EXPECT_FALSE(contains(o.text, "checking space map counts"));
}

TEST(Check, LastLeafLosesAnOpenRange) {
    auto e = make_pool();
    auto leaves = leaves_of(e, 1);
    const leaf_info& l = leaves.back();
    e->raw(l.block)[8] ^= 1;  // blocknr: the node claims to be elsewhere (and its checksum fails)
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    ASSERT_FALSE(l.end);
    EXPECT_TRUE(contains(o.text, "thin device 1 is missing mappings " + format_range(l.begin, std::nullopt))) << o.text;
    EXPECT_EQ(format_range(l.begin, std::nullopt), "[" + std::to_string(l.begin) + ", -]");
}

TEST(Check, BlocknrMismatchWithGoodChecksumIsFatal) {
    auto e = make_pool();
    auto leaves = leaves_of(e, 3);
    block_address b = leaves[2].block;
    store_le64(e->raw(b) + 8, b + 1);
    store_le32(e->raw(b), block_checksum(e->raw(b), block_salt::btree_node));
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "btree node claims to be block " + std::to_string(b + 1) + " (block " + std::to_string(b) + ")"))
        << o.text;
}

TEST(Check, KeysOutOfOrderInALeafAreFatal) {
    auto e = make_pool();
    auto leaves = leaves_of(e, 1);
    const leaf_info& l = leaves[2];
    btree::node_mut n(e->raw(l.block));
    std::uint64_t k = n.key(3);
    n.set_key(3, n.key(4));
    n.set_key(4, k);
    restamp_node(e, l.block);
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "thin device 1 is missing mappings " + range_text(l))) << o.text;
    EXPECT_TRUE(contains(o.text, "keys out of order")) << o.text;
}

TEST(Check, LeafKeyOutsideItsParentsRangeIsFatal) {
    auto e = make_pool();
    auto leaves = leaves_of(e, 1);
    const leaf_info& l = leaves[1];
    ASSERT_TRUE(l.end);
    btree::node_mut n(e->raw(l.block));
    n.set_key(n.nr_entries() - 1, *l.end + 5);  // still increasing, but beyond the next parent key
    restamp_node(e, l.block);
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "is not below the next parent key " + std::to_string(*l.end))) << o.text;
    EXPECT_TRUE(contains(o.text, "thin device 1 is missing mappings " + range_text(l))) << o.text;
}

TEST(Check, WrongValueSizeIsFatal) {
    auto e = make_pool();
    auto leaves = leaves_of(e, 3);
    btree::node_mut n(e->raw(leaves[0].block));
    store_le32(n.raw() + 24, 16);
    store_le32(n.raw() + 20, btree::max_entries_for(16));
    restamp_node(e, leaves[0].block);
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "leaf has value_size 16, expected 8")) << o.text;
}

TEST(Check, DamagedDetailsTreeIsFatal) {
    auto e = make_pool(100);
    superblock sb = superblock::unpack(e->raw(0));
    e->raw(sb.device_details_root)[40] ^= 1;
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "  missing devices: [0, -]\n    bad checksum in btree node (block " +
                                     std::to_string(sb.device_details_root) + ")"))
        << o.text;
}

TEST(Check, DamagedTopLevelOfMappingTreeIsFatal) {
    auto e = make_pool(100);
    superblock sb = superblock::unpack(e->raw(0));
    std::memset(e->raw(sb.data_mapping_root), 0, MD_BLOCK_SIZE);
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "  missing all mappings for devices: [0, -]\n    bad checksum in btree node (block " +
                                     std::to_string(sb.data_mapping_root) + ")"))
        << o.text;
}

TEST(Check, MappedBlocksDisagreeingWithTheTreeIsFatal) {
    std::map<dev_id, std::uint64_t> counts;
    auto e = make_pool(1000, &counts);
    superblock sb = superblock::unpack(e->raw(0));
    btree::node_mut n(e->raw(sb.device_details_root));
    ASSERT_TRUE(n.is_leaf());
    int i = n.find(3);
    ASSERT_GE(i, 0);
    store_le64(n.value(i), counts[3] + 1);
    restamp_node(e, sb.device_details_root);
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "thin device 3: the details say mapped_blocks is " + std::to_string(counts[3] + 1) +
                                     ", but the mapping tree holds " + std::to_string(counts[3]) + " mappings"))
        << o.text;
}

TEST(Check, DeviceMissingFromTheDetailsTreeIsFatal) {
    auto e = make_pool(100);
    superblock sb = superblock::unpack(e->raw(0));
    btree::node_mut n(e->raw(sb.device_details_root));
    int i = n.find(7);
    ASSERT_EQ(i, static_cast<int>(n.nr_entries()) - 1);
    n.set_key(i, 9);  // details for 9, mappings for 7
    restamp_node(e, sb.device_details_root);
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "Inconsistency between the details tree and the mapping tree")) << o.text;
    EXPECT_TRUE(contains(o.text, "thin device 9 has details but no mapping tree")) << o.text;
    EXPECT_TRUE(contains(o.text, "thin device 7 has a mapping tree but no details")) << o.text;
}

TEST(Check, MappingBeyondTheDataDeviceIsFatal) {
    auto e = make_pool(1000);
    auto leaves = leaves_of(e, 1);
    btree::node_mut n(e->raw(leaves[0].block));
    n.set_value64(0, block_time{NR_DATA_BLOCKS + 10, 0}.pack());
    restamp_node(e, leaves[0].block);
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "maps 1 block to data blocks beyond the end of the data device (100000 blocks)")) << o.text;
}

TEST(Check, MaxEntriesNotAMultipleOfThreeIsNonFatal) {
    auto e = make_pool();
    auto leaves = leaves_of(e, 3);
    block_address b = leaves[1].block;
    btree::node_mut n(e->raw(b));
    unsigned nr = n.nr_entries();
    std::vector<std::uint8_t> values(n.value(0), n.value(0) + 8 * nr);
    store_le32(n.raw() + 20, 250);  // the values array moves with max_entries
    std::memcpy(n.value(0), values.data(), values.size());
    restamp_node(e, b);
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::non_fatal) << o.text;
    EXPECT_TRUE(contains(o.text, "max_entries 250 is not a multiple of 3 (block " + std::to_string(b) + ")")) << o.text;
    EXPECT_TRUE(o.r.space_maps_checked);
}

TEST(Check, UnderFullNodeIsNonFatal) {
    auto e = make_pool();
    // Move entries from one leaf into its right sibling (same parent) so that it keeps 20.
    superblock sb = superblock::unpack(e->raw(0));
    auto leaves = leaves_of(e, 3);
    const leaf_info* left = nullptr;
    const leaf_info* right = nullptr;
    std::string sizes;
    for (std::size_t i = 0; i + 1 < leaves.size(); ++i) {
        sizes += std::to_string(leaves[i].nr_entries) + " ";
        if (!left && leaves[i].nr_entries > 20 && leaves[i].nr_entries + leaves[i + 1].nr_entries - 20 <= 252) {
            left = &leaves[i];
            right = &leaves[i + 1];
        }
    }
    ASSERT_TRUE(left) << "no pair of sibling leaves to rebalance: " << sizes;
    // Find their parent.
    block_address parent = 0;
    {
        block_manager bm(e);
        struct finder : btree::walk_visitor {
            block_address want, found = 0;
            bool visit_node(unsigned, const std::vector<std::uint64_t>&, block_address b, btree::node_ref n) override {
                if (n.is_internal())
                    for (unsigned i = 0; i < n.nr_entries(); ++i)
                        if (n.value64(i) == want) found = b;
                return true;
            }
            void visit_value(const std::vector<std::uint64_t>&, std::uint64_t, const std::uint8_t*) override {}
            void visit_damage(const std::vector<std::uint64_t>&, btree::key_range, block_address, const std::string&) override {}
        } f;
        f.want = right->block;
        btree::walk(bm, sb.data_mapping_root, btree::walk_options{2, 8}, f);
        parent = f.found;
    }
    ASSERT_NE(parent, 0u);
    btree::node_mut l(e->raw(left->block)), r(e->raw(right->block)), p(e->raw(parent));
    int li = p.find(left->begin), ri = p.find(right->begin);
    ASSERT_GE(li, 0);
    ASSERT_EQ(ri, li + 1) << "siblings under different parents";
    unsigned move = l.nr_entries() - 20;
    btree::copy_entries(r, move, r, 0, r.nr_entries());
    btree::copy_entries(r, 0, l, 20, move);
    r.set_nr_entries(r.nr_entries() + move);
    l.set_nr_entries(20);
    p.set_key(ri, r.key(0));
    for (block_address b : {left->block, right->block, parent}) restamp_node(e, b);

    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::non_fatal) << o.text;
    EXPECT_TRUE(contains(o.text, "under-full btree node: 20 entries, fewer than max_entries 252 / 3 (block " +
                                     std::to_string(left->block) + ")"))
        << o.text;
}

// ---- space maps ----

TEST(Check, MetadataLeakIsNonFatalAndAutoRepairFixesIt) {
    auto e = make_pool(2000);
    block_address leaked = 0;
    modify(e, [&](metadata& md) {
        auto& sm = md.metadata_space_map();
        for (block_address b = sm.nr_blocks() - 1; b > 0; --b)
            if (sm.get_count(b) == 0) {
                leaked = b;
                break;
            }
        sm.inc(leaked);
    });
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::non_fatal) << o.text;
    EXPECT_TRUE(contains(o.text, "  metadata reference counts differ for block " + std::to_string(leaked) +
                                     ", expected 0, but got 1\n"))
        << o.text;
    EXPECT_TRUE(contains(o.text, "1 metadata block has leaked")) << o.text;
    EXPECT_TRUE(o.r.only_repairable_errors);
    ASSERT_TRUE(o.r.has_repairable_differences());

    repair_leaks(e, o.r.metadata_differences, o.r.data_differences);
    auto after = run_check(e);
    EXPECT_EQ(after.r.worst, severity::none) << after.text;
}

TEST(Check, DataLeakIsNonFatalAndAutoRepairFixesIt) {
    auto e = make_pool(2000);
    std::uint64_t first = 0;
    modify(e, [&](metadata& md) {
        auto& sm = md.data_space_map();
        first = sm.nr_blocks() - 10;
        for (std::uint64_t b = first; b < first + 4; ++b) sm.inc(b);
    });
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::non_fatal) << o.text;
    EXPECT_TRUE(contains(o.text, "  data reference counts differ for blocks " + format_range(first, first + 4) +
                                     ", expected 0, but got 1\n"))
        << o.text;
    repair_leaks(e, o.r.metadata_differences, o.r.data_differences);
    EXPECT_EQ(run_check(e).r.worst, severity::none);
}

TEST(Check, LeakedCountOfTwoIsFatalButRepairable) {
    auto e = make_pool(2000);
    std::uint64_t b = 0;
    modify(e, [&](metadata& md) {
        b = md.data_space_map().nr_blocks() - 1;
        md.data_space_map().inc(b, 2);
    });
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal) << o.text;
    EXPECT_TRUE(contains(o.text, "data reference counts differ for block " + std::to_string(b) + ", expected 0, but got 2"));
    EXPECT_TRUE(o.r.only_repairable_errors);
    repair_leaks(e, o.r.metadata_differences, o.r.data_differences);
    EXPECT_EQ(run_check(e).r.worst, severity::none);
}

TEST(Check, DataCountTooLowIsFatalAndNotRepairable) {
    auto e = make_pool(2000);
    std::uint64_t mapped = 0;
    modify(e, [&](metadata& md) {
        mapped = md.lookup(3, md.highest_mapped(3).value())->data_block;
        ASSERT_EQ(md.data_block_ref_count(mapped), 1u);
        md.data_space_map().dec(mapped);
    });
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "data reference counts differ for block " + std::to_string(mapped) +
                                     ", expected 1, but got 0"))
        << o.text;
    EXPECT_FALSE(o.r.only_repairable_errors);
}

TEST(Check, MetadataCountTooHighOnAUsedBlockIsFatal) {
    auto e = make_pool(2000);
    auto leaves = leaves_of(e, 3);
    block_address b = leaves[0].block;
    modify(e, [&](metadata& md) { md.metadata_space_map().inc(b); });
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "metadata reference counts differ for block " + std::to_string(b) +
                                     ", expected 1, but got 2"))
        << o.text;
    EXPECT_FALSE(o.r.only_repairable_errors);
}

TEST(Check, SharedDataBlocksAreCountedPerDistinctLeaf) {
    // A fresh snapshot shares every leaf: each data block is referenced once (format.md §7.1).
    auto e = std::make_shared<memory_engine>(2048);
    {
        auto md = metadata::format(e, 128, 5000);
        md->create_thin(0);
        for (std::uint64_t v = 0; v < 3000; ++v) md->insert(0, v, *md->alloc_data_block());
        md->create_snap(1, 0);
        md->create_snap(2, 1);
        md->commit();
    }
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::none) << o.text;
    EXPECT_EQ(o.r.nr_mappings, 9000u);
}

TEST(Check, CorruptDataBitmapIsFatal) {
    auto e = make_pool(1000);
    superblock sb = superblock::unpack(e->raw(0));
    btree::node_ref idx(e->raw(sb.data_sm().bitmap_root));
    ASSERT_TRUE(idx.is_leaf());
    block_address bitmap = load_le64(idx.value(0));
    e->raw(bitmap)[100] ^= 1;
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "  data space map: bitmap 0 is unreadable\n    bad checksum in space map bitmap (block " +
                                     std::to_string(bitmap) + ")"))
        << o.text;
}

TEST(Check, CorruptMetadataIndexIsFatal) {
    auto e = make_pool(1000);
    superblock sb = superblock::unpack(e->raw(0));
    e->raw(sb.metadata_sm().bitmap_root)[40] ^= 1;
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "metadata space map: the index block is unreadable")) << o.text;
}

// ---- fixes ----

TEST(Check, ClearNeedsCheckRewritesOnlyTheFlag) {
    auto e = make_pool(500);
    modify(e, [](metadata& md) { md.set_needs_check(); });
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::none) << o.text;  // NEEDS_CHECK is not an error
    EXPECT_TRUE(o.r.needs_check);
    std::vector<std::uint8_t> before(e->raw(0), e->raw(0) + MD_BLOCK_SIZE);
    EXPECT_TRUE(clear_needs_check(*e));
    EXPECT_FALSE(superblock::unpack(e->raw(0)).needs_check());
    EXPECT_NO_THROW(superblock_validator().check(e->raw(0), 0));
    for (std::size_t i = 8; i < MD_BLOCK_SIZE; ++i) ASSERT_EQ(before[i], e->raw(0)[i]) << "byte " << i;
    EXPECT_FALSE(clear_needs_check(*e));
    EXPECT_EQ(run_check(e).r.worst, severity::none);
}

TEST(Check, RepairClearsNeedsCheck) {
    auto e = make_pool(500);
    modify(e, [](metadata& md) {
        md.set_needs_check();
        md.data_space_map().inc(md.data_space_map().nr_blocks() - 1);
    });
    auto o = run_check(e);
    ASSERT_EQ(o.r.worst, severity::non_fatal);
    repair_leaks(e, o.r.metadata_differences, o.r.data_differences);
    auto after = run_check(e);
    EXPECT_EQ(after.r.worst, severity::none) << after.text;
    EXPECT_FALSE(after.r.needs_check);
}

// ---- overrides ----

TEST(Check, OverrideRootsReplaceTheSuperblocksRoots) {
    auto e = make_pool(500);
    superblock sb = superblock::unpack(e->raw(0));
    check_options opts;
    opts.override_mapping_root = sb.device_details_root;  // the wrong kind of tree
    auto o = run_check(e, opts);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "missing all mappings for devices")) << o.text;

    check_options same;
    same.override_mapping_root = sb.data_mapping_root;
    same.override_details_root = sb.device_details_root;
    EXPECT_EQ(run_check(e, same).r.worst, severity::none);
}

// ---- kernel fixtures ----

TEST(Check, KernelFixturesCheckClean) {
    temp_dir dir;
    for (const char* name : {"tmeta", "tmeta_with_metadata_snap", "tmeta_with_shared_internal_root",
                             "tmeta_device_id_reuse", "tmeta_with_deleted_snapshot"}) {
        std::string path = dir.file(name);
        if (!thinpool_test::unpack_kernel_fixture(name, path)) FIXTURE_MISSING();
        auto e = std::shared_ptr<io_engine>(open_sync_engine(path, {open_mode::read_only, false}));
        auto o = run_check(e);
        EXPECT_EQ(o.r.worst, severity::none) << name << "\n" << o.text;
        EXPECT_TRUE(o.r.space_maps_checked) << name;
        superblock sb;
        {
            auto buf = make_aligned_block(false);
            e->read(0, buf.get());
            sb = superblock::unpack(buf.get());
        }
        if (sb.metadata_snap) {
            check_options m;
            m.use_metadata_snap = true;
            auto s = run_check(e, m);
            EXPECT_EQ(s.r.worst, severity::none) << name << " -m\n" << s.text;
        }
    }
}

TEST(Check, CorruptedKernelFixtureFailsButItsSnapshotIsClean) {
    temp_dir dir;
    std::string path = dir.file("corrupted");
    if (!thinpool_test::unpack_kernel_fixture("corrupted_tmeta_with_metadata_snap", path)) FIXTURE_MISSING();
    auto e = std::shared_ptr<io_engine>(open_sync_engine(path, {open_mode::read_only, false}));
    auto o = run_check(e);
    EXPECT_EQ(o.r.worst, severity::fatal);
    EXPECT_TRUE(contains(o.text, "  missing devices: [0, -]\n    bad checksum in btree node (block 6)")) << o.text;
    EXPECT_TRUE(contains(o.text, "  missing all mappings for devices: [0, -]\n    bad checksum in btree node (block 20)"))
        << o.text;
    // What Debian's thin_check 0.9.0 -m says too: the snapshot's trees are intact.
    check_options m;
    m.use_metadata_snap = true;
    auto s = run_check(e, m);
    EXPECT_EQ(s.r.worst, severity::none) << s.text;
    EXPECT_EQ(s.r.transaction_id, 1u);
    EXPECT_EQ(s.r.nr_devices, 1u);  // one empty device, as thin_dump -m shows
    EXPECT_EQ(s.r.nr_mappings, 0u);
}

// ---- deeper trees and sharing ----

TEST(Check, ThreeLevelTreesAndADamagedInternalNode) {
    auto e = std::make_shared<memory_engine>(4096);
    {
        auto md = metadata::format(e, 128, 200000);
        md->create_thin(4);
        for (std::uint64_t v = 0; v < 70000; ++v) md->insert(4, v, *md->alloc_data_block());
        md->create_snap(6, 4);  // shares the whole tree, internal root included
        md->commit();
    }
    auto clean = run_check(e);
    ASSERT_EQ(clean.r.worst, severity::none) << clean.text;
    EXPECT_EQ(clean.r.nr_mappings, 140000u);

    // An internal node one level below the root: both devices lose its key range.
    superblock sb = superblock::unpack(e->raw(0));
    std::uint64_t root = 0;
    {
        btree::node_ref top(e->raw(sb.data_mapping_root));
        root = top.value64(top.find(4));
    }
    btree::node_ref r(e->raw(root));
    ASSERT_TRUE(r.is_internal());
    ASSERT_GE(r.nr_entries(), 2u);
    block_address child = r.value64(0);
    ASSERT_TRUE(btree::node_ref(e->raw(child)).is_internal()) << "expected a three-level tree";
    std::string range = format_range(r.key(0), r.key(1));
    e->raw(child)[3000] ^= 1;
    for (unsigned threads : {1u, 2u}) {
        check_options opts;
        opts.threads = threads;
        auto o = run_check(e, opts);
        EXPECT_EQ(o.r.worst, severity::fatal);
        for (int dev : {4, 6})
            EXPECT_TRUE(contains(o.text, "  thin device " + std::to_string(dev) + " is missing mappings " + range +
                                             "\n    bad checksum in btree node (block " + std::to_string(child) + ")\n"))
                << o.text;
    }
}

TEST(Check, ReportsAreTheSameWithOneOrTwoThreads) {
    auto e = make_pool(30000);
    auto leaves = leaves_of(e, 3);
    for (std::size_t i = 0; i < leaves.size(); i += 5) e->raw(leaves[i].block)[777] ^= 4;
    check_options one, two;
    one.threads = 1;
    two.threads = 2;
    auto a = run_check(e, one), b = run_check(e, two);
    EXPECT_EQ(a.r.worst, severity::fatal);
    EXPECT_EQ(a.text, b.text);
    EXPECT_EQ(a.r.nr_mappings, b.r.nr_mappings);
}
