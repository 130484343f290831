// thin/ls: field lists, 0.9.0's pretty units and grid, and exclusive/shared/highest counts against a
// model that counts every device mapping of every data block.
#include "thin/ls/ls.h"
#include "thin/metadata/metadata.h"

#include "persistent-data/io_engine.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

using namespace thin;
using ls::field;

namespace {

struct pool {
    std::shared_ptr<pdata::memory_engine> engine = std::make_shared<pdata::memory_engine>(16384);
    std::unique_ptr<metadata> md = metadata::format(engine, 128, 1000000);
    std::map<dev_id, std::map<std::uint64_t, std::uint64_t>> model;

    void write(dev_id d, std::uint64_t begin, std::uint64_t end) {
        for (std::uint64_t v = begin; v < end; ++v) map(d, v, *md->alloc_data_block());
    }
    void map(dev_id d, std::uint64_t v, std::uint64_t data) {
        md->insert(d, v, data);
        model[d][v] = data;
    }
    void map_shared(dev_id d, std::uint64_t v, std::uint64_t data) {
        auto& sm = md->data_space_map();
        sm.set_count(data, sm.get_count(data) + 1);
        map(d, v, data);
    }
    void snap(dev_id d, dev_id origin) {
        md->create_snap(d, origin);
        model[d] = model[origin];
    }
    std::map<dev_id, std::uint64_t> model_exclusive() {
        std::map<std::uint64_t, unsigned> refs;
        for (auto& [d, m] : model)
            for (auto& [v, b] : m) ++refs[b];
        std::map<dev_id, std::uint64_t> out;
        for (auto& [d, m] : model) {
            out[d] = 0;
            for (auto& [v, b] : m) out[d] += refs[b] == 1;
        }
        return out;
    }
};

} // namespace

TEST(ls_fields, parse_like_0_9_0) {
    EXPECT_EQ(ls::parse_fields("DEV,MAPPED"), (std::vector<field>{field::dev, field::mapped}));
    EXPECT_EQ(ls::parse_fields("DEV,"), std::vector<field>{field::dev});
    EXPECT_EQ(ls::parse_fields("DEV,DEV"), (std::vector<field>{field::dev, field::dev}));
    EXPECT_TRUE(ls::parse_fields("").empty());
    EXPECT_EQ(ls::parse_fields("HIGHEST_BLOCK,HIGHEST_MAPPED"),
              (std::vector<field>{field::highest_block, field::highest_mapped}));
    for (const char* bad : {",DEV", "DEV,,MAPPED", "DEV,,", ",", "dev", " DEV", "DEV ", "FOO", "json"})
        EXPECT_THROW(ls::parse_fields(bad), std::invalid_argument) << bad;
    try {
        ls::parse_fields("FOO");
    } catch (const std::invalid_argument& e) {
        EXPECT_STREQ(e.what(), "unknown field");
    }
    EXPECT_EQ(ls::all_fields().size(), 20u);
    EXPECT_EQ(ls::default_fields(),
              (std::vector<field>{field::dev, field::mapped, field::create_time, field::snap_time}));
    for (auto f : ls::all_fields()) EXPECT_EQ(ls::parse_fields(ls::field_name(f)), std::vector<field>{f});
}

TEST(ls_fields, pretty_units) {
    EXPECT_EQ(ls::pretty_size(0), "0");
    EXPECT_EQ(ls::pretty_size(65536), "64KiB");
    EXPECT_EQ(ls::pretty_size(131072), "128KiB");
    EXPECT_EQ(ls::pretty_size(1048576), "1024KiB");
    EXPECT_EQ(ls::pretty_size(4194304), "4096KiB");
    EXPECT_EQ(ls::pretty_size(8388608), "8192KiB");
    EXPECT_EQ(ls::pretty_size(8389632), "8MiB");
    EXPECT_EQ(ls::pretty_size(702087168), "670MiB");
    EXPECT_EQ(ls::pretty_size(697892864), "666MiB");
    EXPECT_EQ(ls::pretty_size(9126805504ull), "9GiB");  // 8.5 GiB rounds up (0.9.0 checked)
    EXPECT_EQ(ls::pretty_size(1ull << 50), "1024TiB");
    EXPECT_EQ(ls::pretty_size(1ull << 60), "1024PiB");
}

TEST(ls_table, grid_is_right_justified_with_a_space_after_every_cell) {
    std::vector<ls::device_row> rows(2);
    rows[0].dev = 1;
    rows[0].details = {10713, 0, 0, 15};
    rows[1].dev = 2;
    rows[1].details = {10353, 1, 1, 1};
    auto fields = ls::default_fields();
    EXPECT_EQ(ls::format_table(rows, fields, 128, true),
              "DEV MAPPED CREATE_TIME SNAP_TIME \n"
              "  1 670MiB           0        15 \n"
              "  2 647MiB           1         1 \n");
    EXPECT_EQ(ls::format_table(rows, fields, 128, false), "1 670MiB 0 15 \n2 647MiB 1  1 \n");
    EXPECT_EQ(ls::format_table(rows, {}, 128, true), "");
    EXPECT_EQ(ls::format_table({}, fields, 128, true), "DEV MAPPED CREATE_TIME SNAP_TIME \n");
    EXPECT_EQ(ls::format_table({}, fields, 128, false), "");
    EXPECT_EQ(ls::format_json(rows, {field::dev, field::mapped, field::mapped_blocks}, 128),
              "[\n  {\"DEV\": 1, \"MAPPED\": \"670MiB\", \"MAPPED_BLOCKS\": 10713},\n"
              "  {\"DEV\": 2, \"MAPPED\": \"647MiB\", \"MAPPED_BLOCKS\": 10353}\n]\n");
    EXPECT_EQ(ls::format_json({}, fields, 128), "[]\n");
}

TEST(ls_table, every_field_value) {
    ls::device_row r;
    r.dev = 7;
    r.details = {100, 5, 2, 3};
    r.exclusive_blocks = 40;
    r.highest = 999;
    auto c = [&](field f) { return ls::cell(r, f, 256); };
    EXPECT_EQ(c(field::dev), "7");
    EXPECT_EQ(c(field::mapped_blocks), "100");
    EXPECT_EQ(c(field::exclusive_blocks), "40");
    EXPECT_EQ(c(field::shared_blocks), "60");
    EXPECT_EQ(c(field::mapped_sectors), "25600");
    EXPECT_EQ(c(field::exclusive_sectors), "10240");
    EXPECT_EQ(c(field::shared_sectors), "15360");
    EXPECT_EQ(c(field::mapped_bytes), "13107200");
    EXPECT_EQ(c(field::exclusive_bytes), "5242880");
    EXPECT_EQ(c(field::shared_bytes), "7864320");
    EXPECT_EQ(c(field::mapped), "13MiB");  // 12800 KiB > 8192: 12.5 MiB rounds up
    EXPECT_EQ(c(field::exclusive), "5120KiB");
    EXPECT_EQ(c(field::shared), "7680KiB");
    EXPECT_EQ(c(field::transaction), "5");
    EXPECT_EQ(c(field::create_time), "2");
    EXPECT_EQ(c(field::snap_time), "3");
    EXPECT_EQ(c(field::highest_block), "999");
    EXPECT_EQ(c(field::highest_sector), "255999");
    EXPECT_EQ(c(field::highest_byte), "131071999");
    EXPECT_EQ(c(field::highest_mapped), "125MiB");
    r.highest.reset();  // no mappings: block 0, as the Rust tools print
    EXPECT_EQ(c(field::highest_block), "0");
    EXPECT_EQ(c(field::highest_sector), "255");
}

TEST(ls_scan, exclusive_and_shared_match_the_model) {
    pool p;
    p.md->create_thin(1);
    p.model[1];
    p.write(1, 0, 20000);
    p.snap(2, 1);
    p.write(2, 100, 300);
    p.snap(3, 2);
    p.write(3, 5000, 5100);
    p.md->create_thin(4);
    p.model[4];
    // Device 4's leaves are its own, but some of its blocks are also mapped elsewhere: counting must
    // look at data blocks, not only at leaf sharing.
    for (std::uint64_t v = 0; v < 600; ++v) p.map_shared(4, v, p.model[3][v * 7]);
    p.write(4, 1000, 1400);
    p.md->create_thin(5);  // empty
    p.model[5];
    p.md->commit();

    std::vector<field> fields{field::dev, field::exclusive_blocks, field::highest_block};
    ls::scan_stats st;
    auto rows = ls::scan(p.md->block_manager(), p.md->current_superblock(), p.md->nr_data_blocks(), fields, &st);
    auto excl = p.model_exclusive();
    ASSERT_EQ(rows.size(), 5u);
    for (const auto& r : rows) {
        EXPECT_EQ(r.details.mapped_blocks, p.model[r.dev].size()) << r.dev;
        EXPECT_EQ(r.exclusive_blocks, excl[r.dev]) << r.dev;
        if (p.model[r.dev].empty())
            EXPECT_FALSE(r.highest) << r.dev;
        else
            EXPECT_EQ(r.highest, p.model[r.dev].rbegin()->first) << r.dev;
    }
    EXPECT_EQ(rows[0].exclusive_blocks, 200u);  // the blocks snapshot 2 overwrote
    EXPECT_GT(rows[3].exclusive_blocks, 0u);
    // Shared leaves once, single-owner leaves twice.
    EXPECT_LT(st.leaf_reads, 2 * st.leaves);
    EXPECT_GE(st.leaf_reads, st.leaves);

    // A too-small size hint grows the counts.
    auto again = ls::scan(p.md->block_manager(), p.md->current_superblock(), 10, fields);
    for (std::size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(again[i].exclusive_blocks, rows[i].exclusive_blocks);

    // Without counting fields no mapping is read.
    auto plain = ls::scan(p.md->block_manager(), p.md->current_superblock(), 0, ls::default_fields());
    EXPECT_EQ(plain.size(), 5u);
}

TEST(ls_scan, random_pools_match_the_model) {
    std::mt19937_64 rng(7);
    for (int round = 0; round < 4; ++round) {
        pool p;
        p.md->create_thin(0);
        p.model[0];
        for (int i = 0; i < 300; ++i) {
            std::uint64_t v = rng() % 30000;
            p.write(0, v, v + 1 + rng() % 100);
        }
        for (dev_id d = 1; d < 6; ++d) {
            p.snap(d, rng() % d);
            for (int i = 0; i < 20; ++i) {
                std::uint64_t v = rng() % 30000;
                p.write(d, v, v + 1 + rng() % 30);
            }
        }
        p.md->commit();
        auto rows = ls::scan(p.md->block_manager(), p.md->current_superblock(), p.md->nr_data_blocks(),
                             {field::shared_blocks, field::highest_byte});
        auto excl = p.model_exclusive();
        for (const auto& r : rows) {
            EXPECT_EQ(r.exclusive_blocks, excl[r.dev]) << "round " << round << " dev " << r.dev;
            EXPECT_EQ(r.highest, p.model[r.dev].rbegin()->first);
        }
    }
}
