// The pool's questions for front ends (pool.h): thin_device::extents (NBD block status),
// pool::devices (mapped and exclusive blocks per device), pool::create_snapshots (several at one
// point in time, all or nothing), and the lock that keeps other processes off a live metadata file.
#include "tests/support/pool_support.h"

#include "persistent-data/io_engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

using namespace thinpool_test;
using thin::pool::extent;
using thin::pool::extent_state;

namespace {

constexpr std::uint32_t BS = 128;  // 64 KiB blocks

std::string show(const std::vector<extent>& xs) {
    std::string s;
    for (auto& x : xs) {
        s += std::to_string(x.sector) + "+" + std::to_string(x.nr_sectors) + ":";
        s += x.state == extent_state::mapped ? "M " : x.state == extent_state::origin ? "O " : "U ";
    }
    return s;
}

TEST(PoolQuery, ExtentsFollowTheMappingsAndMergeRuns) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    ASSERT_EQ(0, write_block(*t, BS, 2, 1));
    ASSERT_EQ(0, write_block(*t, BS, 3, 2));
    ASSERT_EQ(0, write_block(*t, BS, 7, 3));

    EXPECT_EQ("0+256:U 256+256:M 512+384:U 896+128:M 1024+1024:U ", show(t->extents(0, 16 * BS)));
    // Ranges that start and end inside blocks are cut at the range, not at block boundaries.
    EXPECT_EQ("300+212:M 512+10:U ", show(t->extents(300, 222)));
    EXPECT_EQ("900+20:M ", show(t->extents(900, 20)));
    // Clipped to the device; nothing past its end.
    EXPECT_EQ("1900+148:U ", show(t->extents(1900, 1000)));
    EXPECT_TRUE(t->extents(16 * BS, 8).empty());
    // A discard makes the block a hole again.
    ASSERT_EQ(0, discard_sync(*t, 2 * BS, BS));
    EXPECT_EQ("0+384:U 384+128:M 512+128:U ", show(t->extents(0, 5 * BS)));
}

TEST(PoolQuery, ExtentsOfAnExternalOriginDevice) {
    memory_pool mp(1024, 64);
    auto origin = std::make_shared<thin::pool::memory_data_device>(3 * BS + 64);  // a fractional tail
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 8 * BS, origin);
    ASSERT_EQ(0, write_block(*t, BS, 1, 9));
    // Unmapped sectors below the origin's end are the origin's; past it they read as zeros.
    EXPECT_EQ("0+128:O 128+128:M 256+192:O 448+576:U ", show(t->extents(0, 8 * BS)));
}

TEST(PoolQuery, DevicesReportMappedAndExclusiveBlocks) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    {
        auto t = p->activate(0, 16 * BS);
        for (std::uint64_t b = 0; b < 6; ++b) ASSERT_EQ(0, write_block(*t, BS, b, 1 + b));
        t->close();
    }
    p->message("create_snap 1 0");
    {
        auto s = p->activate(1, 16 * BS);
        ASSERT_EQ(0, write_block(*s, BS, 0, 50));  // breaks sharing of block 0
        ASSERT_EQ(0, write_block(*s, BS, 9, 51));  // a new block only the snapshot has
        auto ds = p->devices(true);
        ASSERT_EQ(2u, ds.size());
        EXPECT_EQ(0u, ds[0].id);
        EXPECT_EQ(6u, ds[0].mapped_blocks);
        EXPECT_EQ(1u, ds[0].exclusive_blocks.value());
        EXPECT_EQ(5u, ds[0].highest_mapped_block.value());
        EXPECT_FALSE(ds[0].active);
        EXPECT_EQ(1u, ds[1].id);
        EXPECT_EQ(7u, ds[1].mapped_blocks);
        EXPECT_EQ(2u, ds[1].exclusive_blocks.value());
        EXPECT_EQ(9u, ds[1].highest_mapped_block.value());
        EXPECT_TRUE(ds[1].active);
        EXPECT_FALSE(p->devices(false)[0].exclusive_blocks.has_value());
    }
    EXPECT_EQ(BS, p->data_block_size());
}

TEST(PoolQuery, CreateSnapshotsIsAllOrNothing) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    p->message("create_thin 1");
    std::uint64_t tid = p->status_info().transaction_id;
    // One bad pair refuses the lot: nothing is created.
    EXPECT_EQ(EEXIST, pool_errno([&] { p->create_snapshots({{2, 0}, {1, 1}}); }));
    EXPECT_EQ(EEXIST, pool_errno([&] { p->create_snapshots({{2, 0}, {2, 1}}); }));
    EXPECT_EQ(ENODATA, pool_errno([&] { p->create_snapshots({{2, 0}, {3, 7}}); }));
    EXPECT_EQ(ENODATA, pool_errno([&] { p->create_snapshots({{2, 0}, {3, 2}}); }));
    EXPECT_EQ(2u, p->devices().size());
    p->create_snapshots({{2, 0}, {3, 1}, {4, 0}});
    auto ds = p->devices();
    ASSERT_EQ(5u, ds.size());
    EXPECT_EQ(tid, p->status_info().transaction_id);
}

// Two origins under writes: the writer writes generation g to origin 0, waits, then to origin 1,
// so at any instant tag(0) - tag(1) is 0 or 1. A pair of snapshots taken at one point in time keeps
// that; pairs taken one after the other with writes in between break it (origin 1 ahead, or
// origin 0 more than one generation ahead).
TEST(PoolQuery, CreateSnapshotsTakesActiveOriginsAtOnePointInTime) {
    memory_pool mp(4096, 512);
    auto p = mp.open();
    p->message("create_thin 0");
    p->message("create_thin 1");
    auto a = p->activate(0, 4 * BS);
    auto b = p->activate(1, 4 * BS);
    std::atomic<bool> stop{false};
    std::atomic<int> failed{0};
    std::thread writer([&] {
        for (std::uint64_t g = 1; !stop.load(); ++g) {
            if (write_block(*a, BS, 0, g) != 0 || write_block(*b, BS, 0, g) != 0) {
                failed = 1;
                return;
            }
        }
    });
    thin::dev_id next = 10;
    for (int i = 0; i < 20; ++i) {
        p->create_snapshots({{next, 0}, {next + 1, 1}});
        next += 2;
    }
    stop = true;
    writer.join();
    ASSERT_EQ(0, failed.load());
    a->close();
    b->close();
    for (thin::dev_id id = 10; id < next; id += 2) {
        auto sa = p->activate(id, 4 * BS);
        auto sb = p->activate(id + 1, 4 * BS);
        auto ta = read_block_tag(*sa, BS, 0), tb = read_block_tag(*sb, BS, 0);
        ASSERT_TRUE(ta && tb) << "snapshot " << id;
        EXPECT_TRUE(*ta == *tb || *ta == *tb + 1) << "snapshots " << id << "," << id + 1 << ": tags " << *ta
                                                  << " and " << *tb;
        sa->close();
        sb->close();
    }
}

TEST(PoolQuery, ALiveMetadataFileIsLockedAgainstOtherOpeners) {
    file_pool fp(4 << 20, 16);
    auto p = fp.open();
    p->message("create_thin 0");
    pdata::open_options o;
    o.mode = pdata::open_mode::read_only;
    o.exclusive = true;
    try {
        pdata::open_sync_engine(fp.metadata, o);
        FAIL() << "opened the live metadata file exclusively";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string::npos, std::string(e.what()).find("in use")) << e.what();
    }
    // Readers of the metadata snapshot open without exclusivity.
    o.exclusive = false;
    EXPECT_NO_THROW(pdata::open_sync_engine(fp.metadata, o));
    p.reset();
    o.exclusive = true;
    EXPECT_NO_THROW(pdata::open_sync_engine(fp.metadata, o));
}

} // namespace
