// tools/thin_check: the command-line contract (tools.md §1, §3): help, version, bad options,
// missing / unreadable / tiny / XML / corrupt input, output lines, quiet mode, fix options and
// their conflicts, exit codes; and verdicts against Debian's thin_check 0.9.0 where both check the
// same thing (0.9.0 does not check data reference counts).
#include "thin/metadata/metadata.h"

#include "persistent-data/btree/walk.h"
#include "persistent-data/io_engine.h"
#include "tests/support/fixtures.h"
#include "tests/support/reference_tools.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

using thinpool_test::command_result;
using thinpool_test::run_command;
using thinpool_test::scratch_dir;

namespace {

const std::string TOOL = THINPOOL_BINARY_DIR "/thin_check";

command_result tool(std::vector<std::string> args) {
    args.insert(args.begin(), TOOL);
    return run_command(args);
}

command_result reference(std::vector<std::string> args) {
    args.insert(args.begin(), thinpool_test::reference_tool("thin_check"));
    return run_command(args);
}

std::size_t lines(const std::string& s) { return static_cast<std::size_t>(std::count(s.begin(), s.end(), '\n')); }
bool contains(const std::string& s, const std::string& w) { return s.find(w) != std::string::npos; }

class thin_check_cli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(TOOL)) FAIL() << TOOL << " is not built (build the thin_check target)";
    }
};

// A pool of two devices and a snapshot, written to path.
void make_metadata(const std::string& path, const std::function<void(thin::metadata&)>& extra = {}) {
    auto e = std::make_shared<pdata::memory_engine>(2048);
    {
        auto md = thin::metadata::format(e, 128, 20000);
        md->create_thin(0);
        md->create_thin(1);
        for (std::uint64_t v = 0; v < 3000; ++v) md->insert(0, v, *md->alloc_data_block());
        for (std::uint64_t v = 0; v < 3000; v += 3) md->insert(1, v * 5, *md->alloc_data_block());
        md->create_snap(2, 0);
        for (std::uint64_t v = 0; v < 3000; v += 11) md->insert(0, v, *md->alloc_data_block());
        md->commit();
        if (extra) {
            extra(*md);
            md->set_transaction_id(md->transaction_id(), md->transaction_id() + 1);
            md->commit();
        }
    }
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    for (pdata::block_address b = 0; b < 2048; ++b) f.write(reinterpret_cast<const char*>(e->raw(b)), pdata::MD_BLOCK_SIZE);
}

// Patches one byte of block b of a metadata file.
void flip_byte(const std::string& path, pdata::block_address b, std::size_t offset) {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekg(static_cast<std::streamoff>(b * pdata::MD_BLOCK_SIZE + offset));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(static_cast<std::streamoff>(b * pdata::MD_BLOCK_SIZE + offset));
    f.write(&c, 1);
}

thin::superblock read_superblock(const std::string& path) {
    auto e = pdata::open_sync_engine(path, {pdata::open_mode::read_only, false});
    auto buf = pdata::make_aligned_block(false);
    e->read(0, buf.get());
    return thin::superblock::unpack(buf.get());
}

// Some leaf of device dev's mapping tree.
pdata::block_address a_leaf_of(const std::string& path, std::uint64_t dev) {
    auto e = std::shared_ptr<pdata::io_engine>(pdata::open_sync_engine(path, {pdata::open_mode::read_only, false}));
    pdata::block_manager bm(e);
    struct v : pdata::btree::walk_visitor {
        std::uint64_t dev;
        pdata::block_address leaf = 0;
        bool visit_node(unsigned level, const std::vector<std::uint64_t>& p, pdata::block_address b,
                        pdata::btree::node_ref n) override {
            if (level == 1 && p[0] == dev && n.is_leaf() && !leaf) leaf = b;
            return true;
        }
        void visit_value(const std::vector<std::uint64_t>&, std::uint64_t, const std::uint8_t*) override {}
        void visit_damage(const std::vector<std::uint64_t>&, pdata::btree::key_range, pdata::block_address,
                          const std::string&) override {}
    } vis;
    vis.dev = dev;
    pdata::btree::walk(bm, read_superblock(path).data_mapping_root, pdata::btree::walk_options{2, 8}, vis);
    return vis.leaf;
}

} // namespace

TEST_F(thin_check_cli, help_goes_to_stdout) {
    for (const char* opt : {"--help", "-h"}) {
        auto r = tool({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.err, "");
        EXPECT_EQ(r.out.rfind("Usage: thin_check [options] {device|file}\n", 0), 0u) << r.out;
        for (const char* o : {"--quiet", "--super-block-only", "--skip-mappings", "--ignore-non-fatal-errors",
                              "--auto-repair", "--clear-needs-check-flag", "--metadata-snap", "--override-mapping-root",
                              "--override-details-root", "--version", "--help"})
            EXPECT_TRUE(contains(r.out, o)) << o;
    }
}

TEST_F(thin_check_cli, version) {
    for (const char* opt : {"--version", "-V"}) {
        auto r = tool({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.out, std::string(THINPOOL_VERSION) + "\n");
        EXPECT_EQ(r.err, "");
    }
}

TEST_F(thin_check_cli, man_page_documents_every_option) {
    std::string man = thinpool_test::read_file(THINPOOL_SOURCE_DIR "/man/thin_check.8");
    auto r = tool({"--help"});
    std::regex long_opt("--([a-z][a-z-]*)");
    std::set<std::string> opts;
    for (std::sregex_iterator it(r.out.begin(), r.out.end(), long_opt), end; it != end; ++it) opts.insert((*it)[1]);
    EXPECT_EQ(opts.size(), 11u);
    for (const auto& o : opts) {
        std::string roff = "\\-\\-";
        for (char c : o) roff += c == '-' ? std::string("\\-") : std::string(1, c);
        EXPECT_NE(man.find(roff), std::string::npos) << "--" << o << " is not in the man page";
    }
}

TEST_F(thin_check_cli, unknown_option_fails_with_a_message) {
    auto r = tool({"--bogus", "x"});
    EXPECT_NE(r.exit_code, 0);
    EXPECT_TRUE(contains(r.err, "bogus")) << r.err;
    EXPECT_TRUE(contains(r.err, "Usage: thin_check")) << r.err;
    EXPECT_EQ(r.out, "");
    r = tool({"--override-mapping-root", "12x", "f"});
    EXPECT_NE(r.exit_code, 0);
    EXPECT_TRUE(contains(r.err, "not a block number")) << r.err;
}

TEST_F(thin_check_cli, missing_input) {
    auto r = tool({});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("No input file provided.\nUsage: thin_check", 0), 0u) << r.err;
    EXPECT_EQ(r.out, "");
}

TEST_F(thin_check_cli, nonexistent_and_unreadable_input) {
    scratch_dir dir;
    auto r = tool({dir.file("nope")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(lines(r.err), 1u) << r.err;
    EXPECT_TRUE(contains(r.err, dir.file("nope"))) << r.err;
    r = tool({dir.path().string()});  // a directory
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(lines(r.err), 1u) << r.err;
    EXPECT_TRUE(contains(r.err, "not a regular file or block device")) << r.err;
}

TEST_F(thin_check_cli, tiny_empty_xml_zero_and_garbage_inputs_fail_with_one_clear_line) {
    scratch_dir dir;
    thinpool_test::write_file(dir.file("empty"), "");
    thinpool_test::write_file(dir.file("tiny"), std::string(100, 'x'));
    thinpool_test::write_file(dir.file("xml"), "<superblock uuid=\"\" time=\"0\">\n</superblock>\n");
    auto r = tool({dir.file("empty")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(lines(r.err), 1u) << r.err;
    r = tool({dir.file("tiny")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(lines(r.err), 1u) << r.err;
    EXPECT_TRUE(contains(r.err, "too small")) << r.err;
    r = tool({dir.file("xml")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(lines(r.err), 1u) << r.err;
    EXPECT_TRUE(contains(r.err, "XML")) << r.err;

    thinpool_test::make_sparse_file(dir.file("zeros"), 1 << 20);
    r = tool({dir.file("zeros")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(contains(r.err, "bad checksum in superblock, wanted 1490015127")) << r.err;
    EXPECT_EQ(r.out, "");

    std::string garbage(1 << 16, '\0');
    for (std::size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>((i * 7919) >> 3);
    thinpool_test::write_file(dir.file("garbage"), garbage);
    r = tool({dir.file("garbage")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(contains(r.err, "superblock")) << r.err;
}

TEST_F(thin_check_cli, clean_metadata_prints_the_report_lines_and_exits_0) {
    scratch_dir dir;
    make_metadata(dir.file("m"));
    auto r = tool({dir.file("m")});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    thin::superblock sb = read_superblock(dir.file("m"));
    auto msm = sb.metadata_sm();
    EXPECT_EQ(r.out, "TRANSACTION_ID=" + std::to_string(sb.trans_id) + "\nMETADATA_FREE_BLOCKS=" +
                         std::to_string(msm.nr_blocks - msm.nr_allocated) + "\n");
    EXPECT_EQ(r.err, "examining superblock\nexamining devices tree\nexamining mapping tree\nchecking space map counts\n");
    r = tool({"-q", dir.file("m")});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err, "");
    for (const char* opt : {"--super-block-only", "--skip-mappings", "--ignore-non-fatal-errors"}) {
        r = tool({opt, dir.file("m")});
        EXPECT_EQ(r.exit_code, 0) << opt << r.err;
    }
}

TEST_F(thin_check_cli, fix_options_conflict_with_snap_overrides_and_ignoring) {
    scratch_dir dir;
    make_metadata(dir.file("m"));
    const std::vector<std::pair<std::vector<std::string>, std::string>> bad = {
        {{"--auto-repair", "-m"}, "cannot perform fix within metadata snap"},
        {{"--clear-needs-check-flag", "--metadata-snap"}, "cannot perform fix within metadata snap"},
        {{"--auto-repair", "--ignore-non-fatal-errors"}, "cannot perform fix by ignoring non-fatal errors"},
        {{"--clear-needs-check-flag", "--override-mapping-root", "5"}, "cannot perform fix with an overridden mapping root"},
        {{"--auto-repair", "--override-details-root", "5"}, "cannot perform fix with an overridden details root"},
    };
    for (auto& [args, msg] : bad) {
        auto a = args;
        a.push_back(dir.file("m"));
        auto r = tool(a);
        EXPECT_EQ(r.exit_code, 1) << msg;
        EXPECT_EQ(lines(r.err), 1u) << r.err;
        EXPECT_TRUE(contains(r.err, msg)) << r.err;
    }
}

TEST_F(thin_check_cli, metadata_snap_without_a_snapshot_fails) {
    scratch_dir dir;
    make_metadata(dir.file("m"));
    auto r = tool({"-m", dir.file("m")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(contains(r.err, "no metadata snapshot found")) << r.err;
}

TEST_F(thin_check_cli, damaged_leaf_is_fatal_like_the_reference) {
    scratch_dir dir;
    make_metadata(dir.file("m"));
    auto leaf = a_leaf_of(dir.file("m"), 1);
    ASSERT_NE(leaf, 0u);
    flip_byte(dir.file("m"), leaf, 1000);
    auto r = tool({dir.file("m")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(contains(r.err, "  thin device 1 is missing mappings [")) << r.err;
    EXPECT_TRUE(contains(r.err, "    bad checksum in btree node (block " + std::to_string(leaf) + ")")) << r.err;
    EXPECT_EQ(tool({"--ignore-non-fatal-errors", dir.file("m")}).exit_code, 1);
    EXPECT_EQ(tool({"--auto-repair", dir.file("m")}).exit_code, 1);
    REQUIRE_REFERENCE_TOOLS();
    EXPECT_EQ(reference({dir.file("m")}).exit_code, 1);
}

TEST_F(thin_check_cli, metadata_leak_non_fatal_and_auto_repaired) {
    scratch_dir dir;
    pdata::block_address leaked = 0;
    make_metadata(dir.file("m"), [&](thin::metadata& md) {
        auto& sm = md.metadata_space_map();
        for (pdata::block_address b = sm.nr_blocks() - 1; b > 0 && !leaked; --b)
            if (!sm.get_count(b)) leaked = b;
        sm.inc(leaked);
    });
    auto r = tool({dir.file("m")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(contains(r.err, "  metadata reference counts differ for block " + std::to_string(leaked) +
                                    ", expected 0, but got 1\n"))
        << r.err;
    EXPECT_EQ(tool({"--ignore-non-fatal-errors", dir.file("m")}).exit_code, 0);
    if (thinpool_test::reference_tools_available()) {
        EXPECT_EQ(reference({dir.file("m")}).exit_code, 1);
        EXPECT_EQ(reference({"--ignore-non-fatal-errors", dir.file("m")}).exit_code, 0);
    }
    r = tool({"--auto-repair", dir.file("m")});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(contains(r.err, "repaired 1 leaked metadata block(s) and 0 leaked data block(s)")) << r.err;
    r = tool({dir.file("m")});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    REQUIRE_REFERENCE_TOOLS();
    EXPECT_EQ(reference({dir.file("m")}).exit_code, 0);
}

TEST_F(thin_check_cli, data_leak_is_found_where_the_reference_does_not_look) {
    scratch_dir dir;
    make_metadata(dir.file("m"), [&](thin::metadata& md) { md.data_space_map().inc(19999); });
    auto r = tool({dir.file("m")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(contains(r.err, "  data reference counts differ for block 19999, expected 0, but got 1\n")) << r.err;
    if (thinpool_test::reference_tools_available()) {
        EXPECT_EQ(reference({dir.file("m")}).exit_code, 0);
    }
    r = tool({"--auto-repair", dir.file("m")});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(tool({dir.file("m")}).exit_code, 0);
    REQUIRE_REFERENCE_TOOLS();
    EXPECT_EQ(reference({dir.file("m")}).exit_code, 0);
}

TEST_F(thin_check_cli, clear_needs_check_flag) {
    scratch_dir dir;
    make_metadata(dir.file("m"), [](thin::metadata& md) { md.set_needs_check(); });
    ASSERT_TRUE(read_superblock(dir.file("m")).needs_check());
    auto r = tool({dir.file("m")});
    EXPECT_EQ(r.exit_code, 0) << r.err;  // not an error
    EXPECT_TRUE(read_superblock(dir.file("m")).needs_check());
    r = tool({"--clear-needs-check-flag", dir.file("m")});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(contains(r.err, "cleared needs_check flag\n")) << r.err;
    EXPECT_FALSE(read_superblock(dir.file("m")).needs_check());
    r = tool({"--clear-needs-check-flag", dir.file("m")});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_FALSE(contains(r.err, "cleared")) << r.err;
    REQUIRE_REFERENCE_TOOLS();
    EXPECT_EQ(reference({dir.file("m")}).exit_code, 0);
}

TEST_F(thin_check_cli, clear_needs_check_flag_refused_when_there_are_errors) {
    scratch_dir dir;
    make_metadata(dir.file("m"), [](thin::metadata& md) {
        md.set_needs_check();
        md.metadata_space_map().inc(md.metadata_space_map().nr_blocks() - 1);
    });
    auto r = tool({"--clear-needs-check-flag", dir.file("m")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(read_superblock(dir.file("m")).needs_check());
}

TEST_F(thin_check_cli, kernel_fixtures_agree_with_the_reference) {
    scratch_dir dir;
    for (const char* name : {"tmeta", "tmeta_with_metadata_snap", "tmeta_with_shared_internal_root",
                             "tmeta_device_id_reuse", "tmeta_with_deleted_snapshot",
                             "corrupted_tmeta_with_metadata_snap"}) {
        std::string path = dir.file(name);
        if (!thinpool_test::unpack_kernel_fixture(name, path)) {
            if (thinpool_test::fixtures_required()) FAIL() << "kernel fixture not found";
            GTEST_SKIP() << "kernel fixture not found";
        }
        bool corrupted = std::string(name).rfind("corrupted", 0) == 0;
        auto r = tool({path});
        EXPECT_EQ(r.exit_code, corrupted ? 1 : 0) << name << "\n" << r.err;
        bool has_snap = read_superblock(path).metadata_snap != 0;
        auto m = tool({"-m", path});
        EXPECT_EQ(m.exit_code, has_snap ? 0 : 1) << name << " -m\n" << m.err;
        if (thinpool_test::reference_tools_available()) {
            EXPECT_EQ(reference({path}).exit_code, r.exit_code) << name;
            auto ref_m = reference({"-m", path});
            EXPECT_EQ(ref_m.exit_code, m.exit_code) << name << " -m";
            // Both print the snapshot's transaction id (the free-block count of 0.9.0 is meaningless).
            if (has_snap) {
                EXPECT_EQ(ref_m.out.substr(0, ref_m.out.find('\n')), m.out.substr(0, m.out.find('\n'))) << name;
            }
        }
    }
}
