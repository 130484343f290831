// The pool runtime's basic behaviour (pool.md): opening and its refusals, reads and writes at odd
// offsets, provisioning with and without zeroing, snapshots and breaking sharing, discards, the
// flush/commit policy, messages, status lines, modes, and metadata that the checkers accept after
// a reopen.
#include "thin/pool/pool.h"
#include "thin/metadata/metadata.h"

#include "persistent-data/io/fault_engine.h"
#include "persistent-data/io_engine.h"
#include "tests/support/pool_support.h"
#include "tests/support/reference_tools.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <mutex>
#include <random>
#include <regex>
#include <thread>

using namespace thin::pool;
using namespace std::chrono_literals;
using thinpool_test::scratch_dir;

namespace {

constexpr std::uint64_t SECTOR = 512;

// ---- helpers --------------------------------------------------------------------------------

int do_io(thin_device& t, io_op op, std::uint64_t sector, std::uint64_t n, void* buf, bool fua = false,
          bool preflush = false, bool no_hole = false) {
    auto p = std::make_shared<std::promise<int>>();
    auto f = p->get_future();
    io_request r;
    r.op = op;
    r.sector = sector;
    r.nr_sectors = n;
    r.buf = buf;
    r.fua = fua;
    r.preflush = preflush;
    r.no_hole = no_hole;
    r.done = [p](int e) { p->set_value(e); };
    t.submit(std::move(r));
    if (f.wait_for(60s) != std::future_status::ready) {
        ADD_FAILURE() << "request hung";
        std::abort();  // the buffer would be written after we return
    }
    return f.get();
}

// Each sector holds (tag, sector) so a read says which write put it where.
std::vector<std::uint8_t> pattern(std::uint64_t tag, std::uint64_t sector, std::uint64_t n) {
    std::vector<std::uint8_t> v(n * SECTOR);
    for (std::uint64_t i = 0; i < n; ++i) {
        auto* w = reinterpret_cast<std::uint64_t*>(v.data() + i * SECTOR);
        for (unsigned k = 0; k < SECTOR / 8; ++k) w[k] = tag * 1000003 + (sector + i) * 7919 + k;
    }
    return v;
}

int write(thin_device& t, std::uint64_t sector, const std::vector<std::uint8_t>& d, bool fua = false) {
    auto copy = d;
    return do_io(t, io_op::write, sector, d.size() / SECTOR, copy.data(), fua);
}

int write_zeroes_sync(thin_device& t, std::uint64_t sector, std::uint64_t n, bool no_hole = false) {
    return do_io(t, io_op::write_zeroes, sector, n, nullptr, false, false, no_hole);
}

// A write that needs a new block on a pool with none free: submitted, and the pool seen to go
// OUT_OF_DATA_SPACE with the write queued (asserted by the caller's waits).
thinpool_test::pending_io submit_queued_for_space(pool& pl, thin_device& t, std::uint64_t sector,
                                                  const std::vector<std::uint8_t>& d) {
    auto w = thinpool_test::pending_io::submit(t, io_op::write, sector, d.size() / SECTOR, d.data());
    EXPECT_TRUE(thinpool_test::wait_until([&] { return pl.mode() == pool_mode::out_of_data_space; }))
        << to_string(pl.mode());
    return w;
}

std::vector<std::uint8_t> read(thin_device& t, std::uint64_t sector, std::uint64_t n, int* rc = nullptr) {
    std::vector<std::uint8_t> v(n * SECTOR, 0xAA);
    int r = do_io(t, io_op::read, sector, n, v.data());
    if (rc) *rc = r;
    else EXPECT_EQ(r, 0) << "read at " << sector;
    return v;
}

int flush(thin_device& t) { return do_io(t, io_op::flush, 0, 0, nullptr); }
int discard(thin_device& t, std::uint64_t sector, std::uint64_t n) {
    return do_io(t, io_op::discard, sector, n, nullptr);
}

bool all_zero(const std::vector<std::uint8_t>& v) {
    return std::all_of(v.begin(), v.end(), [](std::uint8_t b) { return b == 0; });
}

int error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const pool_error& e) {
        return e.error_code();
    }
    return 0;
}

std::string error_text(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const pool_error& e) {
        return e.what();
    }
    return {};
}

struct logs {
    std::mutex m;
    std::vector<std::string> lines;
    bool has(const std::string& s) {
        std::lock_guard lk(m);
        for (auto& l : lines)
            if (l.find(s) != std::string::npos) return true;
        return false;
    }
};

// A pool on a memory metadata engine and a memory data device.
struct mem_pool {
    std::shared_ptr<pdata::memory_engine> md;
    std::shared_ptr<memory_data_device> data;
    std::shared_ptr<logs> log = std::make_shared<logs>();
    pool_options opts;
    mem_pool(std::uint64_t data_blocks, std::uint32_t bs = 128, bool discard_supported = true,
             pdata::block_address md_blocks = 1024) {
        md = std::make_shared<pdata::memory_engine>(md_blocks);
        data = std::make_shared<memory_data_device>(data_blocks * bs, discard_supported);
        opts.metadata_engine = md;
        opts.data_engine = data;
        opts.data_block_size = bs;
        opts.commit_period = std::chrono::hours(1);  // commits only where the test causes them
        auto l = log;
        opts.log = [l](const std::string& s) {
            std::lock_guard lk(l->m);
            l->lines.push_back(s);
        };
    }
    std::unique_ptr<pool> open() { return pool::open(opts); }
};

// ---- the fast path's lookup ----------------------------------------------------------------------

// metadata::try_lookup never reads the device: would_block until a blocking lookup has brought
// the nodes into the cache.
TEST(pool_lookup, try_lookup_reads_only_cached_blocks) {
    auto engine = std::make_shared<pdata::memory_engine>(1024);
    {
        auto md = thin::metadata::format(engine, 128, 4096);
        md->create_thin(3);
        for (std::uint64_t v = 0; v < 2000; ++v) md->insert(3, v * 2, *md->alloc_data_block());
        md->commit();
    }
    thin::open_options o;
    o.data_block_size = 128;
    auto md = thin::metadata::open(engine, o);
    auto reads = md->block_manager().reads();
    thin::lookup_result r{};
    EXPECT_EQ(md->try_lookup(3, 1000, r), thin::lookup_status::would_block);
    EXPECT_EQ(md->try_lookup(9, 0, r), thin::lookup_status::would_block);  // unknown device
    EXPECT_EQ(md->block_manager().reads(), reads);
    auto blocking = md->lookup(3, 1000);
    ASSERT_TRUE(blocking);
    reads = md->block_manager().reads();
    ASSERT_EQ(md->try_lookup(3, 1000, r), thin::lookup_status::found);
    EXPECT_EQ(r.data_block, blocking->data_block);
    EXPECT_FALSE(r.shared);
    EXPECT_EQ(md->try_lookup(3, 1001, r), thin::lookup_status::not_found);  // same leaf
    EXPECT_EQ(md->block_manager().reads(), reads);
    md->create_snap(4, 3);
    ASSERT_EQ(md->try_lookup(3, 1000, r), thin::lookup_status::found);
    EXPECT_TRUE(r.shared);
    auto next = md->lookup_next(3, 1001);
    ASSERT_TRUE(next);
    EXPECT_EQ(next->vblock, 1002u);
}

// ---- opening ----------------------------------------------------------------------------------

TEST(pool_open, refuses_bad_block_sizes) {
    for (std::uint32_t bs : {0u, 64u, 128u + 57u, 2097152u + 128u, 2097152u * 2}) {
        mem_pool p(16, 128);
        p.opts.data_block_size = bs;
        EXPECT_EQ(error_of([&] { p.open(); }), EINVAL) << bs;
        EXPECT_EQ(error_text([&] { p.open(); }), "Invalid block size") << bs;
    }
    // Largest and a non power of two are fine.
    {
        mem_pool p(0, 128);
        p.data = std::make_shared<memory_data_device>(2097152ull * 2);
        p.opts.data_engine = p.data;
        p.opts.data_block_size = 2097152;
        auto pl = p.open();
        EXPECT_EQ(pl->status_info().total_data_blocks, 2u);
    }
    {
        mem_pool p(10, 384);
        auto pl = p.open();
        EXPECT_EQ(pl->status_info().total_data_blocks, 10u);
        EXPECT_EQ(pl->table(), "384 0 0 ");
    }
}

TEST(pool_open, refuses_bad_devices_and_features) {
    scratch_dir dir;
    pool_options o;
    o.metadata_path = o.data_path = dir.file("same");
    EXPECT_EQ(error_text([&] { pool::open(o); }), "Error setting metadata or data device");

    mem_pool p(16);
    p.opts.features = {true, true, true, true, true};
    EXPECT_EQ(error_text([&] { p.open(); }), "Invalid number of pool feature arguments");

    mem_pool q(16);
    q.opts.nr_data_blocks = 17;  // longer than the data device
    EXPECT_EQ(error_of([&] { q.open(); }), EINVAL);

    // read_only cannot format.
    mem_pool r(16);
    r.opts.features.read_only = true;
    EXPECT_EQ(error_of([&] { r.open(); }), EPERM);
}

TEST(pool_open, features_parse_case_insensitively) {
    pool_features f;
    parse_feature("Skip_Block_Zeroing", f);
    parse_feature("ERROR_IF_NO_SPACE", f);
    EXPECT_TRUE(f.skip_block_zeroing);
    EXPECT_TRUE(f.error_if_no_space);
    EXPECT_EQ(error_of([&] { parse_feature("zero_blocks", f); }), EINVAL);
}

TEST(pool_open, data_block_size_must_match_and_pool_cannot_shrink) {
    mem_pool p(32);
    p.open()->close();
    p.opts.data_block_size = 256;
    EXPECT_EQ(error_of([&] { p.open(); }), EINVAL);
    p.opts.data_block_size = 128;
    p.opts.nr_data_blocks = 16;
    EXPECT_EQ(error_text([&] { p.open(); }), "pool target (16 blocks) too small: expected 32");
    // Growing at open.
    p.data->resize(64 * 128);
    p.opts.nr_data_blocks.reset();
    auto pl = p.open();
    EXPECT_EQ(pl->status_info().total_data_blocks, 64u);
}

// ---- status -------------------------------------------------------------------------------------

TEST(pool_status, fresh_pool_line_and_table) {
    mem_pool p(64);
    p.opts.low_water_mark = 5;
    p.opts.features.skip_block_zeroing = true;
    auto pl = p.open();
    pool_status s = pl->status_info();
    EXPECT_EQ(s.total_metadata_blocks, 1024u);
    EXPECT_EQ(s.metadata_low_water_mark, 256u);
    std::string expect = "0 " + std::to_string(s.used_metadata_blocks) + "/1024 0/64 - rw discard_passdown queue_if_no_space - 256 ";
    EXPECT_EQ(pl->status(), expect);
    EXPECT_TRUE(std::regex_match(pl->status(), std::regex(R"((\d+)\s(\d+)\/(\d+)\s(\d+)\/(\d+)\s(\S+)(\s.*)\s(\S+)\s(\S+) )")));
    EXPECT_EQ(pl->table(), "128 5 1 skip_block_zeroing ");
    EXPECT_EQ(pl->mode(), pool_mode::write);
}

TEST(pool_status, passdown_disabled_without_data_discard) {
    mem_pool p(16, 128, false);
    auto pl = p.open();
    EXPECT_NE(pl->status().find(" no_discard_passdown "), std::string::npos);
    EXPECT_TRUE(p.log->has("discard unsupported: Disabling discard passdown."));
    mem_pool q(16);
    q.opts.features.ignore_discard = true;
    auto ql = q.open();
    EXPECT_NE(ql->status().find(" ignore_discard "), std::string::npos);
}

// ---- I/O ----------------------------------------------------------------------------------------

TEST(pool_io, write_and_read_at_odd_offsets) {
    mem_pool p(64);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 32 * 128);
    // Unmapped reads are zeros.
    EXPECT_TRUE(all_zero(read(*t, 0, 300)));
    // Writes crossing block boundaries at odd sectors.
    struct w {
        std::uint64_t sector, n, tag;
    };
    std::vector<w> ws = {{3, 1, 1}, {125, 7, 2}, {250, 300, 3}, {1000, 129, 4}, {4095, 1, 5}};
    for (auto& x : ws) ASSERT_EQ(write(*t, x.sector, pattern(x.tag, x.sector, x.n)), 0);
    for (auto& x : ws) EXPECT_EQ(read(*t, x.sector, x.n), pattern(x.tag, x.sector, x.n)) << x.sector;
    // Around them: zeros (zeroing is on), and a read spanning written and unwritten parts.
    EXPECT_TRUE(all_zero(read(*t, 0, 3)));
    EXPECT_TRUE(all_zero(read(*t, 4, 121)));
    auto span = read(*t, 120, 20);
    EXPECT_TRUE(std::all_of(span.begin(), span.begin() + 5 * SECTOR, [](auto b) { return b == 0; }));
    EXPECT_EQ(std::vector<std::uint8_t>(span.begin() + 5 * SECTOR, span.begin() + 12 * SECTOR), pattern(2, 125, 7));
    // Past the end fails.
    int rc;
    read(*t, 32 * 128 - 1, 2, &rc);
    EXPECT_EQ(rc, -EIO);
    // Overwrites of mapped blocks.
    ASSERT_EQ(write(*t, 126, pattern(9, 126, 4)), 0);
    EXPECT_EQ(read(*t, 126, 4), pattern(9, 126, 4));
    EXPECT_EQ(read(*t, 125, 1), pattern(2, 125, 1));
    // Mapped: blocks 0, 1, 2, 3, 4 (250..549), 7, 8 (1000..1128), 31.
    thin_status ts = t->status_info();
    EXPECT_EQ(ts.mapped_sectors, 8u * 128);
    EXPECT_EQ(ts.highest_mapped_sector, 32u * 128 - 1);
    EXPECT_EQ(t->status(), std::to_string(8 * 128) + " " + std::to_string(32 * 128 - 1));
}

TEST(pool_io, non_power_of_two_block_size) {
    mem_pool p(20, 384);
    auto pl = p.open();
    pl->message("create_thin 7");
    auto t = pl->activate(7, 20 * 384);
    ASSERT_EQ(write(*t, 380, pattern(1, 380, 10)), 0);  // blocks 0 and 1
    EXPECT_EQ(read(*t, 380, 10), pattern(1, 380, 10));
    EXPECT_TRUE(all_zero(read(*t, 0, 380)));
    EXPECT_TRUE(all_zero(read(*t, 390, 378)));
    EXPECT_EQ(t->status_info().mapped_sectors, 2u * 384);
    // A discard of [384, 768) unmaps block 1 only; a partial one nothing.
    EXPECT_EQ(discard(*t, 1, 700), 0);
    EXPECT_EQ(t->status_info().mapped_sectors, 2u * 384);
    EXPECT_EQ(discard(*t, 384, 384), 0);
    EXPECT_EQ(t->status_info().mapped_sectors, 384u);
    EXPECT_EQ(read(*t, 380, 4), pattern(1, 380, 4));
    EXPECT_TRUE(all_zero(read(*t, 384, 6)));
}

TEST(pool_io, provisioning_zeroes_the_new_block) {
    mem_pool p(8);
    // The data device holds garbage everywhere.
    p.data->set_contents(0, std::vector<std::uint8_t>(8 * 128 * SECTOR, 0x5A));
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 8 * 128);
    ASSERT_EQ(write(*t, 10, pattern(1, 10, 2)), 0);
    auto blk = read(*t, 0, 128);
    EXPECT_TRUE(std::all_of(blk.begin(), blk.begin() + 10 * SECTOR, [](auto b) { return b == 0; }));
    EXPECT_TRUE(std::all_of(blk.begin() + 12 * SECTOR, blk.end(), [](auto b) { return b == 0; }));
    // A whole-block write is not zeroed first: it overwrites.
    auto writes_before = p.data->writes();
    ASSERT_EQ(write(*t, 128, pattern(2, 128, 128)), 0);
    EXPECT_EQ(p.data->writes() - writes_before, 1u);
    EXPECT_EQ(read(*t, 128, 128), pattern(2, 128, 128));
}

TEST(pool_io, skip_block_zeroing_exposes_old_contents) {
    mem_pool p(8);
    p.opts.features.skip_block_zeroing = true;
    p.data->set_contents(0, std::vector<std::uint8_t>(8 * 128 * SECTOR, 0x5A));
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 8 * 128);
    ASSERT_EQ(write(*t, 10, pattern(1, 10, 2)), 0);
    auto blk = read(*t, 0, 128);
    EXPECT_EQ(blk[0], 0x5A);
    EXPECT_EQ(std::vector<std::uint8_t>(blk.begin() + 10 * SECTOR, blk.begin() + 12 * SECTOR), pattern(1, 10, 2));
}

TEST(pool_io, write_zeroes_and_preflush_fua) {
    mem_pool p(8);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 8 * 128);
    ASSERT_EQ(write(*t, 0, pattern(1, 0, 256)), 0);
    EXPECT_EQ(do_io(*t, io_op::write_zeroes, 100, 60, nullptr), 0);
    auto v = read(*t, 0, 256);
    EXPECT_TRUE(std::all_of(v.begin() + 100 * SECTOR, v.begin() + 160 * SECTOR, [](auto b) { return b == 0; }));
    EXPECT_EQ(std::vector<std::uint8_t>(v.begin(), v.begin() + 100 * SECTOR), pattern(1, 0, 100));
    // A write with PREFLUSH and FUA on a changed device commits.
    auto c0 = pl->nr_commits();
    auto d = pattern(2, 300, 5);
    EXPECT_EQ(do_io(*t, io_op::write, 300, 5, d.data(), true, true), 0);
    EXPECT_GT(pl->nr_commits(), c0);
    EXPECT_EQ(read(*t, 300, 5), pattern(2, 300, 5));
}

// Zeroing what reads as zeros takes no block (clients zero every hole of an image they copy);
// NO_HOLE, or an external origin under the block, provisions as a write would.
TEST(pool_io, write_zeroes_of_unprovisioned_blocks_takes_no_block_unless_no_hole) {
    mem_pool p(16);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 8 * 128);
    EXPECT_EQ(write_zeroes_sync(*t, 0, 4 * 128), 0);
    EXPECT_EQ(write_zeroes_sync(*t, 4 * 128 + 7, 30), 0);
    EXPECT_EQ(pl->status_info().used_data_blocks, 0u);
    EXPECT_EQ(write_zeroes_sync(*t, 6 * 128, 128, true), 0);
    EXPECT_EQ(pl->status_info().used_data_blocks, 1u);
    auto v = read(*t, 0, 8 * 128);
    EXPECT_TRUE(std::all_of(v.begin(), v.end(), [](auto b) { return b == 0; }));
    t->close();

    auto origin = std::make_shared<memory_data_device>(2 * 128);
    origin->set_contents(0, pattern(7, 0, 2 * 128));
    pl->message("create_thin 1");
    auto o = pl->activate(1, 8 * 128, origin);
    EXPECT_EQ(write_zeroes_sync(*o, 10, 20), 0);
    EXPECT_EQ(pl->status_info().used_data_blocks, 2u) << "the origin's data under the range must be hidden";
    auto w = read(*o, 0, 128);
    auto expect = pattern(7, 0, 128);
    std::fill(expect.begin() + 10 * SECTOR, expect.begin() + 30 * SECTOR, 0);
    EXPECT_EQ(w, expect);
}

// ---- flush and commit policy (pool.md §5.6) ------------------------------------------------------

TEST(pool_commit, flush_commits_only_when_the_device_changed) {
    mem_pool p(16);
    auto pl = p.open();
    pl->message("create_thin 0");
    pl->message("create_thin 1");
    auto t0 = pl->activate(0, 16 * 128);
    auto t1 = pl->activate(1, 16 * 128);
    auto c = pl->nr_commits();
    ASSERT_EQ(write(*t0, 0, pattern(1, 0, 8)), 0);  // provisions
    EXPECT_EQ(pl->nr_commits(), c);
    auto sb_writes = p.md->writes();
    EXPECT_EQ(flush(*t1), 0);  // the other device did not change
    EXPECT_EQ(pl->nr_commits(), c);
    EXPECT_EQ(p.md->writes(), sb_writes);
    auto flushes = p.data->flushes();
    EXPECT_EQ(flush(*t0), 0);
    EXPECT_EQ(pl->nr_commits(), c + 1);
    EXPECT_GT(p.data->flushes(), flushes);  // the data device first
    // Nothing changed since: remapped to the data device only.
    sb_writes = p.md->writes();
    EXPECT_EQ(flush(*t0), 0);
    ASSERT_EQ(write(*t0, 0, pattern(2, 0, 8)), 0);  // rewrite of a provisioned block
    EXPECT_EQ(flush(*t0), 0);
    EXPECT_EQ(do_io(*t0, io_op::write, 0, 0, nullptr, false, true), 0);  // empty PREFLUSH write
    EXPECT_EQ(pl->nr_commits(), c + 1);
    EXPECT_EQ(p.md->writes(), sb_writes);
    // FUA write that provisions: acknowledged after a commit.
    auto d = pattern(3, 128, 1);
    EXPECT_EQ(do_io(*t0, io_op::write, 128, 1, d.data(), true), 0);
    EXPECT_EQ(pl->nr_commits(), c + 2);
    // A discard changes metadata: the next flush commits.
    EXPECT_EQ(discard(*t0, 128, 128), 0);
    EXPECT_EQ(flush(*t0), 0);
    EXPECT_EQ(pl->nr_commits(), c + 3);
}

TEST(pool_commit, idle_pool_does_no_metadata_io_and_periodic_commit_happens) {
    mem_pool p(16);
    p.opts.commit_period = 20ms;
    auto pl = p.open();
    auto w = p.md->writes();
    auto c = pl->nr_commits();
    // Observing an absence: the worker would have committed a few times by now.
    std::this_thread::sleep_for(200ms);
    EXPECT_EQ(p.md->writes(), w);
    EXPECT_EQ(pl->nr_commits(), c);
    pl->message("create_thin 0");  // commits
    auto t = pl->activate(0, 16 * 128);
    c = pl->nr_commits();
    ASSERT_EQ(write(*t, 0, pattern(1, 0, 8)), 0);
    EXPECT_TRUE(thinpool_test::wait_until([&] { return pl->nr_commits() > c; })) << "no periodic commit";
}

// ---- snapshots ------------------------------------------------------------------------------------

TEST(pool_snapshot, breaking_sharing_keeps_both_sides) {
    mem_pool p(64);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto origin = pl->activate(0, 8 * 128);
    ASSERT_EQ(write(*origin, 0, pattern(1, 0, 8 * 128)), 0);
    // The origin is active: the pool quiesces it for the snapshot.
    pl->message("create_snap 1 0");
    auto snap = pl->activate(1, 8 * 128);
    EXPECT_EQ(snap->status_info().mapped_sectors, 8u * 128);
    EXPECT_EQ(pl->status_info().used_data_blocks, 8u);
    // Partial write to the origin: a copy of the block, then the write.
    ASSERT_EQ(write(*origin, 130, pattern(2, 130, 3)), 0);
    // Whole-block write to the snapshot: no copy needed.
    ASSERT_EQ(write(*snap, 256, pattern(3, 256, 128)), 0);
    auto o = read(*origin, 0, 8 * 128);
    auto expect_o = pattern(1, 0, 8 * 128);
    std::memcpy(expect_o.data() + 130 * SECTOR, pattern(2, 130, 3).data(), 3 * SECTOR);
    EXPECT_EQ(o, expect_o);
    auto s = read(*snap, 0, 8 * 128);
    auto expect_s = pattern(1, 0, 8 * 128);
    std::memcpy(expect_s.data() + 256 * SECTOR, pattern(3, 256, 128).data(), 128 * SECTOR);
    EXPECT_EQ(s, expect_s);
    EXPECT_EQ(pl->status_info().used_data_blocks, 10u);
    // Writing the broken block again does not copy again.
    ASSERT_EQ(write(*origin, 131, pattern(4, 131, 1)), 0);
    EXPECT_EQ(pl->status_info().used_data_blocks, 10u);
    // Snapshot of the snapshot, then delete the origin's snapshot chain member.
    pl->message("create_snap 2 1");
    snap->close();
    pl->message("delete 1");
    auto s2 = pl->activate(2, 8 * 128);
    EXPECT_EQ(read(*s2, 0, 8 * 128), expect_s);
}

// A partial write to a shared block reads the old block, lays the write over it and writes the
// result once; a failed read fails the write and maps nothing.
TEST(pool_snapshot, partial_write_to_a_shared_block_is_one_read_and_one_write) {
    mem_pool p(64);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto origin = pl->activate(0, 4 * 128);
    ASSERT_EQ(write(*origin, 0, pattern(1, 0, 4 * 128)), 0);
    pl->message("create_snap 1 0");
    std::uint64_t writes = p.data->writes();
    ASSERT_EQ(write(*origin, 200, pattern(2, 200, 8)), 0);
    EXPECT_EQ(p.data->writes(), writes + 1) << "copy and write merged into one write";
    auto expect = pattern(1, 0, 4 * 128);
    std::memcpy(expect.data() + 200 * SECTOR, pattern(2, 200, 8).data(), 8 * SECTOR);
    EXPECT_EQ(read(*origin, 0, 4 * 128), expect);

    std::uint64_t used = pl->status_info().used_data_blocks;
    p.data->fail_read_at(1);
    EXPECT_EQ(write(*origin, 300, pattern(3, 300, 8)), -EIO);
    p.data->clear_faults();
    EXPECT_EQ(read(*origin, 0, 4 * 128), expect) << "the failed write changed nothing";
    EXPECT_EQ(pl->status_info().used_data_blocks, used) << "the new block went back to the free pool";
    auto snap = pl->activate(1, 4 * 128);
    EXPECT_EQ(read(*snap, 0, 4 * 128), pattern(1, 0, 4 * 128));
}

// ---- discards ---------------------------------------------------------------------------------------

TEST(pool_discard, unmaps_whole_blocks_only_and_passes_down) {
    mem_pool p(16);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 16 * 128);
    ASSERT_EQ(write(*t, 0, pattern(1, 0, 4 * 128)), 0);
    EXPECT_EQ(t->status_info().mapped_sectors, 4u * 128);
    // Partial blocks: nothing (dmtest discard_partial_blocks).
    EXPECT_EQ(discard(*t, 0, 120), 0);
    EXPECT_EQ(discard(*t, 56, 160), 0);
    EXPECT_EQ(t->status_info().mapped_sectors, 4u * 128);
    auto discards = p.data->discards();
    // [100, 400) covers block 1 and 2 entirely.
    EXPECT_EQ(discard(*t, 100, 300), 0);
    EXPECT_EQ(t->status_info().mapped_sectors, 2u * 128);
    EXPECT_GT(p.data->discards(), discards);
    EXPECT_EQ(read(*t, 0, 128), pattern(1, 0, 128));
    EXPECT_TRUE(all_zero(read(*t, 128, 256)));
    EXPECT_EQ(read(*t, 384, 128), pattern(1, 384, 128));
    pl->commit();
    EXPECT_EQ(pl->status_info().used_data_blocks, 2u);
    // Past the end.
    EXPECT_EQ(discard(*t, 15 * 128, 256), -EIO);
}

TEST(pool_discard, shared_blocks_are_not_passed_down) {
    mem_pool p(16);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 4 * 128);
    ASSERT_EQ(write(*t, 0, pattern(1, 0, 128)), 0);
    pl->message("create_snap 1 0");
    auto discards = p.data->discards();
    EXPECT_EQ(discard(*t, 0, 128), 0);
    EXPECT_EQ(p.data->discards(), discards);
    EXPECT_EQ(t->status_info().mapped_sectors, 0u);
    EXPECT_EQ(pl->status_info().used_data_blocks, 1u);
    auto snap = pl->activate(1, 4 * 128);
    EXPECT_EQ(read(*snap, 0, 128), pattern(1, 0, 128));
    snap->close();
    pl->message("delete 1");
    EXPECT_EQ(pl->status_info().used_data_blocks, 0u);
}

TEST(pool_discard, no_passdown_and_ignore_discard) {
    mem_pool p(16);
    p.opts.features.no_discard_passdown = true;
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 4 * 128);
    ASSERT_EQ(write(*t, 0, pattern(1, 0, 256)), 0);
    EXPECT_EQ(discard(*t, 0, 512), 0);
    EXPECT_EQ(p.data->discards(), 0u);
    EXPECT_EQ(t->status_info().mapped_sectors, 0u);
    EXPECT_TRUE(all_zero(read(*t, 0, 256)));
    t->close();
    pl->close();

    mem_pool q(16);
    q.opts.features.ignore_discard = true;
    auto ql = q.open();
    ql->message("create_thin 0");
    auto u = ql->activate(0, 4 * 128);
    ASSERT_EQ(write(*u, 0, pattern(1, 0, 128)), 0);
    EXPECT_EQ(discard(*u, 0, 128), -EOPNOTSUPP);
    EXPECT_EQ(u->status_info().mapped_sectors, 128u);
}

// ---- messages (pool.md §2) ----------------------------------------------------------------------

TEST(pool_messages, errors_and_effects) {
    mem_pool p(16);
    auto pl = p.open();
    EXPECT_EQ(error_of([&] { pl->message("CREATE_THIN 0"); }), 0);
    EXPECT_EQ(error_of([&] { pl->message("create_thin 0"); }), EEXIST);
    EXPECT_EQ(error_of([&] { pl->message("create_thin 16777216"); }), EINVAL);
    EXPECT_EQ(error_of([&] { pl->message("create_thin 16777215"); }), 0);
    EXPECT_EQ(error_of([&] { pl->message("create_thin x"); }), EINVAL);
    EXPECT_EQ(error_of([&] { pl->message("create_thin"); }), EINVAL);
    EXPECT_EQ(error_of([&] { pl->message("create_snap 1 5"); }), ENODATA);
    EXPECT_EQ(error_of([&] { pl->message("create_snap 0 16777215"); }), EEXIST);
    EXPECT_EQ(error_of([&] { pl->message("delete 9"); }), ENODATA);
    EXPECT_EQ(error_of([&] { pl->message("frobnicate"); }), EINVAL);
    auto t = pl->activate(0, 128);
    EXPECT_EQ(error_of([&] { pl->message("delete 0"); }), EBUSY);
    EXPECT_EQ(error_of([&] { pl->activate(0, 128); }), EBUSY);
    EXPECT_EQ(error_of([&] { pl->activate(42, 128); }), ENODATA);
    t->close();
    EXPECT_EQ(error_of([&] { pl->message("delete 0"); }), 0);

    EXPECT_EQ(pl->status_info().transaction_id, 0u);
    EXPECT_EQ(error_of([&] { pl->message("set_transaction_id 1 2"); }), EINVAL);
    EXPECT_EQ(error_of([&] { pl->message("set_transaction_id 0 1234"); }), 0);
    EXPECT_EQ(pl->status_info().transaction_id, 1234u);
    EXPECT_EQ(error_of([&] { pl->message("set_transaction_id 1234 abc"); }), EINVAL);

    EXPECT_EQ(error_of([&] { pl->message("release_metadata_snap"); }), EINVAL);
    EXPECT_EQ(error_of([&] { pl->message("reserve_metadata_snap"); }), 0);
    auto held = pl->status_info().held_metadata_root;
    ASSERT_TRUE(held.has_value());
    EXPECT_NE(pl->status().find(" " + std::to_string(*held) + " rw "), std::string::npos);
    EXPECT_EQ(error_of([&] { pl->message("reserve_metadata_snap"); }), EBUSY);
    EXPECT_EQ(error_of([&] { pl->message("release_metadata_snap"); }), 0);
    EXPECT_FALSE(pl->status_info().held_metadata_root.has_value());
}

// ---- modes --------------------------------------------------------------------------------------

TEST(pool_modes, read_only_feature) {
    mem_pool p(16);
    {
        auto pl = p.open();
        pl->message("create_thin 0");
        auto t = pl->activate(0, 4 * 128);
        ASSERT_EQ(write(*t, 0, pattern(1, 0, 128)), 0);
    }
    p.opts.features.read_only = true;
    auto pl = p.open();
    EXPECT_EQ(pl->mode(), pool_mode::read_only);
    EXPECT_NE(pl->status().find(" ro "), std::string::npos);
    auto t = pl->activate(0, 4 * 128);
    EXPECT_EQ(read(*t, 0, 128), pattern(1, 0, 128));
    EXPECT_TRUE(all_zero(read(*t, 128, 128)));
    EXPECT_EQ(write(*t, 5, pattern(2, 5, 1)), 0);  // mapped, unshared: remapped
    EXPECT_EQ(write(*t, 200, pattern(2, 200, 1)), -EIO);
    EXPECT_EQ(discard(*t, 0, 512), 0);  // no effect
    EXPECT_EQ(t->status_info().mapped_sectors, 128u);
    EXPECT_EQ(error_of([&] { pl->message("create_thin 1"); }), EOPNOTSUPP);
    EXPECT_EQ(flush(*t), 0);
}

TEST(pool_modes, out_of_data_space_errors_at_once_with_error_if_no_space) {
    mem_pool p(4);
    p.opts.features.error_if_no_space = true;
    std::vector<pool_event> events;
    std::mutex em;
    p.opts.on_event = [&](const pool_event& e) {
        std::lock_guard lk(em);
        events.push_back(e);
    };
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 8 * 128);
    for (int b = 0; b < 4; ++b) ASSERT_EQ(write(*t, b * 128, pattern(1, b * 128, 1)), 0);
    EXPECT_EQ(write(*t, 4 * 128, pattern(1, 512, 1)), -ENOSPC);
    EXPECT_EQ(pl->mode(), pool_mode::out_of_data_space);
    EXPECT_NE(pl->status().find(" out_of_data_space "), std::string::npos);
    EXPECT_EQ(read(*t, 0, 1), pattern(1, 0, 1));          // reads still work
    EXPECT_EQ(write(*t, 1, pattern(2, 1, 1)), 0);          // and rewrites of provisioned blocks
    EXPECT_TRUE(p.log->has("switching pool to out-of-data-space (error IO) mode"));
    // Freeing space (messages still work) brings it back to write.
    t->close();
    pl->message("delete 0");
    EXPECT_EQ(pl->mode(), pool_mode::write);
    EXPECT_EQ(pl->status_info().used_data_blocks, 0u);
    std::lock_guard lk(em);
    ASSERT_GE(events.size(), 2u);
    EXPECT_EQ(events[0].kind, pool_event_kind::data_low_water);
}

TEST(pool_modes, out_of_data_space_queues_until_the_pool_grows) {
    mem_pool p(2);
    p.opts.nr_data_blocks = 2;
    p.data->resize(4 * 128);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 8 * 128);
    ASSERT_EQ(write(*t, 0, pattern(1, 0, 256)), 0);
    // The third block has to wait.
    auto d = pattern(2, 256, 4);
    auto w = submit_queued_for_space(*pl, *t, 256, d);
    EXPECT_FALSE(w.ready());
    pl->resize_data(4);
    EXPECT_EQ(w.wait(), 0);
    EXPECT_EQ(pl->mode(), pool_mode::write);
    EXPECT_EQ(read(*t, 256, 4), pattern(2, 256, 4));
}

TEST(pool_modes, snapshot_of_an_origin_with_io_queued_for_space) {
    mem_pool p(4);
    p.opts.nr_data_blocks = 2;
    p.opts.no_space_timeout = std::chrono::milliseconds(0);  // queue forever
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 8 * 128);
    ASSERT_EQ(write(*t, 0, pattern(1, 0, 256)), 0);
    auto d = pattern(2, 256, 4);
    auto w = submit_queued_for_space(*pl, *t, 256, d);
    // The queued write does not hold the snapshot up (it has not touched the metadata).
    pl->message("create_snap 1 0");
    pl->resize_data(4);
    EXPECT_EQ(w.wait(), 0);
    auto snap = pl->activate(1, 8 * 128);
    EXPECT_TRUE(all_zero(read(*snap, 256, 4)));
    EXPECT_EQ(read(*t, 256, 4), pattern(2, 256, 4));
    EXPECT_EQ(read(*snap, 0, 256), pattern(1, 0, 256));
}

TEST(pool_modes, no_space_timeout_errors_queued_io) {
    mem_pool p(1);
    p.opts.no_space_timeout = 50ms;
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 8 * 128);
    ASSERT_EQ(write(*t, 0, pattern(1, 0, 1)), 0);
    EXPECT_EQ(write(*t, 128, pattern(1, 128, 1)), -ENOSPC);  // queued, then errored
    EXPECT_TRUE(pl->status_info(true).error_if_no_space);
    EXPECT_EQ(write(*t, 256, pattern(1, 256, 1)), -ENOSPC);  // at once now
}

TEST(pool_modes, metadata_write_failure_aborts_to_read_only) {
    mem_pool p(16);
    auto fault = std::make_shared<pdata::fault_engine>(p.md);
    p.opts.metadata_engine = fault;
    std::vector<pool_event> events;
    std::mutex em;
    p.opts.on_event = [&](const pool_event& e) {
        std::lock_guard lk(em);
        events.push_back(e);
    };
    auto pl = p.open();
    pl->message("create_thin 0");
    pl->message("create_thin 1");
    auto t0 = pl->activate(0, 8 * 128);
    auto t1 = pl->activate(1, 8 * 128);
    ASSERT_EQ(write(*t0, 0, pattern(1, 0, 128)), 0);
    ASSERT_EQ(flush(*t0), 0);
    ASSERT_EQ(write(*t0, 128, pattern(2, 128, 128)), 0);  // acknowledged, not committed
    fault->fail_write_at(1);
    EXPECT_EQ(flush(*t0), -EIO);  // the commit fails
    EXPECT_EQ(pl->mode(), pool_mode::read_only);
    EXPECT_TRUE(pl->status_info().needs_check);
    EXPECT_NE(pl->status().find(" ro "), std::string::npos);
    EXPECT_NE(pl->status().find(" needs_check "), std::string::npos);
    EXPECT_TRUE(p.log->has("aborting current metadata transaction"));
    EXPECT_TRUE(p.log->has("switching pool to read-only mode"));
    // The device that lost acknowledged writes fails every later flush; the other one does not.
    EXPECT_EQ(flush(*t0), -EIO);
    EXPECT_EQ(flush(*t1), 0);
    // Back to the committed state: block 0 mapped, block 1 not.
    EXPECT_EQ(read(*t0, 0, 128), pattern(1, 0, 128));
    EXPECT_TRUE(all_zero(read(*t0, 128, 128)));
    EXPECT_EQ(write(*t0, 300, pattern(3, 300, 1)), -EIO);
    EXPECT_EQ(write(*t0, 5, pattern(3, 5, 1)), 0);
    EXPECT_EQ(error_of([&] { pl->message("create_thin 2"); }), EOPNOTSUPP);
    {
        std::lock_guard lk(em);
        ASSERT_FALSE(events.empty());
        EXPECT_EQ(events.back().kind, pool_event_kind::mode_changed);
        EXPECT_EQ(events.back().mode, pool_mode::read_only);
    }
    t0->close();
    t1->close();
    pl->close();
    // NEEDS_CHECK was written: the next open is read-only too.
    auto again = p.open();
    EXPECT_EQ(again->mode(), pool_mode::read_only);
    EXPECT_TRUE(p.log->has("unable to switch pool to write mode until repaired."));
    EXPECT_EQ(error_of([&] { again->resize_data(); }), 0);  // same size: nothing to grow
}

TEST(pool_modes, failing_abort_goes_to_fail_mode) {
    mem_pool p(16);
    auto fault = std::make_shared<pdata::fault_engine>(p.md);
    p.opts.metadata_engine = fault;
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 8 * 128);
    ASSERT_EQ(write(*t, 0, pattern(1, 0, 8)), 0);
    fault->fail_write_at(1, true);  // the commit and the needs_check write both fail
    EXPECT_EQ(flush(*t), -EIO);
    EXPECT_EQ(pl->mode(), pool_mode::fail);
    EXPECT_EQ(pl->status(), "Fail");
    EXPECT_EQ(t->status(), "Fail");
    int rc;
    read(*t, 0, 8, &rc);
    EXPECT_EQ(rc, -EIO);
    EXPECT_EQ(write(*t, 0, pattern(1, 0, 8)), -EIO);
    EXPECT_EQ(discard(*t, 0, 128), -EIO);
    EXPECT_EQ(error_of([&] { pl->message("create_thin 1"); }), EOPNOTSUPP);
    t->close();
    EXPECT_EQ(error_of([&] { pl->activate(0, 128); }), EINVAL);
}

TEST(pool_modes, exhausting_metadata_leaves_the_pool_read_only) {
    // 64 metadata blocks; write_zeroes with NO_HOLE provisions without the memory device storing
    // anything.
    mem_pool p(40000, 128, true, 64);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 40000ull * 128);
    int rc = 0;
    std::uint64_t b = 0;
    // Flushes now and then stand in for the periodic commit that keeps transactions small.
    for (; b < 40000 && rc == 0; ++b) {
        rc = do_io(*t, io_op::write_zeroes, b * 128 + 3, 1, nullptr, false, false, true);
        if (rc == 0 && b % 64 == 63) rc = flush(*t);
    }
    EXPECT_EQ(rc, -EIO) << "after " << b << " blocks";
    pool_mode m = pl->mode();
    EXPECT_TRUE(m == pool_mode::out_of_metadata_space || m == pool_mode::read_only) << to_string(m);
    EXPECT_NE(pl->status().find(" ro "), std::string::npos);
    // Provisioned blocks still work.
    EXPECT_EQ(do_io(*t, io_op::write_zeroes, 0, 1, nullptr, false, false, true), 0);
    EXPECT_EQ(error_of([&] { pl->message("create_thin 1"); }), EOPNOTSUPP);
    // (With so little metadata the b-tree runs out before the reserve is reached: abort, and
    // NEEDS_CHECK, as dmtest's exhausting_metadata_space_aborts_to_ro_mode expects.)
    // Growing the metadata device brings an out-of-metadata-space pool back.
    if (m == pool_mode::out_of_metadata_space) {
        p.md->resize(1024);
        pl->resize_metadata();
        EXPECT_EQ(pl->mode(), pool_mode::write);
        EXPECT_EQ(do_io(*t, io_op::write_zeroes, b * 128 + 3, 1, nullptr, false, false, true), 0);
    }
}

// ---- external origin (pool.md §5.2, §5.3) -----------------------------------------------------------

TEST(pool_origin, reads_and_provisions_from_the_external_origin) {
    mem_pool p(16);
    auto origin = std::make_shared<memory_data_device>(128 + 64);  // a fractional tail block
    origin->set_contents(0, pattern(7, 0, 192));
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 4 * 128, origin);
    EXPECT_EQ(read(*t, 0, 192), pattern(7, 0, 192));
    auto straddle = read(*t, 180, 20);
    EXPECT_EQ(std::vector<std::uint8_t>(straddle.begin(), straddle.begin() + 12 * SECTOR), pattern(7, 180, 12));
    EXPECT_TRUE(std::all_of(straddle.begin() + 12 * SECTOR, straddle.end(), [](auto b) { return b == 0; }));
    EXPECT_TRUE(all_zero(read(*t, 256, 128)));
    // Partial writes copy the origin's block (and zero the tail beyond it).
    ASSERT_EQ(write(*t, 10, pattern(8, 10, 1)), 0);
    ASSERT_EQ(write(*t, 130, pattern(8, 130, 1)), 0);
    auto b0 = read(*t, 0, 128);
    auto e0 = pattern(7, 0, 128);
    std::memcpy(e0.data() + 10 * SECTOR, pattern(8, 10, 1).data(), SECTOR);
    EXPECT_EQ(b0, e0);
    auto b1 = read(*t, 128, 128);
    auto e1 = pattern(7, 128, 128);
    std::memset(e1.data() + 64 * SECTOR, 0, 64 * SECTOR);
    std::memcpy(e1.data() + 2 * SECTOR, pattern(8, 130, 1).data(), SECTOR);
    EXPECT_EQ(b1, e1);
    // The origin is never written.
    EXPECT_EQ(origin->contents(0, 192), pattern(7, 0, 192));
}

// ---- growth --------------------------------------------------------------------------------------

TEST(pool_resize, data_and_metadata_grow_live) {
    mem_pool p(8);
    p.opts.nr_data_blocks = 4;
    auto pl = p.open();
    EXPECT_EQ(pl->status_info().total_data_blocks, 4u);
    EXPECT_EQ(error_of([&] { pl->resize_data(3); }), EINVAL);
    EXPECT_EQ(error_of([&] { pl->resize_data(9); }), EINVAL);
    pl->resize_data();
    EXPECT_EQ(pl->status_info().total_data_blocks, 8u);
    p.md->resize(2048);
    pl->resize_metadata();
    EXPECT_EQ(pl->status_info().total_metadata_blocks, 2048u);
}

// ---- concurrency -----------------------------------------------------------------------------------

// Writers on their own regions, a discarder on another, snapshots of the active origin meanwhile.
// Every thread checks what it reads against its own model; every snapshot must hold, per writer,
// exactly the writes up to some point (the origin is quiesced for it).
TEST(pool_concurrency, io_snapshots_and_discards_keep_data) {
    constexpr std::uint32_t BS = 128;
    constexpr int WRITERS = 4, BLOCKS_PER = 12, OPS = 150, SNAPS = 4;
    mem_pool p(400, BS);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 64 * BS);
    struct logged {
        std::uint64_t tag, sector, n;
    };
    std::vector<std::vector<logged>> logs(WRITERS);
    std::atomic<int> progress{0};
    std::atomic<bool> failed{false};
    std::vector<std::thread> ts;
    for (int w = 0; w < WRITERS; ++w)
        ts.emplace_back([&, w] {
            std::mt19937 rng(w + 1);
            std::uint64_t base = std::uint64_t(w) * BLOCKS_PER * BS, len = BLOCKS_PER * BS;
            std::vector<std::uint8_t> model(len * SECTOR, 0);
            for (int i = 0; i < OPS && !failed; ++i) {
                std::uint64_t s = rng() % len, n = 1 + rng() % std::min<std::uint64_t>(300, len - s);
                if (rng() % 3) {
                    std::uint64_t tag = std::uint64_t(w) * 1000000 + i + 1;
                    auto d = pattern(tag, base + s, n);
                    int r = do_io(*t, io_op::write, base + s, n, d.data(), rng() % 8 == 0);
                    if (r) failed = true, ADD_FAILURE() << "write " << r;
                    std::memcpy(model.data() + s * SECTOR, d.data(), d.size());
                    logs[w].push_back(logged{tag, base + s, n});
                } else {
                    int rc;
                    auto v = read(*t, base + s, n, &rc);
                    if (rc || std::memcmp(v.data(), model.data() + s * SECTOR, n * SECTOR))
                        failed = true, ADD_FAILURE() << "writer " << w << " read back wrong data at " << base + s;
                }
                if (rng() % 20 == 0 && flush(*t)) failed = true;
                ++progress;
            }
        });
    ts.emplace_back([&] {
        std::mt19937 rng(99);
        std::uint64_t base = 48 * BS, blocks = 16;
        std::vector<bool> mapped(blocks, false);
        std::vector<std::uint64_t> tags(blocks, 0);
        for (int i = 0; i < OPS && !failed; ++i) {
            std::uint64_t b = rng() % blocks;
            switch (rng() % 3) {
            case 0: {
                std::uint64_t tag = 9000000 + i;
                if (write(*t, base + b * BS, pattern(tag, base + b * BS, BS))) failed = true;
                mapped[b] = true;
                tags[b] = tag;
                break;
            }
            case 1: {
                std::uint64_t n = 1 + rng() % (blocks - b);
                std::uint64_t head = rng() % 2 ? 5 : 0;  // a partial first block is left alone
                if (discard(*t, base + b * BS + head, n * BS - head)) failed = true;
                for (std::uint64_t k = b + (head ? 1 : 0); k < b + n; ++k) mapped[k] = false;
                break;
            }
            default: {
                auto v = read(*t, base + b * BS, BS);
                bool ok = mapped[b] ? v == pattern(tags[b], base + b * BS, BS) : all_zero(v);
                if (!ok) failed = true, ADD_FAILURE() << "discard region block " << b << " wrong";
            }
            }
        }
    });
    for (int k = 1; k <= SNAPS; ++k) {
        int want = k * WRITERS * OPS / (SNAPS + 1);
        while (progress.load() < want && !failed) std::this_thread::yield();
        pl->message("create_snap " + std::to_string(k) + " 0");
        (void)pl->status();
    }
    for (auto& th : ts) th.join();
    ASSERT_FALSE(failed.load());

    for (int k = 1; k <= SNAPS; ++k) {
        auto snap = pl->activate(k, 64 * BS);
        for (int w = 0; w < WRITERS; ++w) {
            std::uint64_t base = std::uint64_t(w) * BLOCKS_PER * BS, len = BLOCKS_PER * BS;
            auto v = read(*snap, base, len);
            std::uint64_t newest = 0;
            for (std::uint64_t i = 0; i < len; ++i) {
                std::uint64_t w0;
                std::memcpy(&w0, v.data() + i * SECTOR, 8);
                if (w0 == 0) continue;
                std::uint64_t tag = (w0 - (base + i) * 7919) / 1000003;
                newest = std::max(newest, tag);
            }
            std::vector<std::uint8_t> expect(len * SECTOR, 0);
            for (auto& l : logs[w])
                if (l.tag <= newest) {
                    auto d = pattern(l.tag, l.sector, l.n);
                    std::memcpy(expect.data() + (l.sector - base) * SECTOR, d.data(), d.size());
                }
            EXPECT_TRUE(v == expect) << "snapshot " << k << " writer " << w << " is not a prefix of its writes";
        }
        snap->close();
    }
}

// ---- on files: close, reopen, checkers ----------------------------------------------------------

TEST(pool_files, reopen_keeps_data_and_passes_thin_check) {
    scratch_dir dir;
    std::string md = dir.file("metadata"), data = dir.file("data");
    thinpool_test::make_sparse_file(md, 4 << 20);
    thinpool_test::make_sparse_file(data, 64 * 128 * SECTOR);
    pool_options o;
    o.metadata_path = md;
    o.data_path = data;
    o.data_block_size = 128;
    o.log = [](const std::string&) {};
    {
        auto pl = pool::open(o);
        pl->message("create_thin 0");
        auto t = pl->activate(0, 32 * 128);
        ASSERT_EQ(write(*t, 0, pattern(1, 0, 300)), 0);
        ASSERT_EQ(write(*t, 4000, pattern(2, 4000, 10)), 0);
        pl->message("create_snap 1 0");
        ASSERT_EQ(write(*t, 5, pattern(3, 5, 1)), 0);
        pl->message("reserve_metadata_snap");
        EXPECT_EQ(discard(*t, 128, 128), 0);
        t->close();
        pl->close();
    }
    auto ours = thinpool_test::run_command({std::string(THINPOOL_BINARY_DIR) + "/thin_check", md});
    EXPECT_EQ(ours.exit_code, 0) << ours.out << ours.err;
    if (thinpool_test::reference_tools_available()) {
        auto theirs = thinpool_test::run_command({thinpool_test::reference_tool("thin_check"), md});
        EXPECT_EQ(theirs.exit_code, 0) << theirs.out << theirs.err;
    } else if (thinpool_test::reference_tools_required()) {
        ADD_FAILURE() << "reference thin_check missing";
    }
    auto pl = pool::open(o);
    auto t = pl->activate(0, 32 * 128);
    auto s = pl->activate(1, 32 * 128);
    auto e = pattern(1, 0, 300);
    std::memcpy(e.data() + 5 * SECTOR, pattern(3, 5, 1).data(), SECTOR);
    std::memset(e.data() + 128 * SECTOR, 0, 128 * SECTOR);
    EXPECT_EQ(read(*t, 0, 300), e);
    EXPECT_EQ(read(*s, 0, 300), pattern(1, 0, 300));
    EXPECT_EQ(read(*t, 4000, 10), pattern(2, 4000, 10));
    EXPECT_TRUE(pl->status_info().held_metadata_root.has_value());
}

TEST(pool_files, external_origin_by_path) {
    scratch_dir dir;
    std::string origin = dir.file("origin");
    {
        auto bytes = pattern(5, 0, 256);
        thinpool_test::write_file(origin, std::string(bytes.begin(), bytes.end()));
    }
    mem_pool p(16);
    auto pl = p.open();
    pl->message("create_thin 0");
    EXPECT_EQ(error_of([&] { pl->activate(0, 512, dir.file("missing")); }), EINVAL);
    auto t = pl->activate(0, 512, origin);
    EXPECT_EQ(read(*t, 0, 256), pattern(5, 0, 256));
    EXPECT_TRUE(all_zero(read(*t, 256, 256)));
    ASSERT_EQ(write(*t, 7, pattern(6, 7, 1)), 0);
    auto e = pattern(5, 0, 128);
    std::memcpy(e.data() + 7 * SECTOR, pattern(6, 7, 1).data(), SECTOR);
    EXPECT_EQ(read(*t, 0, 128), e);
    auto on_disk = thinpool_test::read_file(origin);
    auto orig = pattern(5, 0, 256);
    EXPECT_TRUE(on_disk == std::string(orig.begin(), orig.end()));
}

TEST(pool_files, closed_devices_refuse_requests) {
    mem_pool p(8);
    auto pl = p.open();
    pl->message("create_thin 0");
    auto t = pl->activate(0, 128);
    t->close();
    EXPECT_EQ(t->status(), "-");
    EXPECT_EQ(write(*t, 0, pattern(1, 0, 1)), -EIO);
    auto u = pl->activate(0, 128);
    pl->close();
    EXPECT_EQ(write(*u, 0, pattern(1, 0, 1)), -EIO);
    EXPECT_EQ(error_of([&] { pl->message("create_thin 1"); }), EIO);
}

} // namespace
