// thin/restore: the streaming XML parser and the restore emitter (bulk-built trees, data counts,
// computed mapped_blocks), their errors (with line and column) and the zeroed superblock a failed
// restore leaves behind.
#include "thin/check/recount.h"
#include "thin/dump/dump.h"
#include "thin/emit/xml_emitter.h"
#include "thin/metadata/metadata.h"
#include "thin/restore/read_ahead.h"
#include "thin/restore/restore.h"

#include "persistent-data/io_engine.h"

#include "tests/support/dump_xml.h"
#include "tests/support/snapshot_xml.h"

#include <gtest/gtest.h>

#include "tests/support/reference_tools.h"

#include <algorithm>
#include <functional>
#include <sstream>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

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

using thinpool_test::dump_xml;

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

// Ring shapes for the two stages: the default, and tiny ones where every few events cross from
// one batch to the next and the parser waits for the emitter stage.
const restore::parse_options RING_SHAPES[] = {{}, {2, 1}, {2, 2}, {3, 5}};

std::string describe(const restore::parse_options& po) {
    if (!po.read_ahead) return std::to_string(po.batches) + " batches of " + std::to_string(po.events_per_batch) + " events, reading inline";
    return std::to_string(po.batches) + " batches of " + std::to_string(po.events_per_batch) + " events";
}

// A restore that must fail: the message contains `want`, and block 0 is zero afterwards although
// the output held valid metadata before; the same with every ring shape.
void expect_failure(const std::string& xml, const std::string& want, restore::restore_options o = {},
                    std::size_t blocks = 256) {
    for (const auto& po : RING_SHAPES) {
        SCOPED_TRACE(describe(po));
        auto engine = std::make_shared<memory_engine>(blocks);
        restore::restore_xml(SPEC_XML, engine, {});
        ASSERT_FALSE(superblock_is_zero(*engine));
        try {
            restore::restore_xml(xml, engine, o, po);
            ADD_FAILURE() << "restore succeeded; expected: " << want;
        } catch (const std::exception& e) {
            EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
        }
        EXPECT_TRUE(superblock_is_zero(*engine));
    }
}

// The 1-based line on which `what` first occurs in text.
std::uint64_t line_of(const std::string& text, const std::string& what) {
    auto p = text.find(what);
    EXPECT_NE(p, std::string::npos) << what;
    return 1 + std::uint64_t(std::count(text.begin(), text.begin() + std::ptrdiff_t(p), '\n'));
}

// The first mapping element of the device with this id (unique: data blocks are never reused).
std::string first_mapping_of(const std::string& xml, int dev_id) {
    auto dev = xml.find("<device dev_id=\"" + std::to_string(dev_id) + "\"");
    EXPECT_NE(dev, std::string::npos);
    auto m = xml.find("<single_mapping", dev);
    return xml.substr(m, xml.find("/>", m) + 2 - m);
}

// element with attribute name set to value.
std::string with_attr(const std::string& element, const std::string& name, const std::string& value) {
    auto p = element.find(" " + name + "=\"") + name.size() + 3;
    return element.substr(0, p) + value + element.substr(element.find('"', p));
}

// A document exactly as thin_dump prints it: `devices` devices (the last one empty) of `per_device`
// mappings each, singles and runs of 3 alternating with gaps so that nothing merges.
std::string canonical_xml(int devices, int per_device, std::uint64_t nr_data_blocks = 1000000) {
    std::ostringstream xml;
    xml << "<superblock uuid=\"\" time=\"3\" transaction=\"7\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\""
        << nr_data_blocks << "\">\n";
    std::uint64_t db = 0;
    for (int dev = 0; dev < devices; ++dev) {
        bool empty = dev == devices - 1;
        std::ostringstream body;
        std::uint64_t vb = std::uint64_t(dev) * 7, mapped = 0;
        for (int i = 0; !empty && i < per_device; ++i) {
            if (i % 2) {
                body << "    <range_mapping origin_begin=\"" << vb << "\" data_begin=\"" << db << "\" length=\"3\" time=\""
                     << i % 3 << "\"/>\n";
                vb += 3;
                db += 3;
                mapped += 3;
            } else {
                body << "    <single_mapping origin_block=\"" << vb << "\" data_block=\"" << db << "\" time=\"" << i % 3
                     << "\"/>\n";
                vb += 1;
                db += 1;
                mapped += 1;
            }
            vb += 1 + i % 4;
            db += 2;
        }
        xml << "  <device dev_id=\"" << dev * 3 << "\" mapped_blocks=\"" << mapped << "\" transaction=\"" << dev
            << "\" creation_time=\"" << dev % 2 << "\" snap_time=\"3\">\n"
            << body.str() << "  </device>\n";
    }
    xml << "</superblock>\n";
    return xml.str();
}

// Records the events it is given; throws `fail` at the range_map numbered fail_at (1-based).
struct recording_emitter : emitter {
    std::vector<std::string> events;
    std::uint64_t fail_at = 0;
    std::function<void()> fail;
    std::uint64_t maps = 0;

    void begin_superblock(const superblock_info& sb) override {
        events.push_back("sb " + std::to_string(sb.time) + " " + std::to_string(sb.nr_data_blocks));
    }
    void end_superblock() override { events.push_back("/sb"); }
    void begin_device(const device_info& d) override { events.push_back("dev " + std::to_string(d.dev_id)); }
    void end_device() override { events.push_back("/dev"); }
    void range_map(std::uint64_t vb, std::uint64_t db, std::uint64_t len, std::uint32_t t) override {
        if (++maps == fail_at) fail();
        events.push_back(std::to_string(vb) + " " + std::to_string(db) + " " + std::to_string(len) + " " +
                         std::to_string(t));
    }
};

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

// Snapshots that repeat most of an earlier device reference its leaves, as in the kernel: far
// fewer leaves than one tree per device, every count still what a recount over distinct nodes
// gives (a shared leaf's data blocks counted once), and the dump gives the XML back.
TEST(restore, snapshots_share_the_leaves_they_repeat) {
    for (unsigned seed : {1u, 2u}) {
        SCOPED_TRACE("seed " + std::to_string(seed));
        const std::string xml = thinpool_test::snapshot_series_xml(seed);
        auto engine = std::make_shared<memory_engine>(4096);
        restore::restore_xml(xml, engine, {});
        expect_counts_exact(engine);
        EXPECT_EQ(dump_xml(engine), xml);

        pdata::block_manager bm(engine, 256);
        superblock sb = superblock::unpack(engine->raw(0));
        auto rc = recount_references(bm, sb);
        std::uint64_t mappings = 0;
        for (std::size_t pos = 0; (pos = xml.find("mapped_blocks=\"", pos)) != std::string::npos;)
            mappings += std::stoull(xml.substr(pos += 15));
        // One full tree per device would need mappings / 252 leaves; 4 devices that each repeat
        // most of another store well under half of that.
        std::uint64_t used = sb.metadata_sm().nr_allocated;
        EXPECT_LT(used, mappings / 252 / 2 + 20) << mappings << " mappings";
        std::uint64_t shared = 0;
        for (auto c : rc.metadata_counts) shared += c > 1;
        EXPECT_GT(shared, mappings / 252 / 4);
    }
}

// Writes and discards through the metadata API break the sharing the restore set up, as they
// break a snapshot's in the kernel: the leaf is copied and its data blocks counted again.
TEST(restore, shared_leaves_keep_working_as_a_pool) {
    const std::string xml = thinpool_test::snapshot_series_xml(3);
    auto engine = std::make_shared<memory_engine>(4096);
    restore::restore_xml(xml, engine, {});
    {
        auto md = metadata::open(engine, open_options{});
        std::uint64_t next = md->data_space_map().nr_blocks() - 100;
        for (dev_id d : md->devices()) {
            for (std::uint64_t vb = d * 37; vb < 20000; vb += 997) {
                md->data_space_map().inc(next);
                md->insert(d, vb, next++);
                md->remove(d, vb + 500);
            }
        }
        md->commit();
    }
    expect_counts_exact(engine);
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

// ---- the two stages: parser thread -> ring of event batches -> emitter stage

TEST(restore_pipeline, many_batches_round_trip_byte_for_byte) {
    const std::string xml = canonical_xml(4, 3000);
    for (const auto& po : RING_SHAPES) {
        SCOPED_TRACE(describe(po));
        auto engine = std::make_shared<memory_engine>(1024);
        restore::restore_xml(xml, engine, {}, po);
        EXPECT_EQ(dump_xml(engine), xml);
        expect_counts_exact(engine);
    }
}

TEST(restore_pipeline, from_a_file_across_many_read_chunks) {
    // Over 1 MiB, so the file is read and parsed in more than one piece.
    const std::string xml = canonical_xml(3, 12000);
    ASSERT_GT(xml.size(), std::size_t(1) << 20);
    thinpool_test::scratch_dir dir;
    thinpool_test::write_file(dir.file("in.xml"), xml);
    for (const auto& po : {restore::parse_options{}, restore::parse_options{2, 3}, restore::parse_options{4, 4096, false}}) {
        SCOPED_TRACE(describe(po) + (po.read_ahead ? ", read ahead" : ", no read ahead"));
        auto engine = std::make_shared<memory_engine>(2048);
        std::uint64_t last = 0;
        restore::restore_xml_file(dir.file("in.xml"), engine, {}, [&](std::uint64_t done) { last = done; }, po);
        EXPECT_EQ(last, xml.size());
        EXPECT_EQ(dump_xml(engine), xml);
    }
}

TEST(restore_pipeline, tiny_inputs) {
    const std::string empty_pool =
        "<superblock uuid=\"\" time=\"0\" transaction=\"0\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"0\">\n"
        "</superblock>\n";
    const std::string one_empty_device =
        "<superblock uuid=\"\" time=\"0\" transaction=\"1\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"1\">\n"
        "  <device dev_id=\"5\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n"
        "  </device>\n"
        "</superblock>\n";
    const std::string one_mapping =
        "<superblock uuid=\"\" time=\"0\" transaction=\"1\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"1\">\n"
        "  <device dev_id=\"5\" mapped_blocks=\"1\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n"
        "    <single_mapping origin_block=\"0\" data_block=\"0\" time=\"0\"/>\n"
        "  </device>\n"
        "</superblock>\n";
    for (const auto& po : RING_SHAPES) {
        SCOPED_TRACE(describe(po));
        for (const std::string& xml : {empty_pool, one_empty_device, one_mapping, SPEC_XML}) {
            auto engine = std::make_shared<memory_engine>(64);
            restore::restore_xml(xml, engine, {}, po);
            EXPECT_EQ(dump_xml(engine), xml);
        }
    }
    expect_failure("", "line 1, column 1: no element found");
    expect_failure("<superblock", "line 1, column 1: unclosed token");
    expect_failure("<?xml version=\"1.0\"?>\n", "no element found");
    expect_failure("<superblock uuid=\"\" time=\"0\" transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"0\">",
                   "line 1, column 87: no element found");
}

TEST(restore_pipeline, parser_stage_error_mid_stream) {
    const std::string xml = canonical_xml(4, 3000);
    // Past many batches: an element the parser refuses, and malformed XML that Expat refuses.
    const std::string at = first_mapping_of(xml, 6);
    std::uint64_t line = line_of(xml, at);
    ASSERT_GT(line, 6000u);
    expect_failure(replace(xml, at, "<bogus/>" + at), "line " + std::to_string(line) + ", column 5: unknown tag type <bogus>");
    expect_failure(replace(xml, at, "<" + at), "line " + std::to_string(line) + ", column 6: not well-formed");
    expect_failure(replace(xml, at, with_attr(at, "origin_block", "-1")),
                   "line " + std::to_string(line) + ", column 5: <single_mapping> origin_block=\"-1\" is not a non-negative integer");
    // Truncated in the middle of the stream.
    expect_failure(xml.substr(0, xml.find(at)), "line " + std::to_string(line) + ", column 5: no element found");
}

TEST(restore_pipeline, emitter_stage_error_mid_stream) {
    const std::string xml = canonical_xml(4, 3000, 1000000);
    const std::string at = first_mapping_of(xml, 6);
    std::uint64_t line = line_of(xml, at);
    const std::string L = "line " + std::to_string(line);
    // A mapping beyond nr_data_blocks, found by the emitter stage.
    expect_failure(replace(xml, at, with_attr(at, "data_block", "99999999")),
                   L + ", column 5: mapping beyond end of data device (99999999 >= 1000000)");
    // A duplicate device.
    std::string dup = replace(xml, "<device dev_id=\"6\"", "<device dev_id=\"3\"");
    expect_failure(dup, "line " + std::to_string(line_of(dup, "<device dev_id=\"3\" mapped_blocks=\"6000\" transaction=\"2\"")) +
                            ", column 3: device 3 already exists");
    // Out of order, found by the emitter stage.
    expect_failure(replace(xml, at, with_attr(at, "origin_block", "99999999")),
                   "line " + std::to_string(line + 1) + ", column 5: mapping of origin block ");
}

TEST(restore_pipeline, first_error_in_document_order_wins) {
    const std::string xml = canonical_xml(4, 3000, 1000000);
    const std::string at = first_mapping_of(xml, 6);
    std::uint64_t line = line_of(xml, at);
    // The emitter stage's error comes first, the parser meets its own a few lines on (by then it
    // is well ahead of the emitter stage): the emitter's is reported.
    std::string both = replace(xml, at, with_attr(at, "data_block", "99999999"));
    auto later = both.find("<single_mapping", both.find(with_attr(at, "data_block", "99999999")) + 1);
    later = both.find("<single_mapping", later + 1);
    both.insert(later, "<bogus/>");
    expect_failure(both, "line " + std::to_string(line) + ", column 5: mapping beyond end of data device");
    // The parser's error comes first: it is reported although a bad mapping follows.
    std::string parser_first = replace(xml, at, "<bogus/>" + at);
    parser_first = replace(parser_first, "<device dev_id=\"9\"", "<device dev_id=\"0\"");
    expect_failure(parser_first, "line " + std::to_string(line) + ", column 5: unknown tag type <bogus>");
}

TEST(restore_pipeline, emitter_error_at_the_start_stops_a_parser_far_ahead) {
    // The first event fails while the parser still has megabytes to go: it must be stopped,
    // not left waiting for a free batch, and must not read on to the end.
    std::string xml = replace(canonical_xml(2, 60000), "data_block_size=\"128\"", "data_block_size=\"100\"");
    ASSERT_GT(xml.size(), std::size_t(3) << 20);
    thinpool_test::scratch_dir dir;
    thinpool_test::write_file(dir.file("in.xml"), xml);
    for (const auto& po : RING_SHAPES) {
        SCOPED_TRACE(describe(po));
        auto engine = std::make_shared<memory_engine>(1024);
        std::uint64_t read = 0;
        try {
            restore::restore_xml_file(dir.file("in.xml"), engine, {}, [&](std::uint64_t done) { read = done; }, po);
            ADD_FAILURE() << "restore succeeded";
        } catch (const restore::xml_error& e) {
            EXPECT_EQ(e.line(), 1u);
            EXPECT_EQ(e.column(), 1u);
            EXPECT_EQ(e.problem(), "invalid data block size 100 sectors (must be a multiple of 128 between 128 and 2097152)")
                << e.what();
        }
        EXPECT_LT(read, xml.size());
        EXPECT_TRUE(superblock_is_zero(*engine));
    }
}

TEST(restore_pipeline, emitter_exceptions_reach_the_caller_with_the_position) {
    const std::string xml = canonical_xml(3, 2000);
    for (const auto& po : RING_SHAPES) {
        SCOPED_TRACE(describe(po));
        // Unfailing: every event arrives, in order.
        recording_emitter all;
        restore::parse_xml(xml, all, "doc", po);
        ASSERT_EQ(all.events.size(), 1 + 2 * 3 + 2 * 2000 + 1u);
        EXPECT_EQ(all.events.front(), "sb 3 1000000");
        EXPECT_EQ(all.events[1], "dev 0");
        EXPECT_EQ(all.events[2], "0 0 1 0");
        EXPECT_EQ(all.events[3], "2 3 3 1");
        EXPECT_EQ(all.events.back(), "/sb");

        // A std::exception becomes an xml_error at the element; nothing more is emitted.
        recording_emitter r;
        r.fail_at = 2500;
        r.fail = [] { throw std::runtime_error("no space"); };
        try {
            restore::parse_xml(xml, r, "doc", po);
            ADD_FAILURE() << "parse succeeded";
        } catch (const restore::xml_error& e) {
            // Mapping 2500 is the 500th of device 3 (the second device), after its <device> line.
            EXPECT_EQ(e.line(), 1 + (1 + 2000 + 1) + 1 + 500u) << e.what();
            EXPECT_EQ(e.column(), 5u);
            EXPECT_EQ(std::string(e.what()), "doc: line " + std::to_string(e.line()) + ", column 5: no space");
        }
        EXPECT_EQ(r.maps, 2500u);
        EXPECT_EQ(r.events.size(), 1 + 1 + 2000 + 1 + 1 + 499u);

        // Anything else passes through as it is.
        recording_emitter odd;
        odd.fail_at = 1;
        odd.fail = [] { throw 42; };
        try {
            restore::parse_xml(xml, odd, "doc", po);
            ADD_FAILURE() << "parse succeeded";
        } catch (int v) {
            EXPECT_EQ(v, 42);
        }
    }
}

TEST(restore_pipeline, parser_side_failure_outside_expat_joins_the_emitter_stage) {
    // The progress callback throws after the first 1 MiB: the events parsed so far are applied,
    // the emitter stage ends, and the callback's exception is the one reported.
    const std::string xml = canonical_xml(2, 40000);
    thinpool_test::scratch_dir dir;
    thinpool_test::write_file(dir.file("in.xml"), xml);
    for (const auto& po : RING_SHAPES) {
        SCOPED_TRACE(describe(po));
        recording_emitter r;
        try {
            restore::parse_xml_file(dir.file("in.xml"), r, [](std::uint64_t) { throw std::logic_error("cancelled"); },
                                    po);
            ADD_FAILURE() << "parse succeeded";
        } catch (const std::logic_error& e) {
            EXPECT_EQ(std::string(e.what()), "cancelled");
        }
        EXPECT_GT(r.maps, 0u);
        EXPECT_LT(r.maps, 80000u);
        EXPECT_NE(r.events.back(), "/sb");
    }
    recording_emitter r;
    EXPECT_THROW(restore::parse_xml_file(dir.file("missing.xml"), r), std::runtime_error);
    EXPECT_TRUE(r.events.empty());
}

TEST(restore_pipeline, attribute_numbers) {
    auto sm = [](const std::string& ob) {
        return replace(SPEC_XML, "origin_block=\"10\"", "origin_block=\"" + ob + "\"");
    };
    const std::string NOT_INT = "is not a non-negative integer";
    for (const char* bad : {"", "+1", " 1", "1 ", "0x10", "1e3", "-0", "12a"})
        expect_failure(sm(bad), std::string("line 4, column 5: <single_mapping> origin_block=\"") + bad + "\" " + NOT_INT);
    expect_failure(sm("18446744073709551616"), "origin_block=\"18446744073709551616\" is too large (at most 18446744073709551615)");
    expect_failure(sm("99999999999999999999x"), "origin_block=\"99999999999999999999x\" is too large");
    expect_failure(sm("1844674407370955161x"), "origin_block=\"1844674407370955161x\" is not a non-negative integer");
    expect_failure(sm("00000000000000000000000x"), "is not a non-negative integer");
    expect_failure(replace(SPEC_XML, "time=\"1\"/>", "time=\"0000000000000000000004294967296\"/>"), "is too large (at most 4294967295)");
    expect_failure(replace(SPEC_XML, "time=\"1\"/>", "time=\"4294967296\"/>"), "time=\"4294967296\" is too large (at most 4294967295)");
    // Leading zeros are fine, and the largest value parses (then the emitter refuses it).
    auto engine = std::make_shared<memory_engine>(64);
    restore::restore_xml(replace(SPEC_XML, "origin_block=\"10\"", "origin_block=\"0010\""), engine, {});
    EXPECT_EQ(dump_xml(engine), SPEC_XML);
    restore::restore_xml(replace(SPEC_XML, "origin_block=\"10\"", "origin_block=\"0000000000000000000000010\""), engine, {});
    EXPECT_EQ(dump_xml(engine), SPEC_XML);
    expect_failure(replace(SPEC_XML, "data_block=\"22\"", "data_block=\"18446744073709551615\""),
                   "line 5, column 5: mapping beyond end of data device (18446744073709551615 >= 1000)");
}

// ---- read_ahead: the file read on a thread of its own

namespace {

struct fd_closer {
    int fd;
    ~fd_closer() { ::close(fd); }
};

std::string read_all(restore::read_ahead& r, std::size_t* pieces = nullptr) {
    std::string all;
    for (;;) {
        std::string_view piece = r.next();
        if (piece.empty()) break;
        all.append(piece);
        if (pieces) ++*pieces;
    }
    EXPECT_TRUE(r.next().empty());  // and stays at the end
    return all;
}

} // namespace

TEST(restore_read_ahead, delivers_the_file_in_order_at_any_size) {
    thinpool_test::scratch_dir dir;
    std::string text;
    for (int i = 0; text.size() < 100; ++i) text += std::to_string(i) + ",";
    for (std::size_t size : {std::size_t(0), std::size_t(1), std::size_t(7), std::size_t(8), std::size_t(9),
                             std::size_t(63), std::size_t(64), std::size_t(100)}) {
        for (std::size_t chunks : {std::size_t(2), std::size_t(3)}) {
            SCOPED_TRACE(std::to_string(size) + " bytes, " + std::to_string(chunks) + " chunks");
            thinpool_test::write_file(dir.file("f"), text.substr(0, size));
            int fd = ::open(dir.file("f").c_str(), O_RDONLY);
            ASSERT_GE(fd, 0);
            fd_closer c{fd};
            restore::read_ahead r(fd, "f", 8, chunks);
            std::size_t pieces = 0;
            EXPECT_EQ(read_all(r, &pieces), text.substr(0, size));
            EXPECT_EQ(pieces, (size + 7) / 8);
        }
    }
}

TEST(restore_read_ahead, read_errors_are_reported_in_order) {
    thinpool_test::scratch_dir dir;
    int fd = ::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY);
    ASSERT_GE(fd, 0);
    fd_closer c{fd};
    restore::read_ahead r(fd, "the-dir", 8, 2);
    try {
        r.next();
        ADD_FAILURE() << "read of a directory succeeded";
    } catch (const std::runtime_error& e) {
        EXPECT_EQ(std::string(e.what()), std::string("the-dir: read failed: ") + std::strerror(EISDIR));
    }
}

TEST(restore_read_ahead, can_be_abandoned_at_any_point) {
    thinpool_test::scratch_dir dir;
    thinpool_test::write_file(dir.file("f"), std::string(1000, 'x'));
    for (int taken = 0; taken < 5; ++taken) {
        int fd = ::open(dir.file("f").c_str(), O_RDONLY);
        ASSERT_GE(fd, 0);
        fd_closer c{fd};
        restore::read_ahead r(fd, "f", 4, 2);  // the reader soon waits for room
        for (int i = 0; i < taken; ++i) EXPECT_EQ(r.next(), "xxxx");
    }  // destroyed while the reader waits: must not hang
}

TEST(restore_pipeline, attribute_names_match_exactly_in_any_order) {
    // thin_dump's order takes a fast path; any other order, extra attributes and names that only
    // share a prefix with the real ones take the general one. All mean the same.
    const std::string expected = SPEC_XML;
    std::string xml = replace(SPEC_XML, "<range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\"/>\n    <single",
                              "<range_mapping time=\"0\" length=\"3\" data_begin=\"0\" origin_begin=\"0\"/>\n    <single");
    xml = replace(xml, "<range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\"/>\n  </device>\n</superblock>",
                  "<range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\" times=\"9\"/>\n  </device>\n</superblock>");
    xml = replace(xml, "origin_block=\"10\" data_block=\"20\" time=\"0\"", "origin_block=\"10\" data_block=\"20\" time=\"0\" tim=\"7\"");
    xml = replace(xml, "origin_block=\"11\" data_block=\"22\" time=\"1\"", "origin_block_=\"5\" origin_block=\"11\" data_block=\"22\" time=\"1\"");
    for (const auto& po : RING_SHAPES) {
        SCOPED_TRACE(describe(po));
        auto engine = std::make_shared<memory_engine>(64);
        restore::restore_xml(xml, engine, {}, po);
        EXPECT_EQ(dump_xml(engine), expected);
    }
    // A name that only looks like a required one does not stand in for it.
    expect_failure(replace(SPEC_XML, "data_block=\"20\" time=\"0\"", "data_block=\"20\" tim=\"0\""),
                   "line 4, column 5: <single_mapping> has no time attribute");
    expect_failure(replace(SPEC_XML, "data_block=\"20\" time=\"0\"", "data_block=\"20\" time_=\"0\""),
                   "line 4, column 5: <single_mapping> has no time attribute");
    expect_failure(replace(SPEC_XML, "<range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\"/>\n    <single",
                           "<range_mapping origin_begin=\"0\" data_begin=\"0\" lengths=\"3\" time=\"0\"/>\n    <single"),
                   "line 3, column 5: <range_mapping> has no length attribute");
    expect_failure(replace(SPEC_XML, "<single_mapping origin_block=\"10\"", "<single_mappings origin_block=\"10\""),
                   "line 4, column 5: unknown tag type <single_mappings>");
    expect_failure(replace(SPEC_XML, "<single_mapping origin_block=\"10\"", "<single_mappin origin_block=\"10\""),
                   "line 4, column 5: unknown tag type <single_mappin>");
}
