// tools/thin_dump: the command-line contract (tools.md §1, §4) and byte-for-byte agreement with
// Debian's thin_dump 0.9.0 on every valid kernel fixture.
#include "tests/tools/cli_helpers.h"

using namespace cli_test;
using thinpool_test::scratch_dir;

namespace {

const char* const TOOL = "thin_dump";

thinpool_test::command_result dump(std::vector<std::string> args) { return ours(TOOL, std::move(args)); }

class thin_dump_cli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(std::string(THINPOOL_BINARY_DIR) + "/thin_dump"))
            FAIL() << "thin_dump is not built";
    }
    scratch_dir dir;
};

} // namespace

TEST_F(thin_dump_cli, help_goes_to_stdout) {
    for (const char* opt : {"--help", "-h"}) {
        auto r = dump({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.err, "");
        EXPECT_EQ(r.out.rfind("Usage: thin_dump [options] {device|file}\n", 0), 0u) << r.out;
        for (const char* o : {"--format", "--repair", "--metadata-snap", "--dev-id", "--skip-mappings", "-o",
                              "--transaction-id", "--data-block-size", "--nr-data-blocks", "--quiet", "--version"})
            EXPECT_NE(r.out.find(o), std::string::npos) << o;
    }
}

TEST_F(thin_dump_cli, man_page_agrees_with_help) {
    expect_man_page_documents(THINPOOL_SOURCE_DIR "/man/thin_dump.8", dump({"--help"}).out);
    std::string man = thinpool_test::read_file(THINPOOL_SOURCE_DIR "/man/thin_dump.8");
    EXPECT_NE(man.find("json"), std::string::npos);
    EXPECT_NE(man.find("origin_begin"), std::string::npos);  // the JSON schema
}

TEST_F(thin_dump_cli, version) {
    for (const char* opt : {"--version", "-V"}) {
        auto r = dump({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.out, std::string(THINPOOL_VERSION) + "\n");
    }
}

TEST_F(thin_dump_cli, unknown_option) {
    auto r = dump({"--bogus", "x"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("bogus"), std::string::npos);
    EXPECT_NE(r.err.find("Usage:"), std::string::npos);
    EXPECT_EQ(r.out, "");
}

TEST_F(thin_dump_cli, missing_input) {
    auto r = dump({});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("No input file provided.\nUsage: thin_dump", 0), 0u) << r.err;
}

TEST_F(thin_dump_cli, nonexistent_input) {
    auto r = dump({dir.file("nope")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(dir.file("nope")), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
}

TEST_F(thin_dump_cli, too_small_and_empty_and_zeroed_input) {
    thinpool_test::write_file(dir.file("small"), "abc");
    thinpool_test::write_file(dir.file("empty"), "");
    thinpool_test::make_sparse_file(dir.file("zeros"), 1 << 20);
    for (const char* f : {"small", "empty", "zeros"}) {
        auto r = dump({dir.file(f)});
        EXPECT_EQ(r.exit_code, 1) << f;
        EXPECT_NE(r.err.find(dir.file(f)), std::string::npos) << r.err;
        EXPECT_EQ(r.out, "");
    }
}

TEST_F(thin_dump_cli, xml_input_is_refused) {
    thinpool_test::write_file(dir.file("x.xml"), "<superblock uuid=\"\"></superblock>\n");
    auto r = dump({dir.file("x.xml")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("XML"), std::string::npos) << r.err;
}

TEST_F(thin_dump_cli, unknown_format) {
    std::string meta = dir.file("meta");
    UNPACK_FIXTURE_OR_SKIP("tmeta_with_shared_internal_root", meta);
    auto r = dump({"-f", "custom=foo.so", meta});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("unknown format"), std::string::npos);
}

TEST_F(thin_dump_cli, repair_dumps_what_survives) {
    std::string meta = dir.file("meta");
    UNPACK_FIXTURE_OR_SKIP("corrupted_tmeta_with_metadata_snap", meta);
    auto r = dump({"--repair", meta});
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_EQ(r.out.rfind("<superblock ", 0), 0u) << r.out;
    EXPECT_NE(r.out.find("</superblock>\n"), std::string::npos);
    auto m = dump({"--repair", "-m", meta});
    EXPECT_EQ(m.exit_code, 1);
}

TEST_F(thin_dump_cli, corrupt_input_asks_for_repair) {
    std::string meta = dir.file("meta");
    UNPACK_FIXTURE_OR_SKIP("corrupted_tmeta_with_metadata_snap", meta);
    auto r = dump({meta});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("metadata contains errors (run thin_check for details).\n"
                          "perhaps you wanted to run with --repair\n",
                          0),
              0u)
        << r.err;
    auto q = dump({"-q", meta});
    EXPECT_EQ(q.exit_code, 1);
    EXPECT_EQ(q.err, "");
}

TEST_F(thin_dump_cli, no_metadata_snapshot) {
    std::string meta = dir.file("meta");
    UNPACK_FIXTURE_OR_SKIP("tmeta_with_shared_internal_root", meta);
    auto r = dump({"-m", meta});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("no current metadata snap"), std::string::npos) << r.err;
}

TEST_F(thin_dump_cli, output_file_and_json_parse) {
    std::string meta = dir.file("meta");
    UNPACK_FIXTURE_OR_SKIP("tmeta", meta);
    auto r = dump({"-o", dir.file("out.xml"), meta});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(thinpool_test::read_file(dir.file("out.xml")), dump({meta}).out);

    auto j = dump({"--format", "json", "-o", dir.file("out.json"), meta});
    ASSERT_EQ(j.exit_code, 0) << describe(j);
    std::string out;
    int rc = thinpool_test::run_command(
        "python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "
        "print(len(d[\"devices\"]), sum(r[\"length\"] for v in d[\"devices\"] for r in v[\"mappings\"]) == "
        "sum(v[\"mapped_blocks\"] for v in d[\"devices\"]))' " + dir.file("out.json") + " 2>&1",
        &out);
    if (rc == 127 || out.find("not found") != std::string::npos) GTEST_SKIP() << "python3 not available";
    EXPECT_EQ(rc, 0) << out;
    EXPECT_EQ(out, "11 True\n");
}

TEST_F(thin_dump_cli, every_valid_kernel_fixture_matches_debian_thin_dump) {
    REQUIRE_REFERENCE_TOOLS();
    for (const auto& name : valid_fixtures()) {
        std::string meta = dir.file(name);
        UNPACK_FIXTURE_OR_SKIP(name, meta);
        for (const char* fmt : {"xml", "human_readable"}) {
            auto a = dump({"-f", fmt, meta});
            auto b = theirs("thin_dump", {"-f", fmt, meta});
            ASSERT_EQ(b.exit_code, 0) << describe(b);
            EXPECT_EQ(a.exit_code, 0) << describe(a);
            EXPECT_TRUE(a.out == b.out) << name << " " << fmt << " differs";
        }
        for (std::vector<std::string> extra : {std::vector<std::string>{"--skip-mappings"},
                                               {"--dev-id", "2", "--dev-id", "1"},
                                               {"--transaction-id", "77", "--nr-data-blocks", "5"}}) {
            auto args = extra;
            args.push_back(meta);
            auto a = dump(args);
            auto b = theirs("thin_dump", args);
            EXPECT_TRUE(a.out == b.out && a.exit_code == b.exit_code) << name << " " << extra[0];
        }
    }
}

TEST_F(thin_dump_cli, metadata_snapshot_matches_debian_thin_dump_m) {
    REQUIRE_REFERENCE_TOOLS();
    for (const char* name : {"tmeta_with_metadata_snap", "tmeta_device_id_reuse", "corrupted_tmeta_with_metadata_snap"}) {
        std::string meta = dir.file(name);
        UNPACK_FIXTURE_OR_SKIP(name, meta);
        for (const char* fmt : {"xml", "human_readable"}) {
            auto a = dump({"-m", "-f", fmt, meta});
            auto b = theirs("thin_dump", {"-m", "-f", fmt, meta});
            ASSERT_EQ(b.exit_code, 0) << describe(b);
            EXPECT_EQ(a.exit_code, 0) << describe(a);
            EXPECT_TRUE(a.out == b.out) << name << " " << fmt << " differs";
            if (std::string(fmt) == "xml") EXPECT_NE(a.out.find("nr_data_blocks=\"0\""), std::string::npos);
        }
    }
}

TEST_F(thin_dump_cli, damaged_leaf_output_matches_debian_up_to_the_damage) {
    REQUIRE_REFERENCE_TOOLS();
    std::string meta = dir.file("meta");
    UNPACK_FIXTURE_OR_SKIP("tmeta_with_shared_internal_root", meta);
    // Corrupt the first leaf of device 2's tree whose first key is not 0: a byte in its values.
    auto data = thinpool_test::read_file(meta);
    std::size_t victim = 0;
    for (std::size_t b = 1; b * 4096 < data.size() && !victim; ++b) {
        const unsigned char* p = reinterpret_cast<const unsigned char*>(data.data()) + b * 4096;
        auto le32 = [&](int off) { return p[off] | p[off + 1] << 8 | p[off + 2] << 16 | unsigned(p[off + 3]) << 24; };
        std::uint64_t blocknr = le32(8);
        if (blocknr == b && le32(4) == 2 && le32(24) == 8 && le32(16) > 200 && le32(32) != 0) victim = b;
    }
    ASSERT_NE(victim, 0u);
    data[victim * 4096 + 300] ^= 0x5a;
    thinpool_test::write_file(meta, data);
    auto a = dump({meta});
    auto b = theirs("thin_dump", {meta});
    EXPECT_EQ(a.exit_code, 1);
    EXPECT_EQ(b.exit_code, 1);
    EXPECT_EQ(a.out, b.out);
}
