// tools/thin_ls: the command-line contract, and byte-identical output with Debian's 0.9.0 thin_ls
// on the kernel fixtures and generated pools (every 0.9.0 field, --no-headers, -m), plus our
// HIGHEST_* fields and JSON.
#include "tests/tools/readonly_tool_support.h"

using namespace readonly_tool_test;

namespace {
const std::string TOOL = "thin_ls";
const std::string ALL_0_9_0 =
    "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS,EXCLUSIVE_SECTORS,SHARED_SECTORS,MAPPED_BYTES,"
    "EXCLUSIVE_BYTES,SHARED_BYTES,MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME";

class thin_ls_cli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(ours(TOOL))) FAIL() << ours(TOOL) << " is not built";
    }
};
} // namespace

TEST_F(thin_ls_cli, help_version_and_man_page) {
    check_help_and_version(TOOL);
    check_man_page(TOOL);
    auto help = run_ours(TOOL, {"--help"}).out;
    for (const char* f : {"MAPPED_BLOCKS", "SNAP_TIME", "HIGHEST_BLOCK", "HIGHEST_MAPPED", "--no-headers", "--json"})
        EXPECT_NE(help.find(f), std::string::npos) << f;
}

TEST_F(thin_ls_cli, bad_inputs) {
    check_bad_inputs(TOOL, {});
    auto r = run_ours(TOOL, {});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("No input file provided.\nUsage: thin_ls", 0), 0u) << r.err;
    FIXTURE_PATH(meta, "tmeta");
    for (const char* bad : {"FOO", ",DEV", "DEV,,MAPPED", "dev"}) {
        r = run_ours(TOOL, {"-o", bad, meta});
        EXPECT_EQ(r.exit_code, 1) << bad;
        EXPECT_EQ(r.err, "unknown field\n") << bad;
        EXPECT_EQ(r.out, "");
    }
    r = run_ours(TOOL, {"-m", meta});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("no current metadata snap"), std::string::npos) << r.err;
}

TEST_F(thin_ls_cli, same_as_reference_on_kernel_fixtures) {
    REQUIRE_REFERENCE_TOOL(TOOL);
    for (const char* name : {"tmeta", "tmeta_with_metadata_snap", "tmeta_with_shared_internal_root",
                             "tmeta_device_id_reuse", "tmeta_with_deleted_snapshot"}) {
        FIXTURE_PATH(meta, name);
        const std::vector<std::vector<std::string>> variants = {
            {},
            {"-o", ALL_0_9_0},
            {"--no-headers", "-o", ALL_0_9_0},
            {"-o", "DEV,"},
            {"-o", ""},
            {"--no-headers", "-o", ""},
            {"-o", "SHARED,DEV,DEV,EXCLUSIVE_BYTES"},
            {"--format=DEV,MAPPED_BLOCKS"},
            {"-o", "DEV", "-o", "MAPPED"},
        };
        for (auto args : variants) {
            args.push_back(meta);
            expect_same_as_reference(TOOL, args);
        }
    }
    FIXTURE_PATH(snap, "tmeta_with_metadata_snap");
    expect_same_as_reference(TOOL, {"-m", "-o", ALL_0_9_0, snap});
    expect_same_as_reference(TOOL, {"-m", "--no-headers", snap});
    FIXTURE_PATH(reuse, "tmeta_device_id_reuse");
    expect_same_as_reference(TOOL, {"-m", "-o", ALL_0_9_0, reuse});
}

TEST_F(thin_ls_cli, same_as_reference_on_generated_pools) {
    REQUIRE_REFERENCE_TOOL(TOOL);
    for (const char* shape : {"refcounts", "held", "deletes", "multilevel", "odd-block-size"}) {
        generated g = generate(shape);
        expect_same_as_reference(TOOL, {"-o", ALL_0_9_0, g.path});
        expect_same_as_reference(TOOL, {"--no-headers", g.path});
        if (g.held) {
            expect_same_as_reference(TOOL, {"-m", "-o", ALL_0_9_0, g.path});
            expect_same_as_reference(TOOL, {"-m", "--no-headers", "-o", ALL_0_9_0, g.path});
        }
    }
}

TEST_F(thin_ls_cli, highest_fields_and_json) {
    FIXTURE_PATH(meta, "tmeta");
    auto r = run_ours(TOOL, {"-o", "DEV,HIGHEST_BLOCK,HIGHEST_SECTOR,HIGHEST_BYTE,HIGHEST_MAPPED", meta});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::istringstream in(r.out);
    std::string line;
    std::getline(in, line);
    EXPECT_EQ(line, "DEV HIGHEST_BLOCK HIGHEST_SECTOR HIGHEST_BYTE HIGHEST_MAPPED ");
    int rows = 0;
    while (std::getline(in, line)) {
        std::istringstream cells(line);
        std::uint64_t dev, block, sector, byte;
        std::string pretty;
        ASSERT_TRUE(cells >> dev >> block >> sector >> byte >> pretty) << line;
        EXPECT_LT(block, 16384u);  // 1 GiB devices of 64 KiB blocks
        EXPECT_EQ(sector, (block + 1) * 128 - 1);
        EXPECT_EQ(byte, (block + 1) * 128 * 512 - 1);
        ++rows;
    }
    EXPECT_EQ(rows, 11);

    auto json = run_ours(TOOL, {"--json", "-o", "DEV,MAPPED_BLOCKS,MAPPED", meta});
    ASSERT_EQ(json.exit_code, 0);
    EXPECT_EQ(json.out.rfind("[\n  {\"DEV\": 1, \"MAPPED_BLOCKS\": 10713, \"MAPPED\": \"670MiB\"},\n", 0), 0u) << json.out;
    EXPECT_EQ(json.out.substr(json.out.size() - 4), "}\n]\n");
    auto word = run_ours(TOOL, {"-o", "json", meta});
    ASSERT_EQ(word.exit_code, 0);
    EXPECT_EQ(word.out.rfind("[\n  {\"DEV\": 1, \"MAPPED\": \"670MiB\", \"CREATE_TIME\": 0, \"SNAP_TIME\": 15},\n", 0), 0u)
        << word.out;
}
