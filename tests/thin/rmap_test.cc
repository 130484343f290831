// thin/rmap: region syntax as 0.9.0 reads it, and the runs against two models: every device
// mapping (all_devices) and 0.9.0's walk that visits each node once (a b-tree walk in device order
// skipping nodes already seen), both sorted the way 0.9.0 sorts.
#include "thin/cli/text_output.h"
#include "thin/metadata/metadata.h"
#include "thin/rmap/rmap.h"

#include "persistent-data/btree/walk.h"
#include "persistent-data/io_engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <set>

using namespace thin;
using rmap::region;
using rmap::run;

namespace {

struct pool {
    std::shared_ptr<pdata::memory_engine> engine = std::make_shared<pdata::memory_engine>(16384);
    std::unique_ptr<metadata> md = metadata::format(engine, 128, 1000000);

    void write(dev_id d, std::uint64_t begin, std::uint64_t end) {
        for (std::uint64_t v = begin; v < end; ++v) md->insert(d, v, *md->alloc_data_block());
    }
};

bool in(const std::vector<region>& rs, std::uint64_t d) {
    return std::any_of(rs.begin(), rs.end(), [&](const region& r) { return d >= r.begin && d < r.end; });
}

// Mappings in 0.9.0's visiting order: devices ascending, each tree in key order, a node seen before
// (from a lower device) skipped with everything below it - unless all is set.
class visit_order : public pdata::btree::walk_visitor {
public:
    explicit visit_order(bool all) : all_(all) {}
    bool visit_node(unsigned level, const std::vector<std::uint64_t>&, pdata::block_address b, pdata::btree::node_ref) override {
        if (level == 0 || all_) return true;
        return seen_.insert(b).second;
    }
    void visit_value(const std::vector<std::uint64_t>& path, std::uint64_t key, const std::uint8_t* v) override {
        mappings.push_back({path[0], key, pdata::load_le64(v) >> 24});
    }
    void visit_damage(const std::vector<std::uint64_t>&, pdata::btree::key_range, pdata::block_address,
                      const std::string& what) override {
        ADD_FAILURE() << what;
    }
    struct m {
        dev_id dev;
        std::uint64_t v, d;
    };
    std::vector<m> mappings;

private:
    bool all_;
    std::set<pdata::block_address> seen_;
};

std::vector<run> model(metadata& md, const std::vector<region>& rs, bool all) {
    md.commit();
    visit_order vo(all);
    pdata::btree::walk(md.block_manager(), md.current_superblock().data_mapping_root, {2, 8}, vo);
    std::vector<run> runs;
    bool open = false;
    for (const auto& m : vo.mappings) {
        if (!in(rs, m.d)) {
            open = false;
            continue;
        }
        if (open) {
            run& c = runs.back();
            if (c.dev == m.dev && c.virt_begin + c.length == m.v && c.data_begin + c.length == m.d) {
                ++c.length;
                continue;
            }
        }
        runs.push_back({m.d, 1, m.dev, m.v});
        open = true;
    }
    std::sort(runs.begin(), runs.end(), [](const run& a, const run& b) { return a.data_begin < b.data_begin; });
    return runs;
}

std::string text(const std::vector<run>& runs) {
    char* buf = nullptr;
    std::size_t len = 0;
    std::FILE* f = open_memstream(&buf, &len);
    {
        cli::text_output out(f);
        rmap::write_runs(out, runs);
    }
    std::fclose(f);
    std::string s(buf, len);
    std::free(buf);
    return s;
}

} // namespace

TEST(rmap_region, parses_like_0_9_0) {
    EXPECT_EQ(rmap::parse_region("5..45"), (region{5, 45}));
    EXPECT_EQ(rmap::parse_region(" 5..7"), (region{5, 7}));
    EXPECT_EQ(rmap::parse_region("5..7x"), (region{5, 7}));
    EXPECT_EQ(rmap::parse_region("5.. 7"), (region{5, 7}));
    EXPECT_EQ(rmap::parse_region("+5..+7"), (region{5, 7}));
    EXPECT_EQ(rmap::parse_region("5..7..9"), (region{5, 7}));
    EXPECT_EQ(rmap::parse_region("0..18446744073709551615"), (region{0, UINT64_MAX}));
    auto msg = [](const std::string& s) {
        try {
            rmap::parse_region(s);
        } catch (const std::invalid_argument& e) {
            return std::string(e.what());
        }
        return std::string("parsed");
    };
    const std::string no_dots = "badly formed region (no dots)", numbers = "badly formed region (couldn't parse numbers)",
                      order = "badly formed region (end <= begin)";
    for (const char* s : {"5", "..7", "a..b", "0x5..7", "5 ..7", "5. .7", "", "5,,7", "99999999999999999999..1"})
        EXPECT_EQ(msg(s), no_dots) << s;
    for (const char* s : {"5..", "5...7", "5..x"}) EXPECT_EQ(msg(s), numbers) << s;
    for (const char* s : {"7..5", "5..5", "-1..3"}) EXPECT_EQ(msg(s), order) << s;
    EXPECT_EQ(rmap::parse_region("5..-7").end, std::uint64_t(-7));
}

TEST(rmap, output_lines) {
    EXPECT_EQ(text({{5, 1, 2, 10615}, {6, 2, 1, 15440}}),
              "data 5..6 -> thin(2) 10615..10616\ndata 6..8 -> thin(1) 15440..15442\n");
    EXPECT_EQ(text({}), "");
}

TEST(rmap, runs_cross_adjacent_regions_and_leaves_but_not_gaps) {
    pool p;
    p.md->create_thin(3);
    p.write(3, 0, 2000);  // data 0..2000 from virtual 0..2000, across many leaves
    p.md->commit();
    auto& bm = p.md->block_manager();
    auto root = p.md->current_superblock().data_mapping_root;
    EXPECT_EQ(rmap::reverse_map(bm, root, {{0, 1000}, {1000, 1500}}), (std::vector<run>{{0, 1500, 3, 0}}));
    EXPECT_EQ(rmap::reverse_map(bm, root, {{10, 20}, {15, 30}}), (std::vector<run>{{10, 20, 3, 10}}));
    EXPECT_EQ(rmap::reverse_map(bm, root, {{10, 20}, {21, 30}}), (std::vector<run>{{10, 10, 3, 10}, {21, 9, 3, 21}}));
    EXPECT_TRUE(rmap::reverse_map(bm, root, {{5000, 6000}}).empty());
}

TEST(rmap, shared_leaves_count_for_the_lowest_device_unless_all_devices) {
    pool p;
    p.md->create_thin(5);
    p.write(5, 0, 1000);
    p.md->create_snap(2, 5);  // shares everything with 5, and is lower
    p.md->create_snap(9, 5);
    p.write(9, 500, 510);
    p.md->commit();
    auto& bm = p.md->block_manager();
    auto root = p.md->current_superblock().data_mapping_root;
    std::vector<region> all{{0, 100000}};
    auto first = rmap::reverse_map(bm, root, all);
    EXPECT_EQ(first, model(*p.md, all, false));
    for (const auto& r : first) EXPECT_NE(r.dev, 5u);  // its tree is 2's
    rmap::rmap_options o;
    o.all_devices = true;
    auto every = rmap::reverse_map(bm, root, all, o);
    EXPECT_EQ(every, model(*p.md, all, true));
    std::uint64_t per_dev[10] = {};
    for (const auto& r : every) per_dev[r.dev] += r.length;
    EXPECT_EQ(per_dev[2], 1000u);
    EXPECT_EQ(per_dev[5], 1000u);
    EXPECT_EQ(per_dev[9], 1000u);
}

TEST(rmap, random_pools_match_the_models) {
    std::mt19937_64 rng(3);
    for (int round = 0; round < 4; ++round) {
        pool p;
        p.md->create_thin(0);
        for (int i = 0; i < 400; ++i) {
            std::uint64_t v = rng() % 40000;
            p.write(0, v, v + 1 + rng() % 60);
        }
        for (dev_id d = 1; d < 7; ++d) {
            p.md->create_snap(d, rng() % d);
            for (int i = 0; i < 30; ++i) {
                std::uint64_t v = rng() % 40000;
                p.write(d, v, v + 1 + rng() % 20);
            }
        }
        std::vector<region> rs;
        for (int i = 0; i < 1 + round * 2; ++i) {
            std::uint64_t b = rng() % 30000;
            rs.push_back({b, b + 1 + rng() % 5000});
        }
        auto& bm = p.md->block_manager();
        for (bool all : {false, true}) {
            auto want = model(*p.md, rs, all);
            rmap::rmap_options o;
            o.all_devices = all;
            EXPECT_EQ(rmap::reverse_map(bm, p.md->current_superblock().data_mapping_root, rs, o), want)
                << "round " << round << " all " << all;
        }
    }
}
