// tools/thin_rmap: the command-line contract, and byte-identical output with Debian's 0.9.0
// thin_rmap on the kernel fixtures and generated pools for several region sets.
#include "tests/tools/readonly_tool_support.h"

using namespace readonly_tool_test;

namespace {
const std::string TOOL = "thin_rmap";

class thin_rmap_cli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(ours(TOOL))) FAIL() << ours(TOOL) << " is not built";
    }
};

const std::vector<std::vector<std::string>> REGION_SETS = {
    {"--region", "0..10"},
    {"--region", "0..100000"},
    {"--region", "5..7", "--region", "0..3"},
    {"--region", "0..4", "--region", "2..5"},
    {"--region", "100..200", "--region", "1000..3000", "--region", "150..160"},
    {"--region", "60000..65536"},
    {"--region", "0..1"},
    {"--region", " 5..7x"},
    {"--region", "30000..30001", "--region", "40000..50000"},
};
} // namespace

TEST_F(thin_rmap_cli, help_version_and_man_page) {
    check_help_and_version(TOOL);
    check_man_page(TOOL);
}

TEST_F(thin_rmap_cli, bad_inputs) {
    check_bad_inputs(TOOL, {"--region", "0..10"});
    auto r = run_ours(TOOL, {"--region", "0..10"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("No input file provided.\nUsage: thin_rmap", 0), 0u) << r.err;
    FIXTURE_PATH(meta, "tmeta");
    r = run_ours(TOOL, {meta});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("No regions provided.\nUsage: thin_rmap", 0), 0u) << r.err;
    EXPECT_EQ(r.out, "");
    for (const char* bad : {"5", "5..", "7..5", "a..b", ""}) {
        r = run_ours(TOOL, {"--region", bad, meta});
        EXPECT_EQ(r.exit_code, 1) << bad;
        EXPECT_EQ(r.err.rfind("badly formed region (", 0), 0u) << r.err;
        std::string quoted = std::string("'").append(bad).append("'");
        EXPECT_NE(r.err.find(quoted), std::string::npos) << r.err;
        EXPECT_EQ(r.out, "");
    }
}

TEST_F(thin_rmap_cli, same_as_reference_on_kernel_fixtures) {
    REQUIRE_REFERENCE_TOOL(TOOL);
    for (const char* name : {"tmeta", "tmeta_with_metadata_snap", "tmeta_with_shared_internal_root",
                             "tmeta_device_id_reuse", "tmeta_with_deleted_snapshot"}) {
        FIXTURE_PATH(meta, name);
        for (auto args : REGION_SETS) {
            args.push_back(meta);
            expect_same_as_reference(TOOL, args);
        }
    }
}

TEST_F(thin_rmap_cli, same_as_reference_on_generated_pools) {
    REQUIRE_REFERENCE_TOOL(TOOL);
    for (const char* shape : {"refcounts", "held", "deletes", "multilevel"}) {
        generated g = generate(shape);
        for (auto args : REGION_SETS) {
            args.push_back(g.path);
            expect_same_as_reference(TOOL, args);
        }
    }
}

TEST_F(thin_rmap_cli, all_devices_reports_every_sharer) {
    FIXTURE_PATH(meta, "tmeta_with_shared_internal_root");
    auto first = run_ours(TOOL, {"--region", "0..10", meta});
    auto all = run_ours(TOOL, {"--region", "0..10", "--all-devices", meta});
    ASSERT_EQ(first.exit_code, 0);
    ASSERT_EQ(all.exit_code, 0);
    // Device 2 shares device 1's root: 0.9.0 (and our default) reports it under device 1 only.
    EXPECT_EQ(first.out.find("thin(2)"), std::string::npos) << first.out;
    EXPECT_NE(all.out.find("thin(2)"), std::string::npos) << all.out;
}
