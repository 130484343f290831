// thin/trim: the free runs of the data space map (checked against the recount's reading of the
// same space map), the holes thin_trim punches into a file data device (exactly the free runs,
// seen through SEEK_HOLE / SEEK_DATA), and the refusals: a data device too small, damaged
// metadata, NEEDS_CHECK - all before anything is discarded.
#include "thin/trim/trim.h"

#include "persistent-data/endian.h"
#include "persistent-data/io_engine.h"
#include "tests/support/fixtures.h"
#include "tests/support/reference_tools.h"
#include "thin/check/recount.h"
#include "thin/metadata/metadata.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <set>
#include <unistd.h>

using thin::trim::block_run;

namespace {

const std::string TRIM = THINPOOL_BINARY_DIR "/thin_trim";
constexpr std::uint32_t DATA_BLOCK_SECTORS = 128;
constexpr std::uint64_t DATA_BLOCK_BYTES = DATA_BLOCK_SECTORS * 512;

// Metadata of a pool with nr_data_blocks data blocks where exactly the blocks in `used` are in use
// (blocks 0..max(used) are allocated in order, then the unused ones are unmapped again).
void make_pool(const std::string& path, std::uint64_t nr_data_blocks, const std::set<std::uint64_t>& used,
               bool needs_check = false) {
    const pdata::block_address md_blocks = 1024;
    auto e = std::make_shared<pdata::memory_engine>(md_blocks);
    {
        auto md = thin::metadata::format(e, DATA_BLOCK_SECTORS, nr_data_blocks);
        md->create_thin(0);
        std::uint64_t top = used.empty() ? 0 : *used.rbegin() + 1;
        for (std::uint64_t v = 0; v < top; ++v) {
            auto b = md->alloc_data_block();
            ASSERT_TRUE(b.has_value());
            ASSERT_EQ(*b, v);
            md->insert(0, v, *b);
        }
        md->commit();
        for (std::uint64_t v = 0; v < top; ++v)
            if (!used.count(v)) md->remove(0, v);
        if (needs_check) md->set_needs_check();
        md->set_transaction_id(md->transaction_id(), md->transaction_id() + 1);
        md->commit();
    }
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    for (pdata::block_address b = 0; b < md_blocks; ++b)
        f.write(reinterpret_cast<const char*>(e->raw(b)), pdata::MD_BLOCK_SIZE);
}

thin::superblock read_sb(pdata::block_manager& bm) {
    auto r = bm.read_lock(0, thin::superblock_validator());
    return thin::superblock::unpack(r.data());
}

std::vector<block_run> runs_of(const std::string& md) {
    pdata::block_manager bm(pdata::open_sync_engine(md, {pdata::open_mode::read_only, false}));
    std::vector<block_run> runs;
    thin::trim::for_each_free_run(bm, read_sb(bm), [&](const block_run& r) { runs.push_back(r); });
    return runs;
}

// The same runs derived from the counts the checker reads (an independent reading of the map).
std::vector<block_run> runs_from_counts(const std::string& md) {
    pdata::block_manager bm(pdata::open_sync_engine(md, {pdata::open_mode::read_only, false}));
    auto counts = thin::read_space_map_counts(bm, read_sb(bm).data_sm(), false);
    std::vector<block_run> runs;
    for (std::uint64_t b = 0; b < counts.size(); ++b) {
        if (counts[b]) continue;
        if (!runs.empty() && runs.back().end == b)
            runs.back().end = b + 1;
        else
            runs.push_back({b, b + 1});
    }
    return runs;
}

std::vector<block_run> runs_of_set(std::uint64_t nr, const std::set<std::uint64_t>& used) {
    std::vector<block_run> runs;
    for (std::uint64_t b = 0; b < nr; ++b) {
        if (used.count(b)) continue;
        if (!runs.empty() && runs.back().end == b)
            runs.back().end = b + 1;
        else
            runs.push_back({b, b + 1});
    }
    return runs;
}

// A data file with one byte of data in the middle of every data block.
void make_data_file(const std::string& path, std::uint64_t nr_blocks, std::uint64_t extra_bytes = 0) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(nr_blocks * DATA_BLOCK_BYTES + extra_bytes)), 0);
    for (std::uint64_t b = 0; b < nr_blocks; ++b) {
        char c = 'x';
        ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(b * DATA_BLOCK_BYTES + DATA_BLOCK_BYTES / 2)), 1);
    }
    ::close(fd);
}

// Data blocks of the file that still hold data.
std::set<std::uint64_t> blocks_with_data(const std::string& path, std::uint64_t nr_blocks) {
    std::set<std::uint64_t> s;
    int fd = ::open(path.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    for (std::uint64_t b = 0; b < nr_blocks; ++b) {
        off_t at = ::lseek(fd, static_cast<off_t>(b * DATA_BLOCK_BYTES), SEEK_DATA);
        if (at >= 0 && static_cast<std::uint64_t>(at) < (b + 1) * DATA_BLOCK_BYTES) s.insert(b);
    }
    ::close(fd);
    return s;
}

thinpool_test::command_result trim_tool(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {TRIM};
    argv.insert(argv.end(), args.begin(), args.end());
    return thinpool_test::run_command(argv);
}

} // namespace

TEST(trim_runs, leading_middle_and_trailing_free_runs) {
    thinpool_test::temp_dir dir;
    std::string md = dir.file("md");
    std::set<std::uint64_t> used = {5, 6, 7, 20, 21, 100, 101, 102, 103, 299};
    make_pool(md, 1013, used);  // 1013: the last bitmap word is partly used
    auto runs = runs_of(md);
    EXPECT_EQ(runs, runs_of_set(1013, used));
    EXPECT_EQ(runs, runs_from_counts(md));
    ASSERT_FALSE(runs.empty());
    EXPECT_EQ(runs.front(), (block_run{0, 5}));      // leading run included
    EXPECT_EQ(runs.back(), (block_run{300, 1013}));  // trailing run up to the end, not one block more
}

TEST(trim_runs, all_used_all_free_and_single_blocks) {
    thinpool_test::temp_dir dir;
    std::string md = dir.file("md");
    std::set<std::uint64_t> all;
    for (std::uint64_t b = 0; b < 64; ++b) all.insert(b);
    make_pool(md, 64, all);
    EXPECT_TRUE(runs_of(md).empty());
    make_pool(md, 64, {});
    EXPECT_EQ(runs_of(md), (std::vector<block_run>{{0, 64}}));
    std::set<std::uint64_t> alternate;
    for (std::uint64_t b = 0; b < 100; b += 2) alternate.insert(b);
    make_pool(md, 100, alternate);
    EXPECT_EQ(runs_of(md), runs_of_set(100, alternate));
    EXPECT_EQ(runs_of(md).size(), 50u);
}

TEST(trim_runs, runs_cross_bitmap_boundaries) {
    thinpool_test::temp_dir dir;
    std::string md = dir.file("md");
    const std::uint64_t nr = 3 * 16320 + 500;  // four bitmaps
    std::set<std::uint64_t> used;
    for (std::uint64_t b = 100; b < 16000; ++b) used.insert(b);
    for (std::uint64_t b = 16330; b < 32640; b += 3) used.insert(b);
    used.insert(32639);
    used.insert(32640);  // first entry of the third bitmap
    for (std::uint64_t b = 40000; b < 48961; ++b) used.insert(b);
    make_pool(md, nr, used);
    auto runs = runs_of(md);
    EXPECT_EQ(runs, runs_of_set(nr, used));
    EXPECT_EQ(runs, runs_from_counts(md));
    // The run 16000..16330 spans the first bitmap boundary in one piece.
    EXPECT_NE(std::find(runs.begin(), runs.end(), block_run{16000, 16330}), runs.end());
}

TEST(trim_runs, matches_the_space_map_of_every_kernel_fixture) {
    if (thinpool_test::kernel_fixture_dir().empty()) {
        if (thinpool_test::fixtures_required()) FAIL() << "kernel fixtures missing";
        GTEST_SKIP() << "kernel fixtures not found";
    }
    thinpool_test::temp_dir dir;
    for (const char* name : {"tmeta", "tmeta_with_metadata_snap", "tmeta_with_deleted_snapshot"}) {
        std::string md = dir.file(name);
        ASSERT_TRUE(thinpool_test::unpack_kernel_fixture(name, md));
        auto runs = runs_of(md);
        EXPECT_EQ(runs, runs_from_counts(md)) << name;
        EXPECT_FALSE(runs.empty()) << name;
    }
}

TEST(trim_tool, punches_exactly_the_free_runs_into_a_data_file) {
    if (!std::filesystem::exists(TRIM)) FAIL() << TRIM << " is not built";
    thinpool_test::temp_dir dir;
    std::string md = dir.file("md"), data = dir.file("data");
    const std::uint64_t nr = 700;
    std::set<std::uint64_t> used = {3, 4, 5, 64, 65, 66, 67, 68, 200, 201, 202, 203, 204, 205, 206, 207, 208, 450, 451};
    make_pool(md, nr, used);
    make_data_file(data, nr, DATA_BLOCK_BYTES * 3);  // a larger device is accepted
    auto before = std::filesystem::file_size(data);
    ASSERT_EQ(blocks_with_data(data, nr).size(), nr) << "the file system does not report data extents";
    auto r = trim_tool({"--metadata-dev", md, "--data-dev", data});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(blocks_with_data(data, nr), used);
    EXPECT_EQ(std::filesystem::file_size(data), before);  // FALLOC_FL_KEEP_SIZE
    // The extra tail beyond the pool's data blocks is left alone: write data there, trim again.
    int fd = ::open(data.c_str(), O_RDWR);
    ASSERT_EQ(::pwrite(fd, "tail", 4, static_cast<off_t>(nr * DATA_BLOCK_BYTES + 10)), 4);
    r = trim_tool({"--metadata-dev", md, "--data-dev", data});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    off_t at = ::lseek(fd, static_cast<off_t>(nr * DATA_BLOCK_BYTES), SEEK_DATA);
    EXPECT_GE(at, static_cast<off_t>(nr * DATA_BLOCK_BYTES));
    EXPECT_LT(at, static_cast<off_t>(before));
    ::close(fd);
    // Trimming again changes nothing.
    r = trim_tool({"--metadata-dev", md, "--data-dev", data, "--pool-inactive"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("--pool-inactive no longer required"), std::string::npos) << r.err;
    EXPECT_EQ(blocks_with_data(data, nr), used);
}

TEST(trim_tool, refuses_a_data_device_that_is_too_small) {
    if (!std::filesystem::exists(TRIM)) FAIL() << TRIM << " is not built";
    thinpool_test::temp_dir dir;
    std::string md = dir.file("md"), data = dir.file("data");
    make_pool(md, 100, {1, 2, 3});
    make_data_file(data, 100);
    ASSERT_EQ(::truncate(data.c_str(), static_cast<off_t>(100 * DATA_BLOCK_BYTES - 1)), 0);
    auto r = trim_tool({"--metadata-dev", md, "--data-dev", data});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, "thin_trim: unexpected data device size, wanted " + std::to_string(100 * DATA_BLOCK_BYTES) + " bytes\n");
    EXPECT_EQ(blocks_with_data(data, 100).size(), 100u);  // nothing discarded
    r = trim_tool({"-q", "--metadata-dev", md, "--data-dev", data});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, "");
}

TEST(trim_tool, damaged_space_map_or_needs_check_discards_nothing) {
    if (!std::filesystem::exists(TRIM)) FAIL() << TRIM << " is not built";
    thinpool_test::temp_dir dir;
    std::string md = dir.file("md"), data = dir.file("data");
    const std::uint64_t nr = 20000;  // two bitmaps; damage the second
    make_pool(md, nr, {0, 1, 2});
    make_data_file(data, 2);  // data only where it matters for the check below
    ASSERT_EQ(::truncate(data.c_str(), static_cast<off_t>(nr * DATA_BLOCK_BYTES)), 0);
    pdata::block_address second_bitmap = 0;
    {
        pdata::block_manager bm(pdata::open_sync_engine(md, {pdata::open_mode::read_only, false}));
        thin::superblock sb = read_sb(bm);
        struct collect : pdata::btree::walk_visitor {
            std::vector<pdata::block_address> v;
            void visit_value(const std::vector<std::uint64_t>&, std::uint64_t, const std::uint8_t* val) override {
                v.push_back(pdata::load_le64(val));
            }
            void visit_damage(const std::vector<std::uint64_t>&, pdata::btree::key_range, pdata::block_address,
                              const std::string&) override {}
        } c;
        pdata::btree::walk(bm, sb.data_sm().bitmap_root, pdata::btree::walk_options{1, 16}, c);
        ASSERT_EQ(c.v.size(), 2u);
        second_bitmap = c.v[1];
    }
    {
        std::fstream f(md, std::ios::binary | std::ios::in | std::ios::out);
        f.seekp(static_cast<std::streamoff>(second_bitmap * 4096 + 2000));
        f.put('\x55');
    }
    // Block 0..2 used, 3.. free: blocks 0 and 1 of the file hold data, and the free run starting
    // at 3 must not be punched before the damage in the second bitmap is found.
    ASSERT_EQ(::truncate(data.c_str(), 0), 0);
    make_data_file(data, 5);
    ASSERT_EQ(::truncate(data.c_str(), static_cast<off_t>(nr * DATA_BLOCK_BYTES)), 0);
    auto r = trim_tool({"--metadata-dev", md, "--data-dev", data});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(std::to_string(second_bitmap)), std::string::npos) << r.err;
    EXPECT_EQ(blocks_with_data(data, 5).size(), 5u) << "discarded before the damage was found";

    make_pool(md, 100, {1, 2, 3}, true);
    r = trim_tool({"--metadata-dev", md, "--data-dev", data});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("NEEDS_CHECK"), std::string::npos) << r.err;
    EXPECT_EQ(blocks_with_data(data, 5).size(), 5u);
}
