// tools/thin_generate_metadata: the command-line contract (help, version, bad input, exit codes),
// the man page matching --help, and that the output is the generator's deterministic metadata.
#include "thin/generate/generator.h"
#include "thin/metadata/metadata.h"

#include "persistent-data/io_engine.h"
#include "tests/support/reference_tools.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <set>

using thinpool_test::command_result;
using thinpool_test::run_command;
using thinpool_test::scratch_dir;
namespace gen = thin::generate;

namespace {

const std::string TOOL = THINPOOL_BINARY_DIR "/thin_generate_metadata";

command_result tool(std::vector<std::string> args) {
    args.insert(args.begin(), TOOL);
    return run_command(args);
}

class thin_generate_metadata_cli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(TOOL))
            FAIL() << TOOL << " is not built (build the thin_generate_metadata target)";
    }
};

std::size_t lines(const std::string& s) {
    std::size_t n = 0;
    for (char c : s)
        n += c == '\n';
    return n;
}

} // namespace

TEST_F(thin_generate_metadata_cli, help_goes_to_stdout_and_lists_every_shape) {
    for (const char* opt : {"--help", "-h"}) {
        auto r = tool({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.err, "");
        EXPECT_EQ(r.out.rfind("Usage: thin_generate_metadata", 0), 0u);
        for (const auto& name : gen::shape_names())
            EXPECT_NE(r.out.find("  " + name + " "), std::string::npos) << name;
        std::istringstream in(r.out);
        std::string line;
        while (std::getline(in, line))
            EXPECT_LE(line.size(), 80u) << line;
    }
}

TEST_F(thin_generate_metadata_cli, version) {
    for (const char* opt : {"--version", "-V"}) {
        auto r = tool({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.out, std::string(THINPOOL_VERSION) + "\n");
    }
}

TEST_F(thin_generate_metadata_cli, man_page_documents_every_option_and_shape) {
    std::string man = thinpool_test::read_file(THINPOOL_SOURCE_DIR "/man/thin_generate_metadata.8");
    auto r = tool({"--help"});
    std::regex long_opt("--([a-z][a-z-]*)");
    std::set<std::string> opts;
    for (std::sregex_iterator it(r.out.begin(), r.out.end(), long_opt), end; it != end; ++it)
        opts.insert((*it)[1]);
    EXPECT_GE(opts.size(), 15u);
    for (const auto& o : opts) {
        std::string roff = "\\-\\-";
        for (char c : o)
            roff += c == '-' ? std::string("\\-") : std::string(1, c);
        EXPECT_NE(man.find(roff), std::string::npos) << "--" << o << " is not in the man page";
    }
    for (const auto& name : gen::shape_names()) {
        std::string roff;
        for (char c : name)
            roff += c == '-' ? std::string("\\-") : std::string(1, c);
        EXPECT_NE(man.find(".B " + roff + "\n"), std::string::npos) << name;
    }
}

TEST_F(thin_generate_metadata_cli, usage_errors_exit_2_with_one_line) {
    scratch_dir dir;
    std::string out = dir.file("m");
    const std::vector<std::vector<std::string>> bad = {
        {},                                             // no output
        {"--bogus"},                                    // unknown option
        {"-o", out, "--shape", "nope"},                 // unknown shape
        {"-o", out, "--seed", "-1"},                    // negative
        {"-o", out, "--mappings", "12x"},               // not a number
        {"-o", out, "--seed", "99999999999999999999"},  // out of range
        {"-o", out, "--data-block-size", "100"},        // not a multiple of 128
        {"-o", out, "--data-block-size", "4194304"},    // too large
        {"-o", out, "--metadata-blocks", "5000000"},    // above the limit
        {"-o", out, "--nr-data-blocks", "0"},
        {"-o", out, "--snap-xml", dir.file("s.xml")},   // no held snapshot
        {"-o"},                                         // missing value
    };
    for (const auto& args : bad) {
        auto r = tool(args);
        std::string what;
        for (const auto& a : args)
            what += a + " ";
        EXPECT_EQ(r.exit_code, 2) << what << r.err;
        EXPECT_EQ(lines(r.err), 1u) << what << r.err;
        EXPECT_EQ(r.err.rfind("thin_generate_metadata: ", 0), 0u) << what << r.err;
        EXPECT_EQ(r.out, "") << what;
    }
}

TEST_F(thin_generate_metadata_cli, runtime_errors_exit_1_with_one_line) {
    scratch_dir dir;
    const std::vector<std::vector<std::string>> bad = {
        {"-o", dir.file("no/such/dir/m"), "--shape", "tiny"},
        {"-o", dir.file("m"), "--shape", "tiny", "--nr-data-blocks", "10"},    // data space runs out
        {"-o", dir.file("m"), "--shape", "random", "--metadata-blocks", "20"}, // metadata runs out
        {"-o", dir.file("m"), "--shape", "tiny", "--xml", dir.file("no/such/dir/x.xml")},
    };
    for (const auto& args : bad) {
        auto r = tool(args);
        std::string what;
        for (const auto& a : args)
            what += a + " ";
        EXPECT_EQ(r.exit_code, 1) << what << r.err;
        EXPECT_EQ(lines(r.err), 1u) << what << r.err;
        EXPECT_EQ(r.err.rfind("thin_generate_metadata: ", 0), 0u) << what << r.err;
    }
}

TEST_F(thin_generate_metadata_cli, output_is_the_generators_deterministic_metadata) {
    scratch_dir dir;
    const std::vector<std::string> args = {"--shape", "held", "--seed", "5", "--mappings", "3000",
                                           "--data-block-size", "256"};
    auto with = [&](std::vector<std::string> extra) {
        std::vector<std::string> a = args;
        a.insert(a.end(), extra.begin(), extra.end());
        return tool(a);
    };
    auto r = with({"-o", dir.file("a"), "--xml", dir.file("a.xml"), "--snap-xml", dir.file("a.snap.xml")});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(lines(r.err), 1u);
    EXPECT_NE(r.err.find("shape held seed 5"), std::string::npos) << r.err;
    r = with({"-o", dir.file("b"), "-q", "--xml", dir.file("b.xml")});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(r.out, "");

    EXPECT_TRUE(thinpool_test::files_equal(dir.file("a"), dir.file("b")));
    EXPECT_EQ(thinpool_test::read_file(dir.file("a.xml")), thinpool_test::read_file(dir.file("b.xml")));

    // The same shape in-process gives the same record, and the file holds it.
    gen::shape s = *gen::named_shape("held");
    s.seed = 5;
    s.data_block_size = 256;
    s.writes_per_origin = 1500;
    s.nr_data_blocks = 0;
    s.metadata_blocks = 0;
    gen::generator g(gen::resolve(s), nullptr);
    g.run();
    std::shared_ptr<pdata::io_engine> engine =
        pdata::open_sync_engine(dir.file("a"), {pdata::open_mode::read_only, false});
    thin::open_options o;
    o.read_only = true;
    auto md = thin::metadata::open(engine, o);
    std::string xml = thinpool_test::read_file(dir.file("a.xml"));
    EXPECT_EQ(std::filesystem::file_size(dir.file("a")), md->nr_metadata_blocks() * pdata::MD_BLOCK_SIZE);
    EXPECT_NE(md->metadata_snap(), 0u);
    EXPECT_EQ(md->data_block_size(), 256u);
    // Data blocks differ between the model's counter and the real allocator; compare the shape
    // of the result instead of the bytes.
    EXPECT_EQ(md->devices().size(), g.record().devices.size());
    EXPECT_EQ(md->time(), g.record().time);
    EXPECT_EQ(md->transaction_id(), g.record().transaction);
    EXPECT_NE(xml.find("data_block_size=\"256\""), std::string::npos);
    EXPECT_FALSE(thinpool_test::read_file(dir.file("a.snap.xml")).empty());
}
