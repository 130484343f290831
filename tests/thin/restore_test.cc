// thin/restore: the streaming XML parser and the restore emitter (bulk-built trees, data counts,
// computed mapped_blocks), their errors (with line and column) and the zeroed superblock a failed
// restore leaves behind.
#include "thin/check/recount.h"
#include "thin/dump/dump.h"
#include "thin/emit/xml_emitter.h"
#include "thin/metadata/metadata.h"
#include "thin/restore/restore.h"

#include "persistent-data/io_engine.h"

#include <gtest/gtest.h>

#include <sstream>

using namespace thin;
using pdata::memory_engine;

namespace {

const std::string SPEC_XML =
    "<superblock uuid=\"\" time=\"1\" transaction=\"3\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"1000\">\n"
    "  <device dev_id=\"0\" mapped_blocks=\"5\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n"
    "    <range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\"/>\n"
    "    <single_mapping origin_block=\"10\" data_block=\"20\" time=\"0\"/>\n"
    "    <single_mapping origin_block=\"11\" data_block=\"22\" time=\"1\"/>\n"
    "  </device>\n"
    "  <device dev_id=\"1\" mapped_blocks=\"3\" transaction=\"2\" creation_time=\"1\" snap_time=\"1\">\n"
    "    <range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\"/>\n"
    "  </device>\n"
    "</superblock>\n";

std::string dump_xml(std::shared_ptr<pdata::io_engine> engine) {
    pdata::block_manager bm(engine, 64);
    std::ostringstream os;
    emit::xml_emitter e(os);
    dump::dump_metadata(bm, {}, e);
    e.flush();
    return os.str();
}

bool superblock_is_zero(memory_engine& e) { return block_is_all_zero(e.raw(0)); }

// Every reference count on disk equals a recount from scratch (format.md §7.1).
void expect_counts_exact(std::shared_ptr<pdata::io_engine> engine) {
    pdata::block_manager bm(engine, 256);
    superblock sb;
    {
        auto r = bm.read_lock(0, superblock_validator());
        sb = superblock::unpack(r.data());
    }
    auto rc = recount_references(bm, sb);
    EXPECT_TRUE(rc.damage.empty());
    auto md_counts = read_space_map_counts(bm, sb.metadata_sm(), true);
    auto data_counts = read_space_map_counts(bm, sb.data_sm(), false);
    ASSERT_EQ(md_counts.size(), rc.metadata_counts.size());
    for (std::size_t b = 0; b < md_counts.size(); ++b)
        ASSERT_EQ(md_counts[b], rc.metadata_counts[b]) << "metadata block " << b;
    ASSERT_EQ(data_counts.size(), rc.data_counts.size());
    for (std::size_t b = 0; b < data_counts.size(); ++b) ASSERT_EQ(data_counts[b], rc.data_counts[b]) << "data block " << b;
}

// A restore that must fail: the message contains `want`, and block 0 is zero afterwards although
// the output held valid metadata before.
void expect_failure(const std::string& xml, const std::string& want, restore::restore_options o = {}) {
    auto engine = std::make_shared<memory_engine>(256);
    restore::restore_xml(SPEC_XML, engine, {});
    ASSERT_FALSE(superblock_is_zero(*engine));
    try {
        restore::restore_xml(xml, engine, o);
        ADD_FAILURE() << "restore succeeded; expected: " << want;
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
    EXPECT_TRUE(superblock_is_zero(*engine));
}

std::string replace(std::string s, const std::string& from, const std::string& to) {
    auto p = s.find(from);
    EXPECT_NE(p, std::string::npos) << from;
    if (p != std::string::npos) s.replace(p, from.size(), to);
    return s;
}

} // namespace

TEST(restore, spec_example_round_trips_byte_for_byte) {
    auto engine = std::make_shared<memory_engine>(256);
    restore::restore_xml(SPEC_XML, engine, {});
    EXPECT_EQ(dump_xml(engine), SPEC_XML);
    expect_counts_exact(engine);
}

TEST(restore, result_opens_through_the_metadata_api) {
    auto engine = std::make_shared<memory_engine>(256);
    restore::restore_xml(SPEC_XML, engine, {});
    open_options oo;
    auto md = metadata::open(engine, oo);
    EXPECT_EQ(md->devices(), (std::vector<dev_id>{0, 1}));
    EXPECT_EQ(md->details(0).mapped_blocks, 5u);
    EXPECT_EQ(md->lookup(0, 11)->data_block, 22u);
    EXPECT_EQ(md->lookup(0, 11)->time, 1u);
    EXPECT_EQ(md->data_block_ref_count(0), 2u);  // each device has its own leaves
    EXPECT_EQ(md->data_block_ref_count(22), 1u);
    EXPECT_EQ(md->nr_metadata_blocks(), 256u);
    EXPECT_EQ(md->current_superblock().version, 2u);
    EXPECT_EQ(md->current_superblock().metadata_snap, 0u);
    // And it keeps working as a pool.
    md->create_thin(7);
    md->data_space_map().inc(500);
    md->insert(7, 0, 500);
    md->commit();
}

TEST(restore, mapped_blocks_are_recomputed) {
    auto engine = std::make_shared<memory_engine>(256);
    restore::restore_xml(replace(SPEC_XML, "mapped_blocks=\"5\"", "mapped_blocks=\"99\""), engine, {});
    EXPECT_EQ(dump_xml(engine), SPEC_XML);
}

TEST(restore, flags_from_xml_version_2_metadata_snap_0) {
    std::string xml = replace(SPEC_XML, "flags=\"0\" version=\"2\"", "flags=\"1\" version=\"1\" metadata_snap=\"17\"");
    auto engine = std::make_shared<memory_engine>(256);
    restore::restore_xml(xml, engine, {});
    superblock sb = superblock::unpack(engine->raw(0));
    EXPECT_EQ(sb.flags, 1u);
    EXPECT_EQ(sb.version, 2u);
    EXPECT_EQ(sb.metadata_snap, 0u);
    EXPECT_EQ(sb.metadata_nr_blocks, 256u);
}

TEST(restore, overrides_replace_xml_values) {
    auto engine = std::make_shared<memory_engine>(256);
    restore::restore_options o;
    o.transaction_id = 42;
    o.data_block_size = 256;
    o.nr_data_blocks = 2000;
    restore::restore_xml(SPEC_XML, engine, o);
    EXPECT_EQ(dump_xml(engine), replace(replace(replace(SPEC_XML, "transaction=\"3\"", "transaction=\"42\""),
                                                 "data_block_size=\"128\"", "data_block_size=\"256\""),
                                         "nr_data_blocks=\"1000\"", "nr_data_blocks=\"2000\""));
}

TEST(restore, attribute_order_and_unknown_attributes_do_not_matter) {
    std::string xml =
        "<?xml version=\"1.0\"?>\n"
        "<superblock nr_data_blocks=\"10\" data_block_size=\"128\" transaction=\"1\" time=\"0\" uuid=\"\" extra=\"x\">\n"
        "<device snap_time=\"0\" creation_time=\"0\" transaction=\"0\" mapped_blocks=\"0\" dev_id=\"4\">"
        "<single_mapping time=\"0\" data_block=\"9\" origin_block=\"3\"/></device></superblock>";
    auto engine = std::make_shared<memory_engine>(64);
    restore::restore_xml(xml, engine, {});
    EXPECT_EQ(dump_xml(engine),
              "<superblock uuid=\"\" time=\"0\" transaction=\"1\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"10\">\n"
              "  <device dev_id=\"4\" mapped_blocks=\"1\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n"
              "    <single_mapping origin_block=\"3\" data_block=\"9\" time=\"0\"/>\n"
              "  </device>\n"
              "</superblock>\n");
}

TEST(restore, large_device_gets_full_leaves_and_exact_counts) {
    // 100,000 mappings in runs and singles, interleaved times so the XML has many elements.
    std::ostringstream xml;
    xml << "<superblock uuid=\"\" time=\"2\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"400000\">\n";
    std::uint64_t mapped = 0;
    for (int dev = 0; dev < 2; ++dev) {
        xml << "<device dev_id=\"" << dev << "\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n";
        std::uint64_t vb = 0, db = dev * 200000;
        for (int i = 0; i < 10000; ++i) {
            xml << "<range_mapping origin_begin=\"" << vb << "\" data_begin=\"" << db << "\" length=\"4\" time=\"" << i % 3 << "\"/>\n";
            vb += 5;
            db += 4;
            xml << "<single_mapping origin_block=\"" << vb << "\" data_block=\"" << db + 7 << "\" time=\"1\"/>\n";
            vb += 2;
            db += 8;
            mapped += 5;
        }
        xml << "</device>\n";
    }
    xml << "</superblock>\n";
    auto engine = std::make_shared<memory_engine>(4096);
    restore::restore_xml(xml.str(), engine, {});
    expect_counts_exact(engine);
    superblock sb = superblock::unpack(engine->raw(0));
    // 2 x 50,000 mappings need 2 x 199 full leaves and one internal node each; the data space map
    // has 25 bitmaps (400,000 blocks); a dozen more blocks hold the small trees and the metadata
    // space map.
    std::uint64_t used = sb.metadata_sm().nr_allocated;
    EXPECT_LE(used, 2 * 200u + 25u + 12u);
    std::string out = dump_xml(engine);
    // Dump merges nothing here (every run is broken by a gap), so the XML comes back verbatim
    // apart from the computed mapped_blocks and the header.
    EXPECT_NE(out.find("mapped_blocks=\"50000\""), std::string::npos);
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1 + 2 * (1 + 20000 + 1) + 1);
}

TEST(restore, errors_name_line_and_column) {
    try {
        auto engine = std::make_shared<memory_engine>(64);
        restore::restore_xml(replace(SPEC_XML, "data_block=\"20\"", "data_block=\"5000\""), engine, {});
        FAIL();
    } catch (const restore::xml_error& e) {
        EXPECT_EQ(e.line(), 4u);
        EXPECT_EQ(e.column(), 5u);
        EXPECT_EQ(e.problem(), "mapping beyond end of data device (5000 >= 1000)");
    }
}

TEST(restore, mapping_beyond_end_of_data_device) {
    expect_failure(replace(SPEC_XML, "data_block=\"20\"", "data_block=\"5000\""),
                   "line 4, column 5: mapping beyond end of data device (5000 >= 1000)");
    expect_failure(replace(SPEC_XML, "data_begin=\"0\" length=\"3\"", "data_begin=\"998\" length=\"3\""),
                   "line 3, column 5: mapping beyond end of data device (1000 >= 1000)");
}

TEST(restore, bad_data_block_size) {
    expect_failure(replace(SPEC_XML, "data_block_size=\"128\"", "data_block_size=\"100\""),
                   "line 1, column 1: invalid data block size 100");
    expect_failure(replace(SPEC_XML, "data_block_size=\"128\"", "data_block_size=\"4194304\""),
                   "invalid data block size");
    restore::restore_options o;
    o.data_block_size = 192;
    expect_failure(SPEC_XML, "invalid data block size 192", o);
}

TEST(restore, duplicate_device) {
    expect_failure(replace(SPEC_XML, "dev_id=\"1\"", "dev_id=\"0\""), "line 7, column 3: device 0 already exists");
}

TEST(restore, truncated_xml) {
    expect_failure(SPEC_XML.substr(0, SPEC_XML.find("  </device>")), "no element found");
    expect_failure(SPEC_XML.substr(0, 200), "line 3, column 1: no element found");
    expect_failure("", "line 1, column 1: no element found");
}

TEST(restore, malformed_and_misplaced_elements) {
    expect_failure(replace(SPEC_XML, "<single_mapping origin_block=\"10\"", "<bogus origin_block=\"10\""),
                   "line 4, column 5: unknown tag type <bogus>");
    expect_failure(replace(SPEC_XML, "origin_block=\"10\"", "origin_block=\"ten\""),
                   "line 4, column 5: <single_mapping> origin_block=\"ten\" is not a non-negative integer");
    expect_failure(replace(SPEC_XML, " time=\"0\"/>\n    <single_mapping origin_block=\"11\"",
                           "/>\n    <single_mapping origin_block=\"11\""),
                   "line 4, column 5: <single_mapping> has no time attribute");
    expect_failure(replace(SPEC_XML, "origin_block=\"11\"", "origin_block=\"1\""), "line 5, column 5: mapping of origin block 1 is out of order");
    expect_failure(replace(SPEC_XML, "length=\"3\" time=\"0\"/>\n  </device>\n</superblock>", "length=\"0\" time=\"0\"/>\n  </device>\n</superblock>"),
                   "line 8, column 5: <range_mapping> has length 0");
    expect_failure("<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"1\">"
                   "<single_mapping origin_block=\"0\" data_block=\"0\" time=\"0\"/></superblock>",
                   "outside a <device>");
    expect_failure("<device dev_id=\"0\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\"/>",
                   "<device> outside <superblock>");
    expect_failure(replace(SPEC_XML, "  <device dev_id=\"1\"", "  <def name=\"1\"/>\n  <device dev_id=\"1\""),
                   "line 7, column 3: <def>");
    expect_failure(replace(SPEC_XML, "time=\"1\"/>", "time=\"16777216\"/>"), "does not fit in the 24 bits");
    expect_failure(replace(SPEC_XML, "flags=\"0\"", "flags=\"4\""), "unsupported superblock flags 4");
    expect_failure(replace(SPEC_XML, "dev_id=\"1\"", "dev_id=\"16777216\""), "dev_id 16777216 is too large");
    expect_failure("<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\"></superblock>",
                   "line 1, column 1: <superblock> has no nr_data_blocks attribute");
    expect_failure("not xml at all", "line 1, column 1: syntax error");
}

TEST(restore, output_too_small_for_the_metadata) {
    std::ostringstream xml;
    xml << "<superblock uuid=\"\" time=\"0\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"1000000\">\n"
           "<device dev_id=\"0\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n"
           "<range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"1000000\" time=\"0\"/>\n"
           "</device></superblock>\n";
    auto engine = std::make_shared<memory_engine>(256);
    restore::restore_xml(SPEC_XML, engine, {});
    EXPECT_ANY_THROW(restore::restore_xml(xml.str(), engine, {}));
    EXPECT_TRUE(superblock_is_zero(*engine));
}
