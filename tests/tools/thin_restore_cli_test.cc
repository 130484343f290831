// tools/thin_restore: the command-line contract (tools.md §1, §5) and interoperation with Debian's
// thin-provisioning-tools 0.9.0 in both directions.
#include "tests/tools/cli_helpers.h"
#include "tests/support/snapshot_xml.h"

#include <algorithm>
#include <fstream>
#include <sstream>

using namespace cli_test;
using thinpool_test::scratch_dir;

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

thinpool_test::command_result restore(std::vector<std::string> args) { return ours("thin_restore", std::move(args)); }
thinpool_test::command_result dump(std::vector<std::string> args) { return ours("thin_dump", std::move(args)); }

bool superblock_is_zero(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    char buf[4096] = {};
    f.read(buf, sizeof buf);
    for (char c : buf)
        if (c) return false;
    return true;
}

class thin_restore_cli : public ::testing::Test {
protected:
    void SetUp() override {
        for (const char* t : {"thin_restore", "thin_dump"})
            if (!std::filesystem::exists(std::string(THINPOOL_BINARY_DIR) + "/" + t)) FAIL() << t << " is not built";
        xml = dir.file("in.xml");
        meta = dir.file("meta");
        thinpool_test::write_file(xml, SPEC_XML);
        thinpool_test::make_sparse_file(meta, 4 << 20);
    }
    scratch_dir dir;
    std::string xml, meta;
};

} // namespace

TEST_F(thin_restore_cli, help_goes_to_stdout) {
    for (const char* opt : {"--help", "-h"}) {
        auto r = restore({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.err, "");
        EXPECT_EQ(r.out.rfind("Usage: thin_restore [options]\n", 0), 0u) << r.out;
        for (const char* o : {"--input", "--output", "--transaction-id", "--data-block-size", "--nr-data-blocks",
                              "--quiet", "--version"})
            EXPECT_NE(r.out.find(o), std::string::npos) << o;
    }
}

TEST_F(thin_restore_cli, man_page_agrees_with_help) {
    expect_man_page_documents(THINPOOL_SOURCE_DIR "/man/thin_restore.8", restore({"--help"}).out);
}

TEST_F(thin_restore_cli, version) {
    for (const char* opt : {"--version", "-V"}) {
        auto r = restore({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.out, std::string(THINPOOL_VERSION) + "\n");
    }
}

TEST_F(thin_restore_cli, unknown_option) {
    auto r = restore({"--bogus"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("bogus"), std::string::npos);
    EXPECT_NE(r.err.find("Usage:"), std::string::npos);
}

TEST_F(thin_restore_cli, missing_input_or_output) {
    auto r = restore({"-o", meta});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("No input file provided.\nUsage: thin_restore", 0), 0u) << r.err;
    r = restore({"-i", xml});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("No output file provided.\nUsage: thin_restore", 0), 0u) << r.err;
}

TEST_F(thin_restore_cli, nonexistent_input) {
    auto r = restore({"-i", dir.file("nope.xml"), "-o", meta});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(dir.file("nope.xml")), std::string::npos) << r.err;
}

TEST_F(thin_restore_cli, output_must_exist_and_be_large_enough) {
    auto r = restore({"-i", xml, "-o", dir.file("absent")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir.file("absent")));
    thinpool_test::make_sparse_file(dir.file("small"), 16384);
    r = restore({"-i", xml, "-o", dir.file("small")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("too small"), std::string::npos) << r.err;
}

TEST_F(thin_restore_cli, binary_or_empty_input_is_refused) {
    ASSERT_EQ(restore({"-i", xml, "-o", meta}).exit_code, 0);
    auto r = restore({"-i", meta, "-o", dir.file("in.xml")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("not XML"), std::string::npos) << r.err;
    thinpool_test::write_file(dir.file("empty.xml"), "");
    r = restore({"-i", dir.file("empty.xml"), "-o", meta});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("empty"), std::string::npos) << r.err;
}

TEST_F(thin_restore_cli, round_trip_of_the_spec_example) {
    auto r = restore({"-i", xml, "-o", meta});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err, "");
    auto d = dump({meta});
    EXPECT_EQ(d.out, SPEC_XML);
}

TEST_F(thin_restore_cli, errors_name_the_line_and_zero_the_superblock) {
    struct bad {
        std::string from, to, want;
    };
    std::vector<bad> cases = {
        {"data_block=\"20\"", "data_block=\"5000\"", "line 4, column 5: mapping beyond end of data device (5000 >= 1000)"},
        {"data_block_size=\"128\"", "data_block_size=\"100\"", "line 1, column 1: invalid data block size 100"},
        {"dev_id=\"1\"", "dev_id=\"0\"", "line 7, column 3: device 0 already exists"},
        {"  </device>\n</superblock>\n", "", "line 9, column 1: no element found"},
        {"<single_mapping origin_block=\"10\"", "<nonsense origin_block=\"10\"", "line 4, column 5: unknown tag type"},
    };
    for (const auto& c : cases) {
        ASSERT_EQ(restore({"-i", xml, "-o", meta}).exit_code, 0);
        ASSERT_FALSE(superblock_is_zero(meta));
        std::string text = SPEC_XML;
        text.replace(text.find(c.from), c.from.size(), c.to);
        thinpool_test::write_file(dir.file("bad.xml"), text);
        auto r = restore({"-i", dir.file("bad.xml"), "-o", meta});
        EXPECT_EQ(r.exit_code, 1) << c.want;
        EXPECT_NE(r.err.find(dir.file("bad.xml") + ": " + c.want), std::string::npos) << r.err;
        EXPECT_TRUE(superblock_is_zero(meta)) << c.want;
        auto q = restore({"-q", "-i", dir.file("bad.xml"), "-o", meta});
        EXPECT_EQ(q.exit_code, 1);
        EXPECT_EQ(q.err, "");
    }
}

TEST_F(thin_restore_cli, large_input_round_trips_and_late_errors_are_exact) {
    // Over 1 MiB of XML and 40,000 mappings: many reads and many event batches between the
    // parser thread and the one that builds the metadata.
    std::ostringstream big;
    big << "<superblock uuid=\"\" time=\"2\" transaction=\"4\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"200000\">\n";
    for (int dev = 0; dev < 2; ++dev) {
        big << "  <device dev_id=\"" << dev << "\" mapped_blocks=\"20000\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n";
        for (int i = 0; i < 20000; ++i)
            big << "    <single_mapping origin_block=\"" << 2 * i << "\" data_block=\"" << (dev * 20000 + i) * 3 % 200000
                << "\" time=\"" << i % 2 << "\"/>\n";
        big << "  </device>\n";
    }
    big << "</superblock>\n";
    const std::string text = big.str();
    ASSERT_GT(text.size(), std::size_t(1) << 20);
    thinpool_test::make_sparse_file(meta, 16 << 20);
    thinpool_test::write_file(dir.file("big.xml"), text);
    auto r = restore({"-i", dir.file("big.xml"), "-o", meta});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_TRUE(dump({meta}).out == text);

    // Line 20,000 is deep into device 0 (line 1 is the superblock, line 2 its <device>).
    const std::string line_20000 = "    <single_mapping origin_block=\"39994\" data_block=\"59991\" time=\"1\"/>\n";
    ASSERT_EQ(std::count(text.begin(), text.begin() + std::ptrdiff_t(text.find(line_20000)), '\n'), 20000 - 1);
    struct bad {
        std::string to, want;
    };
    std::vector<bad> cases = {
        // found by the metadata builder
        {"    <single_mapping origin_block=\"39994\" data_block=\"200000\" time=\"1\"/>\n",
         "line 20000, column 5: mapping beyond end of data device (200000 >= 200000)"},
        {"    <single_mapping origin_block=\"3\" data_block=\"59991\" time=\"1\"/>\n",
         "line 20000, column 5: mapping of origin block 3 is out of order"},
        // found by the parser
        {"    <single_mapping origin_block=\"39994\" data_block=\"59991\" time=\"x\"/>\n",
         "line 20000, column 5: <single_mapping> time=\"x\" is not a non-negative integer"},
        {"    <single_mapping origin_block=\"39994\" data_block=\"59991\" time=\"1\">\n",
         "line 20001, column 5: <single_mapping> outside a <device>"},
        {"    <single_mapping origin_block=\"39994\" data_block=\"59991\" time=\"1\"/></superblock>\n",
         "line 20000, column 73: mismatched tag"},
        // both: the first in the document is reported
        {"    <single_mapping origin_block=\"39994\" data_block=\"200000\" time=\"1\"/>\n<oops/>",
         "line 20000, column 5: mapping beyond end of data device (200000 >= 200000)"},
    };
    for (const auto& c : cases) {
        ASSERT_EQ(restore({"-i", dir.file("big.xml"), "-o", meta}).exit_code, 0);
        ASSERT_FALSE(superblock_is_zero(meta));
        std::string bad_text = text;
        bad_text.replace(bad_text.find(line_20000), line_20000.size(), c.to);
        thinpool_test::write_file(dir.file("bad.xml"), bad_text);
        auto f = restore({"-i", dir.file("bad.xml"), "-o", meta});
        EXPECT_EQ(f.exit_code, 1) << c.want;
        EXPECT_NE(f.err.find(dir.file("bad.xml") + ": " + c.want), std::string::npos) << f.err;
        EXPECT_TRUE(superblock_is_zero(meta)) << c.want;
    }
}

TEST_F(thin_restore_cli, overrides) {
    auto r = restore({"-i", xml, "-o", meta, "--transaction-id", "9", "--nr-data-blocks", "2000", "--data-block-size", "256"});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    auto d = dump({meta});
    EXPECT_EQ(d.out.substr(0, d.out.find('\n')),
              "<superblock uuid=\"\" time=\"1\" transaction=\"9\" flags=\"0\" version=\"2\" data_block_size=\"256\" "
              "nr_data_blocks=\"2000\">");
}

TEST_F(thin_restore_cli, our_restore_passes_their_check_and_their_dump) {
    REQUIRE_REFERENCE_TOOLS();
    ASSERT_EQ(restore({"-i", xml, "-o", meta}).exit_code, 0);
    auto c = theirs("thin_check", {meta});
    EXPECT_EQ(c.exit_code, 0) << describe(c);
    auto d = theirs("thin_dump", {meta});
    EXPECT_EQ(d.out, SPEC_XML);
}

TEST_F(thin_restore_cli, their_restore_reads_back_through_our_dump) {
    REQUIRE_REFERENCE_TOOLS();
    auto r = theirs("thin_restore", {"-i", xml, "-o", meta});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_EQ(dump({meta}).out, SPEC_XML);
}

// Our restore shares a snapshot's repeated leaves with the device it repeats (counts of 2 and
// more on leaves, data blocks counted once per leaf): their checker must agree, and both dumps
// give the XML back.
TEST_F(thin_restore_cli, restored_snapshots_sharing_leaves_pass_their_check) {
    REQUIRE_REFERENCE_TOOLS();
    thinpool_test::write_file(xml, thinpool_test::snapshot_series_xml(5, 40000, 4));
    auto r = restore({"-i", xml, "-o", meta});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    auto c = theirs("thin_check", {meta});
    EXPECT_EQ(c.exit_code, 0) << describe(c);
    c = ours("thin_check", {meta});
    EXPECT_EQ(c.exit_code, 0) << describe(c);
    std::string want = thinpool_test::snapshot_series_xml(5, 40000, 4);
    EXPECT_TRUE(theirs("thin_dump", {meta}).out == want);
    EXPECT_TRUE(dump({meta}).out == want);
}

TEST_F(thin_restore_cli, kernel_fixtures_round_trip_both_ways) {
    REQUIRE_REFERENCE_TOOLS();
    for (const auto& name : valid_fixtures()) {
        std::string src = dir.file(name);
        UNPACK_FIXTURE_OR_SKIP(name, src);
        auto first = dump({src});
        ASSERT_EQ(first.exit_code, 0) << describe(first);
        thinpool_test::write_file(xml, first.out);
        thinpool_test::make_sparse_file(meta, 64 << 20);

        // our restore → our dump is idempotent, their check passes, their dump agrees.
        auto r = restore({"-i", xml, "-o", meta});
        ASSERT_EQ(r.exit_code, 0) << describe(r);
        EXPECT_TRUE(dump({meta}).out == first.out) << name << ": dump → restore → dump differs";
        auto c = theirs("thin_check", {meta});
        EXPECT_EQ(c.exit_code, 0) << name << "\n" << describe(c);
        EXPECT_TRUE(theirs("thin_dump", {meta}).out == first.out) << name;

        // their restore → our dump equals the input.
        std::string meta2 = dir.file("theirs");
        thinpool_test::make_sparse_file(meta2, 64 << 20);
        auto r2 = theirs("thin_restore", {"-i", xml, "-o", meta2});
        ASSERT_EQ(r2.exit_code, 0) << describe(r2);
        EXPECT_TRUE(dump({meta2}).out == first.out) << name;
    }
}

namespace {

// Mappings that end exactly at origin block 2^64-1 (and data blocks up to nr_data_blocks - 1).
const std::string LAST_ORIGIN_XML =
    "<superblock uuid=\"\" time=\"1\" transaction=\"3\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"1000\">\n"
    "  <device dev_id=\"0\" mapped_blocks=\"4\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n"
    "    <range_mapping origin_begin=\"18446744073709551612\" data_begin=\"0\" length=\"3\" time=\"0\"/>\n"
    "    <single_mapping origin_block=\"18446744073709551615\" data_block=\"20\" time=\"0\"/>\n"
    "  </device>\n"
    "  <device dev_id=\"1\" mapped_blocks=\"3\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n"
    "    <range_mapping origin_begin=\"18446744073709551613\" data_begin=\"997\" length=\"3\" time=\"0\"/>\n"
    "  </device>\n"
    "</superblock>\n";

// Runs our thin_restore with its address space capped at 1 GiB, so that sizing the data space
// map by an absurd nr_data_blocks fails here quickly instead of exhausting the machine's memory.
// Sanitizer runtimes reserve terabytes of address space up front: no cap under them.
thinpool_test::command_result restore_capped(std::vector<std::string> args) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return restore(std::move(args));
#else
    args.insert(args.begin(), {"/bin/sh", "-c", "ulimit -v 1048576 && exec \"$0\" \"$@\"",
                               std::string(THINPOOL_BINARY_DIR) + "/thin_restore"});
    return thinpool_test::run_command(args);
#endif
}

} // namespace

TEST_F(thin_restore_cli, mappings_ending_at_the_last_origin_block_round_trip) {
    thinpool_test::write_file(xml, LAST_ORIGIN_XML);
    auto r = restore({"-i", xml, "-o", meta});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_EQ(dump({meta}).out, LAST_ORIGIN_XML);
}

TEST_F(thin_restore_cli, mappings_ending_at_the_last_origin_block_pass_their_check_and_dump) {
    REQUIRE_REFERENCE_TOOLS();
    thinpool_test::write_file(xml, LAST_ORIGIN_XML);
    ASSERT_EQ(restore({"-i", xml, "-o", meta}).exit_code, 0);
    auto c = theirs("thin_check", {meta});
    EXPECT_EQ(c.exit_code, 0) << describe(c);
    EXPECT_EQ(theirs("thin_dump", {meta}).out, LAST_ORIGIN_XML);
}

TEST_F(thin_restore_cli, one_past_the_last_origin_or_data_block_is_refused) {
    struct bad {
        std::string from, to, want;
    };
    const std::vector<bad> cases = {
        // thin_restore 0.9.0 silently wraps this run to origin block 0.
        {"origin_begin=\"18446744073709551613\"", "origin_begin=\"18446744073709551614\"",
         "line 7, column 5: range of 3 origin blocks from 18446744073709551614 goes past the last origin block, "
         "18446744073709551615"},
        {"data_begin=\"997\"", "data_begin=\"998\"", "line 7, column 5: mapping beyond end of data device (1000 >= 1000)"},
        {"data_block=\"20\"", "data_block=\"1000\"", "line 4, column 5: mapping beyond end of data device (1000 >= 1000)"},
        {"</device>\n  <device dev_id=\"1\"",
         "<single_mapping origin_block=\"0\" data_block=\"30\" time=\"0\"/></device>\n  <device dev_id=\"1\"",
         "line 5, column 3: mapping of origin block 0 is out of order or overlaps the previous one (origin blocks up to "
         "18446744073709551615 are already mapped)"},
    };
    for (const auto& c : cases) {
        thinpool_test::write_file(xml, LAST_ORIGIN_XML);
        ASSERT_EQ(restore({"-i", xml, "-o", meta}).exit_code, 0);
        std::string text = LAST_ORIGIN_XML;
        text.replace(text.find(c.from), c.from.size(), c.to);
        thinpool_test::write_file(dir.file("bad.xml"), text);
        auto r = restore({"-i", dir.file("bad.xml"), "-o", meta});
        EXPECT_EQ(r.exit_code, 1) << c.want;
        EXPECT_NE(r.err.find("thin_restore: " + dir.file("bad.xml") + ": " + c.want), std::string::npos) << r.err;
        EXPECT_TRUE(superblock_is_zero(meta)) << c.want;
    }
}

TEST_F(thin_restore_cli, nr_data_blocks_the_output_cannot_describe_fails_fast) {
    // 2^40-1 data blocks would take 256 GiB of counts in memory and 68 million bitmap blocks; the
    // 4 MiB output holds 1024 blocks.
    const std::string room = " needs 68589606 metadata blocks for the data space map; the output " + meta +
                             " (1024 metadata blocks) has room for 1018\n";
    struct bad {
        std::string nr;
        std::vector<std::string> extra;
        std::string want;
    };
    const std::vector<bad> cases = {
        {"1099511627775", {}, "nr_data_blocks 1099511627775" + room},
        {"1099511627776", {}, "nr_data_blocks 1099511627776" + room},
        {"1000", {"--nr-data-blocks", "1099511627775"}, "--nr-data-blocks 1099511627775" + room},
        {"1099511627777", {}, "nr_data_blocks 1099511627777 is too large (data block numbers have 40 bits)\n"},
        {"18446744073709551615", {}, "nr_data_blocks 18446744073709551615 is too large (data block numbers have 40 bits)\n"},
        {"18446744073709551616", {},
         "<superblock> nr_data_blocks=\"18446744073709551616\" is too large (at most 18446744073709551615)\n"},
    };
    for (const auto& c : cases) {
        ASSERT_EQ(restore({"-i", xml, "-o", meta}).exit_code, 0);
        std::string text = SPEC_XML;
        text.replace(text.find("nr_data_blocks=\"1000\""), 21, "nr_data_blocks=\"" + c.nr + "\"");
        thinpool_test::write_file(dir.file("bad.xml"), text);
        std::vector<std::string> args = {"-i", dir.file("bad.xml"), "-o", meta};
        args.insert(args.end(), c.extra.begin(), c.extra.end());
        auto r = restore_capped(args);
        EXPECT_EQ(r.exit_code, 1) << c.want;
        EXPECT_EQ(r.err, "thin_restore: " + dir.file("bad.xml") + ": line 1, column 1: " + c.want);
        EXPECT_TRUE(superblock_is_zero(meta)) << c.want;
    }
}

TEST_F(thin_restore_cli, no_data_blocks_with_mappings_is_refused) {
    std::string text = SPEC_XML;
    text.replace(text.find("nr_data_blocks=\"1000\""), 21, "nr_data_blocks=\"0\"");
    thinpool_test::write_file(xml, text);
    auto r = restore({"-i", xml, "-o", meta});
    EXPECT_EQ(r.exit_code, 1);
    // The words thin_restore 0.9.0 uses, with the position.
    EXPECT_EQ(r.err, "thin_restore: " + xml + ": line 3, column 5: mapping beyond end of data device (0 >= 0)\n");
    EXPECT_TRUE(superblock_is_zero(meta));
}
