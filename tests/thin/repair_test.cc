// thin/repair: valid metadata built through thin::metadata is damaged in the ways repair must
// survive (superblock, details root, mapping root, one leaf, the live trees with a metadata
// snapshot held, a data space map smaller than the mappings, mappings past the end of the data
// device up to data block 2^40-1, a data device the output cannot describe), repaired, and the output is checked
// by our checker and Debian's thin_check 0.9.0 and compared with what the model says survives.
// Kernel fixtures: repair keeps every mapping of the valid ones and recovers the corrupted one
// from its metadata snapshot.
#include "thin/check/check.h"
#include "thin/metadata/metadata.h"
#include "thin/repair/repair.h"
#include "thin/repair/scan.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"

#include "tests/support/fixtures.h"
#include "tests/support/reference_tools.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <map>
#include <random>

using namespace thin;
using namespace pdata;
using thinpool_test::scratch_dir;

namespace {

struct dev_model {
    device_details details;  // mapped_blocks included
    std::map<std::uint64_t, block_time> mappings;
    bool operator==(const dev_model&) const = default;
};
using pool_model = std::map<dev_id, dev_model>;

std::shared_ptr<io_engine> open_file(const std::string& path, bool writable = false) {
    return std::shared_ptr<io_engine>(
        open_sync_engine(path, {writable ? open_mode::read_write : open_mode::read_only, false}));
}

pool_model model_of(const metadata& md) {
    pool_model m;
    for (dev_id d : md.devices()) {
        dev_model& dm = m[d];
        dm.details = md.details(d);
        md.for_each_mapping(d, [&](std::uint64_t v, block_time bt) {
            dm.mappings[v] = bt;
            return true;
        });
    }
    return m;
}

pool_model model_of_file(const std::string& path) {
    thin::open_options o;
    o.read_only = true;
    auto md = metadata::open(open_file(path), o);
    return model_of(*md);
}

void make_file(const std::string& path, std::uint64_t blocks) {
    thinpool_test::make_sparse_file(path, blocks * MD_BLOCK_SIZE);
}

std::vector<std::uint8_t> read_raw(const std::string& path, block_address b) {
    std::vector<std::uint8_t> buf(MD_BLOCK_SIZE);
    int fd = ::open(path.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::pread(fd, buf.data(), MD_BLOCK_SIZE, static_cast<off_t>(b * MD_BLOCK_SIZE)), (ssize_t)MD_BLOCK_SIZE);
    ::close(fd);
    return buf;
}

void write_raw(const std::string& path, block_address b, const std::vector<std::uint8_t>& buf) {
    int fd = ::open(path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, buf.data(), MD_BLOCK_SIZE, static_cast<off_t>(b * MD_BLOCK_SIZE)), (ssize_t)MD_BLOCK_SIZE);
    ::close(fd);
}

// Breaks the block's checksum (one byte of its body changes).
void corrupt(const std::string& path, block_address b) {
    auto buf = read_raw(path, b);
    buf[200] ^= 0x5a;
    write_raw(path, b, buf);
}

superblock superblock_of(const std::string& path, block_address b = 0) { return superblock::unpack(read_raw(path, b).data()); }

// The level-2 root of dev in the level-1 tree at root (a single leaf in these tests).
block_address level2_root(const std::string& path, block_address top_root, dev_id dev) {
    auto buf = read_raw(path, top_root);
    btree::node_ref n(buf.data());
    EXPECT_TRUE(n.is_leaf());
    int i = n.find(dev);
    EXPECT_GE(i, 0);
    return n.value64(static_cast<unsigned>(i));
}

// A pool of three devices: 0 with `n0` sequential mappings, 1 a snapshot of 0 with some
// overwrites, 2 a thin with scattered mappings. Committed several times.
void build_pool(metadata& md, std::uint64_t n0) {
    md.create_thin(0);
    for (std::uint64_t v = 0; v < n0; ++v) md.insert(0, v, *md.alloc_data_block());
    md.commit();
    md.create_snap(1, 0);
    md.create_thin(2);
    md.commit();
    for (std::uint64_t v = 5; v < 40; v += 3) md.insert(1, v, *md.alloc_data_block());
    std::mt19937_64 rng(7);
    for (int i = 0; i < 300; ++i) md.insert(2, rng() % 100000, *md.alloc_data_block());
    md.set_transaction_id(0, 9);
    md.commit();
}

struct built {
    pool_model model;
    superblock sb;
};

built build_file(const std::string& path, std::uint64_t n0 = 2000, std::uint64_t blocks = 2048,
                 const std::function<void(metadata&)>& more = {}) {
    make_file(path, blocks);
    auto md = metadata::format(open_file(path, true), 128, 100000);
    build_pool(*md, n0);
    if (more) more(*md);
    built b{model_of(*md), md->current_superblock()};
    return b;
}

// Runs the repair into a fresh output file; returns the summary.
repair::repair_summary repair_file(const std::string& in, const std::string& out, repair::repair_options o = {},
                                   std::vector<std::string>* report = nullptr, std::uint64_t out_blocks = 2048) {
    make_file(out, out_blocks);
    if (report) o.report = [report](const std::string& s) { report->push_back(s); };
    block_manager bm(open_file(in), 256);
    return repair::repair_metadata(bm, open_file(out, true), o);
}

void expect_our_check_passes(const std::string& path) {
    check::reporter rep;
    auto r = check::check_metadata(open_file(path), {}, rep);
    EXPECT_EQ(r.worst, check::severity::none) << rep.text();
}

// Debian's thin_check must accept the output. Missing tools: a failure when the suite requires
// them, else nothing (the rest of the test still runs).
void expect_reference_check_passes(const std::string& path) {
    if (!thinpool_test::reference_tools_available()) {
        if (thinpool_test::reference_tools_required() || thinpool_test::fixtures_required())
            ADD_FAILURE() << "reference thin_check not found";
        return;
    }
    auto r = thinpool_test::run_command({thinpool_test::reference_tool("thin_check"), path});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

void expect_valid_output(const std::string& path) {
    expect_our_check_passes(path);
    expect_reference_check_passes(path);
}

// mapped_blocks of a repaired device is recomputed: compare models with it set from the mappings.
pool_model with_counts(pool_model m) {
    for (auto& [d, dm] : m) dm.details.mapped_blocks = dm.mappings.size();
    return m;
}

std::string joined(const std::vector<std::string>& lines) {
    std::string s;
    for (auto& l : lines) s += l + "\n";
    return s;
}

// Records the event stream.
class recorder : public emitter {
public:
    superblock_info sb;
    std::vector<device_info> devs;
    std::map<dev_id, std::uint64_t> emitted;
    std::uint64_t runs = 0;
    bool ended = false;
    void begin_superblock(const superblock_info& s) override { sb = s; }
    void end_superblock() override { ended = true; }
    void begin_device(const device_info& d) override { devs.push_back(d); }
    void end_device() override {}
    void range_map(std::uint64_t, std::uint64_t, std::uint64_t len, std::uint32_t) override {
        emitted[devs.back().dev_id] += len;
        ++runs;
    }
};

} // namespace

TEST(repair, clean_metadata_is_copied) {
    scratch_dir dir;
    built b = build_file(dir.file("in"));
    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), {}, &report);
    EXPECT_TRUE(s.superblock_ok);
    EXPECT_EQ(s.source, "superblock");
    EXPECT_EQ(s.devices, 3u);
    EXPECT_EQ(s.lost_ranges, 0u);
    EXPECT_TRUE(report.empty()) << joined(report);
    expect_valid_output(dir.file("out"));
    EXPECT_EQ(model_of_file(dir.file("out")), b.model);
    superblock out = superblock_of(dir.file("out"));
    EXPECT_EQ(out.trans_id, 9u);
    EXPECT_EQ(out.time, b.sb.time);
    EXPECT_EQ(out.data_sm().nr_blocks, 100000u);
    EXPECT_EQ(out.data_block_size, 128u);
    EXPECT_EQ(out.metadata_snap, 0u);
}

TEST(repair, dump_events_carry_exact_counts) {
    scratch_dir dir;
    built b = build_file(dir.file("in"));
    block_manager bm(open_file(dir.file("in")), 64);
    recorder r;
    auto s = repair::repair_dump(bm, {}, r);
    EXPECT_TRUE(r.ended);
    ASSERT_EQ(r.devs.size(), 3u);
    for (auto& d : r.devs) {
        EXPECT_EQ(d.mapped_blocks, b.model.at(d.dev_id).mappings.size());
        EXPECT_EQ(r.emitted[d.dev_id], d.mapped_blocks);
    }
    // Device 0's 2000 sequential mappings are one run.
    EXPECT_LT(r.runs, 2u + 12 * 2 + 300 + 3);
    EXPECT_EQ(s.mappings, 2000u + b.model.at(1).mappings.size() + b.model.at(2).mappings.size());
}

TEST(repair, never_writes_to_its_input) {
    scratch_dir dir;
    build_file(dir.file("in"));
    corrupt(dir.file("in"), superblock_of(dir.file("in")).device_details_root);
    std::string before = thinpool_test::read_file(dir.file("in"));
    repair_file(dir.file("in"), dir.file("out"));
    EXPECT_TRUE(before == thinpool_test::read_file(dir.file("in")));
}

TEST(repair, bad_superblock_needs_the_three_values) {
    scratch_dir dir;
    built b = build_file(dir.file("in"));
    corrupt(dir.file("in"), 0);
    make_file(dir.file("out"), 2048);
    std::string out_before = thinpool_test::read_file(dir.file("out"));
    try {
        repair_file(dir.file("in"), dir.file("out"));
        ADD_FAILURE() << "repair succeeded without the superblock values";
    } catch (const repair::missing_fields& e) {
        std::string w = e.what();
        const std::string lead =
            "The following field needs to be provided on the command line due to corruption in the superblock: ";
        EXPECT_NE(w.find(lead + "transaction id"), std::string::npos) << w;
        EXPECT_NE(w.find(lead + "data block size"), std::string::npos) << w;
        EXPECT_NE(w.find(lead + "nr data blocks"), std::string::npos) << w;
    }
    repair::repair_options o;
    o.transaction_id = 9;
    o.data_block_size = 128;
    try {
        repair_file(dir.file("in"), dir.file("out"), o);
        ADD_FAILURE() << "repair succeeded without --nr-data-blocks";
    } catch (const repair::missing_fields& e) {
        EXPECT_EQ(std::string(e.what()).find("transaction id"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("nr data blocks"), std::string::npos);
    }
    o.nr_data_blocks = 100000;
    o.transaction_id = 42;
    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), o, &report);
    EXPECT_FALSE(s.superblock_ok);
    EXPECT_EQ(s.source, "scan");
    expect_valid_output(dir.file("out"));
    EXPECT_EQ(model_of_file(dir.file("out")), b.model) << joined(report);
    superblock out = superblock_of(dir.file("out"));
    EXPECT_EQ(out.trans_id, 42u);
    EXPECT_EQ(out.time, b.sb.time);  // the highest time found (the snapshot's)
    EXPECT_EQ(out.data_sm().nr_blocks, 100000u);
}

TEST(repair, bad_superblock_with_a_held_snapshot_prefers_the_live_trees) {
    scratch_dir dir;
    built b = build_file(dir.file("in"), 2000, 2048, [](metadata& md) {
        md.reserve_metadata_snap();
        md.commit();
        for (std::uint64_t v = 2000; v < 2300; ++v) md.insert(0, v, *md.alloc_data_block());
        md.commit();
    });
    corrupt(dir.file("in"), 0);
    repair::repair_options o;
    o.transaction_id = 9;
    o.data_block_size = 128;
    o.nr_data_blocks = 100000;
    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), o, &report);
    EXPECT_EQ(s.details_root, b.sb.device_details_root) << joined(report);
    EXPECT_EQ(s.mapping_root, b.sb.data_mapping_root) << joined(report);
    expect_valid_output(dir.file("out"));
    EXPECT_EQ(model_of_file(dir.file("out")), b.model);
}

TEST(repair, bad_data_block_size_override_is_refused) {
    scratch_dir dir;
    build_file(dir.file("in"));
    repair::repair_options o;
    o.data_block_size = 100;
    EXPECT_THROW(repair_file(dir.file("in"), dir.file("out"), o), repair::repair_error);
}

TEST(repair, corrupt_details_root_uses_an_older_details_tree) {
    scratch_dir dir;
    // The last commit only changes mappings and mapped_blocks: the details tree of the commit
    // before it (same devices and times) is still on disk.
    built b = build_file(dir.file("in"), 2000, 2048, [](metadata& md) {
        for (std::uint64_t v = 2000; v < 2100; ++v) md.insert(0, v, *md.alloc_data_block());
        md.commit();
    });
    corrupt(dir.file("in"), b.sb.device_details_root);
    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), {}, &report);
    EXPECT_EQ(s.source, "scan") << joined(report);
    EXPECT_EQ(s.mapping_root, b.sb.data_mapping_root);
    EXPECT_NE(s.details_root, b.sb.device_details_root);
    expect_valid_output(dir.file("out"));
    EXPECT_EQ(model_of_file(dir.file("out")), with_counts(b.model)) << joined(report);
}

TEST(repair, corrupt_mapping_root_uses_an_older_mapping_tree) {
    scratch_dir dir;
    // The last commit adds an empty device: the level-1 tree of the commit before it names the
    // same level-2 trees for the other devices.
    built b = build_file(dir.file("in"), 2000, 2048, [](metadata& md) {
        md.create_thin(7);
        md.commit();
    });
    corrupt(dir.file("in"), b.sb.data_mapping_root);
    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), {}, &report);
    EXPECT_EQ(s.source, "scan");
    EXPECT_EQ(s.details_root, b.sb.device_details_root);
    EXPECT_EQ(s.dropped_devices, 1u);  // device 7 is in the details tree only
    expect_valid_output(dir.file("out"));
    pool_model want = b.model;
    want.erase(7);
    EXPECT_EQ(model_of_file(dir.file("out")), want) << joined(report);
}

TEST(repair, corrupt_leaf_loses_only_its_key_range) {
    scratch_dir dir;
    built b = build_file(dir.file("in"));
    block_address root0 = level2_root(dir.file("in"), b.sb.data_mapping_root, 0);
    auto rootbuf = read_raw(dir.file("in"), root0);
    btree::node_ref root(rootbuf.data());
    ASSERT_TRUE(root.is_internal());
    ASSERT_GE(root.nr_entries(), 3u);
    block_address leaf = root.value64(1);
    std::uint64_t lo = root.key(1), hi = root.key(2);
    corrupt(dir.file("in"), leaf);

    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), {}, &report);
    EXPECT_EQ(s.source, "superblock");
    ASSERT_GE(report.size(), 1u);
    EXPECT_EQ(s.lost_ranges, report.size());
    EXPECT_EQ(report[0], "thin device 0: mappings [" + std::to_string(lo) + ".." + std::to_string(hi) +
                             ") lost (block " + std::to_string(leaf) + ": " +
                             "bad checksum in btree node" + report[0].substr(report[0].find(" (stored")))
        << report[0];
    expect_valid_output(dir.file("out"));

    pool_model want = b.model;
    auto& m0 = want[0].mappings;
    std::size_t before = m0.size();
    m0.erase(m0.lower_bound(lo), m0.lower_bound(hi));
    EXPECT_LT(m0.size(), before);
    // Device 1 shares that leaf (it is a snapshot of 0 whose tree was copied only where written):
    // it loses the same range when it still points at the bad leaf.
    block_address root1 = level2_root(dir.file("in"), b.sb.data_mapping_root, 1);
    auto r1 = read_raw(dir.file("in"), root1);
    btree::node_ref n1(r1.data());
    unsigned shared = 0;
    for (unsigned i = 0; n1.is_internal() && i < n1.nr_entries(); ++i)
        if (n1.value64(i) == leaf) {
            auto& m1 = want[1].mappings;
            std::uint64_t end = i + 1 < n1.nr_entries() ? n1.key(i + 1) : UINT64_MAX;
            m1.erase(m1.lower_bound(n1.key(i)), m1.lower_bound(end));
            ++shared;
        }
    EXPECT_EQ(s.lost_ranges, 1u + shared);
    EXPECT_EQ(model_of_file(dir.file("out")), with_counts(want)) << joined(report);
}

TEST(repair, damaged_live_trees_recover_from_the_metadata_snapshot) {
    scratch_dir dir;
    pool_model at_snapshot;
    built b = build_file(dir.file("in"), 2000, 2048, [&](metadata& md) {
        md.reserve_metadata_snap();
        at_snapshot = model_of(md);
        for (std::uint64_t v = 3000; v < 3500; ++v) md.insert(0, v, *md.alloc_data_block());
        md.delete_device(2);
        md.create_thin(5);
        md.set_transaction_id(9, 10);
        md.commit();
    });
    ASSERT_NE(b.sb.metadata_snap, 0u);
    corrupt(dir.file("in"), b.sb.device_details_root);
    corrupt(dir.file("in"), b.sb.data_mapping_root);
    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), {}, &report);
    EXPECT_EQ(s.source, "metadata snapshot (block " + std::to_string(b.sb.metadata_snap) + ")") << joined(report);
    expect_valid_output(dir.file("out"));
    EXPECT_EQ(model_of_file(dir.file("out")), at_snapshot) << joined(report);
    superblock out = superblock_of(dir.file("out"));
    EXPECT_EQ(out.trans_id, 10u);  // the live superblock's
    EXPECT_EQ(out.metadata_snap, 0u);
}

TEST(repair, snapshot_is_ignored_while_the_live_trees_are_good) {
    scratch_dir dir;
    built b = build_file(dir.file("in"), 2000, 2048, [&](metadata& md) {
        md.reserve_metadata_snap();
        for (std::uint64_t v = 3000; v < 3100; ++v) md.insert(0, v, *md.alloc_data_block());
        md.commit();
    });
    auto s = repair_file(dir.file("in"), dir.file("out"));
    EXPECT_EQ(s.source, "superblock");
    expect_valid_output(dir.file("out"));
    EXPECT_EQ(model_of_file(dir.file("out")), b.model);
}

TEST(repair, data_space_map_smaller_than_the_mappings) {
    scratch_dir dir;
    built b = build_file(dir.file("in"));
    std::uint64_t highest = 0;
    for (auto& [d, dm] : b.model)
        for (auto& [v, bt] : dm.mappings) highest = std::max(highest, bt.data_block);
    // A superblock (good checksum) whose data space map claims fewer blocks than are mapped.
    auto buf = read_raw(dir.file("in"), 0);
    store_le64(buf.data() + 64, 1000);
    store_le32(buf.data(), block_checksum(buf.data(), block_salt::superblock));
    write_raw(dir.file("in"), 0, buf);

    std::vector<std::string> report;
    repair_file(dir.file("in"), dir.file("out"), {}, &report);
    EXPECT_EQ(superblock_of(dir.file("out")).data_sm().nr_blocks, highest + 1) << joined(report);
    expect_valid_output(dir.file("out"));
    EXPECT_EQ(model_of_file(dir.file("out")), b.model);

    // A value given on the command line stands: the mappings beyond it are dropped.
    repair::repair_options o;
    o.nr_data_blocks = 1000;
    report.clear();
    auto s = repair_file(dir.file("in"), dir.file("out"), o, &report);
    EXPECT_GT(s.dropped_mappings, 0u);
    EXPECT_EQ(superblock_of(dir.file("out")).data_sm().nr_blocks, 1000u);
    expect_valid_output(dir.file("out"));
    pool_model want = b.model;
    for (auto& [d, dm] : want)
        std::erase_if(dm.mappings, [](const auto& kv) { return kv.second.data_block >= 1000; });
    EXPECT_EQ(model_of_file(dir.file("out")), with_counts(want));
}

namespace {
// ---- mappings beyond the data device ----

// The first leaf of dev's level-2 tree (leftmost path).
block_address first_leaf(const std::string& path, dev_id dev) {
    block_address b = level2_root(path, superblock_of(path).data_mapping_root, dev);
    for (;;) {
        auto buf = read_raw(path, b);
        btree::node_ref n(buf.data());
        if (n.is_leaf()) return b;
        b = n.value64(0);
    }
}

// Points entry i of leaf b at data block data (keeping its time); returns its thin block.
std::uint64_t set_mapping(const std::string& path, block_address b, unsigned i, std::uint64_t data) {
    auto buf = read_raw(path, b);
    btree::node_mut n(buf.data());
    block_time bt = block_time::unpack(n.value64(i));
    bt.data_block = data;
    n.set_value64(i, bt.pack());
    store_le32(buf.data(), block_checksum(buf.data(), block_salt::btree_node));
    write_raw(path, b, buf);
    return n.key(i);
}

// Rewrites block 0's data space map root with f applied (the checksum stays good).
void edit_data_sm_root(const std::string& path, const std::function<void(sm_root&)>& f) {
    auto buf = read_raw(path, 0);
    sm_root r = sm_root::unpack(buf.data() + 64);
    f(r);
    r.pack(buf.data() + 64);
    store_le32(buf.data(), block_checksum(buf.data(), block_salt::superblock));
    write_raw(path, 0, buf);
}

// Device 2 (never snapshotted, so its leaves are its own): entry 0 -> 2^40-1, entry 1 -> the
// data device size (the first block past the end), entry 2 -> the last block of the device.
// Returns the model with those changes (all three still mapped).
pool_model point_beyond_the_end(const std::string& path, pool_model m, std::uint64_t nr_data_blocks) {
    block_address leaf = first_leaf(path, 2);
    std::uint64_t targets[] = {MAX_DATA_BLOCK, nr_data_blocks, nr_data_blocks - 1};
    for (unsigned i = 0; i < 3; ++i) {
        std::uint64_t v = set_mapping(path, leaf, i, targets[i]);
        m.at(2).mappings.at(v).data_block = targets[i];
    }
    return m;
}

pool_model without_mappings_at_or_above(pool_model m, std::uint64_t limit) {
    for (auto& [d, dm] : m)
        std::erase_if(dm.mappings, [limit](const auto& kv) { return kv.second.data_block >= limit; });
    return with_counts(m);
}

bool any_line_has(const std::vector<std::string>& lines, std::initializer_list<const char*> words) {
    for (auto& l : lines) {
        bool all = true;
        for (const char* w : words) all = all && l.find(w) != std::string::npos;
        if (all) return true;
    }
    return false;
}

} // namespace

TEST(repair, mappings_beyond_the_data_device_size_are_dropped) {
    scratch_dir dir;
    built b = build_file(dir.file("in"));
    pool_model damaged = point_beyond_the_end(dir.file("in"), b.model, 100000);

    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), {}, &report);
    EXPECT_EQ(s.dropped_mappings, 2u) << joined(report);
    // The data device keeps the size the superblock records; the block just below it stays.
    EXPECT_EQ(superblock_of(dir.file("out")).data_sm().nr_blocks, 100000u);
    EXPECT_TRUE(any_line_has(report, {"thin device 2", "2 mappings", "100000"})) << joined(report);
    expect_valid_output(dir.file("out"));
    EXPECT_EQ(model_of_file(dir.file("out")), without_mappings_at_or_above(damaged, 100000));

    // thin_dump --repair: the same rule.
    block_manager bm(open_file(dir.file("in")), 64);
    recorder r;
    auto ds = repair::repair_dump(bm, {}, r);
    EXPECT_EQ(r.sb.nr_data_blocks, 100000u);
    EXPECT_EQ(ds.dropped_mappings, 2u);
    EXPECT_EQ(r.emitted[2], damaged.at(2).mappings.size() - 2);
}

TEST(repair, untrusted_data_space_map_and_a_mapping_at_2_pow_40_minus_1_needs_nr_data_blocks) {
    scratch_dir dir;
    built b = build_file(dir.file("in"));
    pool_model damaged = point_beyond_the_end(dir.file("in"), b.model, 100000);
    // The data space map root names a block that is not an index tree: its size cannot be trusted,
    // and 2^40 data blocks (67 million bitmaps) do not fit in the output.
    edit_data_sm_root(dir.file("in"), [](sm_root& r) { r.bitmap_root = 0; });

    make_file(dir.file("out"), 2048);
    block_manager bm(open_file(dir.file("in")), 256);
    try {
        repair::repair_metadata(bm, open_file(dir.file("out"), true), {});
        ADD_FAILURE() << "repair succeeded with a data device of 2^40 blocks";
    } catch (const repair::repair_error& e) {
        std::string w = e.what();
        EXPECT_NE(w.find("--nr-data-blocks"), std::string::npos) << w;
        EXPECT_NE(w.find(std::to_string(MAX_DATA_BLOCK)), std::string::npos) << w;
        EXPECT_EQ(w.find('\n'), std::string::npos) << w;
    }
    // Nothing was written.
    EXPECT_TRUE(block_is_all_zero(read_raw(dir.file("out"), 0).data()));

    repair::repair_options o;
    o.nr_data_blocks = 100000;
    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), o, &report);
    EXPECT_EQ(s.dropped_mappings, 2u);
    EXPECT_EQ(superblock_of(dir.file("out")).data_sm().nr_blocks, 100000u);
    expect_valid_output(dir.file("out"));
    EXPECT_EQ(model_of_file(dir.file("out")), without_mappings_at_or_above(damaged, 100000));

    // thin_dump --repair has no output to fit: the size is raised to 2^40.
    recorder r;
    repair::repair_dump(bm, {}, r);
    EXPECT_EQ(r.sb.nr_data_blocks, MAX_DATA_BLOCK + 1);
}

TEST(repair, untrusted_data_space_map_is_raised_to_the_highest_mapping_when_it_fits) {
    scratch_dir dir;
    built b = build_file(dir.file("in"));
    block_address leaf = first_leaf(dir.file("in"), 2);
    pool_model want = b.model;
    std::uint64_t v = set_mapping(dir.file("in"), leaf, 0, 150000);
    want.at(2).mappings.at(v).data_block = 150000;
    for (std::uint64_t bad : {std::uint64_t(1) << 50, std::uint64_t(0)}) {
        SCOPED_TRACE(bad);
        // nr_blocks beyond 40 bits; then an index root past the end of the device.
        edit_data_sm_root(dir.file("in"), [bad](sm_root& r) {
            if (bad) {
                r.nr_blocks = bad;
            } else {
                r.nr_blocks = 100000;
                r.bitmap_root = 1u << 20;
            }
        });
        std::vector<std::string> report;
        auto s = repair_file(dir.file("in"), dir.file("out"), {}, &report);
        EXPECT_EQ(s.dropped_mappings, 0u);
        EXPECT_EQ(superblock_of(dir.file("out")).data_sm().nr_blocks, 150001u) << joined(report);
        EXPECT_TRUE(any_line_has(report, {"data space map", "150001"})) << joined(report);
        expect_valid_output(dir.file("out"));
        EXPECT_EQ(model_of_file(dir.file("out")), want);
    }
}

TEST(repair, a_data_device_too_big_for_the_output_is_refused_before_writing) {
    scratch_dir dir;
    build_file(dir.file("in"));
    repair::repair_options o;
    o.nr_data_blocks = MAX_DATA_BLOCK + 1;
    make_file(dir.file("out"), 2048);
    block_manager bm(open_file(dir.file("in")), 256);
    try {
        repair::repair_metadata(bm, open_file(dir.file("out"), true), o);
        ADD_FAILURE() << "repair succeeded";
    } catch (const repair::repair_error& e) {
        EXPECT_NE(std::string(e.what()).find("--nr-data-blocks"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(block_is_all_zero(read_raw(dir.file("out"), 0).data()));
    // The superblock's own size, too: 100000 data blocks need 7 bitmaps, more than 8 blocks hold.
    make_file(dir.file("small"), 8);
    EXPECT_THROW(repair::repair_metadata(bm, open_file(dir.file("small"), true), {}), repair::repair_error);
    EXPECT_TRUE(block_is_all_zero(read_raw(dir.file("small"), 0).data()));
}

TEST(repair, failure_leaves_the_output_superblock_zeroed) {
    scratch_dir dir;
    build_file(dir.file("in"), 20000, 4096);
    // The output first holds valid metadata, then is too small for the repaired pool.
    make_file(dir.file("out"), 16);
    metadata::format(open_file(dir.file("out"), true), 128, 1000).reset();
    ASSERT_FALSE(block_is_all_zero(read_raw(dir.file("out"), 0).data()));
    block_manager bm(open_file(dir.file("in")), 256);
    EXPECT_ANY_THROW(repair::repair_metadata(bm, open_file(dir.file("out"), true), {}));
    EXPECT_TRUE(block_is_all_zero(read_raw(dir.file("out"), 0).data()));
}

TEST(repair, scan_finds_superblock_copies_and_roots) {
    scratch_dir dir;
    built b = build_file(dir.file("in"), 2000, 2048, [](metadata& md) {
        md.reserve_metadata_snap();
        md.commit();
    });
    block_manager bm(open_file(dir.file("in")), 64);
    auto s = repair::scan_metadata(bm);
    EXPECT_EQ(s.nr_blocks, 2048u);
    ASSERT_EQ(s.superblock_copies.size(), 1u);
    EXPECT_EQ(s.superblock_copies[0].location, b.sb.metadata_snap);
    auto has = [](const std::vector<block_address>& v, block_address x) {
        return std::find(v.begin(), v.end(), x) != v.end();
    };
    EXPECT_TRUE(has(s.details_roots, b.sb.device_details_root));
    EXPECT_TRUE(has(s.mapping_roots, b.sb.data_mapping_root));
    // Level-2 trees are not taken for level-1 roots.
    EXPECT_FALSE(has(s.mapping_roots, level2_root(dir.file("in"), b.sb.data_mapping_root, 0)));
}

// ---- kernel fixtures ----

namespace {

bool unpack_or_skip(const std::string& name, const std::string& dest) {
    return thinpool_test::unpack_kernel_fixture(name, dest);
}

std::string reference_dump(const std::string& path) {
    auto r = thinpool_test::run_command({thinpool_test::reference_tool("thin_dump"), path});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
}

} // namespace

class repair_kernel_fixture : public ::testing::TestWithParam<std::string> {};

TEST_P(repair_kernel_fixture, keeps_every_mapping) {
    scratch_dir dir;
    if (!unpack_or_skip(GetParam(), dir.file("in"))) {
        if (thinpool_test::fixtures_required()) FAIL() << "kernel fixture missing";
        GTEST_SKIP() << "kernel fixture not found";
    }
    std::uint64_t blocks = open_file(dir.file("in"))->nr_blocks();
    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), {}, &report, blocks);
    EXPECT_EQ(s.source, "superblock");
    EXPECT_TRUE(report.empty()) << joined(report);
    expect_valid_output(dir.file("out"));
    EXPECT_EQ(model_of_file(dir.file("out")), model_of_file(dir.file("in")));
    if (thinpool_test::reference_tools_available())
        EXPECT_EQ(reference_dump(dir.file("out")), reference_dump(dir.file("in")));
}

INSTANTIATE_TEST_SUITE_P(kernel, repair_kernel_fixture,
                         ::testing::Values("tmeta", "tmeta_with_metadata_snap", "tmeta_with_shared_internal_root",
                                           "tmeta_device_id_reuse", "tmeta_with_deleted_snapshot"));

TEST(repair_kernel, corrupted_fixture_recovers_from_the_metadata_snapshot) {
    scratch_dir dir;
    if (!unpack_or_skip("corrupted_tmeta_with_metadata_snap", dir.file("in"))) {
        if (thinpool_test::fixtures_required()) FAIL() << "kernel fixture missing";
        GTEST_SKIP() << "kernel fixture not found";
    }
    superblock in = superblock_of(dir.file("in"));
    std::vector<std::string> report;
    auto s = repair_file(dir.file("in"), dir.file("out"), {}, &report, 1024);
    EXPECT_EQ(s.source, "metadata snapshot (block " + std::to_string(in.metadata_snap) + ")") << joined(report);
    EXPECT_EQ(s.devices, 1u);
    expect_valid_output(dir.file("out"));
    superblock out = superblock_of(dir.file("out"));
    EXPECT_EQ(out.trans_id, in.trans_id);
    EXPECT_EQ(out.data_sm().nr_blocks, in.data_sm().nr_blocks);
    pool_model m = model_of_file(dir.file("out"));
    ASSERT_EQ(m.size(), 1u);
    EXPECT_EQ(m.begin()->first, 1u);
    if (thinpool_test::reference_tools_available()) {
        // What Debian's thin_dump -m reads from the snapshot is what the output holds.
        auto r = thinpool_test::run_command({thinpool_test::reference_tool("thin_dump"), "-m", dir.file("in")});
        ASSERT_EQ(r.exit_code, 0);
        std::string snap_devices = r.out.substr(r.out.find('\n'));
        std::string out_dump = reference_dump(dir.file("out"));
        EXPECT_EQ(out_dump.substr(out_dump.find('\n')), snap_devices);
    }
}
