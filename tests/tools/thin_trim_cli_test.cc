// tools/thin_trim: the command-line contract (tools.md §1, §10): help, version, bad options,
// missing / nonexistent / tiny / XML / corrupt metadata, a missing data device, quiet mode, and
// the man page documenting every option. What is discarded is tested in tests/thin/trim_test.cc.
#include "tests/support/reference_tools.h"
#include "tests/tools/cli_helpers.h"
#include "thin/metadata/metadata.h"

#include "persistent-data/io_engine.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

using thinpool_test::command_result;

namespace {

const std::string TOOL = THINPOOL_BINARY_DIR "/thin_trim";

command_result tool(const std::vector<std::string>& args) { return cli_test::ours("thin_trim", args); }

bool contains(const std::string& s, const std::string& w) { return s.find(w) != std::string::npos; }

class thin_trim_cli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(TOOL)) FAIL() << TOOL << " is not built (build the thin_trim target)";
    }
    thinpool_test::scratch_dir dir;

    // A small valid pool (100 data blocks, 3 in use) and a matching data file.
    void make_pool(const std::string& md, const std::string& data) {
        auto e = std::make_shared<pdata::memory_engine>(256);
        {
            auto m = thin::metadata::format(e, 128, 100);
            m->create_thin(0);
            for (std::uint64_t v = 0; v < 3; ++v) m->insert(0, v, *m->alloc_data_block());
            m->commit();
        }
        std::ofstream f(md, std::ios::binary | std::ios::trunc);
        for (pdata::block_address b = 0; b < 256; ++b) f.write(reinterpret_cast<const char*>(e->raw(b)), pdata::MD_BLOCK_SIZE);
        thinpool_test::make_sparse_file(data, 100 * 128 * 512);
    }
};

} // namespace

TEST_F(thin_trim_cli, help_and_version) {
    for (const char* opt : {"-h", "--help"}) {
        auto r = tool({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.err, "");
        EXPECT_EQ(r.out.rfind("Usage: thin_trim [options] --metadata-dev {device|file} --data-dev {device|file}\n", 0), 0u);
    }
    for (const char* opt : {"-V", "--version"}) {
        auto r = tool({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_FALSE(r.out.empty());
        EXPECT_EQ(r.err, "");
    }
}

TEST_F(thin_trim_cli, man_page_documents_every_option) {
    std::string man = std::string(THINPOOL_SOURCE_DIR) + "/man/thin_trim.8";
    ASSERT_TRUE(std::filesystem::exists(man));
    std::string help = tool({"--help"}).out;
    // --help lists 6 long options; expect_man_page_documents wants at least 5.
    cli_test::expect_man_page_documents(man, help);
}

TEST_F(thin_trim_cli, bad_options_and_missing_arguments) {
    auto r = tool({"--bogus"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(contains(r.err, "bogus")) << r.err;
    EXPECT_TRUE(contains(r.err, "Usage: thin_trim")) << r.err;
    r = tool({});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(contains(r.err, "No metadata device provided.")) << r.err;
    EXPECT_TRUE(contains(r.err, "Usage: thin_trim")) << r.err;
    EXPECT_EQ(r.out, "");
    r = tool({"--metadata-dev", dir.file("md")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(contains(r.err, "No data device provided.")) << r.err;
    r = tool({"--metadata-dev"});
    EXPECT_EQ(r.exit_code, 1);
    r = tool({"-q"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, "");
}

TEST_F(thin_trim_cli, unusable_metadata_is_one_line) {
    std::string md = dir.file("md"), data = dir.file("data");
    make_pool(md, data);
    auto one_line_error = [&](const std::string& meta, const std::string& words) {
        auto r = tool({"--metadata-dev", meta, "--data-dev", data});
        EXPECT_EQ(r.exit_code, 1) << cli_test::describe(r);
        EXPECT_EQ(r.out, "");
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
        EXPECT_EQ(r.err.rfind("thin_trim: ", 0), 0u) << r.err;
        EXPECT_TRUE(contains(r.err, words)) << r.err;
        auto q = tool({"-q", "--metadata-dev", meta, "--data-dev", data});
        EXPECT_EQ(q.exit_code, 1);
        EXPECT_EQ(q.err, "");
    };
    one_line_error(dir.file("nonexistent"), "No such file");
    thinpool_test::write_file(dir.file("tiny"), std::string(100, 'x'));
    one_line_error(dir.file("tiny"), "too small");
    thinpool_test::write_file(dir.file("empty"), "");
    one_line_error(dir.file("empty"), "empty");
    thinpool_test::write_file(dir.file("xml"), "<superblock uuid=\"\" time=\"0\">\n</superblock>\n");
    one_line_error(dir.file("xml"), "XML");
    thinpool_test::make_sparse_file(dir.file("zeros"), 1 << 20);
    one_line_error(dir.file("zeros"), "all zeros");
    // Corrupt superblock checksum.
    std::string bad = dir.file("bad");
    std::filesystem::copy_file(md, bad);
    {
        std::fstream f(bad, std::ios::binary | std::ios::in | std::ios::out);
        f.seekp(200);
        f.put('\x7f');
    }
    one_line_error(bad, "checksum");
    // The data device missing.
    auto r = tool({"--metadata-dev", md, "--data-dev", dir.file("nodata")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(contains(r.err, "nodata")) << r.err;
}

TEST_F(thin_trim_cli, valid_pool_succeeds_silently) {
    std::string md = dir.file("md"), data = dir.file("data");
    make_pool(md, data);
    auto r = tool({"--metadata-dev", md, "--data-dev", data});
    EXPECT_EQ(r.exit_code, 0) << cli_test::describe(r);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err, "");
    r = tool({"--pool-inactive", "-q", "--metadata-dev", md, "--data-dev", data});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.err, "");  // the note is a message too
}
