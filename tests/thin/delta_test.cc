// thin/delta: the pieces of a diff against a model built from std::map (runs per device, then the
// two run lists walked in step, as tools.md §7 describes 0.9.0), the emitters' exact text, the five
// device-mapper-test-suite expectations, and that shared leaves are read once.
#include "thin/cli/text_output.h"
#include "thin/delta/delta.h"
#include "thin/metadata/metadata.h"

#include "persistent-data/io_engine.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <random>

using namespace thin;
using delta::kind;
using delta::piece;

namespace {

using mapping_model = std::map<std::uint64_t, std::uint64_t>;  // vblock -> data block

struct collect : delta::piece_sink {
    std::vector<piece> pieces;
    void add(const piece& p) override { pieces.push_back(p); }
};

// ---- the model: 0.9.0's algorithm on run lists ----
struct model_run {
    std::uint64_t v, d, len;
};

std::vector<model_run> runs_of(const mapping_model& m) {
    std::vector<model_run> r;
    for (auto [v, d] : m) {
        if (!r.empty() && r.back().v + r.back().len == v && r.back().d + r.back().len == d)
            ++r.back().len;
        else
            r.push_back({v, d, 1});
    }
    return r;
}

std::vector<piece> model_diff(const mapping_model& left, const mapping_model& right) {
    auto L = runs_of(left), R = runs_of(right);
    std::vector<piece> out;
    std::size_t i = 0, j = 0;
    while (i < L.size() && j < R.size()) {
        model_run& l = L[i];
        model_run& r = R[j];
        std::uint64_t n;
        if (l.v < r.v) {
            n = std::min(l.len, r.v - l.v);
            out.push_back({kind::left_only, l.v, n, l.d, 0});
            l.v += n, l.d += n, l.len -= n;
        } else if (r.v < l.v) {
            n = std::min(r.len, l.v - r.v);
            out.push_back({kind::right_only, r.v, n, 0, r.d});
            r.v += n, r.d += n, r.len -= n;
        } else {
            n = std::min(l.len, r.len);
            out.push_back({l.d == r.d ? kind::same : kind::different, l.v, n, l.d, r.d});
            l.v += n, l.d += n, l.len -= n;
            r.v += n, r.d += n, r.len -= n;
        }
        if (!l.len) ++i;
        if (!r.len) ++j;
    }
    for (; i < L.size(); ++i) out.push_back({kind::left_only, L[i].v, L[i].len, L[i].d, 0});
    for (; j < R.size(); ++j) out.push_back({kind::right_only, R[j].v, R[j].len, 0, R[j].d});
    return out;
}

// ---- metadata built through the API ----
struct pool {
    std::shared_ptr<pdata::memory_engine> engine = std::make_shared<pdata::memory_engine>(16384);
    std::unique_ptr<metadata> md;
    std::map<dev_id, mapping_model> model;

    explicit pool(std::uint64_t nr_data_blocks = 200000) { md = metadata::format(engine, 128, nr_data_blocks); }

    void create_thin(dev_id d) {
        md->create_thin(d);
        model[d];
    }
    void snap(dev_id d, dev_id origin) {
        md->create_snap(d, origin);
        model[d] = model[origin];
    }
    // Writes that break sharing: a fresh data block for every block (as the pool does).
    void write(dev_id d, std::uint64_t begin, std::uint64_t end) {
        for (std::uint64_t v = begin; v < end; ++v) map(d, v, *md->alloc_data_block());
    }
    // Maps v to a data block already in use (a reference is added for the new mapping).
    void map_shared(dev_id d, std::uint64_t v, std::uint64_t data) {
        auto& sm = md->data_space_map();
        sm.set_count(data, sm.get_count(data) + 1);
        map(d, v, data);
    }
    void map(dev_id d, std::uint64_t v, std::uint64_t data) {
        md->insert(d, v, data);
        model[d][v] = data;
    }
    pdata::block_address root(dev_id d) {
        md->commit();
        std::uint64_t key = d;
        std::uint8_t v[8];
        pdata::btree::info top{&md->transaction_manager(), 1, {}};
        EXPECT_TRUE(pdata::btree::lookup(top, md->current_superblock().data_mapping_root, &key, v));
        return pdata::load_le64(v);
    }
    std::vector<piece> diff(dev_id a, dev_id b, delta::diff_stats* st = nullptr) {
        collect c;
        auto s = delta::diff_trees(md->block_manager(), root(a), root(b), c);
        if (st) *st = s;
        return c.pieces;
    }
};

std::string render(const std::vector<piece>& pieces, const superblock& sb, delta::report_options opts,
                   delta::side l = {false, 0}, delta::side r = {false, 1}) {
    char* buf = nullptr;
    std::size_t len = 0;
    std::FILE* f = open_memstream(&buf, &len);
    {
        cli::text_output out(f);
        auto em = delta::make_emitter(out, opts, sb, l, r);
        for (const auto& p : pieces) em->add(p);
        em->finish();
    }
    std::fclose(f);
    std::string s(buf, len);
    std::free(buf);
    return s;
}

// MiB of a 64 KiB-block device -> blocks.
constexpr std::uint64_t MIB = 16;

// device-mapper-test-suite thin_delta_tests.rb: a 100 MiB origin written over range1, snapshotted,
// then range2 written to the snapshot.
std::string dmtest_delta(std::uint64_t o_begin, std::uint64_t o_end, std::uint64_t s_begin, std::uint64_t s_end) {
    pool p(163840);
    p.create_thin(0);
    p.write(0, o_begin * MIB, o_end * MIB);
    p.snap(1, 0);
    p.write(1, s_begin * MIB, s_end * MIB);
    auto pieces = p.diff(0, 1);
    EXPECT_EQ(pieces, model_diff(p.model[0], p.model[1]));
    return render(pieces, p.md->current_superblock(), {});
}

std::string expected_dmtest(const std::string& body) {
    return "<superblock uuid=\"\" time=\"1\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"163840\">\n"
           "  <diff left=\"0\" right=\"1\">\n" +
           body + "  </diff>\n</superblock>\n";
}

} // namespace

TEST(delta, dmtest_snapshot_written_inside_the_origin) {
    EXPECT_EQ(dmtest_delta(0, 100, 1, 2), expected_dmtest("    <same begin=\"0\" length=\"16\"/>\n"
                                                          "    <different begin=\"16\" length=\"16\"/>\n"
                                                          "    <same begin=\"32\" length=\"1568\"/>\n"));
}

TEST(delta, dmtest_snapshot_written_after_the_origin) {
    EXPECT_EQ(dmtest_delta(0, 10, 10, 11), expected_dmtest("    <same begin=\"0\" length=\"160\"/>\n"
                                                           "    <right_only begin=\"160\" length=\"16\"/>\n"));
}

TEST(delta, dmtest_snapshot_written_before_the_origin) {
    EXPECT_EQ(dmtest_delta(10, 100, 9, 10), expected_dmtest("    <right_only begin=\"144\" length=\"16\"/>\n"
                                                            "    <same begin=\"160\" length=\"1440\"/>\n"));
}

TEST(delta, dmtest_snapshot_overlapping_the_start) {
    EXPECT_EQ(dmtest_delta(10, 20, 5, 15), expected_dmtest("    <right_only begin=\"80\" length=\"80\"/>\n"
                                                           "    <different begin=\"160\" length=\"80\"/>\n"
                                                           "    <same begin=\"240\" length=\"80\"/>\n"));
}

TEST(delta, dmtest_snapshot_overlapping_the_end) {
    EXPECT_EQ(dmtest_delta(10, 20, 15, 25), expected_dmtest("    <same begin=\"160\" length=\"80\"/>\n"
                                                            "    <different begin=\"240\" length=\"80\"/>\n"
                                                            "    <right_only begin=\"320\" length=\"80\"/>\n"));
}

TEST(delta, pieces_split_at_every_run_boundary_and_short_form_merges_them) {
    pool p;
    p.create_thin(1);
    p.create_thin(2);
    // left: 0..10 -> 100..110; right: 0..5 -> 100..105, 5..10 -> 300..305, 20 -> 7
    for (std::uint64_t v = 0; v < 10; ++v) p.map(1, v, 100 + v);
    for (std::uint64_t v = 0; v < 5; ++v) p.map(2, v, 100 + v);
    for (std::uint64_t v = 5; v < 10; ++v) p.map(2, v, 300 + v - 5);
    p.map(2, 20, 7);
    p.map(1, 11, 500);
    p.map(1, 12, 900);  // a new run of the same class right after: a new piece, merged when short
    auto pieces = p.diff(1, 2);
    std::vector<piece> want{{kind::same, 0, 5, 100, 100},   {kind::different, 5, 5, 105, 300},
                            {kind::left_only, 11, 1, 500, 0}, {kind::left_only, 12, 1, 900, 0},
                            {kind::right_only, 20, 1, 0, 7}};
    EXPECT_EQ(pieces, want);
    EXPECT_EQ(pieces, model_diff(p.model[1], p.model[2]));

    superblock sb = p.md->current_superblock();
    std::string head = "<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"200000\">\n"
                       "  <diff left=\"1\" right=\"2\">\n";
    EXPECT_EQ(render(pieces, sb, {}, {false, 1}, {false, 2}),
              head + "    <same begin=\"0\" length=\"5\"/>\n"
                     "    <different begin=\"5\" length=\"5\"/>\n"
                     "    <left_only begin=\"11\" length=\"2\"/>\n"
                     "    <right_only begin=\"20\" length=\"1\"/>\n"
                     "  </diff>\n</superblock>\n");
    EXPECT_EQ(render(pieces, sb, {delta::format::xml, true}, {false, 1}, {false, 2}),
              head + "    <same>\n"
                     "      <range begin=\"0\" data_begin=\"100\" length=\"5\"/>\n"
                     "    </same>\n"
                     "    <different>\n"
                     "      <range begin=\"5\" left_data_begin=\"105\" right_data_begin=\"300\" length=\"5\"/>\n"
                     "    </different>\n"
                     "    <left_only>\n"
                     "      <range begin=\"11\" data_begin=\"500\" length=\"1\"/>\n"
                     "      <range begin=\"12\" data_begin=\"900\" length=\"1\"/>\n"
                     "    </left_only>\n"
                     "    <right_only>\n"
                     "      <range begin=\"20\" data_begin=\"7\" length=\"1\"/>\n"
                     "    </right_only>\n"
                     "  </diff>\n</superblock>\n");
}

TEST(delta, superblock_line_names_a_held_metadata_snapshot_and_roots) {
    superblock sb;
    sb.time = 3;
    sb.trans_id = 9;
    sb.data_block_size = 256;
    sb.metadata_snap = 77;
    EXPECT_EQ(render({}, sb, {}, {true, 12}, {false, 4}),
              "<superblock uuid=\"\" time=\"3\" transaction=\"9\" data_block_size=\"256\" nr_data_blocks=\"0\" "
              "metadata_snap=\"77\">\n  <diff left_root=\"12\" right=\"4\">\n  </diff>\n</superblock>\n");
}

TEST(delta, json_lists_ranges) {
    superblock sb;
    sb.data_block_size = 128;
    std::vector<piece> pieces{{kind::same, 0, 2, 10, 10}, {kind::same, 2, 1, 50, 50}, {kind::different, 3, 1, 4, 5}};
    EXPECT_EQ(render(pieces, sb, {delta::format::json, false}),
              "{\n  \"superblock\": {\"uuid\": \"\", \"time\": 0, \"transaction\": 0, \"data_block_size\": 128, "
              "\"nr_data_blocks\": 0},\n  \"left\": 0,\n  \"right\": 1,\n  \"ranges\": [\n"
              "    {\"type\": \"same\", \"begin\": 0, \"length\": 3},\n"
              "    {\"type\": \"different\", \"begin\": 3, \"length\": 1}\n  ]\n}\n");
    EXPECT_EQ(render(pieces, sb, {delta::format::json, true}),
              "{\n  \"superblock\": {\"uuid\": \"\", \"time\": 0, \"transaction\": 0, \"data_block_size\": 128, "
              "\"nr_data_blocks\": 0},\n  \"left\": 0,\n  \"right\": 1,\n  \"ranges\": [\n"
              "    {\"type\": \"same\", \"begin\": 0, \"data_begin\": 10, \"length\": 2},\n"
              "    {\"type\": \"same\", \"begin\": 2, \"data_begin\": 50, \"length\": 1},\n"
              "    {\"type\": \"different\", \"begin\": 3, \"left_data_begin\": 4, \"right_data_begin\": 5, \"length\": 1}\n"
              "  ]\n}\n");
    EXPECT_EQ(render({}, sb, {delta::format::json, false}).substr(0, 1), "{");
    EXPECT_NE(render({}, sb, {delta::format::json, false}).find("\"ranges\": []\n}\n"), std::string::npos);
}

TEST(delta, empty_trees_and_a_tree_against_itself) {
    pool p;
    p.create_thin(1);
    p.create_thin(2);
    EXPECT_TRUE(p.diff(1, 2).empty());
    p.write(1, 0, 3000);
    auto self = p.diff(1, 1);
    EXPECT_EQ(self, model_diff(p.model[1], p.model[1]));
    ASSERT_EQ(self.size(), 1u);
    EXPECT_EQ(self[0], (piece{kind::same, 0, 3000, 0, 0}));
    auto left = p.diff(1, 2);
    ASSERT_EQ(left.size(), 1u);
    EXPECT_EQ(left[0].k, kind::left_only);
    auto right = p.diff(2, 1);
    ASSERT_EQ(right.size(), 1u);
    EXPECT_EQ(right[0].k, kind::right_only);
}

TEST(delta, leaves_shared_by_both_trees_are_read_once) {
    pool p(400000);
    p.create_thin(1);
    p.write(1, 0, 100000);  // hundreds of leaves
    p.snap(2, 1);
    p.write(2, 50000, 50010);
    delta::diff_stats st;
    auto pieces = p.diff(1, 2, &st);
    EXPECT_EQ(pieces, model_diff(p.model[1], p.model[2]));
    EXPECT_GT(st.shared_leaves, 300u);
    // Every distinct leaf once: the shared ones, plus the copies each side has of the written one.
    EXPECT_LE(st.leaves_read, st.shared_leaves + 4);
}

TEST(delta, random_trees_match_the_model) {
    std::mt19937_64 rng(42);
    for (int round = 0; round < 6; ++round) {
        pool p(1000000);
        p.create_thin(1);
        std::uint64_t space = 20000 + rng() % 50000;
        for (int i = 0; i < 20000; ++i) {
            std::uint64_t v = rng() % space, len = 1 + rng() % 40;
            p.write(1, v, std::min(space, v + len));
        }
        p.snap(2, 1);
        p.create_thin(3);
        for (int i = 0; i < 3000; ++i) {
            std::uint64_t v = rng() % space;
            if (rng() % 3 == 0 && p.model[1].count(v))
                p.map_shared(2, v, p.model[1][v]);  // back to the origin's block: `same` again
            else
                p.write(2, v, std::min(space, v + 1 + rng() % 8));
            if (rng() % 2 && p.model[2].count(v))
                p.map_shared(3, v, p.model[2][v]);
            else if (rng() % 2)
                p.write(3, v, v + 1);
        }
        for (auto [a, b] : {std::pair<dev_id, dev_id>{1, 2}, {2, 1}, {1, 3}, {3, 2}, {2, 2}})
            EXPECT_EQ(p.diff(a, b), model_diff(p.model[a], p.model[b])) << "round " << round << " " << a << "/" << b;
    }
}
