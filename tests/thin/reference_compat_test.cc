// Compatibility with the reference thin-provisioning-tools 0.9.0 (Debian's thin_check, thin_dump,
// thin_restore), used as an oracle:
//  - metadata we build through the thin::metadata API passes their thin_check, and their thin_dump
//    prints exactly the XML the generator's independent record predicts (and thin_dump -m the state
//    at the held metadata snapshot);
//  - metadata their thin_restore builds from our XML reads back through thin::metadata::open with
//    the devices, details and mappings of the model.
// Skipped when the tools are missing, unless THINPOOL_REQUIRE_REFERENCE=1.
#include "thin/generate/generator.h"
#include "thin/metadata/metadata.h"
#include "thin/xml/xml_writer.h"

#include "persistent-data/io_engine.h"
#include "tests/support/reference_tools.h"

#include <gtest/gtest.h>

#include <sstream>

namespace gen = thin::generate;
using thinpool_test::command_result;
using thinpool_test::reference_tool;
using thinpool_test::run_command;
using thinpool_test::scratch_dir;

namespace {

// "" if equal, else the first differing line of each (long dumps are not printed whole).
std::string first_difference(const std::string& got, const std::string& want) {
    if (got == want)
        return {};
    std::istringstream a(got), b(want);
    std::string la, lb;
    for (std::size_t line = 1;; ++line) {
        bool ha = static_cast<bool>(std::getline(a, la));
        bool hb = static_cast<bool>(std::getline(b, lb));
        if (!ha && !hb)
            return "outputs differ only in the final newline";
        if (la != lb || ha != hb)
            return "first difference at line " + std::to_string(line) + ":\n  got:      " +
                   (ha ? la : "<end>") + "\n  expected: " + (hb ? lb : "<end>");
    }
}

std::string describe(const command_result& r) {
    return "exit " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out.substr(0, 2000) + "\nstderr:\n" +
           r.err.substr(0, 2000);
}

std::unique_ptr<thin::metadata> open_read_only(const std::string& path) {
    std::shared_ptr<pdata::io_engine> engine = pdata::open_sync_engine(path, {pdata::open_mode::read_only, false});
    thin::open_options o;
    o.read_only = true;
    return thin::metadata::open(engine, o);
}

std::string shape_test_name(const ::testing::TestParamInfo<std::string>& info) {
    std::string n = info.param;
    for (auto& c : n)
        if (c == '-')
            c = '_';
    return n;
}

} // namespace

// ---- the spec's example, through their restore and dump ----

TEST(reference_compat, spec_example_restores_and_dumps_byte_for_byte) {
    REQUIRE_REFERENCE_TOOLS();
    gen::pool_record rec;
    rec.time = 1;
    rec.transaction = 3;
    rec.data_block_size = 128;
    rec.nr_data_blocks = 1000;
    auto& d0 = rec.devices[0];
    d0.details = {5, 0, 0, 1};
    for (std::uint64_t i = 0; i < 3; ++i)
        d0.mappings.set(i, {i, 0});
    d0.mappings.set(10, {20, 0});
    d0.mappings.set(11, {22, 1});
    auto& d1 = rec.devices[1];
    d1.details = {3, 2, 1, 1};
    for (std::uint64_t i = 0; i < 3; ++i)
        d1.mappings.set(i, {i, 0});
    const std::string xml = rec.to_xml();
    ASSERT_EQ(xml,
              "<superblock uuid=\"\" time=\"1\" transaction=\"3\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"1000\">\n"
              "  <device dev_id=\"0\" mapped_blocks=\"5\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n"
              "    <range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\"/>\n"
              "    <single_mapping origin_block=\"10\" data_block=\"20\" time=\"0\"/>\n"
              "    <single_mapping origin_block=\"11\" data_block=\"22\" time=\"1\"/>\n"
              "  </device>\n"
              "  <device dev_id=\"1\" mapped_blocks=\"3\" transaction=\"2\" creation_time=\"1\" snap_time=\"1\">\n"
              "    <range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\"/>\n"
              "  </device>\n"
              "</superblock>\n");

    scratch_dir dir;
    thinpool_test::write_file(dir.file("x.xml"), xml);
    thinpool_test::make_sparse_file(dir.file("meta"), 4 << 20);
    auto r = run_command({reference_tool("thin_restore"), "-q", "-i", dir.file("x.xml"), "-o", dir.file("meta")});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    r = run_command({reference_tool("thin_dump"), dir.file("meta")});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_EQ(r.out, xml);

    auto md = open_read_only(dir.file("meta"));
    EXPECT_NO_THROW(gen::verify(*md, rec));
    EXPECT_EQ(md->data_block_ref_count(0), 2u);   // one leaf per device in a 0.9.0 restore
    EXPECT_EQ(md->data_block_ref_count(20), 1u);
    EXPECT_EQ(md->data_block_ref_count(21), 0u);
}

// ---- our metadata, their check and dump ----

class reference_compat_generated : public ::testing::TestWithParam<std::string> {};

TEST_P(reference_compat_generated, thin_check_passes_and_thin_dump_matches_the_record) {
    REQUIRE_REFERENCE_TOOLS();
    auto named = gen::named_shape(GetParam());
    ASSERT_TRUE(named);
    gen::shape s = gen::resolve(*named);

    scratch_dir dir;
    const std::string meta = dir.file("meta");
    std::unique_ptr<gen::generator> g;
    ASSERT_NO_THROW(g = gen::generate_file(meta, s).gen);
    const gen::pool_record& rec = g->record();

    auto r = run_command({reference_tool("thin_check"), meta});
    EXPECT_EQ(r.exit_code, 0) << describe(r);

    r = run_command({reference_tool("thin_dump"), meta});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    std::string diff = first_difference(r.out, rec.to_xml());
    EXPECT_TRUE(diff.empty()) << "thin_dump differs from the generator's record: " << diff;

    if (g->held_snapshot()) {
        r = run_command({reference_tool("thin_check"), "-m", meta});
        EXPECT_EQ(r.exit_code, 0) << describe(r);
        r = run_command({reference_tool("thin_dump"), "-m", meta});
        ASSERT_EQ(r.exit_code, 0) << describe(r);
        diff = first_difference(r.out, g->held_snapshot()->to_xml());
        EXPECT_TRUE(diff.empty()) << "thin_dump -m differs from the record at the snapshot: " << diff;
    }

    // Our reader agrees too, and the shape exercises what its name promises.
    auto md = open_read_only(meta);
    EXPECT_NO_THROW(gen::verify(*md, rec));
    const std::string& name = s.name;
    if (name == "multilevel") {
        std::uint64_t most = 0;
        for (const auto& [id, dev] : rec.devices)
            most = std::max(most, dev.mappings.size());
        EXPECT_GT(most, 252u * 252u) << "no device needs a 3-level tree";
    } else if (name == "bitmaps") {
        EXPECT_GT(md->nr_metadata_blocks(), 16320u);
        std::uint64_t highest = 0;
        for (const auto& [id, dev] : rec.devices)
            dev.mappings.for_each([&](std::uint64_t, thin::block_time bt) { highest = std::max(highest, bt.data_block); });
        EXPECT_GT(highest, 16320u) << "no mapping in the data space map's second bitmap";
    } else if (name == "refcounts") {
        std::uint32_t most = 0;
        for (std::uint64_t b = 0; b < md->nr_data_blocks(); ++b)
            most = std::max(most, md->data_block_ref_count(b));
        EXPECT_GT(most, 2u) << "no data block with a count above 2 (the ref-count tree)";
        std::uint32_t most_md = 0;
        for (pdata::block_address b = 0; b < md->nr_metadata_blocks(); ++b)
            most_md = std::max(most_md, md->metadata_space_map().get_count(b));
        EXPECT_GT(most_md, 2u) << "no metadata block with a count above 2";
    } else if (name == "held") {
        EXPECT_NE(md->metadata_snap(), 0u);
        EXPECT_GT(g->stats().deletes, 0u);
        EXPECT_GT(g->held_snapshot()->devices.size(), rec.devices.size());
    } else if (name == "deletes") {
        EXPECT_GT(g->stats().deletes, 0u);
        EXPECT_GT(g->stats().discarded, 0u);
    } else if (name == "odd-block-size") {
        EXPECT_EQ(md->data_block_size(), 384u);
    }
}

INSTANTIATE_TEST_SUITE_P(shapes, reference_compat_generated,
                         ::testing::Values("tiny", "random", "multilevel", "bitmaps", "refcounts", "held", "deletes",
                                           "odd-block-size"),
                         shape_test_name);

// Other seeds of the shapes with the most structure: more variety at little cost.
class reference_compat_seeds : public ::testing::TestWithParam<std::uint64_t> {};

TEST_P(reference_compat_seeds, other_seeds_check_and_dump) {
    REQUIRE_REFERENCE_TOOLS();
    for (const char* name : {"deletes", "held", "churn"}) {
        gen::shape s;
        if (std::string(name) == "churn") {
            // A commit every few operations: blocks freed by discards, deletes and shadowing are
            // reused soon after, in both space maps.
            s = *gen::named_shape("deletes");
            s.writes_per_origin = 800;
            s.writes_per_snapshot = 100;
            s.discard_probability = 0.2;
            s.commit_interval = 7;
            s.hold_metadata_snap = true;
            s.writes_after_hold = 400;
        } else {
            s = *gen::named_shape(name);
        }
        s.seed = GetParam();
        s = gen::resolve(s);
        scratch_dir dir;
        const std::string meta = dir.file("meta");
        std::unique_ptr<gen::generator> g;
        ASSERT_NO_THROW(g = gen::generate_file(meta, s).gen) << name;
        auto r = run_command({reference_tool("thin_check"), meta});
        EXPECT_EQ(r.exit_code, 0) << name << ": " << describe(r);
        r = run_command({reference_tool("thin_dump"), meta});
        ASSERT_EQ(r.exit_code, 0) << name << ": " << describe(r);
        std::string diff = first_difference(r.out, g->record().to_xml());
        EXPECT_TRUE(diff.empty()) << name << ": " << diff;
        if (g->held_snapshot()) {
            r = run_command({reference_tool("thin_dump"), "-m", meta});
            ASSERT_EQ(r.exit_code, 0) << name << ": " << describe(r);
            diff = first_difference(r.out, g->held_snapshot()->to_xml());
            EXPECT_TRUE(diff.empty()) << name << " -m: " << diff;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(seeds, reference_compat_seeds, ::testing::Values(2u, 3u, 4u));

// ---- their restore, our reader ----

class reference_compat_restored : public ::testing::TestWithParam<std::string> {};

TEST_P(reference_compat_restored, thin_restore_output_reads_back_as_the_model) {
    REQUIRE_REFERENCE_TOOLS();
    auto named = gen::named_shape(GetParam());
    ASSERT_TRUE(named);
    gen::shape s = *named;
    s.seed = 11;
    gen::generator g(s, nullptr);  // the record alone: no b-tree code involved
    ASSERT_NO_THROW(g.run());
    const gen::pool_record& model = g.record();
    s = g.resolved_shape();

    scratch_dir dir;
    const std::string xml_path = dir.file("model.xml");
    const std::string meta = dir.file("meta");
    const std::string xml = model.to_xml();
    thinpool_test::write_file(xml_path, xml);
    // 0.9.0 restore gives every device its own leaves: allow for the unshared size.
    std::uint64_t blocks = std::max<std::uint64_t>(s.metadata_blocks, 4096 + model.total_mappings() / 50);
    thinpool_test::make_sparse_file(meta, std::min(blocks, thin::MAX_METADATA_BLOCKS) * pdata::MD_BLOCK_SIZE);

    auto r = run_command({reference_tool("thin_restore"), "-q", "-i", xml_path, "-o", meta});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    r = run_command({reference_tool("thin_check"), meta});
    EXPECT_EQ(r.exit_code, 0) << describe(r);

    auto md = open_read_only(meta);
    EXPECT_NO_THROW(gen::verify(*md, model));
    EXPECT_EQ(md->current_superblock().version, 2u);
    EXPECT_EQ(md->current_superblock().flags, 0u);
    EXPECT_EQ(md->metadata_snap(), 0u);
    EXPECT_EQ(md->nr_metadata_blocks(), std::min(blocks, thin::MAX_METADATA_BLOCKS));

    // And their dump of it is our XML again (their parser and printer agree with our writer).
    r = run_command({reference_tool("thin_dump"), meta});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    std::string diff = first_difference(r.out, xml);
    EXPECT_TRUE(diff.empty()) << diff;
}

INSTANTIATE_TEST_SUITE_P(shapes, reference_compat_restored,
                         ::testing::Values("tiny", "random", "multilevel", "bitmaps", "refcounts", "held", "deletes",
                                           "odd-block-size"),
                         shape_test_name);

// A model with extreme values: the highest dev id (empty), virtual blocks past 2^36, times past
// 2^16, the largest data block size, the last data block of a 1228-bitmap data space map.
TEST(reference_compat, restore_of_edge_values) {
    REQUIRE_REFERENCE_TOOLS();
    gen::pool_record rec;
    rec.time = 70000;
    rec.transaction = 1ull << 40;
    rec.data_block_size = 2097152;
    rec.nr_data_blocks = 20000000;
    auto& empty = rec.devices[16777215];
    empty.details = {0, 5, 69999, 70000};
    auto& big = rec.devices[3];
    big.mappings.set(1ull << 36, {19999998, 65535});
    big.mappings.set((1ull << 36) + 1, {19999999, 65535});
    big.mappings.set((1ull << 36) + 5, {7, 70000});
    big.details = {3, 1ull << 39, 1, 70000};

    scratch_dir dir;
    thinpool_test::write_file(dir.file("x.xml"), rec.to_xml());
    thinpool_test::make_sparse_file(dir.file("meta"), 64 << 20);
    auto r = run_command({reference_tool("thin_restore"), "-q", "-i", dir.file("x.xml"), "-o", dir.file("meta")});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    r = run_command({reference_tool("thin_dump"), dir.file("meta")});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_EQ(r.out, rec.to_xml());
    auto md = open_read_only(dir.file("meta"));
    EXPECT_NO_THROW(gen::verify(*md, rec));
}
