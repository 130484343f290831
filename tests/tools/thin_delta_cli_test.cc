// tools/thin_delta: the command-line contract, and byte-identical output with Debian's 0.9.0
// thin_delta on the kernel fixtures and on generated pools (several device pairs, verbose or not,
// -m on a held metadata snapshot).
#include "thin/metadata/mapping_leaves.h"
#include "thin/metadata/superblock.h"

#include "persistent-data/block_manager.h"
#include "persistent-data/io_engine.h"
#include "tests/tools/readonly_tool_support.h"

using namespace readonly_tool_test;

namespace {
const std::string TOOL = "thin_delta";

class thin_delta_cli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(ours(TOOL))) FAIL() << ours(TOOL) << " is not built";
    }
};
} // namespace

TEST_F(thin_delta_cli, help_version_and_man_page) {
    check_help_and_version(TOOL);
    check_man_page(TOOL);
    auto help = run_ours(TOOL, {"--help"}).out;
    for (const char* o : {"--snap1", "--thin1", "--snap2", "--thin2", "--root1", "--root2", "--metadata-snap", "--verbose",
                          "--format"})
        EXPECT_NE(help.find(o), std::string::npos) << o;
}

TEST_F(thin_delta_cli, bad_inputs) {
    check_bad_inputs(TOOL, {"--snap1", "1", "--snap2", "2"});
    FIXTURE_PATH(corrupt, "corrupted_tmeta_with_metadata_snap");
    auto r = run_ours(TOOL, {"--snap1", "1", "--snap2", "2", corrupt});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_FALSE(r.err.empty());
}

TEST_F(thin_delta_cli, usage_errors_print_the_usage) {
    FIXTURE_PATH(meta, "tmeta");
    struct c {
        std::vector<std::string> args;
        std::string first_line;
    };
    const std::vector<c> cases = {
        {{"--snap1", "1", "--snap2", "2"}, "No input device provided."},
        {{"--snap1", "1", meta}, "--snap2 not specified."},
        {{"--snap2", "1", meta}, "--snap1 not specified."},
        {{"--snap1", "99", "--snap2", "1", meta}, "Unable to find mapping tree for snap1 (99)"},
        {{"--snap1", "1", "--snap2", "99", meta}, "Unable to find mapping tree for snap2 (99)"},
        {{"--snap1", "abc", "--snap2", "2", meta}, "Couldn't parse thin id 1: 'abc'"},
        {{"--snap1", " 1", "--snap2", "2", meta}, "Couldn't parse thin id 1: ' 1'"},
        {{"--snap1", "1", "--root1", "5", "--snap2", "2", meta}, "--snap1 and --root1 cannot be used together."},
        {{"--snap1", "1", "--snap2", "2", "--format", "yaml", meta}, "unknown format 'yaml' (xml or json)"},
    };
    for (const auto& k : cases) {
        auto r = run_ours(TOOL, k.args);
        EXPECT_EQ(r.exit_code, 1) << join(k.args);
        EXPECT_EQ(r.out, "") << join(k.args);
        EXPECT_EQ(r.err.substr(0, r.err.find('\n')).find(k.first_line), 0u) << join(k.args) << "\n" << r.err;
        EXPECT_NE(r.err.find("\nUsage: thin_delta"), std::string::npos) << join(k.args) << "\n" << r.err;
    }
    for (const std::string m : {"-m", "-m6", "--metadata-snap", "--metadata-snap=6", "--meta=6"}) {
        auto r = run_ours(TOOL, {m, "--snap1", "1", "--snap2", "2", meta});
        EXPECT_EQ(r.exit_code, 1) << m;
        EXPECT_EQ(r.err, "thin_delta: no current metadata snap\n") << m;
    }
    auto r = run_ours(TOOL, {"-mx", "--snap1", "1", "--snap2", "2", meta});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("Couldn't parse metadata snapshot block: 'x'", 0), 0u) << r.err;
}

TEST_F(thin_delta_cli, same_as_reference_on_kernel_fixtures) {
    REQUIRE_REFERENCE_TOOL(TOOL);
    FIXTURE_PATH(meta, "tmeta");
    FIXTURE_PATH(snap, "tmeta_with_metadata_snap");
    FIXTURE_PATH(shared_root, "tmeta_with_shared_internal_root");
    FIXTURE_PATH(reuse, "tmeta_device_id_reuse");
    const std::vector<std::pair<std::string, std::string>> pairs = {{"1", "2"}, {"2", "1"}, {"1", "16"}, {"3", "13"},
                                                                    {"8", "9"}, {"16", "16"}, {"4", "15"}};
    for (const auto& [a, b] : pairs)
        for (bool verbose : {false, true}) {
            std::vector<std::string> args{"--snap1", a, "--snap2", b};
            if (verbose) args.push_back("--verbose");
            args.push_back(meta);
            expect_same_as_reference(TOOL, args);
        }
    // --thin1/--thin2 are the same options.
    expect_same_as_reference(TOOL, {"--thin1", "2", "--thin2", "3", meta});
    // The live superblock names its metadata snapshot; -m reads the snapshot (nr_data_blocks 0).
    for (const std::string m : {"", "-m", "-m6", "--metadata-snap=6", "--metadata-snap=5"})
        for (bool verbose : {false, true}) {
            std::vector<std::string> args{"--snap1", "1", "--snap2", "2"};
            if (!m.empty()) args.push_back(m);
            if (verbose) args.push_back("--verbose");
            args.push_back(snap);
            expect_same_as_reference(TOOL, args);
        }
    expect_same_as_reference(TOOL, {"--snap1", "1", "--snap2", "2", "--verbose", shared_root});
    expect_same_as_reference(TOOL, {"--snap1", "2", "--snap2", "1", shared_root});
    expect_same_as_reference(TOOL, {"-m", "--snap1", "1", "--snap2", "1", "--verbose", reuse});
}

TEST_F(thin_delta_cli, same_as_reference_on_generated_pools) {
    REQUIRE_REFERENCE_TOOL(TOOL);
    for (const char* shape : {"refcounts", "held", "deletes", "multilevel"}) {
        generated g = generate(shape);
        ASSERT_GE(g.devs.size(), 2u) << shape;
        // Neighbours, first against last, and a device against itself.
        std::vector<std::pair<std::uint64_t, std::uint64_t>> pairs;
        for (std::size_t i = 0; i + 1 < g.devs.size() && i < 6; ++i) pairs.push_back({g.devs[i], g.devs[i + 1]});
        pairs.push_back({g.devs.back(), g.devs.front()});
        pairs.push_back({g.devs.front(), g.devs.front()});
        for (auto [a, b] : pairs)
            for (bool verbose : {false, true}) {
                std::vector<std::string> args{"--snap1", std::to_string(a), "--snap2", std::to_string(b)};
                if (verbose) args.push_back("--verbose");
                args.push_back(g.path);
                expect_same_as_reference(TOOL, args);
                if (g.held) {
                    args.insert(args.begin(), "-m");
                    expect_same_as_reference(TOOL, args);
                }
            }
    }
}

TEST_F(thin_delta_cli, roots_and_json) {
    FIXTURE_PATH(meta, "tmeta");
    auto by_dev = run_ours(TOOL, {"--snap1", "1", "--snap2", "2", meta});
    ASSERT_EQ(by_dev.exit_code, 0) << by_dev.err;
    auto json = run_ours(TOOL, {"--snap1", "1", "--snap2", "2", "--format", "json", meta});
    ASSERT_EQ(json.exit_code, 0) << json.err;
    EXPECT_EQ(json.out.rfind("{\n  \"superblock\": {\"uuid\": \"\", \"time\": 15, \"transaction\": 21, ", 0), 0u)
        << json.out.substr(0, 200);
    EXPECT_NE(json.out.find("\"left\": 1,\n  \"right\": 2,\n  \"ranges\": [\n    {\"type\": \"different\", \"begin\": 0, "
                            "\"length\": 5},"),
              std::string::npos);
    EXPECT_EQ(json.out.substr(json.out.size() - 7), "\n  ]\n}\n");
    // Every XML range appears, in order, in the JSON.
    std::regex xml_range("<([a-z_]+) begin=\"([0-9]+)\" length=\"([0-9]+)\"/>");
    std::size_t pos = 0;
    for (std::sregex_iterator it(by_dev.out.begin(), by_dev.out.end(), xml_range), end; it != end; ++it) {
        std::string item = "{\"type\": \"" + (*it)[1].str() + "\", \"begin\": " + (*it)[2].str() + ", \"length\": " +
                           (*it)[3].str() + "}";
        pos = json.out.find(item, pos);
        ASSERT_NE(pos, std::string::npos) << item;
    }
    auto verbose_json = run_ours(TOOL, {"--snap1", "1", "--snap2", "2", "--format", "json", "--verbose", meta});
    EXPECT_NE(verbose_json.out.find("\"left_data_begin\": 11248, \"right_data_begin\": 0, \"length\": 5}"),
              std::string::npos);

    // --root1/--root2 with the devices' own roots give the same diff.
    auto engine = std::shared_ptr<pdata::io_engine>(pdata::open_sync_engine(meta, {pdata::open_mode::read_only, false}));
    pdata::block_manager bm(engine, 64);
    auto sb = thin::superblock::unpack(bm.read_lock(0, thin::superblock_validator()).data());
    auto roots = thin::read_mapping_roots(bm, sb.data_mapping_root);
    auto by_root = run_ours(TOOL, {"--root1", std::to_string(roots.at(1)), "--root2", std::to_string(roots.at(2)), meta});
    ASSERT_EQ(by_root.exit_code, 0) << by_root.err;
    std::string want = by_dev.out;
    want.replace(want.find("<diff left=\"1\" right=\"2\">"), std::string("<diff left=\"1\" right=\"2\">").size(),
                 "<diff left_root=\"" + std::to_string(roots.at(1)) + "\" right_root=\"" + std::to_string(roots.at(2)) + "\">");
    EXPECT_EQ(by_root.out, want);
    auto mixed = run_ours(TOOL, {"--snap1", "1", "--root2", std::to_string(roots.at(2)), "--verbose", meta});
    ASSERT_EQ(mixed.exit_code, 0);
    EXPECT_NE(mixed.out.find("<diff left=\"1\" right_root=\""), std::string::npos);

    // A root beyond the metadata, or a block that is not a b-tree node, fails.
    auto bad = run_ours(TOOL, {"--root1", "999999999", "--snap2", "2", meta});
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_NE(bad.err.find("beyond the end"), std::string::npos) << bad.err;
    auto not_a_node = run_ours(TOOL, {"--root1", "0", "--snap2", "2", meta});  // the superblock
    EXPECT_EQ(not_a_node.exit_code, 1);
}
