// tools/thin_metadata_pack and tools/thin_metadata_unpack: the command-line contract (help,
// version, bad options, missing / nonexistent / tiny / XML / wrong-kind input, -f, quiet mode, man
// pages) and a pack -> unpack round trip of a kernel fixture through the binaries. The format and
// the codec are tested in tests/thin/pack_test.cc.
#include "tests/support/fixtures.h"
#include "tests/support/reference_tools.h"
#include "tests/tools/cli_helpers.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

using thinpool_test::command_result;

namespace {

const std::string PACK = "thin_metadata_pack";
const std::string UNPACK = "thin_metadata_unpack";

bool contains(const std::string& s, const std::string& w) { return s.find(w) != std::string::npos; }

class pack_cli : public ::testing::Test {
protected:
    void SetUp() override {
        for (const auto& t : {PACK, UNPACK})
            if (!std::filesystem::exists(std::string(THINPOOL_BINARY_DIR) + "/" + t)) FAIL() << t << " is not built";
    }
    thinpool_test::scratch_dir dir;

    void one_line_error(const std::string& tool, const std::vector<std::string>& args, const std::string& words) {
        auto r = cli_test::ours(tool, args);
        EXPECT_EQ(r.exit_code, 1) << cli_test::describe(r);
        EXPECT_EQ(r.out, "");
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
        EXPECT_EQ(r.err.rfind(tool + ": ", 0), 0u) << r.err;
        EXPECT_TRUE(contains(r.err, words)) << "wanted '" << words << "' in: " << r.err;
        std::vector<std::string> quiet = args;
        quiet.insert(quiet.begin(), "-q");
        auto q = cli_test::ours(tool, quiet);
        EXPECT_EQ(q.exit_code, 1);
        EXPECT_EQ(q.err, "");
    }
};

} // namespace

TEST_F(pack_cli, help_version_and_man_pages) {
    for (const auto& t : {PACK, UNPACK}) {
        for (const char* opt : {"-h", "--help"}) {
            auto r = cli_test::ours(t, {opt});
            EXPECT_EQ(r.exit_code, 0);
            EXPECT_EQ(r.err, "");
            EXPECT_EQ(r.out.rfind("Usage: " + t + " [options] -i ", 0), 0u) << r.out;
        }
        auto r = cli_test::ours(t, {"-V"});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_FALSE(r.out.empty());
        EXPECT_EQ(cli_test::ours(t, {"--version"}).out, r.out);
        std::string man = std::string(THINPOOL_SOURCE_DIR) + "/man/" + t + ".8";
        ASSERT_TRUE(std::filesystem::exists(man)) << man;
        cli_test::expect_man_page_documents(man, cli_test::ours(t, {"--help"}).out);
    }
}

TEST_F(pack_cli, bad_options_and_missing_arguments) {
    for (const auto& t : {PACK, UNPACK}) {
        auto r = cli_test::ours(t, {"--bogus"});
        EXPECT_EQ(r.exit_code, 1);
        EXPECT_TRUE(contains(r.err, "bogus")) << r.err;
        r = cli_test::ours(t, {});
        EXPECT_EQ(r.exit_code, 1);
        EXPECT_TRUE(contains(r.err, "No input file provided.")) << r.err;
        EXPECT_TRUE(contains(r.err, "Usage: " + t)) << r.err;
        r = cli_test::ours(t, {"-i", dir.file("x")});
        EXPECT_EQ(r.exit_code, 1);
        EXPECT_TRUE(contains(r.err, "No output file provided.")) << r.err;
        r = cli_test::ours(t, {"-i"});
        EXPECT_EQ(r.exit_code, 1);
    }
}

TEST_F(pack_cli, unusable_inputs_are_one_line) {
    std::string out = dir.file("out");
    thinpool_test::write_file(dir.file("tiny"), std::string(100, 'x'));
    thinpool_test::write_file(dir.file("empty"), "");
    thinpool_test::write_file(dir.file("xml"), "<superblock uuid=\"\" time=\"0\">\n</superblock>\n");
    one_line_error(PACK, {"-i", dir.file("nonexistent"), "-o", out}, "No such file");
    one_line_error(PACK, {"-i", dir.file("tiny"), "-o", out}, "too small");
    one_line_error(PACK, {"-i", dir.file("empty"), "-o", out}, "empty");
    one_line_error(PACK, {"-i", dir.file("xml"), "-o", out}, "XML");
    one_line_error(UNPACK, {"-i", dir.file("nonexistent"), "-o", out}, "No such file");
    one_line_error(UNPACK, {"-i", dir.file("tiny"), "-o", out}, "bad magic");
    one_line_error(UNPACK, {"-i", dir.file("empty"), "-o", out}, "empty");
    one_line_error(UNPACK, {"-i", dir.file("xml"), "-o", out}, "XML");
    EXPECT_FALSE(std::filesystem::exists(out));
}

TEST_F(pack_cli, round_trip_force_and_corrupt_pack) {
    std::string md = dir.file("md"), pk = dir.file("md.pack"), un = dir.file("md.un");
    if (!thinpool_test::unpack_kernel_fixture("tmeta_with_shared_internal_root", md)) {
        if (thinpool_test::fixtures_required()) FAIL() << "kernel fixture missing";
        GTEST_SKIP() << "kernel fixtures not found";
    }
    auto r = cli_test::ours(PACK, {"-i", md, "-o", pk});
    ASSERT_EQ(r.exit_code, 0) << cli_test::describe(r);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err, "");
    r = cli_test::ours(UNPACK, {"-i", pk, "-o", un});
    ASSERT_EQ(r.exit_code, 0) << cli_test::describe(r);
    EXPECT_TRUE(thinpool_test::files_equal(md, un));

    // Existing outputs need -f.
    one_line_error(PACK, {"-i", md, "-o", pk}, "use -f");
    one_line_error(UNPACK, {"-i", pk, "-o", un}, "use -f");
    EXPECT_EQ(cli_test::ours(PACK, {"-f", "-i", md, "-o", pk}).exit_code, 0);
    EXPECT_EQ(cli_test::ours(UNPACK, {"--force", "-i", pk, "-o", un}).exit_code, 0);
    EXPECT_TRUE(thinpool_test::files_equal(md, un));

    // Metadata is not a pack file; a pack file is not metadata.
    one_line_error(UNPACK, {"-i", md, "-o", dir.file("x")}, "dm-thin metadata, not a thin_metadata_pack file");
    one_line_error(PACK, {"-i", pk, "-o", dir.file("y")}, "too small");
    // Big enough, but not a single block with a metadata checksum.
    thinpool_test::write_file(dir.file("junk"), std::string(5 * 4096, 'j'));
    one_line_error(PACK, {"-i", dir.file("junk"), "-o", dir.file("y")}, "no metadata blocks");
    EXPECT_FALSE(std::filesystem::exists(dir.file("y")));

    // A damaged pack: one line naming the offset, no output left behind.
    std::string bad = dir.file("bad.pack");
    std::filesystem::copy_file(pk, bad);
    std::filesystem::resize_file(bad, std::filesystem::file_size(pk) - 10);
    one_line_error(UNPACK, {"-i", bad, "-o", dir.file("bad.out")}, "truncated chunk");
    EXPECT_FALSE(std::filesystem::exists(dir.file("bad.out")));
}
