// tools/thin_repair: the command-line contract (tools.md §1, §6): help, version, bad options,
// missing or unsuitable input and output, the superblock values a corrupt superblock needs, quiet
// mode, and outputs that Debian's thin_check accepts.
#include "tests/tools/cli_helpers.h"

#include "thin/metadata/mapping.h"
#include "thin/metadata/metadata.h"
#include "thin/metadata/superblock.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"

#include <fcntl.h>
#include <unistd.h>

using namespace cli_test;
using thinpool_test::scratch_dir;

namespace {

const char* const TOOL = "thin_repair";

thinpool_test::command_result repair(std::vector<std::string> args) { return ours(TOOL, std::move(args)); }

class thin_repair_cli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(std::string(THINPOOL_BINARY_DIR) + "/thin_repair"))
            FAIL() << "thin_repair is not built";
    }

    // Valid metadata: two devices, one a snapshot, `mappings` mappings, transaction 5.
    std::string make_input(const std::string& name = "in", std::uint64_t mappings = 1000) {
        std::string path = dir.file(name);
        thinpool_test::make_sparse_file(path, 1024 * 4096);
        auto md = thin::metadata::format(
            std::shared_ptr<pdata::io_engine>(pdata::open_sync_engine(path, {pdata::open_mode::read_write, false})), 128,
            50000);
        md->create_thin(0);
        for (std::uint64_t v = 0; v < mappings; ++v) md->insert(0, v, *md->alloc_data_block());
        md->create_snap(1, 0);
        md->set_transaction_id(0, 5);
        md->commit();
        return path;
    }
    std::string make_output(const std::string& name = "out", std::uint64_t bytes = 1024 * 4096) {
        std::string path = dir.file(name);
        thinpool_test::make_sparse_file(path, bytes);
        return path;
    }

    scratch_dir dir;
};

void flip_byte(const std::string& path, off_t offset) {
    int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    unsigned char c = 0;
    ASSERT_EQ(::pread(fd, &c, 1, offset), 1);
    c ^= 0xff;
    ASSERT_EQ(::pwrite(fd, &c, 1, offset), 1);
    ::close(fd);
}

bool block0_is_zero(const std::string& path) {
    std::string s = thinpool_test::read_file(path).substr(0, 4096);
    return s.find_first_not_of('\0') == std::string::npos;
}

std::string read_block(const std::string& path, std::uint64_t b) {
    return thinpool_test::read_file(path).substr(b * 4096, 4096);
}

void write_block(const std::string& path, std::uint64_t b, std::string buf, pdata::block_salt salt) {
    auto* p = reinterpret_cast<std::uint8_t*>(buf.data());
    pdata::store_le32(p, pdata::block_checksum(p, salt));
    int fd = ::open(path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, buf.data(), 4096, static_cast<off_t>(b * 4096)), 4096);
    ::close(fd);
}

// Valid metadata of one thin device (id 0, 100 mappings, one leaf) on a data device of 50000
// blocks, whose mappings 0, 1 and 2 then point at data blocks 2^40-1, 50000 (the first block past
// the end) and 49999 (the last block).
std::string make_input_beyond_the_end(const std::string& path) {
    thinpool_test::make_sparse_file(path, 1024 * 4096);
    {
        auto md = thin::metadata::format(
            std::shared_ptr<pdata::io_engine>(pdata::open_sync_engine(path, {pdata::open_mode::read_write, false})), 128,
            50000);
        md->create_thin(0);
        for (std::uint64_t v = 0; v < 100; ++v) md->insert(0, v, *md->alloc_data_block());
        md->commit();
    }
    std::string sb = read_block(path, 0);
    auto top = read_block(path, thin::superblock::unpack(reinterpret_cast<const std::uint8_t*>(sb.data())).data_mapping_root);
    std::uint64_t leaf = pdata::btree::node_ref(reinterpret_cast<const std::uint8_t*>(top.data())).value64(0);
    std::string buf = read_block(path, leaf);
    pdata::btree::node_mut n(reinterpret_cast<std::uint8_t*>(buf.data()));
    EXPECT_TRUE(n.is_leaf());
    const std::uint64_t targets[] = {thin::MAX_DATA_BLOCK, 50000, 49999};
    for (unsigned i = 0; i < 3; ++i) n.set_value64(i, thin::block_time{targets[i], 0}.pack());
    write_block(path, leaf, buf, pdata::block_salt::btree_node);
    return path;
}

void expect_both_checkers_pass(const std::string& out) {
    auto ck = ours("thin_check", {out});
    EXPECT_EQ(ck.exit_code, 0) << describe(ck);
    if (thinpool_test::reference_tools_available()) {
        auto c = theirs("thin_check", {out});
        EXPECT_EQ(c.exit_code, 0) << describe(c);
    } else if (thinpool_test::reference_tools_required()) {
        ADD_FAILURE() << "reference tools missing";
    }
}

} // namespace

TEST_F(thin_repair_cli, help_goes_to_stdout) {
    for (const char* opt : {"--help", "-h"}) {
        auto r = repair({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.err, "");
        EXPECT_EQ(r.out.rfind("Usage: thin_repair [options]", 0), 0u) << r.out;
        for (const char* o : {"--input", "--output", "--transaction-id", "--data-block-size", "--nr-data-blocks",
                              "--quiet", "--version", "--help"})
            EXPECT_NE(r.out.find(o), std::string::npos) << o;
    }
}

TEST_F(thin_repair_cli, man_page_agrees_with_help) {
    expect_man_page_documents(THINPOOL_SOURCE_DIR "/man/thin_repair.8", repair({"--help"}).out);
}

TEST_F(thin_repair_cli, version) {
    for (const char* opt : {"--version", "-V"}) {
        auto r = repair({opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.out, std::string(THINPOOL_VERSION) + "\n");
    }
}

TEST_F(thin_repair_cli, unknown_option) {
    auto r = repair({"--bogus"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("bogus"), std::string::npos);
    EXPECT_NE(r.err.find("Usage:"), std::string::npos);
    EXPECT_EQ(r.out, "");
}

TEST_F(thin_repair_cli, bad_number) {
    auto r = repair({"-i", make_input(), "-o", make_output(), "--transaction-id", "-3"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("--transaction-id"), std::string::npos) << describe(r);
}

TEST_F(thin_repair_cli, missing_input_or_output) {
    auto r = repair({"-o", make_output()});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("No input file provided."), std::string::npos) << describe(r);
    r = repair({"-i", make_input()});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("No output file provided."), std::string::npos) << describe(r);
    r = repair({});
    EXPECT_EQ(r.exit_code, 1);
}

TEST_F(thin_repair_cli, nonexistent_input) {
    auto r = repair({"-i", dir.file("nope"), "-o", make_output()});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(dir.file("nope")), std::string::npos) << describe(r);
}

TEST_F(thin_repair_cli, too_small_input) {
    thinpool_test::write_file(dir.file("tiny"), std::string(100, '\x01'));
    auto r = repair({"-i", dir.file("tiny"), "-o", make_output()});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("too small"), std::string::npos) << describe(r);
    thinpool_test::write_file(dir.file("empty"), "");
    r = repair({"-i", dir.file("empty"), "-o", make_output()});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("empty"), std::string::npos) << describe(r);
}

TEST_F(thin_repair_cli, xml_input) {
    thinpool_test::write_file(dir.file("x.xml"), "<superblock uuid=\"\" time=\"0\" transaction=\"0\" "
                                                 "data_block_size=\"128\" nr_data_blocks=\"100\">\n</superblock>\n");
    auto r = repair({"-i", dir.file("x.xml"), "-o", make_output()});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("XML"), std::string::npos) << describe(r);
}

TEST_F(thin_repair_cli, output_missing_or_too_small) {
    std::string in = make_input();
    auto r = repair({"-i", in, "-o", dir.file("absent")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("does not exist"), std::string::npos) << describe(r);
    EXPECT_FALSE(std::filesystem::exists(dir.file("absent")));
    r = repair({"-i", in, "-o", make_output("small", 16 * 1024)});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("too small"), std::string::npos) << describe(r);
}

TEST_F(thin_repair_cli, output_same_as_input_is_refused) {
    std::string in = make_input();
    std::string before = thinpool_test::read_file(in);
    auto r = repair({"-i", in, "-o", in});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("same"), std::string::npos) << describe(r);
    EXPECT_TRUE(thinpool_test::read_file(in) == before);
}

TEST_F(thin_repair_cli, repairs_valid_metadata_silently) {
    std::string in = make_input(), out = make_output();
    auto r = repair({"-i", in, "-o", out});
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err, "");
    if (thinpool_test::reference_tools_available()) {
        auto c = theirs("thin_check", {out});
        EXPECT_EQ(c.exit_code, 0) << describe(c);
        EXPECT_EQ(theirs("thin_dump", {out}).out, theirs("thin_dump", {in}).out);
    } else if (thinpool_test::reference_tools_required()) {
        FAIL() << "reference tools missing";
    }
}

TEST_F(thin_repair_cli, corrupt_superblock_needs_values) {
    std::string in = make_input(), out = make_output();
    flip_byte(in, 100);
    auto r = repair({"-i", in, "-o", out});
    EXPECT_EQ(r.exit_code, 1);
    const std::string lead =
        "The following field needs to be provided on the command line due to corruption in the superblock: ";
    EXPECT_NE(r.err.find(lead + "transaction id"), std::string::npos) << describe(r);
    EXPECT_NE(r.err.find(lead + "data block size"), std::string::npos) << describe(r);
    EXPECT_NE(r.err.find(lead + "nr data blocks"), std::string::npos) << describe(r);
    r = repair({"-q", "-i", in, "-o", out});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, "");

    r = repair({"-i", in, "-o", out, "--transaction-id", "5", "--data-block-size", "128", "--nr-data-blocks", "50000"});
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_NE(r.err.find("superblock (block 0) is unreadable"), std::string::npos) << describe(r);
    if (thinpool_test::reference_tools_available()) {
        auto c = theirs("thin_check", {out});
        EXPECT_EQ(c.exit_code, 0) << describe(c);
        auto d = theirs("thin_dump", {out});
        EXPECT_NE(d.out.find("transaction=\"5\""), std::string::npos) << d.out.substr(0, 300);
        EXPECT_NE(d.out.find("<device dev_id=\"1\" mapped_blocks=\"1000\""), std::string::npos) << d.out.substr(0, 300);
    }

    // -q: nothing on stderr even with damage to report.
    r = repair({"-q", "-i", in, "-o", out, "--transaction-id", "5", "--data-block-size", "128", "--nr-data-blocks",
                "50000"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.err, "");
}

TEST_F(thin_repair_cli, invalid_data_block_size_leaves_output_untouched) {
    std::string in = make_input(), out = make_output();
    flip_byte(in, 100);
    auto r = repair({"-i", in, "-o", out, "--transaction-id", "5", "--data-block-size", "100", "--nr-data-blocks", "50000"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("data block size"), std::string::npos) << describe(r);
}

TEST_F(thin_repair_cli, failed_repair_zeroes_output_superblock) {
    std::string in = make_input("in", 20000);
    // A valid pool first, then too small to hold the repaired one.
    std::string out = make_output("out", 64 * 1024);
    thin::metadata::format(
        std::shared_ptr<pdata::io_engine>(pdata::open_sync_engine(out, {pdata::open_mode::read_write, false})), 128, 100)
        .reset();
    ASSERT_FALSE(block0_is_zero(out));
    auto r = repair({"-i", in, "-o", out});
    EXPECT_EQ(r.exit_code, 1) << describe(r);
    EXPECT_TRUE(block0_is_zero(out));
}

TEST_F(thin_repair_cli, kernel_fixtures_repair_to_the_same_mappings) {
    for (const auto& name : valid_fixtures()) {
        SCOPED_TRACE(name);
        std::string in = dir.file(name);
        UNPACK_FIXTURE_OR_SKIP(name, in);
        std::string out = make_output(name + ".out", std::filesystem::file_size(in));
        auto r = repair({"-i", in, "-o", out});
        ASSERT_EQ(r.exit_code, 0) << describe(r);
        if (!thinpool_test::reference_tools_available()) {
            if (thinpool_test::reference_tools_required()) FAIL() << "reference tools missing";
            continue;
        }
        auto c = theirs("thin_check", {out});
        EXPECT_EQ(c.exit_code, 0) << describe(c);
        EXPECT_EQ(theirs("thin_dump", {out}).out, theirs("thin_dump", {in}).out);
    }
}

TEST_F(thin_repair_cli, corrupted_kernel_fixture_repairs_from_the_snapshot) {
    std::string in = dir.file("corrupt");
    UNPACK_FIXTURE_OR_SKIP("corrupted_tmeta_with_metadata_snap", in);
    std::string out = make_output("out", std::filesystem::file_size(in));
    auto r = repair({"-i", in, "-o", out});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_NE(r.err.find("metadata snapshot"), std::string::npos) << describe(r);
    if (std::filesystem::exists(std::string(THINPOOL_BINARY_DIR) + "/thin_check")) {
        auto ck = ours("thin_check", {out});
        EXPECT_EQ(ck.exit_code, 0) << describe(ck);
    }
    if (thinpool_test::reference_tools_available()) {
        auto c = theirs("thin_check", {out});
        EXPECT_EQ(c.exit_code, 0) << describe(c);
        EXPECT_NE(theirs("thin_dump", {out}).out.find("<device dev_id=\"1\""), std::string::npos);
    }
}

TEST_F(thin_repair_cli, mappings_beyond_the_data_device_are_dropped_with_a_warning) {
    std::string in = make_input_beyond_the_end(dir.file("in"));
    std::string out = make_output();
    auto r = repair({"-i", in, "-o", out});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_NE(r.err.find("thin device 0: 2 mappings"), std::string::npos) << describe(r);
    EXPECT_NE(r.err.find("50000"), std::string::npos) << describe(r);
    expect_both_checkers_pass(out);
    auto d = ours("thin_dump", {out});
    EXPECT_NE(d.out.find("nr_data_blocks=\"50000\""), std::string::npos) << d.out.substr(0, 300);
    EXPECT_NE(d.out.find("mapped_blocks=\"98\""), std::string::npos) << d.out.substr(0, 300);
    EXPECT_NE(d.out.find("origin_block=\"2\" data_block=\"49999\""), std::string::npos) << d.out.substr(0, 600);

    r = repair({"-q", "-i", in, "-o", out});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.err, "");
}

TEST_F(thin_repair_cli, unknown_data_device_size_too_big_for_the_output_asks_for_nr_data_blocks) {
    std::string in = make_input_beyond_the_end(dir.file("in"));
    // The data space map root's index tree is the superblock: its size cannot be trusted.
    std::string sb = read_block(in, 0);
    pdata::store_le64(reinterpret_cast<std::uint8_t*>(sb.data()) + 64 + 16, 0);
    write_block(in, 0, sb, pdata::block_salt::superblock);

    std::string out = make_output();
    auto r = repair({"-i", in, "-o", out});
    EXPECT_EQ(r.exit_code, 1) << describe(r);
    EXPECT_NE(r.err.find("--nr-data-blocks"), std::string::npos) << describe(r);
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << describe(r);
    EXPECT_TRUE(block0_is_zero(out));

    r = repair({"-i", in, "-o", out, "--nr-data-blocks", "50000"});
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_NE(r.err.find("thin device 0: 2 mappings"), std::string::npos) << describe(r);
    expect_both_checkers_pass(out);
    auto d = ours("thin_dump", {out});
    EXPECT_NE(d.out.find("nr_data_blocks=\"50000\""), std::string::npos) << d.out.substr(0, 300);
    EXPECT_NE(d.out.find("mapped_blocks=\"98\""), std::string::npos) << d.out.substr(0, 300);

    // A size the output cannot describe is refused before anything is written.
    std::string out2 = make_output("out2");
    r = repair({"-i", in, "-o", out2, "--nr-data-blocks", std::to_string(thin::MAX_DATA_BLOCK + 1)});
    EXPECT_EQ(r.exit_code, 1) << describe(r);
    EXPECT_NE(r.err.find("--nr-data-blocks"), std::string::npos) << describe(r);
    EXPECT_EQ(r.err.find("out of memory"), std::string::npos) << describe(r);
    EXPECT_TRUE(block0_is_zero(out2));
}
