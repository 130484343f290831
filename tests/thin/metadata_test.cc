#include "thin/metadata/metadata.h"
#include "thin/check/recount.h"

#include "persistent-data/io_engine.h"
#include "tests/support/fixtures.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <map>
#include <random>

using namespace thin;
using namespace pdata;
using thinpool_test::temp_dir;

namespace {

// The suite (scripts/test.sh) requires the fixtures; a developer without ../shared skips them.
#define FIXTURE_MISSING()                                                                    \
    do {                                                                                     \
        if (thinpool_test::fixtures_required()) FAIL() << "kernel fixture not found";        \
        GTEST_SKIP() << "kernel fixture not found";                                          \
    } while (0)

using model = std::map<dev_id, std::map<std::uint64_t, std::uint64_t>>;

std::shared_ptr<memory_engine> mem(block_address nr = 4096) { return std::make_shared<memory_engine>(nr); }

std::map<std::uint64_t, std::uint64_t> mappings_of(const metadata& md, dev_id d) {
    std::map<std::uint64_t, std::uint64_t> r;
    md.for_each_mapping(d, [&](std::uint64_t v, block_time bt) {
        r[v] = bt.data_block;
        return true;
    });
    return r;
}

// The whole pool against the model, and every reference count against a recount (format.md §7.1).
void expect_consistent(metadata& md, const model& m) {
    ASSERT_EQ(md.devices().size(), m.size());
    for (auto& [d, maps] : m) {
        ASSERT_TRUE(md.device_exists(d)) << d;
        EXPECT_EQ(mappings_of(md, d), maps) << "device " << d;
        EXPECT_EQ(md.mapped_blocks(d), maps.size()) << "device " << d;
        if (maps.empty()) EXPECT_FALSE(md.highest_mapped(d));
        else EXPECT_EQ(md.highest_mapped(d), maps.rbegin()->first);
    }
    ASSERT_FALSE(md.changed()) << "expect_consistent needs a committed pool";
    auto r = recount_references(md.block_manager(), md.current_superblock());
    ASSERT_TRUE(r.damage.empty()) << r.damage.front().what;
    for (block_address b = 0; b < md.nr_metadata_blocks(); ++b)
        ASSERT_EQ(md.metadata_space_map().get_count(b), r.metadata_counts[b]) << "metadata block " << b;
    for (std::uint64_t b = 0; b < md.nr_data_blocks(); ++b)
        ASSERT_EQ(md.data_block_ref_count(b), r.data_counts[b]) << "data block " << b;
    // And what is on disk says the same.
    auto on_disk = read_space_map_counts(md.block_manager(), md.current_superblock().metadata_sm(), true);
    for (block_address b = 0; b < md.nr_metadata_blocks(); ++b)
        ASSERT_EQ(on_disk[b], r.metadata_counts[b]) << "on-disk metadata block " << b;
    auto data_on_disk = read_space_map_counts(md.block_manager(), md.current_superblock().data_sm(), false);
    for (std::uint64_t b = 0; b < md.nr_data_blocks(); ++b)
        ASSERT_EQ(data_on_disk[b], r.data_counts[b]) << "on-disk data block " << b;
}

// What a pool does on a write: unmapped or shared blocks get a new data block.
void write_block(metadata& md, model& m, dev_id d, std::uint64_t v) {
    auto l = md.lookup(d, v);
    if (l && !l->shared) return;
    auto b = md.alloc_data_block();
    ASSERT_TRUE(b);
    md.insert(d, v, *b);
    m[d][v] = *b;
}

} // namespace

TEST(Metadata, FormatWritesAKernelStyleSuperblock) {
    auto e = mem(1024);
    auto md = metadata::format(e, 128, 1000);
    superblock sb = superblock::unpack(e->raw(0));
    EXPECT_EQ(sb.magic, SUPERBLOCK_MAGIC);
    EXPECT_EQ(sb.version, 2u);
    EXPECT_EQ(sb.data_block_size, 128u);
    EXPECT_EQ(sb.metadata_block_size, 8u);
    EXPECT_EQ(sb.metadata_nr_blocks, 1024u);
    EXPECT_EQ(sb.data_sm().nr_blocks, 1000u);
    EXPECT_EQ(sb.metadata_sm().nr_blocks, 1024u);
    EXPECT_EQ(sb.time, 0u);
    EXPECT_EQ(sb.trans_id, 0u);
    EXPECT_EQ(sb.metadata_snap, 0u);
    EXPECT_NO_THROW(superblock_validator().check(e->raw(0), 0));
    expect_consistent(*md, {});
}

TEST(Metadata, RejectsBadDataBlockSizes) {
    EXPECT_THROW(metadata::format(mem(), 100, 10), metadata_error);
    EXPECT_THROW(metadata::format(mem(), 64, 10), metadata_error);
    EXPECT_THROW(metadata::format(mem(), 4194304, 10), metadata_error);
    EXPECT_NO_THROW(metadata::format(mem(), 384, 10));  // not a power of two: fine
}

TEST(Metadata, DevicesSnapshotsAndSharing) {
    auto e = mem();
    auto md = metadata::format(e, 128, 10000);
    model m;
    md->create_thin(1);
    m[1];
    for (std::uint64_t v = 0; v < 600; ++v) write_block(*md, m, 1, v);
    md->commit();
    expect_consistent(*md, m);

    md->create_snap(2, 1);
    m[2] = m[1];
    EXPECT_EQ(md->time(), 1u);
    EXPECT_EQ(md->details(2).creation_time, 1u);
    EXPECT_EQ(md->details(2).snapshotted_time, 1u);
    EXPECT_EQ(md->details(1).snapshotted_time, 1u);
    EXPECT_EQ(md->details(2).mapped_blocks, 600u);
    auto l = md->lookup(1, 5);
    ASSERT_TRUE(l);
    EXPECT_TRUE(l->shared);
    md->commit();
    expect_consistent(*md, m);

    // Writes to the origin break sharing; the snapshot keeps its view.
    for (std::uint64_t v = 0; v < 600; v += 3) write_block(*md, m, 1, v);
    md->commit();
    expect_consistent(*md, m);
    EXPECT_NE(md->lookup(1, 0)->data_block, md->lookup(2, 0)->data_block);
    EXPECT_EQ(md->lookup(1, 1)->data_block, md->lookup(2, 1)->data_block);

    // Snapshot of a snapshot, then delete the middle one.
    md->create_snap(3, 2);
    m[3] = m[2];
    for (std::uint64_t v = 1; v < 600; v += 5) write_block(*md, m, 3, v);
    md->delete_device(2);
    m.erase(2);
    md->commit();
    expect_consistent(*md, m);

    EXPECT_THROW(md->create_thin(1), metadata_error);
    EXPECT_THROW(md->create_snap(4, 2), metadata_error);
    EXPECT_THROW(md->delete_device(2), metadata_error);
}

TEST(Metadata, RandomOperationsAgainstAModel) {
    auto e = mem(8192);
    auto md = metadata::format(e, 128, 200000);
    model m;
    std::mt19937_64 rng(42);
    dev_id next = 0;
    md->create_thin(next);
    m[next++];
    for (int round = 0; round < 30; ++round) {
        std::vector<dev_id> devs;
        for (auto& [d, _] : m) devs.push_back(d);
        dev_id d = devs[rng() % devs.size()];
        switch (rng() % 6) {
        case 0:
            if (m.size() < 12) {
                md->create_snap(next, d);
                m[next] = m[d];
                ++next;
            }
            break;
        case 1:
            if (m.size() > 1) {
                md->delete_device(d);
                m.erase(d);
            }
            break;
        case 2: {
            std::uint64_t b = rng() % 4000, len = rng() % 700;
            std::uint64_t n = md->remove_range(d, b, b + len);
            std::uint64_t expect = 0;
            for (auto it = m[d].lower_bound(b); it != m[d].end() && it->first < b + len;) {
                it = m[d].erase(it);
                ++expect;
            }
            EXPECT_EQ(n, expect);
            break;
        }
        default:
            for (int i = 0; i < 800; ++i) write_block(*md, m, d, rng() % 4000);
            for (int i = 0; i < 20; ++i) {
                std::uint64_t v = rng() % 4000;
                EXPECT_EQ(md->remove(d, v), m[d].erase(v) == 1);
            }
        }
        if (round % 3 == 2) {
            md->commit();
            expect_consistent(*md, m);
        }
    }
    md->commit();
    expect_consistent(*md, m);

    // Everything survives a reopen from the device.
    md.reset();
    thin::open_options o;
    auto md2 = metadata::open(e, o);
    expect_consistent(*md2, m);
}

TEST(Metadata, AbortLeavesTheLastCommittedStateIntact) {
    auto e = mem();
    auto md = metadata::format(e, 128, 5000);
    model m;
    md->create_thin(7);
    m[7];
    for (std::uint64_t v = 0; v < 300; ++v) write_block(*md, m, 7, v);
    md->set_transaction_id(0, 5);
    md->commit();
    model committed = m;

    md->create_snap(8, 7);
    for (std::uint64_t v = 0; v < 300; ++v) write_block(*md, m, 7, v);
    md->remove_range(7, 100, 200);
    md->set_transaction_id(5, 6);
    md->create_thin(9);
    md->abort();

    EXPECT_EQ(md->transaction_id(), 5u);
    EXPECT_FALSE(md->device_exists(8));
    EXPECT_FALSE(md->device_exists(9));
    expect_consistent(*md, committed);

    // The pool is usable after the abort.
    m = committed;
    for (std::uint64_t v = 300; v < 400; ++v) write_block(*md, m, 7, v);
    md->commit();
    expect_consistent(*md, m);
}

TEST(Metadata, TransactionIdIsCompareAndSwap) {
    auto md = metadata::format(mem(), 128, 10);
    EXPECT_THROW(md->set_transaction_id(1, 2), metadata_error);
    md->set_transaction_id(0, 2);
    EXPECT_EQ(md->transaction_id(), 2u);
    md->commit();
    EXPECT_EQ(superblock::unpack(md->block_manager().read_lock(0, superblock_validator()).data()).trans_id, 2u);
}

TEST(Metadata, RefusesDeviceIdsOf2To24AndAbove) {
    auto md = metadata::format(mem(), 128, 10);
    try {
        md->create_thin(1u << 24);
        FAIL();
    } catch (const metadata_error& e) {
        EXPECT_EQ(e.error_code(), EINVAL);
    }
    EXPECT_NO_THROW(md->create_thin((1u << 24) - 1));
    EXPECT_THROW(md->create_snap(1u << 24, (1u << 24) - 1), metadata_error);
}

TEST(Metadata, RefusesASnapshotThatWouldOverflowTime) {
    auto e = mem();
    {
        auto md = metadata::format(e, 128, 10);
        md->create_thin(0);
        md->commit();
    }
    // Put the clock one step before the 24-bit limit.
    superblock sb = superblock::unpack(e->raw(0));
    sb.time = MAX_TIME - 1;
    sb.pack(e->raw(0));
    superblock_validator().prepare(e->raw(0), 0);
    auto md = metadata::open(e, {});
    md->create_snap(1, 0);
    EXPECT_EQ(md->time(), MAX_TIME);
    EXPECT_THROW(md->create_snap(2, 0), metadata_error);
}

TEST(Metadata, OpenRefusesWhatTheKernelRefuses) {
    auto e = mem();
    metadata::format(e, 128, 10);
    auto corrupt_and_open = [&](auto edit, thin::open_options o = {}) {
        auto copy = std::make_shared<memory_engine>(e->nr_blocks());
        for (block_address b = 0; b < e->nr_blocks(); ++b) copy->write(b, e->raw(b));
        superblock sb = superblock::unpack(copy->raw(0));
        edit(sb);
        sb.pack(copy->raw(0));
        superblock_validator().prepare(copy->raw(0), 0);
        return metadata::open(copy, o);
    };
    EXPECT_THROW(corrupt_and_open([](superblock& s) { s.magic = 1; }), corrupt_block);
    EXPECT_THROW(corrupt_and_open([](superblock& s) { s.incompat_flags = 1; }), metadata_error);
    EXPECT_THROW(corrupt_and_open([](superblock& s) { s.compat_ro_flags = 1; }), metadata_error);
    thin::open_options ro;
    ro.read_only = true;
    EXPECT_NO_THROW(corrupt_and_open([](superblock& s) { s.compat_ro_flags = 1; }, ro));
    EXPECT_THROW(corrupt_and_open([](superblock& s) { s.flags = FLAG_NEEDS_CHECK; }), metadata_error);
    EXPECT_NO_THROW(corrupt_and_open([](superblock& s) { s.flags = FLAG_NEEDS_CHECK; }, ro));
    thin::open_options bs;
    bs.data_block_size = 256;
    EXPECT_THROW(corrupt_and_open([](superblock&) {}, bs), metadata_error);

    // A bad checksum names block 0.
    auto copy = std::make_shared<memory_engine>(e->nr_blocks());
    for (block_address b = 0; b < e->nr_blocks(); ++b) copy->write(b, e->raw(b));
    copy->raw(0)[100] ^= 1;
    try {
        metadata::open(copy, {});
        FAIL();
    } catch (const corrupt_block& c) {
        EXPECT_EQ(c.block(), 0u);
        EXPECT_NE(std::string(c.what()).find("checksum"), std::string::npos);
    }

    // All zeros: not formatted unless asked to format.
    auto zero = mem(64);
    EXPECT_THROW(metadata::open(zero, {}), metadata_error);
    thin::open_options f;
    f.format_if_unformatted = true;
    f.data_block_size = 128;
    f.nr_data_blocks = 100;
    auto md = metadata::open(zero, f);
    EXPECT_EQ(md->nr_data_blocks(), 100u);
}

TEST(Metadata, NeedsCheckIsPersisted) {
    auto e = mem();
    auto md = metadata::format(e, 128, 10);
    md->set_needs_check();
    md->commit();
    md.reset();
    EXPECT_THROW(metadata::open(e, {}), metadata_error);
    thin::open_options ro;
    ro.read_only = true;
    auto r = metadata::open(e, ro);
    EXPECT_TRUE(r->needs_check());
    EXPECT_THROW(r->create_thin(1), metadata_error);
}

TEST(Metadata, MetadataSnapshotFreezesAView) {
    auto e = mem();
    auto md = metadata::format(e, 128, 20000);
    model m;
    md->create_thin(1);
    for (std::uint64_t v = 0; v < 1000; ++v) write_block(*md, m, 1, v);
    md->commit();
    model frozen = m;

    md->reserve_metadata_snap();
    block_address snap = md->metadata_snap();
    ASSERT_NE(snap, 0u);
    EXPECT_THROW(md->reserve_metadata_snap(), metadata_error);
    for (std::uint64_t v = 0; v < 1000; v += 2) write_block(*md, m, 1, v);  // not shared: same blocks
    md->remove_range(1, 500, 1000);
    m[1].erase(m[1].lower_bound(500), m[1].end());
    md->create_thin(2);
    m[2];
    for (std::uint64_t v = 0; v < 100; ++v) write_block(*md, m, 2, v);
    md->commit();
    expect_consistent(*md, m);

    // The copy: a superblock at its own location with zeroed space-map roots, seeing the old trees.
    read_ref r = md->block_manager().read_lock(snap, superblock_validator());
    superblock copy = superblock::unpack(r.data());
    r.release();
    EXPECT_EQ(copy.blocknr, snap);
    EXPECT_EQ(copy.metadata_snap, 0u);
    EXPECT_EQ(copy.data_sm(), sm_root{});
    btree::value_type vt;
    btree::info inf{&md->transaction_manager(), 2, vt};
    std::map<std::uint64_t, std::uint64_t> seen;
    dev_id one = 1;
    btree::iterate(inf, copy.data_mapping_root, &one, [&](std::uint64_t k, const std::uint8_t* v) {
        seen[k] = block_time::unpack(load_le64(v)).data_block;
        return true;
    });
    EXPECT_EQ(seen, frozen[1]);
    dev_id two = 2;
    std::uint8_t val[8];
    std::uint64_t keys[2] = {two, 0};
    EXPECT_FALSE(btree::lookup(inf, copy.data_mapping_root, keys, val));

    md->release_metadata_snap();
    EXPECT_EQ(md->metadata_snap(), 0u);
    EXPECT_THROW(md->release_metadata_snap(), metadata_error);
    md->commit();
    expect_consistent(*md, m);
}

TEST(Metadata, GrowDataAndMetadataDevices) {
    auto e = mem(512);
    auto md = metadata::format(e, 128, 16000);
    model m;
    md->create_thin(1);
    for (std::uint64_t v = 0; v < 16000; ++v) write_block(*md, m, 1, v);
    EXPECT_FALSE(md->alloc_data_block());
    md->resize_data(40000);  // across a bitmap boundary (16320)
    EXPECT_EQ(md->nr_free_data_blocks(), 24000u);
    for (std::uint64_t v = 16000; v < 20000; ++v) write_block(*md, m, 1, v);
    EXPECT_THROW(md->resize_data(100), metadata_error);
    md->commit();
    expect_consistent(*md, m);

    e->resize(20000);  // more than one metadata bitmap
    md->resize_metadata();
    EXPECT_EQ(md->nr_metadata_blocks(), 20000u);
    md->create_snap(2, 1);
    m[2] = m[1];
    for (std::uint64_t v = 0; v < 20000; v += 2) write_block(*md, m, 1, v);
    md->commit();
    expect_consistent(*md, m);
    md.reset();
    auto md2 = metadata::open(e, {});
    EXPECT_EQ(md2->nr_metadata_blocks(), 20000u);
    expect_consistent(*md2, m);
}

TEST(Metadata, ReferenceCountsAboveTwo) {
    auto md = metadata::format(mem(), 128, 5000);
    model m;
    md->create_thin(0);
    for (std::uint64_t v = 0; v < 2000; ++v) write_block(*md, m, 0, v);
    md->commit();
    for (dev_id s = 1; s <= 6; ++s) {
        md->create_snap(s, 0);
        m[s] = m[0];
        // A few writes to the same leaf of each snapshot: every snapshot copies that leaf, and
        // each copy takes another reference to the data blocks it still shares.
        for (std::uint64_t v = s; v < s + 3; ++v) write_block(*md, m, s, v);
        md->commit();
    }
    expect_consistent(*md, m);
    std::uint32_t max_count = 0;
    for (std::uint64_t b = 0; b < md->nr_data_blocks(); ++b) max_count = std::max(max_count, md->data_block_ref_count(b));
    EXPECT_GE(max_count, 3u);
}

// ---- kernel-written fixtures ----

class KernelFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(KernelFixture, OpensEnumeratesAndRecountsExactly) {
    temp_dir dir;
    std::string path = dir.file("meta");
    if (!thinpool_test::unpack_kernel_fixture(GetParam(), path)) FIXTURE_MISSING();
    auto engine = std::shared_ptr<io_engine>(open_sync_engine(path, {open_mode::read_only, true}));
    thin::open_options o;
    o.read_only = true;
    auto md = metadata::open(engine, o);
    ASSERT_FALSE(md->devices().empty());
    std::uint64_t total = 0;
    for (dev_id d : md->devices()) {
        std::uint64_t n = 0, last = 0;
        bool ordered = true;
        md->for_each_mapping(d, [&](std::uint64_t v, block_time bt) {
            if (n && v <= last) ordered = false;
            last = v;
            ++n;
            EXPECT_LT(bt.data_block, md->nr_data_blocks());
            return true;
        });
        EXPECT_TRUE(ordered);
        EXPECT_EQ(n, md->mapped_blocks(d)) << "device " << d;
        total += n;
    }
    // tmeta_device_id_reuse and tmeta_with_deleted_snapshot hold one empty device (as Debian's
    // thin_dump shows); the others are full of mappings.
    if (std::string(GetParam()).rfind("tmeta", 0) == 0 && md->devices().size() > 1) EXPECT_GT(total, 0u);

    auto r = recount_references(md->block_manager(), md->current_superblock());
    ASSERT_TRUE(r.damage.empty()) << r.damage.front().what;
    auto md_counts = read_space_map_counts(md->block_manager(), md->current_superblock().metadata_sm(), true);
    auto data_counts = read_space_map_counts(md->block_manager(), md->current_superblock().data_sm(), false);
    ASSERT_EQ(md_counts.size(), md->nr_metadata_blocks());
    for (block_address b = 0; b < md_counts.size(); ++b) ASSERT_EQ(md_counts[b], r.metadata_counts[b]) << "metadata block " << b;
    for (std::uint64_t b = 0; b < data_counts.size(); ++b) ASSERT_EQ(data_counts[b], r.data_counts[b]) << "data block " << b;
    // The in-memory space maps the API loaded agree too.
    for (block_address b = 0; b < md_counts.size(); ++b) ASSERT_EQ(md->metadata_space_map().get_count(b), md_counts[b]);
    for (std::uint64_t b = 0; b < data_counts.size(); ++b) ASSERT_EQ(md->data_block_ref_count(b), data_counts[b]);
}

INSTANTIATE_TEST_SUITE_P(Valid, KernelFixture,
                         ::testing::Values("tmeta", "tmeta_with_metadata_snap", "tmeta_with_shared_internal_root",
                                           "tmeta_device_id_reuse", "tmeta_with_deleted_snapshot"));

TEST(KernelFixtureCorrupted, FailsNamingTheBlock) {
    temp_dir dir;
    std::string path = dir.file("meta");
    if (!thinpool_test::unpack_kernel_fixture("corrupted_tmeta_with_metadata_snap", path))
        FIXTURE_MISSING();
    auto engine = std::shared_ptr<io_engine>(open_sync_engine(path, {open_mode::read_only, true}));
    thin::open_options o;
    o.read_only = true;
    std::string msg;
    try {
        auto md = metadata::open(engine, o);
        // If the superblock and space maps open, walking the live trees must report damage.
        auto r = recount_references(md->block_manager(), md->current_superblock());
        ASSERT_FALSE(r.damage.empty());
        msg = "metadata block " + std::to_string(r.damage.front().block) + ": " + r.damage.front().what;
    } catch (const corrupt_block& e) {
        msg = e.what();
    }
    EXPECT_NE(msg.find("block"), std::string::npos) << msg;
    std::cout << "corrupted fixture: " << msg << "\n";
}

// ---- crash consistency of commit ----

#include "persistent-data/io/fault_engine.h"

namespace {

std::shared_ptr<memory_engine> clone(memory_engine& src) {
    auto c = std::make_shared<memory_engine>(src.nr_blocks());
    for (block_address b = 0; b < src.nr_blocks(); ++b) c->write(b, src.raw(b));
    return c;
}

model read_model(metadata& md) {
    model m;
    for (dev_id d : md.devices()) m[d] = mappings_of(md, d);
    return m;
}

// The transaction the crash tests interrupt: snapshots, writes that break sharing, a discard, a
// delete, and a transaction id change (small cache, so some blocks are written before commit).
void second_transaction(metadata& md, model& m) {
    md.create_snap(2, 1);
    m[2] = m[1];
    for (std::uint64_t v = 0; v < 400; v += 3) write_block(md, m, 1, v);
    md.remove_range(2, 50, 150);
    m[2].erase(m[2].lower_bound(50), m[2].lower_bound(150));
    md.delete_device(3);
    m.erase(3);
    md.set_transaction_id(1, 2);
    md.commit();
}

} // namespace

TEST(MetadataCrash, EveryCrashPointDuringACommitLeavesOldOrNew) {
    auto base = mem(2048);
    model old_m;
    {
        auto md = metadata::format(base, 128, 5000);
        md->create_thin(1);
        md->create_thin(3);
        old_m[1];
        old_m[3];
        for (std::uint64_t v = 0; v < 400; ++v) write_block(*md, old_m, 1, v);
        for (std::uint64_t v = 0; v < 50; ++v) write_block(*md, old_m, 3, v);
        md->set_transaction_id(0, 1);
        md->commit();
    }
    // Learn how many writes the second transaction makes, and its result.
    model new_m = old_m;
    std::uint64_t total_writes = 0;
    {
        auto f = std::make_shared<fault_engine>(clone(*base));
        auto md = metadata::open(f, {.cache_blocks = 64});
        second_transaction(*md, new_m);
        total_writes = f->writes();
    }
    ASSERT_GT(total_writes, 10u);

    unsigned saw_old = 0, saw_new = 0;
    for (std::uint64_t n = 0; n <= total_writes; ++n) {
        auto disk = clone(*base);
        auto f = std::make_shared<fault_engine>(disk);
        f->crash_after_writes(n);
        try {
            auto md = metadata::open(f, {.cache_blocks = 64});
            model scratch = old_m;
            second_transaction(*md, scratch);
        } catch (const pdata::io_error&) {
        }
        auto md = metadata::open(disk, {});
        model got = read_model(*md);
        if (md->transaction_id() == 1) {
            ++saw_old;
            ASSERT_EQ(got, old_m) << "crash after " << n << " writes";
            expect_consistent(*md, old_m);
        } else {
            ++saw_new;
            ASSERT_EQ(md->transaction_id(), 2u);
            ASSERT_EQ(got, new_m) << "crash after " << n << " writes";
            expect_consistent(*md, new_m);
        }
    }
    EXPECT_GT(saw_old, 0u);
    EXPECT_GT(saw_new, 0u);
}

TEST(MetadataCrash, TornLogReplayBeforeTheSuperblockFlushKeepsTheOldState) {
    // Any subset of the writes before the final superblock write may reach the disk.
    auto base = mem(2048);
    model old_m;
    {
        auto md = metadata::format(base, 128, 5000);
        md->create_thin(1);
        md->create_thin(3);
        old_m[1];
        old_m[3];
        for (std::uint64_t v = 0; v < 400; ++v) write_block(*md, old_m, 1, v);
        md->set_transaction_id(0, 1);
        md->commit();
    }
    auto f = std::make_shared<fault_engine>(clone(*base));
    f->record(true);
    {
        auto md = metadata::open(f, {.cache_blocks = 64});
        model scratch = old_m;
        second_transaction(*md, scratch);
    }
    const write_log& log = f->log();
    // The superblock (block 0) must be the last write, after a flush, then flushed itself.
    ASSERT_GE(log.size(), 3u);
    ASSERT_TRUE(log.back().is_flush());
    ASSERT_FALSE(log[log.size() - 2].is_flush());
    ASSERT_EQ(log[log.size() - 2].block, 0u);
    ASSERT_TRUE(log[log.size() - 3].is_flush());
    for (std::size_t i = 0; i + 2 < log.size(); ++i)
        if (!log[i].is_flush()) ASSERT_NE(log[i].block, 0u) << "superblock written early at entry " << i;

    std::mt19937_64 rng(7);
    for (int trial = 0; trial < 40; ++trial) {
        auto disk = clone(*base);
        std::vector<bool> keep(log.size(), false);
        for (std::size_t i = 0; i + 2 < log.size(); ++i) keep[i] = rng() & 1;
        fault_engine::replay_selected(log, keep, *disk);
        auto md = metadata::open(disk, {});
        EXPECT_EQ(md->transaction_id(), 1u);
        EXPECT_EQ(read_model(*md), old_m);
        expect_consistent(*md, old_m);
    }
}
