// thin/dump and thin/emit: the metadata walker driving the XML, human-readable and JSON emitters,
// on pools built through the thin metadata API in memory (independently of restore).
#include "thin/dump/dump.h"
#include "thin/emit/human_readable_emitter.h"
#include "thin/emit/json_emitter.h"
#include "thin/emit/xml_emitter.h"
#include "thin/metadata/metadata.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/io_engine.h"

#include "tests/support/dump_xml.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <sstream>

using namespace thin;
using pdata::memory_engine;

namespace {

// tools.md §2.2: the exact output of thin_dump 0.9.0 for this pool.
const char* const SPEC_XML =
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

// tools.md §2.4 for the same pool.
const char* const SPEC_HUMAN =
    "begin superblock: \"\", 1, 3, 0, 2, 128, 1000\n"
    "device: 0\n"
    "mapped_blocks: 5\n"
    "transaction: 0\n"
    "creation time: 0\n"
    "snap time: 1\n"
    "    (0..2) -> (0..2), 0\n"
    "    10 -> 20, 0\n"
    "    11 -> 22, 1\n"
    "\n"
    "device: 1\n"
    "mapped_blocks: 3\n"
    "transaction: 2\n"
    "creation time: 1\n"
    "snap time: 1\n"
    "    (0..2) -> (0..2), 0\n"
    "\n"
    "end superblock\n";

const char* const SPEC_JSON =
    "{\n"
    "  \"superblock\": {\"uuid\": \"\", \"time\": 1, \"transaction\": 3, \"flags\": 0, \"version\": 2, "
    "\"data_block_size\": 128, \"nr_data_blocks\": 1000},\n"
    "  \"devices\": [\n"
    "    {\"dev_id\": 0, \"mapped_blocks\": 5, \"transaction\": 0, \"creation_time\": 0, \"snap_time\": 1, \"mappings\": [\n"
    "      {\"origin_begin\": 0, \"data_begin\": 0, \"length\": 3, \"time\": 0},\n"
    "      {\"origin_begin\": 10, \"data_begin\": 20, \"length\": 1, \"time\": 0},\n"
    "      {\"origin_begin\": 11, \"data_begin\": 22, \"length\": 1, \"time\": 1}\n"
    "    ]},\n"
    "    {\"dev_id\": 1, \"mapped_blocks\": 3, \"transaction\": 2, \"creation_time\": 1, \"snap_time\": 1, \"mappings\": [\n"
    "      {\"origin_begin\": 0, \"data_begin\": 0, \"length\": 3, \"time\": 0}\n"
    "    ]}\n"
    "  ]\n"
    "}\n";

void map(metadata& md, dev_id d, std::uint64_t vb, std::uint64_t db) {
    md.data_space_map().inc(db);  // the reference insert() takes over
    md.insert(d, vb, db);
}

// The pool of tools.md §2.2, made the way a kernel would make it.
std::shared_ptr<memory_engine> spec_pool() {
    auto engine = std::make_shared<memory_engine>(256);
    auto md = metadata::format(engine, 128, 1000);
    md->create_thin(0);
    for (std::uint64_t b = 0; b < 3; ++b) map(*md, 0, b, b);
    map(*md, 0, 10, 20);
    md->set_transaction_id(0, 2);
    md->create_snap(1, 0);  // time 1
    md->remove(1, 10);
    map(*md, 0, 11, 22);
    md->set_transaction_id(2, 3);
    md->commit();
    return engine;
}

using thinpool_test::dump_xml;

template <typename Emitter>
std::string dump_to_file(std::shared_ptr<pdata::io_engine> engine, const dump::dump_options& o = {}) {
    std::FILE* f = std::tmpfile();
    {
        pdata::block_manager bm(engine, 64);
        Emitter e(f);
        dump::dump_metadata(bm, o, e);
        e.flush();
    }
    std::string s;
    std::rewind(f);
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    std::fclose(f);
    return s;
}

} // namespace

TEST(dump, spec_example_xml_is_exact) { EXPECT_EQ(dump_xml(spec_pool()), SPEC_XML); }

TEST(dump, spec_example_human_readable_is_exact) {
    EXPECT_EQ(dump_to_file<emit::human_readable_emitter>(spec_pool()), SPEC_HUMAN);
}

TEST(dump, spec_example_json_has_every_run) {
    EXPECT_EQ(dump_to_file<emit::json_emitter>(spec_pool()), SPEC_JSON);
}

TEST(dump, json_of_a_pool_without_devices) {
    auto engine = std::make_shared<memory_engine>(64);
    metadata::format(engine, 256, 7);
    EXPECT_EQ(dump_to_file<emit::json_emitter>(engine),
              "{\n  \"superblock\": {\"uuid\": \"\", \"time\": 0, \"transaction\": 0, \"flags\": 0, \"version\": 2, "
              "\"data_block_size\": 256, \"nr_data_blocks\": 7},\n  \"devices\": []\n}\n");
}

TEST(dump, device_filter_keeps_ascending_order) {
    dump::dump_options o;
    o.dev_ids = {1, 0};
    EXPECT_EQ(dump_xml(spec_pool(), o), SPEC_XML);
    o.dev_ids = {1, 42};
    std::string x = dump_xml(spec_pool(), o);
    EXPECT_EQ(x.find("dev_id=\"0\""), std::string::npos);
    EXPECT_NE(x.find("dev_id=\"1\""), std::string::npos);
}

TEST(dump, skip_mappings_and_overrides) {
    dump::dump_options o;
    o.skip_mappings = true;
    o.transaction_id = 9;
    o.data_block_size = 256;
    o.nr_data_blocks = 77;
    EXPECT_EQ(dump_xml(spec_pool(), o),
              "<superblock uuid=\"\" time=\"1\" transaction=\"9\" flags=\"0\" version=\"2\" data_block_size=\"256\" nr_data_blocks=\"77\">\n"
              "  <device dev_id=\"0\" mapped_blocks=\"5\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n"
              "  </device>\n"
              "  <device dev_id=\"1\" mapped_blocks=\"3\" transaction=\"2\" creation_time=\"1\" snap_time=\"1\">\n"
              "  </device>\n"
              "</superblock>\n");
}

TEST(dump, metadata_snapshot_shows_the_frozen_state) {
    auto engine = std::make_shared<memory_engine>(256);
    {
        auto md = metadata::format(engine, 128, 100);
        md->create_thin(5);
        map(*md, 5, 0, 1);
        md->set_transaction_id(0, 1);
        md->reserve_metadata_snap();  // commits
        md->create_snap(6, 5);
        map(*md, 5, 1, 2);
        md->set_transaction_id(1, 2);
        md->set_needs_check();
        md->commit();
    }
    dump::dump_options o;
    o.metadata_snap = true;
    EXPECT_EQ(dump_xml(engine, o),
              "<superblock uuid=\"\" time=\"0\" transaction=\"1\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"0\">\n"
              "  <device dev_id=\"5\" mapped_blocks=\"1\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n"
              "    <single_mapping origin_block=\"0\" data_block=\"1\" time=\"0\"/>\n"
              "  </device>\n"
              "</superblock>\n");
    std::string live = dump_xml(engine);
    EXPECT_EQ(live.rfind("<superblock uuid=\"\" time=\"1\" transaction=\"2\" flags=\"1\" version=\"2\" "
                         "data_block_size=\"128\" nr_data_blocks=\"100\">\n", 0), 0u) << live;
    EXPECT_NE(live.find("dev_id=\"6\""), std::string::npos);

    pdata::block_manager bm(engine, 64);
    pdata::block_address snap = 0;
    {
        auto r = bm.read_lock(0, superblock_validator());
        snap = superblock::unpack(r.data()).metadata_snap;
    }
    o.metadata_snap_block = snap;
    EXPECT_NO_THROW(dump_xml(engine, o));
    o.metadata_snap_block = snap + 1;
    EXPECT_THROW(dump_xml(engine, o), dump::dump_error);
}

TEST(dump, no_metadata_snapshot_is_an_error) {
    dump::dump_options o;
    o.metadata_snap = true;
    try {
        dump_xml(spec_pool(), o);
        FAIL() << "expected dump_error";
    } catch (const dump::dump_error& e) {
        EXPECT_STREQ(e.what(), "no current metadata snap");
    }
}

TEST(dump, runs_merge_across_leaves_and_split_on_time) {
    // 3000 consecutive mappings span a dozen leaves: still one run. Then a time change splits it.
    auto engine = std::make_shared<memory_engine>(1024);
    {
        auto md = metadata::format(engine, 128, 10000);
        md->create_thin(0);
        for (std::uint64_t b = 0; b < 3000; ++b) map(*md, 0, b, b + 100);
        md->create_snap(1, 0);  // time 1
        map(*md, 0, 3000, 3100);
        md->commit();
    }
    std::string x = dump_xml(engine);
    EXPECT_NE(x.find("<range_mapping origin_begin=\"0\" data_begin=\"100\" length=\"3000\" time=\"0\"/>\n"
                     "    <single_mapping origin_block=\"3000\" data_block=\"3100\" time=\"1\"/>\n"),
              std::string::npos)
        << x;
}

TEST(dump, damaged_leaf_is_reported_with_device_and_range) {
    auto engine = std::make_shared<memory_engine>(1024);
    {
        auto md = metadata::format(engine, 128, 10000);
        md->create_thin(3);
        for (std::uint64_t b = 0; b < 2000; ++b) map(*md, 3, b, b);
        md->commit();
    }
    // Corrupt one level-2 leaf: a node with value_size 8, flags leaf, and some entries.
    pdata::block_address victim = 0;
    for (pdata::block_address b = 1; b < engine->nr_blocks() && !victim; ++b) {
        pdata::btree::node_ref n(engine->raw(b));
        if (n.blocknr() == b && n.is_leaf() && n.value_size() == 8 && n.nr_entries() > 100 && n.key(0) > 0) victim = b;
    }
    ASSERT_NE(victim, 0u);
    engine->raw(victim)[200] ^= 0xff;
    try {
        dump_xml(engine);
        FAIL() << "expected damaged_metadata";
    } catch (const dump::damaged_metadata& e) {
        std::string w = e.what();
        EXPECT_NE(w.find("thin device 3"), std::string::npos) << w;
        EXPECT_NE(w.find("block " + std::to_string(victim)), std::string::npos) << w;
    }
}

TEST(dump, damaged_superblock_is_damage) {
    auto engine = spec_pool();
    engine->raw(0)[100] ^= 1;
    EXPECT_THROW(dump_xml(engine), dump::damaged_metadata);
}
