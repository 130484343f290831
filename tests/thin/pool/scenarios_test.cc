// Acceptance scenarios of the pool runtime: pool.md §9 (device-mapper-test-suite's thin-provisioning
// catalogue) as in-process tests against thin/pool/pool.h, with sparse files or memory devices
// standing in for the kernel's block devices. Each test names the dmtest test it follows.
#include "tests/support/pool_support.h"
#include "tests/support/reference_tools.h"

#include "persistent-data/io/fault_engine.h"
#include "thin/metadata/metadata.h"
#include "thin/pool/data_device.h"
#include "thin/pool/pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace thinpool_test;
using namespace std::chrono_literals;
using thin::pool::io_op;
using thin::pool::pool_error;
using thin::pool::pool_mode;
using thin::pool::thin_device;

constexpr std::uint32_t BS = 128;  // sectors per data block (64 KiB), dmtest's default
constexpr std::uint64_t MiB = 1024 * 1024;

std::uint64_t tag_of(std::uint64_t dev, std::uint64_t vblock, std::uint64_t gen = 1) {
    return (gen << 40) | ((dev + 1) << 20) | (vblock + 1);
}

// Writes every block [0, n) of a thin with tag_of(tagdev, b, gen).
void wipe(thin_device& t, std::uint64_t n, std::uint64_t tagdev, std::uint64_t gen = 1, std::uint32_t bs = BS) {
    for (std::uint64_t b = 0; b < n; ++b) ASSERT_EQ(0, write_block(t, bs, b, tag_of(tagdev, b, gen))) << "block " << b;
}

// Every block [0, n) reads back as tag_of(tagdev, b, gen).
void expect_wiped(thin_device& t, std::uint64_t n, std::uint64_t tagdev, std::uint64_t gen = 1,
                  std::uint32_t bs = BS) {
    for (std::uint64_t b = 0; b < n; ++b) {
        int rc = 0;
        std::string detail;
        auto tag = read_block_tag(t, bs, b, &rc, &detail);
        ASSERT_EQ(0, rc) << "block " << b;
        EXPECT_EQ(tag, std::optional<std::uint64_t>(tag_of(tagdev, b, gen))) << "block " << b << ": " << detail;
    }
}

void expect_zeros(thin_device& t, std::uint64_t first, std::uint64_t end, std::uint32_t bs = BS) {
    for (std::uint64_t b = first; b < end; ++b) {
        int rc = 0;
        std::string detail;
        auto tag = read_block_tag(t, bs, b, &rc, &detail);
        ASSERT_EQ(0, rc) << "block " << b;
        EXPECT_EQ(tag, std::optional<std::uint64_t>(0)) << "block " << b << " should read zeros: " << detail;
    }
}

std::uint64_t used_data(thin::pool::pool& p) { return p.status_info().used_data_blocks; }

// Read-only look at metadata after the pool closed.
std::unique_ptr<thin::metadata> open_metadata_file(const std::string& path) {
    pdata::open_options o;
    o.mode = pdata::open_mode::read_only;
    o.exclusive = false;
    std::shared_ptr<pdata::io_engine> e = pdata::open_sync_engine(path, o);
    thin::open_options mo;
    mo.read_only = true;
    mo.ignore_needs_check = true;
    return thin::metadata::open(e, mo);
}

std::unique_ptr<thin::metadata> open_metadata_engine(std::shared_ptr<pdata::io_engine> e) {
    thin::open_options mo;
    mo.read_only = true;
    mo.ignore_needs_check = true;
    return thin::metadata::open(std::move(e), mo);
}

std::map<std::uint64_t, thin::block_time> mappings_of(const thin::metadata& md, thin::dev_id d) {
    std::map<std::uint64_t, thin::block_time> m;
    md.for_each_mapping(d, [&](std::uint64_t v, thin::block_time bt) {
        m[v] = bt;
        return true;
    });
    return m;
}

// Our thin_check and Debian's both accept the metadata file.
// ---- thin_dump XML ----
struct run {
    std::uint64_t vbegin, dbegin, len, time;
};
struct dumped_device {
    std::uint64_t mapped_blocks = 0;
    std::vector<run> runs;
    std::uint64_t nr_mapped() const {
        std::uint64_t n = 0;
        for (auto& r : runs) n += r.len;
        return n;
    }
    std::set<std::uint64_t> data_blocks() const {
        std::set<std::uint64_t> s;
        for (auto& r : runs)
            for (std::uint64_t i = 0; i < r.len; ++i) s.insert(r.dbegin + i);
        return s;
    }
};
std::map<std::uint64_t, dumped_device> parse_dump(const std::string& xml) {
    std::map<std::uint64_t, dumped_device> devs;
    static const std::regex dev_re(R"re(<device dev_id="(\d+)" mapped_blocks="(\d+)")re");
    static const std::regex single_re(R"re(<single_mapping origin_block="(\d+)" data_block="(\d+)" time="(\d+)"/>)re");
    static const std::regex range_re(
        R"re(<range_mapping origin_begin="(\d+)" data_begin="(\d+)" length="(\d+)" time="(\d+)"/>)re");
    std::istringstream in(xml);
    std::string line;
    dumped_device* cur = nullptr;
    while (std::getline(in, line)) {
        std::smatch m;
        if (std::regex_search(line, m, dev_re)) {
            cur = &devs[std::stoull(m[1])];
            cur->mapped_blocks = std::stoull(m[2]);
        } else if (cur && std::regex_search(line, m, single_re)) {
            cur->runs.push_back({std::stoull(m[1]), std::stoull(m[2]), 1, std::stoull(m[3])});
        } else if (cur && std::regex_search(line, m, range_re)) {
            cur->runs.push_back({std::stoull(m[1]), std::stoull(m[2]), std::stoull(m[3]), std::stoull(m[4])});
        }
    }
    return devs;
}

// ================================================================================================
// creation_tests.rb
// ================================================================================================

TEST(PoolCreation, CreateLotsOfEmptyThins) {
    file_pool fp(8 * MiB, 64);
    {
        auto p = fp.open();
        for (int i = 0; i < 200; ++i) ASSERT_NO_THROW(p->message("create_thin " + std::to_string(i))) << i;
        for (int i : {0, 57, 199}) {
            auto t = p->activate(i, 16 * BS);
            EXPECT_EQ("0 -", t->status());
            t->close();
        }
    }
    auto md = open_metadata_file(fp.metadata);
    EXPECT_EQ(200u, md->devices().size());
    expect_checks_pass(fp.metadata);
}

TEST(PoolCreation, CreateLotsOfSnaps) {
    file_pool fp(8 * MiB, 64);
    {
        auto p = fp.open();
        p->message("create_thin 0");
        auto origin = p->activate(0, 4 * BS);
        wipe(*origin, 4, 0);
        for (int i = 1; i <= 200; ++i)
            ASSERT_NO_THROW(p->message("create_snap " + std::to_string(i) + " 0")) << i;
        EXPECT_EQ(4u, used_data(*p)) << "snapshots share the origin's blocks";
        for (int i : {1, 100, 200}) {
            auto s = p->activate(i, 4 * BS);
            expect_wiped(*s, 4, 0);
            s->close();
        }
    }
    auto md = open_metadata_file(fp.metadata);
    EXPECT_EQ(201u, md->devices().size());
    EXPECT_EQ(200u, md->time()) << "every snapshot increments the pool time";
    expect_checks_pass(fp.metadata);
}

TEST(PoolCreation, CreateLotsOfRecursiveSnaps) {
    file_pool fp(8 * MiB, 64);
    {
        auto p = fp.open();
        p->message("create_thin 0");
        {
            auto origin = p->activate(0, 4 * BS);
            wipe(*origin, 4, 0);
            origin->close();
        }
        for (int i = 1; i <= 200; ++i)
            ASSERT_NO_THROW(p->message("create_snap " + std::to_string(i) + " " + std::to_string(i - 1))) << i;
        auto last = p->activate(200, 4 * BS);
        expect_wiped(*last, 4, 0);
        EXPECT_EQ(4u, used_data(*p));
    }
    expect_checks_pass(fp.metadata);
}

TEST(PoolCreation, BlockSizeLimits) {
    struct c {
        std::uint32_t bs;
        bool ok;
    };
    for (auto [bs, ok] : {c{64, false}, c{128 + 57, false}, c{2097152 + 1, false}, c{2097152 + 128, false},
                          c{128, true}, c{384, true}, c{2097152, true}}) {
        SCOPED_TRACE("block size " + std::to_string(bs));
        scratch_dir d;
        make_sparse_file(d.file("metadata"), 4 * MiB);
        make_sparse_file(d.file("data"), 2ull * 2097152 * SECTOR);  // room for two of the largest blocks
        auto o = quiet_options();
        o.metadata_path = d.file("metadata");
        o.data_path = d.file("data");
        o.data_block_size = bs;
        if (ok) {
            auto p = open_pool(o);
            ASSERT_TRUE(p);
            auto st = p->status_info();
            EXPECT_EQ(2ull * 2097152 / bs, st.total_data_blocks);
            p->message("create_thin 0");
        } else {
            pdata::block_address before = allocated_bytes(d.file("metadata"));
            EXPECT_EQ(EINVAL, pool_errno([&] { open_pool(o); }));
            EXPECT_EQ(before, allocated_bytes(d.file("metadata"))) << "a refused pool must not format";
        }
    }
}

TEST(PoolCreation, HugeBlockSizeWorks) {
    // 256 MiB blocks (dmtest huge_block_size): provisioning by a partial write zeroes the rest.
    constexpr std::uint32_t huge = 524288;
    file_pool fp(4 * MiB, 2, huge);
    auto p = fp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 2ull * huge);
    auto data = make_pattern(77, huge + 1000, 64);
    ASSERT_EQ(0, write_sync(*t, huge + 1000, data));
    std::vector<std::uint8_t> back;
    ASSERT_EQ(0, read_sync(*t, huge + 936, 192, back));
    EXPECT_EQ(std::optional<std::uint64_t>(0), uniform_tag(back.data(), huge + 936, 64));
    EXPECT_EQ(std::optional<std::uint64_t>(77), uniform_tag(back.data() + 64 * SECTOR, huge + 1000, 64));
    EXPECT_EQ(std::optional<std::uint64_t>(0), uniform_tag(back.data() + 128 * SECTOR, huge + 1064, 64));
    EXPECT_EQ(1u, used_data(*p));
    EXPECT_EQ("524288 1048575", t->status());
}

TEST(PoolCreation, DeviceIdLimits) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    EXPECT_EQ(0, pool_errno([&] { p->message("create_thin 16777215"); }));
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("create_thin 16777216"); }));
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("create_thin -1"); }));
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("create_thin abc"); }));
    EXPECT_EQ(EEXIST, pool_errno([&] { p->message("create_thin 16777215"); }));
    EXPECT_EQ(0, pool_errno([&] { p->message("create_snap 0 16777215"); }));
    EXPECT_EQ(ENODATA, pool_errno([&] { p->message("create_snap 1 5"); }));
    EXPECT_EQ(EEXIST, pool_errno([&] { p->message("create_snap 0 16777215"); }));
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("create_snap 16777216 0"); }));
    auto t = p->activate(16777215, 4 * BS);
    ASSERT_EQ(0, write_block(*t, BS, 1, 5));
    EXPECT_EQ(std::optional<std::uint64_t>(5), read_block_tag(*t, BS, 1));
}

TEST(PoolCreation, TooSmallMetadataDeviceFails) {
    scratch_dir d;
    make_sparse_file(d.file("metadata"), 16 * 1024);
    make_sparse_file(d.file("data"), 64 * BS * SECTOR);
    auto o = quiet_options();
    o.metadata_path = d.file("metadata");
    o.data_path = d.file("data");
    try {
        open_pool(o);
        ADD_FAILURE() << "a pool on a 16 KiB metadata device opened";
    } catch (const pool_error&) {
    }
}

TEST(PoolCreation, MessagesParseLikeTheKernel) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    EXPECT_EQ(0, pool_errno([&] { p->message("CREATE_THIN 3"); })) << "names are case-insensitive";
    EXPECT_EQ(0, pool_errno([&] { p->message("Create_Snap 4 3"); }));
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("create_thin"); })) << "wrong argument count";
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("create_thin 1 2"); }));
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("delete"); }));
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("frobnicate 1"); })) << "unknown message";
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("reserve_metadata_snap 1"); }));
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("set_transaction_id 0"); }));
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("set_transaction_id x 1"); }));
}

TEST(PoolCreation, ActivateRefusals) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    EXPECT_EQ(ENODATA, pool_errno([&] { p->activate(0, BS); }));
    p->message("create_thin 0");
    auto t = p->activate(0, BS);
    EXPECT_EQ(EBUSY, pool_errno([&] { p->activate(0, BS); }));
    t->close();
    auto again = p->activate(0, BS);
    EXPECT_EQ(0u, again->status_info().mapped_sectors);
}

TEST(PoolCreation, TwoPoolsOnTheSameMetadataFail) {
    // multiple_pool_tests.rb two_pools_pointing_to_the_same_metadata_fails
    file_pool fp(4 * MiB, 16);
    auto p = fp.open();
    p->message("create_thin 0");
    scratch_dir other;
    make_sparse_file(other.file("data"), 16 * BS * SECTOR);
    auto o = fp.opts;
    o.data_path = other.file("data");
    EXPECT_EQ(EBUSY, pool_errno([&] { open_pool(o); }));
    // The first pool is unharmed.
    auto t = p->activate(0, 4 * BS);
    ASSERT_EQ(0, write_block(*t, BS, 0, 9));
    EXPECT_EQ(std::optional<std::uint64_t>(9), read_block_tag(*t, BS, 0));
}

TEST(PoolCreation, FeatureWords) {
    thin::pool::pool_features f;
    thin::pool::parse_feature("Skip_Block_Zeroing", f);
    thin::pool::parse_feature("IGNORE_DISCARD", f);
    thin::pool::parse_feature("no_discard_passdown", f);
    thin::pool::parse_feature("read_only", f);
    thin::pool::parse_feature("error_if_no_space", f);
    EXPECT_TRUE(f.skip_block_zeroing && f.ignore_discard && f.no_discard_passdown && f.read_only &&
                f.error_if_no_space);
    EXPECT_EQ(EINVAL, pool_errno([&] { thin::pool::parse_feature("discard_passdown", f); }));
}

// ================================================================================================
// deletion_tests.rb
// ================================================================================================

TEST(PoolDeletion, CreateDeleteCycle) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    for (int i = 0; i < 200; ++i) {
        ASSERT_NO_THROW(p->message("create_thin 0")) << i;
        ASSERT_NO_THROW(p->message("delete 0")) << i;
    }
    EXPECT_EQ(ENODATA, pool_errno([&] { p->activate(0, BS); }));
}

TEST(PoolDeletion, CreateManyThinsThenDeleteThem) {
    file_pool fp(8 * MiB, 256);
    {
        auto p = fp.open();
        for (int i = 0; i < 200; ++i) p->message("create_thin " + std::to_string(i));
        // Give every fourth device a block so deletes release data too.
        for (int i = 0; i < 200; i += 4) {
            auto t = p->activate(i, BS);
            ASSERT_EQ(0, write_block(*t, BS, 0, tag_of(i, 0)));
            t->close();
        }
        EXPECT_EQ(50u, used_data(*p));
        for (int i = 0; i < 200; ++i) ASSERT_NO_THROW(p->message("delete " + std::to_string(i))) << i;
        EXPECT_EQ(0u, used_data(*p));
    }
    auto md = open_metadata_file(fp.metadata);
    EXPECT_TRUE(md->devices().empty());
    EXPECT_EQ(0u, md->nr_data_blocks() - md->nr_free_data_blocks());
    expect_checks_pass(fp.metadata);
}

TEST(PoolDeletion, RollingCreateDelete) {
    memory_pool mp(2048, 16);
    auto p = mp.open();
    for (int i = 0; i < 200; ++i) p->message("create_thin " + std::to_string(i));
    for (int i = 0; i < 200; ++i) {
        ASSERT_NO_THROW(p->message("delete " + std::to_string(i))) << i;
        ASSERT_NO_THROW(p->message("create_thin " + std::to_string(i))) << i;
    }
    p->close();
    auto md = open_metadata_engine(mp.md);
    EXPECT_EQ(200u, md->devices().size());
}

TEST(PoolDeletion, DeleteThinFreesItsData) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, BS);
    ASSERT_EQ(0, write_block(*t, BS, 0, 1));
    EXPECT_EQ(1u, used_data(*p));
    t->close();
    p->message("delete 0");
    EXPECT_EQ(0u, used_data(*p)) << "status commits, so the freed block shows";
}

TEST(PoolDeletion, DeleteUnknownDevicesFails) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    for (int i = 0; i <= 10; ++i) EXPECT_EQ(ENODATA, pool_errno([&] { p->message("delete " + std::to_string(i)); }));
}

TEST(PoolDeletion, DeleteActiveDeviceFails) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    ASSERT_EQ(0, write_block(*t, BS, 0, 1));
    EXPECT_EQ(EBUSY, pool_errno([&] { p->message("delete 0"); }));
    EXPECT_EQ(std::optional<std::uint64_t>(1), read_block_tag(*t, BS, 0)) << "the refused delete changed nothing";
    t->close();
    EXPECT_EQ(0, pool_errno([&] { p->message("delete 0"); }));
}

TEST(PoolDeletion, DeleteAfterOutOfSpace) {
    memory_pool mp(1024, 8);
    mp.opts.features.error_if_no_space = true;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    for (int b = 0; b < 8; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    EXPECT_EQ(-ENOSPC, write_block(*t, BS, 8, tag_of(0, 8)));
    EXPECT_EQ(pool_mode::out_of_data_space, p->mode());
    t->close();
    p->message("delete 0");
    auto st = p->status_info();
    EXPECT_EQ(0u, st.used_data_blocks);
    EXPECT_EQ(pool_mode::write, st.mode);
    EXPECT_EQ(pool_mode::write, p->mode());
}

// ================================================================================================
// discard_tests.rb
// ================================================================================================

struct discard_case {
    bool passdown;
    bool discardable;
};

class DiscardUnmaps : public ::testing::TestWithParam<discard_case> {};

TEST_P(DiscardUnmaps, WholeThinDiscardFreesEverything) {
    auto [passdown, discardable] = GetParam();
    memory_pool mp(1024, 32, BS, discardable);
    mp.opts.features.no_discard_passdown = !passdown;
    auto p = mp.open();
    auto st0 = p->status_info();
    EXPECT_EQ(passdown && discardable, st0.discard_passdown)
        << "passdown is disabled automatically when the data device cannot discard";
    EXPECT_NE(std::string::npos,
              p->status().find(passdown && discardable ? " discard_passdown " : " no_discard_passdown "));
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    wipe(*t, 16, 0);
    EXPECT_EQ(16u, used_data(*p));
    std::uint64_t discards_before = mp.data->discards();
    ASSERT_EQ(0, discard_sync(*t, 0, 16 * BS));
    EXPECT_EQ("0 -", t->status());
    EXPECT_EQ(0u, used_data(*p));
    expect_zeros(*t, 0, 16);
    if (passdown && discardable) {
        EXPECT_GT(mp.data->discards(), discards_before) << "passdown reaches the device";
    } else {
        EXPECT_EQ(discards_before, mp.data->discards()) << "no passdown: the data device sees no discard";
    }
    t->close();
    p->close();
    auto md = open_metadata_engine(mp.md);
    EXPECT_TRUE(mappings_of(*md, 0).empty());
    EXPECT_EQ(0u, md->details(0).mapped_blocks);
}

INSTANTIATE_TEST_SUITE_P(PoolDiscard, DiscardUnmaps,
                         ::testing::Values(discard_case{true, true}, discard_case{true, false},
                                           discard_case{false, true}, discard_case{false, false}),
                         [](const auto& info) {
                             return std::string(info.param.passdown ? "Passdown" : "NoPassdown") +
                                    (info.param.discardable ? "Discardable" : "NonDiscardable");
                         });

TEST(PoolDiscard, DiscardOnAFilePoolPunchesHoles) {
    file_pool fp(4 * MiB, 64);
    auto p = fp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 32 * BS);
    wipe(*t, 32, 0);
    ASSERT_EQ(0, flush_sync(*t));
    std::uint64_t before = allocated_bytes(fp.data);
    EXPECT_GE(before, 32 * BS * SECTOR);
    ASSERT_EQ(0, discard_sync(*t, 0, 32 * BS));
    EXPECT_EQ(0u, used_data(*p));
    EXPECT_LE(allocated_bytes(fp.data), before - 32 * BS * SECTOR) << "passdown punches the blocks out of the file";
}

TEST(PoolDiscard, DiscardDisabledFailsAndFreesNothing) {
    for (bool discardable : {true, false}) {
        SCOPED_TRACE(discardable ? "discardable" : "non-discardable");
        memory_pool mp(1024, 16, BS, discardable);
        mp.opts.features.ignore_discard = true;
        auto p = mp.open();
        EXPECT_TRUE(p->status_info().ignore_discard);
        EXPECT_NE(std::string::npos, p->status().find(" ignore_discard "));
        p->message("create_thin 0");
        auto t = p->activate(0, 4 * BS);
        wipe(*t, 4, 0);
        EXPECT_EQ(-EOPNOTSUPP, discard_sync(*t, 0, 4 * BS));
        EXPECT_EQ(4u, used_data(*p));
        expect_wiped(*t, 4, 0);
        EXPECT_EQ(0u, mp.data->discards());
    }
}

TEST(PoolDiscard, DiscardEmptyDevice) {
    memory_pool mp(1024, 16);
    mp.opts.features.no_discard_passdown = true;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    EXPECT_EQ(0, discard_sync(*t, 0, 16 * BS));
    EXPECT_EQ("0 -", t->status());
    EXPECT_EQ(0u, used_data(*p));
}

TEST(PoolDiscard, DiscardFullyProvisionedDevice) {
    memory_pool mp(1024, 32);
    auto p = mp.open();
    p->message("create_thin 0");
    p->message("create_thin 1");
    auto a = p->activate(0, 16 * BS);
    auto b = p->activate(1, 16 * BS);
    wipe(*a, 16, 0);
    wipe(*b, 16, 1);
    EXPECT_EQ(32u, used_data(*p));
    ASSERT_EQ(0, discard_sync(*a, 0, 16 * BS));
    EXPECT_EQ(16u, used_data(*p));
    EXPECT_EQ("0 -", a->status());
    EXPECT_EQ(std::to_string(16 * BS) + " " + std::to_string(16 * BS - 1), b->status());
    expect_wiped(*b, 16, 1);
}

TEST(PoolDiscard, DiscardSingleBlock) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 8 * BS);
    wipe(*t, 8, 0);
    ASSERT_EQ(0, discard_sync(*t, 0, BS));
    auto ts = t->status_info();
    EXPECT_EQ(7u * BS, ts.mapped_sectors);
    EXPECT_EQ(std::optional<std::uint64_t>(8 * BS - 1), ts.highest_mapped_sector);
    expect_zeros(*t, 0, 1);
    for (int b = 1; b < 8; ++b) EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, b)), read_block_tag(*t, BS, b));
    EXPECT_EQ(7u, used_data(*p));
    t->close();
    p->close();
    auto md = open_metadata_engine(mp.md);
    auto m = mappings_of(*md, 0);
    EXPECT_EQ(7u, m.size());
    EXPECT_EQ(0u, m.count(0));
}

TEST(PoolDiscard, DiscardToASharedBlockIsNotPassedDown) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    ASSERT_EQ(0, write_block(*t, BS, 0, 11));
    p->message("create_snap 1 0");
    std::uint64_t discards = mp.data->discards();
    ASSERT_EQ(0, discard_sync(*t, 0, BS));
    EXPECT_EQ(discards, mp.data->discards()) << "the snapshot still maps the block";
    EXPECT_EQ(1u, used_data(*p));
    EXPECT_EQ("0 -", t->status());
    expect_zeros(*t, 0, 1);
    auto s = p->activate(1, 4 * BS);
    EXPECT_EQ(std::optional<std::uint64_t>(11), read_block_tag(*s, BS, 0));
    EXPECT_EQ(std::to_string(BS) + " " + std::to_string(BS - 1), s->status());
}

TEST(PoolDiscard, DiscardToAPreviouslySharedBlockIsPassedDown) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    ASSERT_EQ(0, write_block(*t, BS, 0, 11));
    p->message("create_snap 1 0");
    p->message("delete 1");
    std::uint64_t discards = mp.data->discards();
    ASSERT_EQ(0, discard_sync(*t, 0, BS));
    EXPECT_GT(mp.data->discards(), discards) << "nobody else maps the block any more";
    EXPECT_EQ(0u, used_data(*p));
}

TEST(PoolDiscard, DiscardPartialBlocksUnmapsNothing) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    wipe(*t, 4, 0);
    ASSERT_EQ(0, discard_sync(*t, 0, 120));
    ASSERT_EQ(0, discard_sync(*t, 56, 160));
    ASSERT_EQ(0, discard_sync(*t, BS + 1, 2 * BS - 2));
    EXPECT_EQ(std::to_string(4 * BS) + " " + std::to_string(4 * BS - 1), t->status());
    EXPECT_EQ(4u, used_data(*p));
    expect_wiped(*t, 4, 0);
    EXPECT_EQ(0u, mp.data->discards());
}

TEST(PoolDiscard, DiscardRoundsInwardsToWholeBlocks) {
    // begin = ceil(start / bs), end = floor((start + len) / bs); a non-power-of-two block size.
    constexpr std::uint32_t bs = 384;
    memory_pool mp(1024, 8, bs);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 6 * bs);
    wipe(*t, 6, 0, 1, bs);
    ASSERT_EQ(0, discard_sync(*t, bs - 1, 3 * bs + 2));  // covers blocks 1..3 whole, 0 and 4 partly
    expect_wiped(*t, 1, 0, 1, bs);
    expect_zeros(*t, 1, 4, bs);
    EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 4)), read_block_tag(*t, bs, 4));
    EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 5)), read_block_tag(*t, bs, 5));
    EXPECT_EQ(3u, used_data(*p));
}

TEST(PoolDiscard, DiscardSameBlocks) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    wipe(*t, 2, 0);
    for (int i = 0; i < 300; ++i) ASSERT_EQ(0, discard_sync(*t, 0, BS)) << i;
    EXPECT_EQ(1u, used_data(*p));
    EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 1)), read_block_tag(*t, BS, 1));
}

TEST(PoolDiscard, DiscardOriginDoesNotAffectSnap) {
    memory_pool mp(1024, 32);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    wipe(*t, 16, 0);
    p->message("create_snap 1 0");
    ASSERT_EQ(0, discard_sync(*t, 0, 16 * BS));
    EXPECT_EQ(16u, used_data(*p)) << "the snapshot keeps every block";
    EXPECT_EQ(0u, mp.data->discards());
    auto s = p->activate(1, 16 * BS);
    expect_wiped(*s, 16, 0);
    expect_zeros(*t, 0, 16);
}

TEST(PoolDiscard, DiscardPastTheEndFails) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    wipe(*t, 4, 0);
    EXPECT_NE(0, discard_sync(*t, 4 * BS, BS));
    EXPECT_NE(0, discard_sync(*t, 3 * BS, 2 * BS));
    EXPECT_EQ(4u, used_data(*p));
    expect_wiped(*t, 4, 0);
}

TEST(PoolDiscard, DiscardTriggersCommit) {
    // A discard changes metadata; the periodic commit makes the freed block show in a no-flush
    // status without anyone flushing.
    memory_pool mp(1024, 16);
    mp.opts.commit_period = 50ms;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    ASSERT_EQ(0, write_block(*t, BS, 0, 1));
    ASSERT_EQ(0, flush_sync(*t));
    EXPECT_EQ(1u, p->status_info(true).used_data_blocks);
    ASSERT_EQ(0, discard_sync(*t, 0, BS));
    EXPECT_TRUE(wait_until([&] { return p->status_info(true).used_data_blocks == 0; }, 10s))
        << "the periodic commit never published the discard";
}

TEST(PoolDiscard, DiscardAlternateBlocks) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 32 * BS);
    wipe(*t, 32, 0);
    for (int b = 0; b < 32; b += 2) ASSERT_EQ(0, discard_sync(*t, b * BS, BS));
    for (int b = 0; b < 32; ++b) {
        auto tag = read_block_tag(*t, BS, b);
        EXPECT_EQ(tag, std::optional<std::uint64_t>(b % 2 ? tag_of(0, b) : 0)) << b;
    }
    EXPECT_EQ(16u, used_data(*p));
    t->close();
    p->close();
    auto md = open_metadata_engine(mp.md);
    std::set<std::uint64_t> mapped;
    for (auto& [v, bt] : mappings_of(*md, 0)) mapped.insert(v);
    std::set<std::uint64_t> odd;
    for (int b = 1; b < 32; b += 2) odd.insert(b);
    EXPECT_EQ(odd, mapped);
}

TEST(PoolDiscard, DiscardAfterOutOfSpace) {
    memory_pool mp(1024, 8);
    mp.opts.features.error_if_no_space = true;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    for (int b = 0; b < 8; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    EXPECT_EQ(-ENOSPC, write_block(*t, BS, 8, tag_of(0, 8)));
    EXPECT_EQ(pool_mode::out_of_data_space, p->mode());
    ASSERT_EQ(0, discard_sync(*t, 0, 16 * BS));
    auto st = p->status_info();
    EXPECT_EQ(0u, st.used_data_blocks);
    EXPECT_EQ(pool_mode::write, st.mode);
    EXPECT_EQ(0, write_block(*t, BS, 8, tag_of(0, 8, 2)));
}

// pool.h: a request may have any size; pool.md §5.5: the pool's own unit is at most 1024 blocks and
// never crosses a 1024-aligned boundary, so a bigger discard must be split, not ignored.
TEST(PoolDiscard, DiscardLargerThan1024BlocksIsSplit) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    const std::vector<std::uint64_t> blocks = {0, 1, 1023, 1024, 1025, 2047, 2048, 3000};
    auto t = p->activate(0, 3100 * BS);
    for (auto b : blocks) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    EXPECT_EQ(blocks.size(), used_data(*p));
    // From the middle of block 0 to the end: block 0 stays, everything else goes.
    ASSERT_EQ(0, discard_sync(*t, 64, 3100 * BS - 64));
    EXPECT_EQ(1u, used_data(*p));
    EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 0)), read_block_tag(*t, BS, 0));
    for (auto b : blocks) {
        if (b) {
            EXPECT_EQ(std::optional<std::uint64_t>(0), read_block_tag(*t, BS, b)) << b;
        }
    }
    EXPECT_EQ(std::to_string(BS) + " " + std::to_string(BS - 1), t->status());
}

// ================================================================================================
// external_origin_tests.rb
// ================================================================================================

constexpr std::uint64_t ORIGIN_TAG = 0x0a11;

// An origin file of `sectors` sectors holding ORIGIN_TAG's pattern.
std::string make_origin(const scratch_dir& d, std::uint64_t sectors) {
    std::string path = d.file("origin");
    write_file(path, "");
    write_bytes(path, 0, make_pattern(ORIGIN_TAG, 0, sectors));
    return path;
}

// What sector s of a thin with an external origin of osz sectors reads before any write.
std::uint64_t origin_expect(std::uint64_t s, std::uint64_t osz) { return s < osz ? ORIGIN_TAG : 0; }

struct origin_case {
    const char* name;
    std::uint64_t origin_sectors;
    std::uint64_t thin_sectors;
};

class ExternalOrigin : public ::testing::TestWithParam<origin_case> {};

TEST_P(ExternalOrigin, ReadsComeFromTheOriginAndWritesNeverTouchIt) {
    const auto c = GetParam();
    file_pool fp(4 * MiB, 64);
    std::string origin = make_origin(fp.dir, c.origin_sectors);
    const std::string origin_before = read_file(origin);
    auto p = fp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, c.thin_sectors, origin);
    const std::uint64_t osz = c.origin_sectors;

    auto check_all = [&](const std::map<std::uint64_t, std::uint64_t>& written, const char* when) {
        std::vector<std::uint8_t> buf;
        ASSERT_EQ(0, read_sync(*t, 0, c.thin_sectors, buf));
        for (std::uint64_t s = 0; s < c.thin_sectors; ++s) {
            auto it = written.find(s);
            std::uint64_t want = it != written.end() ? it->second : origin_expect(s, osz);
            auto got = sector_tag(buf.data() + s * SECTOR, s);
            if (got != std::optional<std::uint64_t>(want)) {
                ADD_FAILURE() << when << ": sector " << s << " (origin " << osz << " sectors) should hold tag "
                              << want << ": " << describe_sectors(buf.data() + s * SECTOR, s, 1);
                return;
            }
        }
    };
    check_all({}, "before writes");
    // Unaligned reads across the origin's end.
    if (osz < c.thin_sectors) {
        std::uint64_t start = osz >= 5 ? osz - 5 : 0;
        std::uint64_t n = std::min<std::uint64_t>(10, c.thin_sectors - start);
        std::vector<std::uint8_t> buf;
        ASSERT_EQ(0, read_sync(*t, start, n, buf));
        for (std::uint64_t i = 0; i < n; ++i)
            EXPECT_EQ(std::optional<std::uint64_t>(origin_expect(start + i, osz)),
                      sector_tag(buf.data() + i * SECTOR, start + i))
                << "sector " << start + i;
    }

    // Whole-block overwrites, partial writes (copy from the origin), a partial write into the
    // block that straddles the origin's end, and one beyond it.
    std::map<std::uint64_t, std::uint64_t> written;
    auto do_write = [&](std::uint64_t sector, std::uint64_t n, std::uint64_t tag) {
        if (sector + n > c.thin_sectors) return;
        ASSERT_EQ(0, write_sync(*t, sector, make_pattern(tag, sector, n))) << "write at " << sector;
        for (std::uint64_t i = 0; i < n; ++i) written[sector + i] = tag;
    };
    do_write(0, BS, 101);                // whole block 0
    do_write(2 * BS + 8, 16, 102);       // partial in block 2
    do_write(5 * BS + BS - 4, 8, 103);   // across blocks 5 and 6
    const std::uint64_t tail_block = osz / BS;
    do_write(tail_block * BS + 3, 4, 104);             // the block holding the origin's end
    do_write((tail_block + 1) * BS + 7, 9, 105);       // entirely beyond the origin (if the thin is bigger)
    check_all(written, "after writes");

    std::set<std::uint64_t> touched;
    for (auto& [s, tag] : written) touched.insert(s / BS);
    EXPECT_EQ(touched.size(), used_data(*p));
    EXPECT_EQ(c.thin_sectors, t->nr_sectors());
    t->close();
    p->close();
    EXPECT_TRUE(origin_before == read_file(origin)) << "the external origin was modified";
}

INSTANTIATE_TEST_SUITE_P(
    PoolExternalOrigin, ExternalOrigin,
    ::testing::Values(origin_case{"SnapEqualSize", 16 * BS, 16 * BS},
                      origin_case{"SnapSmallerThanOrigin", 16 * BS, 10 * BS},
                      origin_case{"SnapBiggerThanOrigin", 10 * BS, 16 * BS},
                      origin_case{"SnapFractionalTailBlock", 10 * BS + 16, 16 * BS}),
    [](const auto& info) { return std::string(info.param.name); });

// ================================================================================================
// flush_triggers_commit.rb
// ================================================================================================

// True when the fault engine's log has a write of block 0 (a commit's superblock write).
bool superblock_written(pdata::fault_engine& f) {
    for (auto& e : f.log())
        if (!e.is_flush() && e.block == 0) return true;
    return false;
}

TEST(PoolFlush, CommitIfChanged) {
    memory_pool mp(1024, 32);
    auto p = mp.open();
    p->message("create_thin 0");
    p->message("create_thin 1");
    auto a = p->activate(0, 8 * BS);
    auto b = p->activate(1, 8 * BS);

    auto expect_flush_commits = [&](thin_device& t, bool commits, const char* what) {
        mp.fault->clear_log();
        mp.fault->record(true);
        std::uint64_t before = p->nr_commits();
        ASSERT_EQ(0, flush_sync(t)) << what;
        EXPECT_EQ(commits ? before + 1 : before, p->nr_commits()) << what;
        mp.fault->record(false);
        EXPECT_EQ(commits, superblock_written(*mp.fault)) << what << ": superblock write";
    };

    for (auto* t : {a.get(), b.get()}) {
        ASSERT_EQ(0, write_block(*t, BS, 0, 1));
        expect_flush_commits(*t, true, "flush after provisioning");
        ASSERT_EQ(0, write_block(*t, BS, 0, 2));
        expect_flush_commits(*t, false, "flush after rewriting a provisioned block");
    }

    p->message("create_snap 2 0");
    auto s = p->activate(2, 8 * BS);
    ASSERT_EQ(0, write_block(*s, BS, 0, 3));
    expect_flush_commits(*s, true, "flush after breaking sharing on the snapshot");
    ASSERT_EQ(0, write_block(*s, BS, 0, 4));
    expect_flush_commits(*s, false, "flush after rewriting the snapshot's own block");
    ASSERT_EQ(0, write_block(*a, BS, 0, 5));
    expect_flush_commits(*a, true, "flush after breaking sharing on the origin");
    expect_flush_commits(*b, false, "flush of an unchanged thin");
}

TEST(PoolFlush, DiscardTriggersCommit) {
    memory_pool mp(1024, 32);
    auto p = mp.open();
    p->message("create_thin 0");
    p->message("create_thin 1");
    auto a = p->activate(0, 8 * BS);
    auto b = p->activate(1, 8 * BS);
    wipe(*a, 2, 0);
    wipe(*b, 2, 1);
    ASSERT_EQ(0, flush_sync(*a));
    ASSERT_EQ(0, flush_sync(*b));
    std::uint64_t c = p->nr_commits();
    ASSERT_EQ(0, discard_sync(*a, 0, BS));
    ASSERT_EQ(0, flush_sync(*b));
    EXPECT_EQ(c, p->nr_commits()) << "the unrelated, unchanged thin's flush must not commit";
    ASSERT_EQ(0, flush_sync(*a));
    EXPECT_EQ(c + 1, p->nr_commits()) << "a flush after a discard commits";
    EXPECT_EQ(3u, p->status_info(true).used_data_blocks);
}

TEST(PoolFlush, FuaWriteThatProvisionsIsAcknowledgedAfterCommit) {
    memory_pool mp(1024, 32);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 8 * BS);
    std::uint64_t c = p->nr_commits();
    ASSERT_EQ(0, write_block(*t, BS, 3, 7, /*fua=*/true));
    EXPECT_GT(p->nr_commits(), c) << "the FUA write completed before its mapping was committed";
    EXPECT_EQ(1u, p->status_info(true).used_data_blocks);
}

TEST(PoolFlush, PeriodicCommit) {
    memory_pool mp(1024, 32);
    mp.opts.commit_period = 20ms;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 8 * BS);
    std::uint64_t c = p->nr_commits();
    ASSERT_EQ(0, write_block(*t, BS, 0, 1));
    EXPECT_TRUE(wait_until([&] { return p->nr_commits() > c; }, 10s)) << "no periodic commit of a changed pool";
    EXPECT_TRUE(wait_until([&] { return p->status_info(true).used_data_blocks == 1; }, 10s));
}

// ================================================================================================
// basic_tests.rb pool_without_thin_devices_does_not_commit
// ================================================================================================

// The observation window is measured by a second, busy pool with the same commit period: the idle
// pool is watched for as long as the busy one needs for ten periodic commits (each made after a
// change the test makes and waits for), so its timer had as many chances to commit as well.
TEST(PoolBasic, PoolWithoutThinDevicesDoesNotCommit) {
    memory_pool idle(1024, 16);
    { auto p = idle.open(); }  // formats
    memory_pool busy(1024, 16);
    busy.opts.commit_period = 5ms;
    auto clock = busy.open();
    clock->message("create_thin 0");
    auto ct = clock->activate(0, 4 * BS);
    std::uint64_t tag = 0;
    auto ten_periods = [&] {
        for (int i = 0; i < 10; ++i) {
            std::uint64_t c = clock->nr_commits();
            // Provision or unmap a block: a metadata change the periodic commit must publish.
            if (i % 2 == 0) ASSERT_EQ(0, write_block(*ct, BS, 0, ++tag));
            else ASSERT_EQ(0, discard_sync(*ct, 0, BS));
            ASSERT_TRUE(wait_until([&] { return clock->nr_commits() > c; }, 10s)) << "the busy pool never committed";
        }
    };
    for (bool with_devices : {false, true}) {
        SCOPED_TRACE(with_devices ? "pool with idle devices" : "pool without devices");
        auto o = idle.opts;
        o.commit_period = 5ms;
        auto p = open_pool(o);
        std::shared_ptr<thin_device> t;
        if (with_devices) t = p->activate(0, 4 * BS);  // activation alone is not a change
        std::uint64_t writes = idle.fault->writes(), flushes = idle.fault->flushes(), commits = p->nr_commits();
        ten_periods();
        EXPECT_EQ(writes, idle.fault->writes()) << "an idle pool wrote metadata";
        EXPECT_EQ(flushes, idle.fault->flushes());
        EXPECT_EQ(commits, p->nr_commits());
        if (!with_devices) {
            p->message("create_thin 0");  // in service now; leaves a device for the second round
            t = p->activate(0, 4 * BS);
            ASSERT_EQ(0, write_block(*t, BS, 0, 1));
            std::uint64_t c = p->nr_commits();
            // The positive control: at this period this pool, changed, commits on its own.
            EXPECT_TRUE(wait_until([&] { return p->nr_commits() > c; }, 10s));
        }
    }
}

// ================================================================================================
// held_root_tests.rb
// ================================================================================================

TEST(PoolHeldRoot, HoldReleaseCycleEmptyPool) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    const std::regex held(R"re(^\d+ \d+/\d+ \d+/\d+ (\S+) )re");
    for (int i = 0; i < 5; ++i) {
        std::smatch m;
        std::string s = p->status();
        ASSERT_TRUE(std::regex_search(s, m, held)) << s;
        EXPECT_EQ("-", m[1].str());
        EXPECT_FALSE(p->status_info().held_metadata_root);
        p->message("reserve_metadata_snap");
        s = p->status();
        ASSERT_TRUE(std::regex_search(s, m, held)) << s;
        EXPECT_TRUE(std::regex_match(m[1].str(), std::regex(R"re([1-9]\d*)re"))) << s;
        auto st = p->status_info();
        ASSERT_TRUE(st.held_metadata_root);
        EXPECT_EQ(std::to_string(*st.held_metadata_root), m[1].str());
        p->message("release_metadata_snap");
    }
}

TEST(PoolHeldRoot, ErrorCases) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("release_metadata_snap"); })) << "no_initial_hold";
    p->message("reserve_metadata_snap");
    EXPECT_EQ(EBUSY, pool_errno([&] { p->message("reserve_metadata_snap"); })) << "cannot_hold_twice";
    p->message("release_metadata_snap");
    EXPECT_EQ(EINVAL, pool_errno([&] { p->message("release_metadata_snap"); })) << "cannot_release_twice";
}

// The held tree and the live tree of device 0 after snapshot + reserve + rewrite.
TEST(PoolHeldRoot, HeldDumpAndThinCheckWithHeldRoot) {
    constexpr std::uint64_t N = 32;
    file_pool fp(8 * MiB, 128);
    auto p = fp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, N * BS);
    wipe(*t, N, 0);
    p->message("create_snap 1 0");
    p->message("reserve_metadata_snap");
    wipe(*t, N, 0, 2);  // breaks sharing of every block
    // The live metadata is the pool's while it runs (our tools refuse it, as they refuse a block
    // device the kernel holds): close it, keeping the held root, then compare the two trees.
    t->close();
    p.reset();

    std::vector<std::pair<std::string, std::string>> tools = {{"ours", std::string(THINPOOL_BINARY_DIR) + "/thin_dump"}};
    if (reference_tools_available()) tools.push_back({"Debian's", reference_tool("thin_dump")});
    for (auto& [who, tool] : tools) {
        SCOPED_TRACE(who + " thin_dump");
        auto held = run_command({tool, "-m", fp.metadata});
        ASSERT_EQ(0, held.exit_code) << describe(held);
        auto live = run_command({tool, fp.metadata});
        ASSERT_EQ(0, live.exit_code) << describe(live);
        auto hd = parse_dump(held.out), ld = parse_dump(live.out);
        ASSERT_TRUE(hd.count(0) && ld.count(0)) << held.out << live.out;
        EXPECT_TRUE(hd.count(1)) << "the snapshot predates the metadata snapshot: " << held.out;
        ASSERT_EQ(1u, hd[0].runs.size()) << held.out;
        ASSERT_EQ(1u, ld[0].runs.size()) << live.out;
        EXPECT_EQ(0u, hd[0].runs[0].vbegin);
        EXPECT_EQ(N, hd[0].runs[0].len);
        EXPECT_EQ(N, ld[0].runs[0].len);
        auto hb = hd[0].data_blocks(), lb = ld[0].data_blocks();
        std::vector<std::uint64_t> common;
        std::set_intersection(hb.begin(), hb.end(), lb.begin(), lb.end(), std::back_inserter(common));
        EXPECT_TRUE(common.empty()) << "held and live trees share " << common.size() << " data blocks";
        // The snapshot (live) still maps what the held tree maps.
        ASSERT_TRUE(ld.count(1));
        EXPECT_EQ(hb, ld[1].data_blocks());
    }
    // thin_check_passes_with_a_held_root (the held root survives close).
    auto md = open_metadata_file(fp.metadata);
    EXPECT_NE(0u, md->metadata_snap());
    md.reset();
    expect_checks_pass(fp.metadata);
    auto ours = run_ours("thin_dump", {"-m", fp.metadata});
    EXPECT_EQ(0, ours.exit_code) << describe(ours);
    // And the reopened pool can release it.
    auto p2 = fp.open();
    EXPECT_TRUE(p2->status_info().held_metadata_root);
    p2->message("release_metadata_snap");
    EXPECT_FALSE(p2->status_info().held_metadata_root);
}

TEST(PoolHeldRoot, MetadataSnapCycleUnderWrites) {
    memory_pool mp(2048, 256);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 128 * BS);
    for (int i = 0; i < 64; ++i) {
        ASSERT_EQ(0, write_block(*t, BS, (i * 7) % 128, tag_of(0, (i * 7) % 128, i + 1)));
        p->message("reserve_metadata_snap");
        ASSERT_EQ(0, write_block(*t, BS, (i * 11) % 128, tag_of(0, (i * 11) % 128, i + 1000)));
        p->message("release_metadata_snap");
    }
    t->close();
    p->close();
    expect_image_checks_pass(*mp.md);
}

// ================================================================================================
// metadata_resize_tests.rb
// ================================================================================================

TEST(PoolMetadataResize, ResizeNoIo) {
    file_pool fp(1 * MiB, 64);
    auto p = fp.open();
    EXPECT_EQ(256u, p->status_info().total_metadata_blocks);
    std::uint64_t size = 1 * MiB;
    for (std::uint64_t step : {1, 3, 7, 31, 67}) {
        size += step * MiB;
        ASSERT_EQ(0, ::truncate(fp.metadata.c_str(), static_cast<off_t>(size)));
        ASSERT_NO_THROW(p->resize_metadata()) << size;
        auto st = p->status_info();
        EXPECT_EQ(size / 4096, st.total_metadata_blocks);
        EXPECT_EQ(std::min<std::uint64_t>(1024, size / 4096 / 4), st.metadata_low_water_mark);
        EXPECT_EQ(pool_mode::write, st.mode);
    }
    p->close();
    expect_checks_pass(fp.metadata);
}

TEST(PoolMetadataResize, ResizeWithIoAndDeleteAfterwards) {
    file_pool fp(2 * MiB, 64);
    auto p = fp.open();
    p->message("create_thin 0");
    p->message("create_thin 1");
    auto t = p->activate(0, 32 * BS);
    wipe(*t, 16, 0);
    ASSERT_EQ(0, ::truncate(fp.metadata.c_str(), static_cast<off_t>(4 * MiB)));
    p->resize_metadata();
    EXPECT_EQ(1024u, p->status_info().total_metadata_blocks);
    for (std::uint64_t b = 16; b < 32; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    expect_wiped(*t, 32, 0);
    // thin_remove_works_after_resize
    p->message("delete 1");
    EXPECT_EQ(pool_mode::write, p->mode());
    t->close();
    p->close();
    expect_checks_pass(fp.metadata);
}

TEST(PoolMetadataResize, TotalIsCappedAtTheFormatLimit) {
    file_pool fp(4 * MiB, 16);
    auto p = fp.open();
    ASSERT_EQ(0, ::truncate(fp.metadata.c_str(), static_cast<off_t>(17ull * 1024 * MiB)));
    p->resize_metadata();
    EXPECT_EQ(thin::MAX_METADATA_BLOCKS, p->status_info().total_metadata_blocks);
    EXPECT_EQ(1024u, p->status_info().metadata_low_water_mark);
}

// exhausting_metadata_space_aborts_to_ro_mode, resize_after_exhaust (pool.md §4, §5.7): a 512 KiB
// metadata device filled by devices and provisioning ends in OUT_OF_METADATA_SPACE (status "ro",
// provisioning fails, messages refused), stays there across a reopen, and growing the metadata
// device returns it to write mode.
TEST(PoolMetadataResize, ExhaustingMetadataSpaceThenGrowing) {
    file_pool fp(512 * 1024, 4096);
    std::vector<std::string> events;
    std::mutex ev_mu;
    fp.opts.on_event = [&](const thin::pool::pool_event& e) {
        std::lock_guard l(ev_mu);
        events.push_back(e.message);
    };
    int created = 0;
    int last_err = 0;
    {
        auto p = fp.open();
        EXPECT_EQ(128u, p->status_info().total_metadata_blocks);
        EXPECT_EQ(32u, p->status_info().metadata_low_water_mark);
        // Every device costs at least a root leaf; every provisioned device's first block another.
        for (; created < 400; ++created) {
            last_err = pool_errno([&] { p->message("create_thin " + std::to_string(created)); });
            if (last_err) break;
            auto t = p->activate(created, 4 * BS);
            int rc = write_block(*t, BS, 0, tag_of(created, 0));
            t->close();
            if (rc != 0) {
                EXPECT_EQ(-EIO, rc) << "provisioning without metadata space";
                ++created;
                break;
            }
        }
        ASSERT_LT(created, 400) << "128 metadata blocks never ran out";
        auto st = p->status_info();
        EXPECT_TRUE(st.mode == pool_mode::out_of_metadata_space) << "mode " << thin::pool::to_string(st.mode);
        EXPECT_FALSE(st.needs_check) << "running out of metadata space is not damage";
        EXPECT_NE(std::string::npos, p->status().find(" ro ")) << p->status();
        EXPECT_EQ(EOPNOTSUPP, pool_errno([&] { p->message("create_thin 1000"); }));
        // Existing data stays readable, mapped blocks writable.
        auto t = p->activate(0, 4 * BS);
        EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 0)), read_block_tag(*t, BS, 0));
        EXPECT_EQ(0, write_block(*t, BS, 0, tag_of(0, 0, 2)));
        EXPECT_EQ(-EIO, write_block(*t, BS, 3, 1));
        std::lock_guard l(ev_mu);
        EXPECT_EQ(1, std::count(events.begin(), events.end(),
                                std::string("reached low water mark for metadata device: sending event.")))
            << "the metadata low water event is edge-triggered: exactly once";
    }
    {
        auto p = fp.open();
        EXPECT_EQ(pool_mode::out_of_metadata_space, p->mode()) << "still out of metadata space after a reopen";
    }
    expect_checks_pass(fp.metadata);
    auto p = fp.open();
    ASSERT_EQ(0, ::truncate(fp.metadata.c_str(), static_cast<off_t>(4 * MiB)));
    ASSERT_NO_THROW(p->resize_metadata());
    auto st = p->status_info();
    EXPECT_EQ(pool_mode::write, st.mode);
    EXPECT_EQ(1024u, st.total_metadata_blocks);
    auto t = p->activate(0, 4 * BS);
    EXPECT_EQ(0, write_block(*t, BS, 3, 1)) << "provisioning works again after growing";
    EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 0, 2)), read_block_tag(*t, BS, 0));
    t->close();
    EXPECT_EQ(0, pool_errno([&] { p->message("create_thin 1000"); }));
}

// pool.md §5.7: the data low water mark event fires once when free data blocks fall to the mark.
TEST(PoolOutOfSpace, DataLowWaterMarkEventIsEdgeTriggered) {
    memory_pool mp(1024, 16);
    mp.opts.low_water_mark = 4;
    std::mutex ev_mu;
    std::vector<thin::pool::pool_event> events;
    mp.opts.on_event = [&](const thin::pool::pool_event& e) {
        std::lock_guard l(ev_mu);
        events.push_back(e);
    };
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    auto lw_count = [&] {
        std::lock_guard l(ev_mu);
        return std::count_if(events.begin(), events.end(), [](auto& e) {
            return e.kind == thin::pool::pool_event_kind::data_low_water;
        });
    };
    for (int b = 0; b < 11; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    EXPECT_EQ(0, lw_count()) << "5 free blocks: above the mark";
    for (int b = 11; b < 16; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    EXPECT_EQ(1, lw_count());
    ASSERT_EQ(0, discard_sync(*t, 0, 16 * BS));
    p->commit();
    for (int b = 0; b < 14; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b, 2)));
    EXPECT_EQ(1, lw_count()) << "no second event until re-armed by a resume";
    std::lock_guard l(ev_mu);
    for (auto& e : events) {
        if (e.kind == thin::pool::pool_event_kind::data_low_water) {
            EXPECT_EQ("reached low water mark for data device: sending event.", e.message);
        }
    }
}

// pool.md §4: mode changes raise an event with the kernel's log line.
TEST(PoolOutOfSpace, ModeChangeEvents) {
    memory_pool mp(1024, 16);
    mp.opts.nr_data_blocks = 4;
    mp.opts.features.error_if_no_space = true;
    std::mutex ev_mu;
    std::vector<thin::pool::pool_event> events;
    mp.opts.on_event = [&](const thin::pool::pool_event& e) {
        std::lock_guard l(ev_mu);
        events.push_back(e);
    };
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 8 * BS);
    for (int b = 0; b < 4; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    EXPECT_EQ(-ENOSPC, write_block(*t, BS, 4, 1));
    p->resize_data(16);
    std::lock_guard l(ev_mu);
    std::vector<std::string> modes;
    for (auto& e : events)
        if (e.kind == thin::pool::pool_event_kind::mode_changed) modes.push_back(e.message);
    ASSERT_EQ(2u, modes.size()) << ::testing::PrintToString(modes);
    EXPECT_EQ("switching pool to out-of-data-space (error IO) mode", modes[0]);
    EXPECT_EQ("switching pool to write mode", modes[1]);
}

// ================================================================================================
// needs_check_tests.rb, read_only_tests.rb commit_failure_causes_fallback
// ================================================================================================

TEST(PoolNeedsCheck, CommitFailureSetsNeedsCheck) {
    memory_pool mp(1024, 16);
    mp.opts.nr_data_blocks = 8;  // room to grow, which NEEDS_CHECK must refuse
    {
        auto p = mp.open();
        p->message("create_thin 0");
        auto t = p->activate(0, 8 * BS);
        ASSERT_EQ(0, write_block(*t, BS, 0, 1));
        ASSERT_EQ(0, flush_sync(*t));
        ASSERT_EQ(0, write_block(*t, BS, 1, 2));  // uncommitted
        mp.fault->fail_write_at(1);                // the commit's first metadata write fails
        EXPECT_EQ(-EIO, flush_sync(*t)) << "a flush whose commit failed must fail";
        EXPECT_TRUE(wait_until([&] { return p->mode() != pool_mode::write; }, 10s));
        EXPECT_EQ(pool_mode::read_only, p->mode()) << "abort and needs_check write succeed: READ_ONLY";
        auto st = p->status_info();
        EXPECT_TRUE(st.needs_check);
        EXPECT_NE(std::string::npos, p->status().find(" ro ")) << p->status();
        EXPECT_NE(std::string::npos, p->status().find(" needs_check ")) << p->status();
        // READ_ONLY: reads work, mapped writes work, provisioning fails, messages refused.
        EXPECT_EQ(std::optional<std::uint64_t>(1), read_block_tag(*t, BS, 0));
        EXPECT_EQ(0, write_block(*t, BS, 0, 3));
        EXPECT_EQ(-EIO, write_block(*t, BS, 5, 4));
        EXPECT_EQ(EOPNOTSUPP, pool_errno([&] { p->message("create_thin 1"); }));
        EXPECT_NE(0, flush_sync(*t)) << "the device's acknowledged write was aborted: flushes fail";
        EXPECT_NE(0, pool_errno([&] { p->resize_data(16); })) << "no growth while NEEDS_CHECK is set";
        EXPECT_EQ(8u, p->status_info().total_data_blocks);
    }
    mp.fault->clear_faults();
    {
        auto p = mp.open();
        auto st = p->status_info();
        EXPECT_EQ(pool_mode::read_only, st.mode) << "NEEDS_CHECK keeps the pool out of write mode";
        EXPECT_TRUE(st.needs_check);
        auto t = p->activate(0, 8 * BS);
        EXPECT_EQ(std::optional<std::uint64_t>(3), read_block_tag(*t, BS, 0));
        EXPECT_EQ(std::optional<std::uint64_t>(0), read_block_tag(*t, BS, 1)) << "the aborted mapping is gone";
    }
    scratch_dir d;
    save_image(*mp.md, d.file("metadata"));
    auto clear = run_ours("thin_check", {"--clear-needs-check-flag", d.file("metadata")});
    ASSERT_EQ(0, clear.exit_code) << describe(clear);
    expect_checks_pass(d.file("metadata"));
    auto cleared = load_image(d.file("metadata"));
    auto o = mp.opts;
    o.metadata_engine = cleared;
    auto p = open_pool(o);
    auto st = p->status_info();
    EXPECT_EQ(pool_mode::write, st.mode);
    EXPECT_FALSE(st.needs_check);
    p->message("create_thin 1");
    auto t = p->activate(0, 8 * BS);
    EXPECT_EQ(0, write_block(*t, BS, 5, 4));
}

TEST(PoolNeedsCheck, MetadataDeviceDeadEndsReadOnlyOrFailWithoutHanging) {
    // bz1230271 / commit_failure_causes_fallback: every metadata write fails from some point on.
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 64 * BS);
    wipe(*t, 4, 0);
    ASSERT_EQ(0, flush_sync(*t));
    mp.fault->fail_write_at(1, /*and_after=*/true);
    std::vector<pending_io> ios;
    for (int b = 4; b < 32; ++b) {
        auto data = make_pattern(tag_of(0, b), b * BS, BS);
        ios.push_back(pending_io::submit(*t, io_op::write, b * BS, BS, data.data()));
    }
    ios.push_back(pending_io::submit(*t, io_op::flush, 0, 0));
    for (auto& io : ios) EXPECT_NE(TIMED_OUT, io.wait());
    EXPECT_NE(0, flush_sync(*t));
    EXPECT_TRUE(wait_until([&] {
        auto m = p->mode();
        return m == pool_mode::read_only || m == pool_mode::fail;
    }));
    if (p->mode() == pool_mode::fail) {
        EXPECT_TRUE(std::regex_match(p->status(), std::regex("Fail ?"))) << p->status();
        EXPECT_EQ("Fail", t->status());
        EXPECT_EQ(-EIO, write_block(*t, BS, 0, 9));
        int rc = 0;
        read_block_tag(*t, BS, 0, &rc);
        EXPECT_EQ(-EIO, rc);
        if (!finishes_within([&] { t->close(); }, 30s)) fail_hung_test("closing a thin in FAIL mode hung");
        t.reset();
        EXPECT_EQ(EINVAL, pool_errno([&] { t = p->activate(0, BS); })) << "no activation in FAIL mode";
    } else {
        EXPECT_EQ(-EIO, write_block(*t, BS, 40, 9)) << "READ_ONLY cannot provision";
        EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 1)), read_block_tag(*t, BS, 1));
    }
    EXPECT_EQ(EOPNOTSUPP, pool_errno([&] { p->message("create_thin 1"); }));
    if (!finishes_within(
            [&] {
                if (t) t->close();
                p->close();
            },
            30s))
        fail_hung_test("teardown of a pool with a dead metadata device hung");
}

// ================================================================================================
// out_of_data_space.rb, pool_resize_tests.rb
// ================================================================================================

TEST(PoolOutOfSpace, FillingPoolReturnsEnospc) {
    memory_pool mp(1024, 8);
    mp.opts.features.error_if_no_space = true;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    for (int b = 0; b < 8; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    EXPECT_EQ(-ENOSPC, write_block(*t, BS, 8, tag_of(0, 8)));
    EXPECT_EQ(-ENOSPC, write_block(*t, BS, 15, tag_of(0, 15)));
    auto st = p->status_info();
    EXPECT_EQ(pool_mode::out_of_data_space, st.mode);
    EXPECT_TRUE(st.error_if_no_space);
    EXPECT_FALSE(st.needs_check);
    EXPECT_NE(std::string::npos, p->status().find(" out_of_data_space discard_passdown error_if_no_space - "))
        << p->status();
    // Provisioned blocks stay readable and writable; unprovisioned reads are zeros.
    expect_wiped(*t, 8, 0);
    EXPECT_EQ(0, write_block(*t, BS, 2, tag_of(0, 2, 2)));
    EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 2, 2)), read_block_tag(*t, BS, 2));
    expect_zeros(*t, 8, 16);
}

TEST(PoolOutOfSpace, FillingThinDeviceEndsAtTheDeviceEnd) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    EXPECT_EQ(4u * BS, t->nr_sectors());
    wipe(*t, 4, 0);
    EXPECT_EQ(-EIO, write_block(*t, BS, 4, tag_of(0, 4)));
    EXPECT_EQ(-EIO, write_sync(*t, 4 * BS - 8, make_pattern(5, 4 * BS - 8, 16))) << "a write straddling the end";
    EXPECT_EQ(4u, used_data(*p));
    // set_nr_sectors: longer exposes new blocks; shorter hides mappings without dropping them.
    t->set_nr_sectors(6 * BS);
    EXPECT_EQ(0, write_block(*t, BS, 5, tag_of(0, 5)));
    t->set_nr_sectors(2 * BS);
    int rc = 0;
    read_block_tag(*t, BS, 3, &rc);
    EXPECT_EQ(-EIO, rc);
    t->set_nr_sectors(6 * BS);
    EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 3)), read_block_tag(*t, BS, 3));
}

TEST(PoolOutOfSpace, QueueModeTimesOut) {
    memory_pool mp(1024, 8);
    mp.opts.no_space_timeout = 200ms;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    for (int b = 0; b < 8; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    EXPECT_FALSE(p->status_info().error_if_no_space);
    auto data = make_pattern(tag_of(0, 8), 8 * BS, BS);
    auto io = pending_io::submit(*t, io_op::write, 8 * BS, BS, data.data());
    EXPECT_EQ(-ENOSPC, io.wait(20s)) << "queued I/O must fail after no_space_timeout";
    auto st = p->status_info();
    EXPECT_EQ(pool_mode::out_of_data_space, st.mode);
    EXPECT_TRUE(st.error_if_no_space) << "the expired timer switches error_if_no_space on";
    EXPECT_FALSE(st.needs_check);
    EXPECT_EQ(-ENOSPC, write_block(*t, BS, 9, tag_of(0, 9))) << "later writes error immediately";
}

TEST(PoolOutOfSpace, ResizeReleasesHeldIo) {
    // resize_after_OODS_held_io + io_to_provisioned_region_with_OODS_held_io
    memory_pool mp(1024, 16);
    mp.opts.nr_data_blocks = 8;
    mp.opts.no_space_timeout = 0ms;  // queue forever
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    for (int b = 0; b < 8; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    std::vector<pending_io> held;
    for (int b = 8; b < 12; ++b) {
        auto data = make_pattern(tag_of(0, b), b * BS, BS);
        held.push_back(pending_io::submit(*t, io_op::write, b * BS, BS, data.data()));
    }
    ASSERT_TRUE(wait_until([&] { return p->mode() == pool_mode::out_of_data_space; }));
    for (auto& io : held) EXPECT_FALSE(io.ready()) << "queue mode must hold the I/O";
    // Provisioned blocks are still served while I/O is held.
    expect_wiped(*t, 8, 0);
    ASSERT_EQ(0, write_block(*t, BS, 1, tag_of(0, 1, 2)));
    EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 1, 2)), read_block_tag(*t, BS, 1));
    for (auto& io : held) EXPECT_FALSE(io.ready());
    EXPECT_FALSE(p->status_info(true).error_if_no_space);

    p->resize_data(16);
    for (auto& io : held) EXPECT_EQ(0, io.wait());
    auto st = p->status_info();
    EXPECT_EQ(pool_mode::write, st.mode);
    EXPECT_EQ(16u, st.total_data_blocks);
    EXPECT_EQ(12u, st.used_data_blocks);
    for (int b = 8; b < 12; ++b) EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, b)), read_block_tag(*t, BS, b));
}

TEST(PoolOutOfSpace, ResizeAfterErrorImmediately) {
    memory_pool mp(1024, 16);
    mp.opts.nr_data_blocks = 8;
    mp.opts.features.error_if_no_space = true;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    for (int b = 0; b < 8; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    EXPECT_EQ(-ENOSPC, write_block(*t, BS, 8, tag_of(0, 8)));
    p->resize_data();
    auto st = p->status_info();
    EXPECT_EQ(pool_mode::write, st.mode);
    EXPECT_EQ(16u, st.total_data_blocks);
    EXPECT_TRUE(st.error_if_no_space) << "the table's feature stays";
    for (int b = 8; b < 16; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    expect_wiped(*t, 16, 0);
}

TEST(PoolOutOfSpace, ResizeAfterTimedOutHeldIo) {
    memory_pool mp(1024, 16);
    mp.opts.nr_data_blocks = 8;
    mp.opts.no_space_timeout = 100ms;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    for (int b = 0; b < 8; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
    EXPECT_EQ(-ENOSPC, write_block(*t, BS, 8, tag_of(0, 8)));
    EXPECT_TRUE(p->status_info().error_if_no_space);
    p->resize_data(16);
    auto st = p->status_info();
    EXPECT_EQ(pool_mode::write, st.mode);
    EXPECT_FALSE(st.error_if_no_space) << "error_if_no_space reverts to the table's value";
    for (int b = 8; b < 16; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
}

TEST(PoolResize, DataCannotBeSmallerThanPool) {
    file_pool fp(4 * MiB, 16);
    auto o = fp.opts;
    o.nr_data_blocks = 32;
    EXPECT_NE(0, pool_errno([&] { open_pool(o); })) << "initial load with a table longer than the device";
    auto p = fp.open();
    EXPECT_EQ(16u, p->status_info().total_data_blocks);
    EXPECT_NE(0, pool_errno([&] { p->resize_data(32); })) << "growing past the device";
    EXPECT_EQ(16u, p->status_info().total_data_blocks);
    EXPECT_NE(0, pool_errno([&] { p->resize_data(8); })) << "shrinking";
    EXPECT_EQ(16u, p->status_info().total_data_blocks);
}

TEST(PoolResize, ExtraDataSpaceMustNotBeUsed) {
    file_pool fp(4 * MiB, 32);
    fp.opts.nr_data_blocks = 8;
    fp.opts.features.error_if_no_space = true;
    // The space beyond the table holds a marker that must survive.
    std::vector<std::uint8_t> marker(24 * BS * SECTOR, 0x5a);
    write_bytes(fp.data, 8 * BS * SECTOR, marker);
    {
        auto p = fp.open();
        EXPECT_EQ(8u, p->status_info().total_data_blocks);
        p->message("create_thin 0");
        auto t = p->activate(0, 32 * BS);
        for (int b = 0; b < 8; ++b) ASSERT_EQ(0, write_block(*t, BS, b * 3, tag_of(0, b * 3)));
        EXPECT_EQ(-ENOSPC, write_block(*t, BS, 30, 1));
        ASSERT_EQ(0, discard_sync(*t, 0, 32 * BS));  // passdown stays inside the pool too
    }
    EXPECT_TRUE(read_bytes(fp.data, 8 * BS * SECTOR, marker.size()) == marker) << "data beyond the table was touched";
    // A reopen with the same table length does not grow either.
    auto p = fp.open();
    EXPECT_EQ(8u, p->status_info().total_data_blocks);
}

TEST(PoolResize, GrowInSteps) {
    memory_pool mp(1024, 64);
    mp.opts.nr_data_blocks = 8;
    mp.opts.features.error_if_no_space = true;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 64 * BS);
    std::uint64_t next = 0;
    for (std::uint64_t size = 8; size <= 64; size += 8) {
        if (size > 8) p->resize_data(size);
        EXPECT_EQ(size, p->status_info().total_data_blocks);
        for (; next < size; ++next) ASSERT_EQ(0, write_block(*t, BS, next, tag_of(0, next))) << next;
        if (size < 64) {
            EXPECT_EQ(-ENOSPC, write_block(*t, BS, next, 1));
        }
    }
    expect_wiped(*t, 64, 0);
    EXPECT_EQ(64u, used_data(*p));
}

// ================================================================================================
// read_only_tests.rb, read_only_metadata.rb
// ================================================================================================

TEST(PoolReadOnly, ReadOnlyFeature) {
    constexpr std::uint32_t bs = 1024;  // 512 KiB blocks
    file_pool fp(4 * MiB, 32, bs);
    {
        auto p = fp.open();
        p->message("create_thin 0");
        auto t = p->activate(0, 16 * bs);
        wipe(*t, 8, 0, 1, bs);
    }
    fp.opts.features.read_only = true;
    auto p = fp.open();
    auto st = p->status_info();
    EXPECT_EQ(pool_mode::read_only, st.mode);
    EXPECT_NE(std::string::npos, p->status().find(" ro ")) << p->status();
    EXPECT_EQ("1024 0 1 read_only ", p->table());
    auto t = p->activate(0, 16 * bs);
    // can_access_fully_mapped_device
    wipe(*t, 8, 0, 2, bs);
    expect_wiped(*t, 8, 0, 2, bs);
    // can_read_unprovisioned_regions
    expect_zeros(*t, 8, 16, bs);
    // cant_provision_new_blocks
    EXPECT_EQ(-EIO, write_block(*t, bs, 9, 1));
    EXPECT_EQ(-EIO, write_sync(*t, 10 * bs + 3, make_pattern(1, 10 * bs + 3, 5)));
    // cant_create_new_thins, cant_delete_thins
    EXPECT_EQ(EOPNOTSUPP, pool_errno([&] { p->message("create_thin 1"); }));
    EXPECT_EQ(EOPNOTSUPP, pool_errno([&] { p->message("create_snap 1 0"); }));
    t->close();
    EXPECT_EQ(EOPNOTSUPP, pool_errno([&] { p->message("delete 0"); }));
    EXPECT_EQ(EOPNOTSUPP, pool_errno([&] { p->message("reserve_metadata_snap"); }));
}

TEST(PoolReadOnly, ReadOnlyCannotCreateAPool) {
    file_pool fp(4 * MiB, 16);
    fp.opts.features.read_only = true;
    EXPECT_EQ(EPERM, pool_errno([&] { fp.open(); }));
}

TEST(PoolReadOnly, ReadOnlyMetadataDevice) {
    // ro_pool_succeeds_with_ro_metadata: the metadata device itself is read-only (an engine opened
    // read-only, which throws on any write), so a read_only pool must never write to it.
    file_pool fp(4 * MiB, 16);
    {
        auto p = fp.open();
        p->message("create_thin 0");
        auto t = p->activate(0, 4 * BS);
        wipe(*t, 3, 0);
    }
    const std::string before = read_file(fp.metadata);
    pdata::open_options ro;
    ro.mode = pdata::open_mode::read_only;
    ro.exclusive = false;
    std::shared_ptr<pdata::io_engine> engine = pdata::open_sync_engine(fp.metadata, ro);
    auto o = fp.opts;
    o.metadata_engine = engine;
    o.features.read_only = true;
    {
        auto p = open_pool(o);
        EXPECT_EQ(pool_mode::read_only, p->mode());
        auto t = p->activate(0, 4 * BS);
        expect_wiped(*t, 3, 0);
        wipe(*t, 3, 0, 2);
        expect_wiped(*t, 3, 0, 2);
        EXPECT_EQ(-EIO, write_block(*t, BS, 3, 1));
        ASSERT_EQ(0, flush_sync(*t));
        EXPECT_EQ(std::string::npos, p->status().find("Fail")) << p->status();
        t->close();
    }
    EXPECT_TRUE(before == read_file(fp.metadata)) << "a read_only pool changed its metadata";
    // And an unformatted read-only device cannot become a pool (EPERM).
    scratch_dir d;
    make_sparse_file(d.file("empty"), 4 * MiB);
    o.metadata_engine = pdata::open_sync_engine(d.file("empty"), ro);
    EXPECT_EQ(EPERM, pool_errno([&] { open_pool(o); }));
}

// ================================================================================================
// restore_tests.rb: kernel_happy_with_random_restored_data / kernel_can_use_restored_volume
// ================================================================================================

TEST(PoolRestore, RestoredMetadataServesItsData) {
    constexpr std::uint64_t devs = 4, per_dev = 64, nr_data = devs * per_dev;
    file_pool fp(8 * MiB, nr_data);
    // A random placement of every device's blocks.
    std::vector<std::uint64_t> perm(nr_data);
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937_64 rng(42);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::ostringstream xml;
    xml << "<superblock uuid=\"\" time=\"0\" transaction=\"3\" flags=\"0\" version=\"2\" data_block_size=\"" << BS
        << "\" nr_data_blocks=\"" << nr_data << "\">\n";
    for (std::uint64_t d = 0; d < devs; ++d) {
        xml << "  <device dev_id=\"" << d << "\" mapped_blocks=\"" << per_dev
            << "\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n";
        for (std::uint64_t v = 0; v < per_dev; ++v)
            xml << "    <single_mapping origin_block=\"" << v << "\" data_block=\"" << perm[d * per_dev + v]
                << "\" time=\"0\"/>\n";
        xml << "  </device>\n";
    }
    xml << "</superblock>\n";
    write_file(fp.dir.file("in.xml"), xml.str());
    auto r = run_ours("thin_restore", {"-i", fp.dir.file("in.xml"), "-o", fp.metadata});
    ASSERT_EQ(0, r.exit_code) << describe(r);
    // The data each mapping points at.
    for (std::uint64_t d = 0; d < devs; ++d)
        for (std::uint64_t v = 0; v < per_dev; ++v)
            write_bytes(fp.data, perm[d * per_dev + v] * BS * SECTOR, make_pattern(tag_of(d, v), v * BS, BS));
    auto dump_before = run_ours("thin_dump", {fp.metadata});
    ASSERT_EQ(0, dump_before.exit_code) << describe(dump_before);
    {
        auto p = fp.open();
        auto st = p->status_info();
        EXPECT_EQ(3u, st.transaction_id);
        EXPECT_EQ(nr_data, st.used_data_blocks);
        for (std::uint64_t d = 0; d < devs; ++d) {
            auto t = p->activate(d, per_dev * BS);
            expect_wiped(*t, per_dev, d);
            t->close();
        }
        // Use device 0 again (every block already mapped: no provisioning).
        auto t = p->activate(0, per_dev * BS);
        wipe(*t, per_dev, 0, 2);
        expect_wiped(*t, per_dev, 0, 2);
        ASSERT_EQ(0, flush_sync(*t));
    }
    auto dump_after = run_ours("thin_dump", {fp.metadata});
    ASSERT_EQ(0, dump_after.exit_code) << describe(dump_after);
    EXPECT_EQ(dump_before.out, dump_after.out) << "using restored metadata without provisioning changed it";
    expect_checks_pass(fp.metadata);
}

TEST(PoolRestore, DumpOfALivePoolRestoresToTheSameDump) {
    // dump_restore_dump_is_idempotent on metadata written by the pool.
    file_pool fp(8 * MiB, 64);
    {
        auto p = fp.open();
        p->message("create_thin 0");
        auto t = p->activate(0, 16 * BS);
        wipe(*t, 16, 0);
        p->message("create_snap 1 0");
        for (int b = 0; b < 16; b += 3) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b, 2)));
    }
    auto d1 = run_ours("thin_dump", {fp.metadata});
    ASSERT_EQ(0, d1.exit_code) << describe(d1);
    write_file(fp.dir.file("d1.xml"), d1.out);
    make_sparse_file(fp.dir.file("md2"), 8 * MiB);
    auto r = run_ours("thin_restore", {"-i", fp.dir.file("d1.xml"), "-o", fp.dir.file("md2")});
    ASSERT_EQ(0, r.exit_code) << describe(r);
    auto d2 = run_ours("thin_dump", {fp.dir.file("md2")});
    EXPECT_EQ(d1.out, d2.out);
    if (reference_tools_available()) {
        auto theirs = run_theirs("thin_dump", {fp.metadata});
        EXPECT_EQ(d1.out, theirs.out);
    }
}

// ================================================================================================
// snapshot_tests.rb
// ================================================================================================

TEST(PoolSnapshot, PatternStompOrigin) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    auto o = p->activate(0, 16 * BS);
    wipe(*o, 16, 0);
    p->message("create_snap 1 0");
    auto s = p->activate(1, 16 * BS);
    for (int b = 0; b < 8; ++b) ASSERT_EQ(0, write_block(*o, BS, b, tag_of(0, b, 2)));
    // A partial write breaks sharing by copying.
    ASSERT_EQ(0, write_sync(*o, 8 * BS + 16, make_pattern(99, 8 * BS + 16, 8)));
    expect_wiped(*s, 16, 0);
    for (int b = 0; b < 8; ++b) EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, b, 2)), read_block_tag(*o, BS, b));
    std::vector<std::uint8_t> buf;
    ASSERT_EQ(0, read_sync(*o, 8 * BS, BS, buf));
    for (std::uint64_t i = 0; i < BS; ++i) {
        std::uint64_t want = (i >= 16 && i < 24) ? 99 : tag_of(0, 8);
        ASSERT_EQ(std::optional<std::uint64_t>(want), sector_tag(buf.data() + i * SECTOR, 8 * BS + i)) << i;
    }
    for (int b = 9; b < 16; ++b) EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, b)), read_block_tag(*o, BS, b));
    EXPECT_EQ(25u, used_data(*p));
}

TEST(PoolSnapshot, PatternStompSnap) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    auto o = p->activate(0, 16 * BS);
    wipe(*o, 16, 0);
    p->message("create_snap 1 0");
    auto s = p->activate(1, 16 * BS);
    wipe(*s, 16, 1, 2);
    expect_wiped(*o, 16, 0);
    expect_wiped(*s, 16, 1, 2);
    EXPECT_EQ(32u, used_data(*p));
    // A second rewrite of the snapshot's now-exclusive blocks needs no more space.
    wipe(*s, 16, 1, 3);
    EXPECT_EQ(32u, used_data(*p));
}

TEST(PoolSnapshot, RefCountTree) {
    constexpr std::uint64_t N = 32;
    file_pool fp(8 * MiB, 6 * N + 8);
    {
        auto p = fp.open();
        p->message("create_thin 0");
        auto o = p->activate(0, N * BS);
        wipe(*o, N, 0);
        for (int i = 1; i <= 5; ++i) p->message("create_snap " + std::to_string(i) + " 0");
        EXPECT_EQ(N, used_data(*p));
        std::vector<std::shared_ptr<thin_device>> devs{o};
        for (int i = 1; i <= 5; ++i) devs.push_back(p->activate(i, N * BS));
        for (int i = 0; i <= 5; ++i) expect_wiped(*devs[i], N, 0);
        for (int i = 0; i <= 5; ++i) wipe(*devs[i], N, i, 2);
        for (int i = 0; i <= 5; ++i) expect_wiped(*devs[i], N, i, 2);
        EXPECT_LE(used_data(*p), 6 * N + 8);
        EXPECT_GE(used_data(*p), 6 * N);
    }
    expect_checks_pass(fp.metadata);
}

TEST(PoolSnapshot, OverwritingVariousThinDevices) {
    // overwriting_various_thin_devices: unprovisioned, fully provisioned, fresh snapshot of it,
    // and a snapshot with no sharing left.
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    wipe(*t, 16, 0, 1);
    expect_wiped(*t, 16, 0, 1);
    wipe(*t, 16, 0, 2);
    expect_wiped(*t, 16, 0, 2);
    p->message("create_snap 1 0");
    auto s = p->activate(1, 16 * BS);
    wipe(*s, 16, 1, 3);
    expect_wiped(*s, 16, 1, 3);
    wipe(*s, 16, 1, 4);
    expect_wiped(*s, 16, 1, 4);
    expect_wiped(*t, 16, 0, 2);
}

TEST(PoolSnapshot, PoolUtilization) {
    // pool_utilization_block: a thin and its snapshot, both wiped, fit in twice the thin's size.
    constexpr std::uint64_t N = 48;
    memory_pool mp(1024, 2 * N + 2);
    mp.opts.features.error_if_no_space = true;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, N * BS);
    wipe(*t, N, 0);
    p->message("create_snap 1 0");
    auto s = p->activate(1, N * BS);
    wipe(*t, N, 0, 2);
    wipe(*s, N, 1, 2);
    expect_wiped(*t, N, 0, 2);
    expect_wiped(*s, N, 1, 2);
}

TEST(PoolSnapshot, ZeroingOfNewBlocks) {
    // pool.md §5.3: a partial write to a new block zeroes the rest, unless skip_block_zeroing.
    for (bool skip : {false, true}) {
        SCOPED_TRACE(skip ? "skip_block_zeroing" : "zeroing");
        file_pool fp(4 * MiB, 16);
        write_bytes(fp.data, 0, std::vector<std::uint8_t>(16 * BS * SECTOR, 0xab));
        fp.opts.features.skip_block_zeroing = skip;
        auto p = fp.open();
        p->message("create_thin 0");
        auto t = p->activate(0, 4 * BS);
        ASSERT_EQ(0, write_sync(*t, BS + 8, make_pattern(3, BS + 8, 8)));
        std::vector<std::uint8_t> buf;
        ASSERT_EQ(0, read_sync(*t, BS, BS, buf));
        EXPECT_EQ(std::optional<std::uint64_t>(3), uniform_tag(buf.data() + 8 * SECTOR, BS + 8, 8));
        bool rest_zero = std::all_of(buf.begin(), buf.begin() + 8 * SECTOR, [](auto c) { return c == 0; }) &&
                         std::all_of(buf.begin() + 16 * SECTOR, buf.end(), [](auto c) { return c == 0; });
        bool rest_stale = std::all_of(buf.begin(), buf.begin() + 8 * SECTOR, [](auto c) { return c == 0xab; }) &&
                          std::all_of(buf.begin() + 16 * SECTOR, buf.end(), [](auto c) { return c == 0xab; });
        if (skip) {
            EXPECT_TRUE(rest_stale) << "skip_block_zeroing leaves the device's old contents";
        } else {
            EXPECT_TRUE(rest_zero) << describe_sectors(buf.data(), BS, BS);
        }
        // A whole-block write needs no zeroing; unprovisioned reads are zeros either way.
        ASSERT_EQ(0, write_block(*t, BS, 2, 4));
        EXPECT_EQ(std::optional<std::uint64_t>(4), read_block_tag(*t, BS, 2));
        expect_zeros(*t, 3, 4);
        EXPECT_EQ(skip ? "128 0 1 skip_block_zeroing " : "128 0 0 ", p->table());
    }
}

TEST(PoolSnapshot, WriteZeroes) {
    memory_pool mp(1024, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 4 * BS);
    wipe(*t, 4, 0);
    ASSERT_EQ(0, write_zeroes_sync(*t, BS + 4, 8, true));
    std::vector<std::uint8_t> buf;
    ASSERT_EQ(0, read_sync(*t, BS, BS, buf));
    for (std::uint64_t i = 0; i < BS; ++i)
        EXPECT_EQ(std::optional<std::uint64_t>(i >= 4 && i < 12 ? 0 : tag_of(0, 1)),
                  sector_tag(buf.data() + i * SECTOR, BS + i))
            << i;
    ASSERT_EQ(0, write_zeroes_sync(*t, 2 * BS, BS, true));
    expect_zeros(*t, 2, 3);
    EXPECT_EQ(4u, used_data(*p)) << "no_hole keeps the block provisioned";
    EXPECT_EQ(std::to_string(4 * BS) + " " + std::to_string(4 * BS - 1), t->status());
    // Without no_hole whole blocks may be unmapped; partial ones are zeroed in place.
    ASSERT_EQ(0, write_zeroes_sync(*t, 3 * BS - 4, BS + 4, false));
    expect_zeros(*t, 3, 4);
    ASSERT_EQ(0, read_sync(*t, 2 * BS, BS, buf));
    EXPECT_EQ(std::optional<std::uint64_t>(0), uniform_tag(buf.data(), 2 * BS, BS));
    EXPECT_EQ(std::optional<std::uint64_t>(tag_of(0, 0)), read_block_tag(*t, BS, 0));
    // Zeroes into an unprovisioned block read back as zeros.
    t->set_nr_sectors(6 * BS);
    ASSERT_EQ(0, write_zeroes_sync(*t, 5 * BS + 3, 7, false));
    expect_zeros(*t, 4, 6);
}

// pool.h close(): requests in flight drain, later ones fail; nothing hangs and the metadata is
// consistent afterwards.
TEST(PoolClose, CloseDrainsInFlightRequests) {
    memory_pool mp(1024, 64);
    auto p = mp.open();
    p->message("create_thin 0");
    p->message("create_thin 1");
    auto a = p->activate(0, 32 * BS);
    auto b = p->activate(1, 32 * BS);
    wipe(*a, 8, 0);
    p->message("create_snap 2 0");
    std::vector<pending_io> ios;
    for (std::uint64_t blk = 0; blk < 32; ++blk) {
        auto d = make_pattern(tag_of(0, blk, 2), blk * BS, BS);
        ios.push_back(pending_io::submit(*a, io_op::write, blk * BS, BS, d.data()));
        auto e = make_pattern(tag_of(1, blk), blk * BS + 8, 16);
        ios.push_back(pending_io::submit(*b, io_op::write, blk * BS + 8, 16, e.data()));
        if (blk % 8 == 0) ios.push_back(pending_io::submit(*a, io_op::discard, blk * BS, 2 * BS));
    }
    ios.push_back(pending_io::submit(*b, io_op::flush, 0, 0));
    if (!finishes_within([&] { p->close(); }, 30s)) fail_hung_test("pool close with requests in flight hung");
    for (auto& io : ios) EXPECT_NE(TIMED_OUT, io.wait(10s)) << "a request was lost by close()";
    EXPECT_NE(0, write_block(*a, BS, 0, 1)) << "a request after close must fail";
    int rc = 0;
    read_block_tag(*b, BS, 0, &rc);
    EXPECT_NE(0, rc);
    a->close();
    b->close();
    p.reset();
    expect_image_checks_pass(*mp.md);
}

TEST(PoolClose, CloseCompletesHeldOutOfSpaceIo) {
    memory_pool mp(1024, 4);
    mp.opts.no_space_timeout = 0ms;  // queue forever
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, 16 * BS);
    for (int blk = 0; blk < 4; ++blk) ASSERT_EQ(0, write_block(*t, BS, blk, tag_of(0, blk)));
    auto d = make_pattern(1, 5 * BS, BS);
    auto held = pending_io::submit(*t, io_op::write, 5 * BS, BS, d.data());
    ASSERT_TRUE(wait_until([&] { return p->mode() == pool_mode::out_of_data_space; }));
    EXPECT_FALSE(held.ready());
    if (!finishes_within([&] { p->close(); }, 30s)) fail_hung_test("pool close with held out-of-space I/O hung");
    int rc = held.wait(10s);
    EXPECT_NE(TIMED_OUT, rc) << "queued I/O was lost by close()";
    EXPECT_LT(rc, 0) << "queued I/O cannot succeed: the pool is out of space";
    t->close();
}

// ================================================================================================
// transaction_id_tests.rb
// ================================================================================================

TEST(PoolTransactionId, InitialSetAndCompareAndSwap) {
    file_pool fp(4 * MiB, 16);
    {
        auto p = fp.open();
        EXPECT_EQ(0u, p->status_info().transaction_id);
        EXPECT_EQ(0u, std::stoull(p->status()));
        for (int i = 0; i < 100; ++i)
            ASSERT_EQ(0, pool_errno([&] {
                          p->message("set_transaction_id " + std::to_string(i) + " " + std::to_string(i + 1));
                      })) << i;
        EXPECT_EQ(100u, p->status_info().transaction_id);
        EXPECT_EQ(EINVAL, pool_errno([&] { p->message("set_transaction_id 0 1"); })) << "wrong current id";
        EXPECT_EQ(EINVAL, pool_errno([&] { p->message("set_transaction_id 99 100"); })) << "repeated set";
        EXPECT_EQ(100u, p->status_info().transaction_id);
        p->message("set_transaction_id 100 1234");
        p->message("set_transaction_id 1234 0");
        p->message("set_transaction_id 0 1234");
        EXPECT_EQ(1234u, p->status_info().transaction_id);
        p->message("create_thin 0");
    }
    auto p = fp.open();
    EXPECT_EQ(1234u, p->status_info().transaction_id) << "messages commit";
    p.reset();
    EXPECT_EQ(1234u, open_metadata_file(fp.metadata)->details(0).transaction_id);
}

// ================================================================================================
// thin_delta_tests.rb metadata_snap_with_live_pool
// ================================================================================================

TEST(PoolThinDelta, MetadataSnapOfALivePool) {
    file_pool fp(8 * MiB, 128);
    auto p = fp.open();
    p->message("create_thin 0");
    auto o = p->activate(0, 16 * BS);
    wipe(*o, 16, 0);
    p->message("create_snap 1 0");
    for (int b : {3, 4, 10}) ASSERT_EQ(0, write_block(*o, BS, b, tag_of(0, b, 2)));
    auto s = p->activate(1, 20 * BS);
    ASSERT_EQ(0, write_block(*s, BS, 18, tag_of(1, 18)));
    p->message("reserve_metadata_snap");
    // Changes after the reservation must not show in the metadata snapshot.
    for (int b : {0, 12}) ASSERT_EQ(0, write_block(*o, BS, b, tag_of(0, b, 3)));
    ASSERT_EQ(0, write_block(*s, BS, 19, tag_of(1, 19)));
    p->commit();

    const std::string expected_body =
        "  <diff left=\"1\" right=\"0\">\n"
        "    <same begin=\"0\" length=\"3\"/>\n"
        "    <different begin=\"3\" length=\"2\"/>\n"
        "    <same begin=\"5\" length=\"5\"/>\n"
        "    <different begin=\"10\" length=\"1\"/>\n"
        "    <same begin=\"11\" length=\"5\"/>\n"
        "    <left_only begin=\"18\" length=\"1\"/>\n"
        "  </diff>\n";
    std::vector<std::pair<std::string, std::string>> tools = {{"ours", std::string(THINPOOL_BINARY_DIR) + "/thin_delta"}};
    if (reference_tools_available() && std::filesystem::exists(reference_tool("thin_delta")))
        tools.push_back({"Debian's", reference_tool("thin_delta")});
    for (auto& [who, tool] : tools) {
        SCOPED_TRACE(who + " thin_delta");
        auto r = run_command({tool, "-m", "--snap1", "1", "--snap2", "0", fp.metadata});
        ASSERT_EQ(0, r.exit_code) << describe(r);
        EXPECT_NE(std::string::npos, r.out.find(expected_body)) << r.out;
        EXPECT_NE(std::string::npos, r.out.find(" nr_data_blocks=\"0\"")) << "a metadata snapshot has no data sm: "
                                                                          << r.out;
    }
    p->message("release_metadata_snap");
}

// ================================================================================================
// Status lines (pool.md §1.1, §1.2, §3)
// ================================================================================================

TEST(PoolStatus, FreshPoolStatusLineExactly) {
    file_pool fp(4 * MiB, 64);
    fp.opts.low_water_mark = 5;
    auto p = fp.open();
    std::string line = p->status();
    auto st = p->status_info();
    EXPECT_EQ(1024u, st.total_metadata_blocks);
    EXPECT_EQ(64u, st.total_data_blocks);
    EXPECT_EQ(0u, st.used_data_blocks);
    EXPECT_EQ(256u, st.metadata_low_water_mark);
    EXPECT_GT(st.used_metadata_blocks, 0u);
    EXPECT_LT(st.used_metadata_blocks, 1024u);
    EXPECT_EQ("0 " + std::to_string(st.used_metadata_blocks) + "/1024 0/64 - rw discard_passdown queue_if_no_space - 256 ",
              line);
    // The dmtest parser accepts it.
    EXPECT_TRUE(std::regex_search(line, std::regex(R"re((\d+)\s(\d+)\/(\d+)\s(\d+)\/(\d+)\s(\S+)(\s.*)\s(\S+)\s(\S+))re")));
    EXPECT_EQ("128 5 0 ", p->table());
    p.reset();
    // used metadata = total - max(0, free - reserve), reserve = min(4096, total / 10), committed state.
    auto md = open_metadata_file(fp.metadata);
    std::uint64_t total = md->nr_metadata_blocks(), free = md->nr_free_metadata_blocks();
    std::uint64_t reserve = std::min<std::uint64_t>(4096, total / 10);
    EXPECT_EQ(total - (free > reserve ? free - reserve : 0), st.used_metadata_blocks);
}

TEST(PoolStatus, StatusFieldsFollowTheState) {
    memory_pool mp(2048, 64);
    mp.opts.features.error_if_no_space = true;
    mp.opts.features.skip_block_zeroing = true;
    mp.opts.low_water_mark = 7;
    auto p = mp.open();
    EXPECT_EQ("128 7 2 skip_block_zeroing error_if_no_space ", p->table());
    p->message("create_thin 0");
    p->message("set_transaction_id 0 42");
    auto t = p->activate(0, 16 * BS);
    EXPECT_EQ("0 -", t->status());
    auto ts = t->status_info();
    EXPECT_EQ(0u, ts.mapped_sectors);
    EXPECT_FALSE(ts.highest_mapped_sector);
    EXPECT_FALSE(ts.fail);
    ASSERT_EQ(0, write_block(*t, BS, 0, 1));
    ASSERT_EQ(0, write_block(*t, BS, 5, 2));
    EXPECT_EQ("256 767", t->status());
    p->message("reserve_metadata_snap");
    auto st = p->status_info();
    ASSERT_TRUE(st.held_metadata_root);
    const std::string expected = "42 " + std::to_string(st.used_metadata_blocks) + "/2048 2/64 " +
                                 std::to_string(*st.held_metadata_root) +
                                 " rw discard_passdown error_if_no_space - 512 ";
    EXPECT_EQ(expected, p->status());
    const std::regex full(
        R"re(^(\d+) (\d+)/(\d+) (\d+)/(\d+) (\d+|-) (rw|ro|out_of_data_space) (discard_passdown|no_discard_passdown|ignore_discard) (queue_if_no_space|error_if_no_space) (needs_check|-) (\d+) $)re");
    EXPECT_TRUE(std::regex_match(p->status(), full));
    t->close();
    EXPECT_EQ("-", t->status()) << "a closed thin reports '-'";
}

TEST(PoolStatus, DiscardWordsAndTable) {
    struct c {
        bool ignore, no_passdown, discardable;
        const char* word;
        const char* table;
    };
    for (auto k : {c{false, false, true, "discard_passdown", "128 0 0 "},
                   c{false, false, false, "no_discard_passdown", "128 0 0 "},
                   c{false, true, true, "no_discard_passdown", "128 0 1 no_discard_passdown "},
                   c{true, false, true, "ignore_discard", "128 0 1 ignore_discard "},
                   c{true, true, true, "ignore_discard", "128 0 2 ignore_discard no_discard_passdown "}}) {
        SCOPED_TRACE(k.table);
        memory_pool mp(1024, 16, BS, k.discardable);
        mp.opts.features.ignore_discard = k.ignore;
        mp.opts.features.no_discard_passdown = k.no_passdown;
        auto p = mp.open();
        EXPECT_NE(std::string::npos, p->status().find(std::string(" rw ") + k.word + " queue_if_no_space ")) << p->status();
        EXPECT_EQ(k.table, p->table()) << "the table shows the requested features, not the adjusted ones";
    }
}

// ================================================================================================
// tools_tests.rb you_cannot_run_thin_check_on_live_metadata
// ================================================================================================

TEST(PoolTools, ToolsRefuseLiveMetadata) {
    file_pool fp(4 * MiB, 16);
    auto p = fp.open();
    p->message("create_thin 0");
    auto r = run_ours("thin_check", {fp.metadata});
    EXPECT_NE(0, r.exit_code) << describe(r);
    // A metadata snapshot of the live pool can still be dumped (you_can_dump_a_metadata_snapshot).
    p->message("reserve_metadata_snap");
    auto m = run_ours("thin_dump", {"-m", fp.metadata});
    EXPECT_EQ(0, m.exit_code) << describe(m);
}

} // namespace
