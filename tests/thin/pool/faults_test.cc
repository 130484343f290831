// Fault injection on the pool's devices (issue 6): failed data writes and reads fail the request
// and commit no mapping; a failed data flush fails the flush and commits nothing it did not cover;
// failed and short metadata reads take the pool to read-only with needs_check; whatever happened,
// the metadata left behind passes thin_check. (Metadata write failures and exhaustion are in
// pool_basic_test.cc and scenarios_test.cc.)
#include "tests/support/pool_support.h"

#include <gtest/gtest.h>

using namespace thinpool_test;
using thin::pool::extent_state;
using thin::pool::io_op;
using thin::pool::pool_mode;

namespace {

constexpr std::uint32_t BS = 128;

bool unmapped(thin::pool::thin_device& t, std::uint64_t vblock) {
    auto xs = t.extents(vblock * BS, BS);
    return xs.size() == 1 && xs[0].state == extent_state::unmapped;
}

TEST(PoolFaults, FailedDataWritesMapNothing) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    // A whole-block write (the write is the provisioning) and a partial one (zeroing first).
    mp.data->fail_write_at(1);
    EXPECT_EQ(-EIO, write_block(*t, BS, 3, 1));
    mp.data->fail_write_at(1);
    auto part = make_pattern(2, 5 * BS + 8, 8);
    EXPECT_EQ(-EIO, write_sync(*t, 5 * BS + 8, part));
    mp.data->clear_faults();
    EXPECT_TRUE(unmapped(*t, 3));
    EXPECT_TRUE(unmapped(*t, 5));
    EXPECT_EQ(0u, p->status_info().used_data_blocks) << "the blocks went back to the free pool";
    EXPECT_EQ(pool_mode::write, p->mode()) << "a data error is the request's, not the pool's";
    // The device still works, and what was refused reads as zeros.
    EXPECT_EQ(0, write_block(*t, BS, 3, 3));
    EXPECT_EQ(std::optional<std::uint64_t>(3), read_block_tag(*t, BS, 3));
    EXPECT_EQ(std::optional<std::uint64_t>(0), read_block_tag(*t, BS, 5));
    ASSERT_EQ(0, flush_sync(*t));
    t->close();
    p.reset();
    expect_image_checks_pass(*mp.md);
}

TEST(PoolFaults, FailedCopyOnWriteKeepsTheSharedBlock) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    ASSERT_EQ(0, write_block(*t, BS, 0, 1));
    p->message("create_snap 1 0");
    std::uint64_t used = p->status_info().used_data_blocks;
    mp.data->fail_write_at(1);
    auto part = make_pattern(2, 16, 8);
    EXPECT_EQ(-EIO, write_sync(*t, 16, part));
    mp.data->clear_faults();
    EXPECT_EQ(used, p->status_info().used_data_blocks);
    EXPECT_EQ(std::optional<std::uint64_t>(1), read_block_tag(*t, BS, 0)) << "the origin still maps the old block";
    auto s = p->activate(1, 4 * BS);
    EXPECT_EQ(std::optional<std::uint64_t>(1), read_block_tag(*s, BS, 0));
    EXPECT_EQ(0, write_sync(*t, 16, part)) << "a retry breaks the sharing";
    EXPECT_EQ(std::optional<std::uint64_t>(1), read_block_tag(*s, BS, 0));
    t->close();
    s->close();
    p.reset();
    expect_image_checks_pass(*mp.md);
}

TEST(PoolFaults, FailedDataReadFailsTheReadOnly) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    ASSERT_EQ(0, write_block(*t, BS, 1, 7));
    mp.data->fail_read_at(1);
    std::vector<std::uint8_t> out;
    EXPECT_EQ(-EIO, read_sync(*t, BS, BS, out));
    EXPECT_EQ(std::optional<std::uint64_t>(7), read_block_tag(*t, BS, 1));
    EXPECT_EQ(pool_mode::write, p->mode());
}

TEST(PoolFaults, FailedDataFlushFailsTheFlushAndCommitsNothing) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    ASSERT_EQ(0, flush_sync(*t));
    std::uint64_t commits = p->nr_commits();
    ASSERT_EQ(0, write_block(*t, BS, 2, 4));
    mp.data->fail_flush_at(1);
    EXPECT_EQ(-EIO, flush_sync(*t)) << "the data never became durable: the flush must say so";
    EXPECT_EQ(commits, p->nr_commits()) << "metadata committed over data that was not flushed";
    mp.data->clear_faults();
    // Whatever mode the pool chose, it did not lose its head: the data still reads, and the
    // metadata on disk is consistent.
    EXPECT_EQ(std::optional<std::uint64_t>(4), read_block_tag(*t, BS, 2));
    t->close();
    p.reset();
    expect_image_checks_pass(*mp.md);
}

// A metadata read that fails (or comes back short) while looking up a block: the request fails,
// the pool goes read-only with needs_check, as the kernel's metadata_operation_failed does.
void metadata_read_fault(bool short_read) {
    memory_pool mp(1024, 64);
    {
        auto p = mp.open();
        p->message("create_thin 0");
        auto t = p->activate(0, 4 * BS);
        ASSERT_EQ(0, write_block(*t, BS, 1, 5));
        t->close();
    }
    auto p = mp.open();  // a cold cache: the lookup reads the mapping tree
    auto t = p->activate(0, 4 * BS);
    if (short_read)
        mp.fault->short_read_at(1, 100);
    else
        mp.fault->fail_read_at(1);
    std::vector<std::uint8_t> out;
    EXPECT_EQ(-EIO, read_sync(*t, BS, BS, out));
    mp.fault->clear_faults();
    EXPECT_TRUE(wait_until([&] { return p->mode() != pool_mode::write; }));
    EXPECT_EQ(pool_mode::read_only, p->mode());
    EXPECT_TRUE(p->status_info().needs_check);
    EXPECT_EQ(std::optional<std::uint64_t>(5), read_block_tag(*t, BS, 1)) << "reads go on in read-only mode";
    t->close();
    p.reset();
    // needs_check is on disk: thin_check still finds the metadata consistent.
    expect_image_checks_pass(*mp.md);
}

TEST(PoolFaults, FailedMetadataReadGoesReadOnlyWithNeedsCheck) { metadata_read_fault(false); }
TEST(PoolFaults, ShortMetadataReadGoesReadOnlyWithNeedsCheck) { metadata_read_fault(true); }

} // namespace
