// Interoperability of thin/nbd/server with real clients: libnbd's nbdinfo and nbdcopy, QEMU's
// qemu-io and qemu-img, over a Unix socket. Each test skips when its client is not installed
// (Debian packages libnbd-bin and qemu-utils), unless THINPOOL_REQUIRE_CLIENTS=1.
#include "tests/support/reference_tools.h"
#include "tests/thin/nbd/memory_export.h"
#include "thin/nbd/server.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <unistd.h>

using namespace nbd_test;

namespace {

bool clients_required() {
    const char* v = std::getenv("THINPOOL_REQUIRE_CLIENTS");
    return v && std::string(v) == "1";
}

#define REQUIRE_CLIENT(path)                                                                    \
    do {                                                                                        \
        if (::access(path, X_OK) != 0) {                                                        \
            if (clients_required())                                                             \
                FAIL() << path << " not found and THINPOOL_REQUIRE_CLIENTS=1";                  \
            GTEST_SKIP() << path << " not installed";                                           \
        }                                                                                       \
    } while (0)

constexpr const char* NBDINFO = "/usr/bin/nbdinfo";
constexpr const char* NBDCOPY = "/usr/bin/nbdcopy";
constexpr const char* QEMU_IO = "/usr/bin/qemu-io";
constexpr const char* QEMU_IMG = "/usr/bin/qemu-img";

constexpr std::uint64_t SIZE = 8 << 20;
constexpr std::uint32_t BLOCK = 64 * 1024;

std::string file_bytes(const std::string& path) { return thinpool_test::read_file(path); }

std::string as_string(const std::vector<std::uint8_t>& v) { return std::string(v.begin(), v.end()); }

class clients : public ::testing::Test {
protected:
    void SetUp() override {
        disk = std::make_shared<memory_export>(memory_export::options{.size = SIZE, .block = BLOCK});
        disk->fill(1 * BLOCK, 2 * BLOCK, 0x11);
        disk->fill(5 * BLOCK, BLOCK, 0x22);
        disk->fill(40 * BLOCK + 4096, 512, 0x33);  // maps block 40
        provider->add("disk", "thin volume 1", disk);
        ro = std::make_shared<memory_export>(memory_export::options{.size = 1 << 20, .read_only = true});
        provider->add("ro", "", ro);
        srv = std::make_unique<thin::nbd::server>(provider, thin::nbd::server_options{.log = log.sink()});
        srv->listen_unix(socket);
        srv->start();
    }
    void TearDown() override {
        srv->stop();
        EXPECT_FALSE(log.contains("protocol error")) << log.all();
    }

    std::string uri(const std::string& name = "disk") const { return "nbd+unix:///" + name + "?socket=" + socket; }

    // Runs a client with a time limit; its exit code, stdout and stderr.
    thinpool_test::command_result run(std::vector<std::string> argv) {
        argv.insert(argv.begin(), {"/usr/bin/timeout", "-k", "10", "120"});
        auto r = thinpool_test::run_command(argv);
        if (r.exit_code == 124)
            ADD_FAILURE() << argv[4] << " timed out";
        return r;
    }

    thinpool_test::scratch_dir dir;
    std::string socket = dir.file("nbd.sock");
    log_capture log;
    std::shared_ptr<memory_provider> provider = std::make_shared<memory_provider>();
    std::shared_ptr<memory_export> disk, ro;
    std::unique_ptr<thin::nbd::server> srv;
};

TEST_F(clients, nbdinfo_sees_size_block_sizes_and_capabilities) {
    REQUIRE_CLIENT(NBDINFO);
    auto r = run({NBDINFO, "--json", uri()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const char* want : {"\"export-size\": 8388608", "\"block_size_minimum\": 512", "\"block_size_preferred\": 65536",
                             "\"block_size_maximum\": 33554432", "\"is_read_only\": false", "\"can_trim\": true",
                             "\"can_zero\": true", "\"can_fast_zero\": true", "\"can_fua\": true", "\"can_flush\": true",
                             "\"can_multi_conn\": true", "\"can_df\": true", "\"structured\": true", "\"base:allocation\"",
                             "\"description\": \"thin volume 1\""})
        EXPECT_NE(r.out.find(want), std::string::npos) << want << " not in:\n" << r.out;

    r = run({NBDINFO, "--json", uri("ro")});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("\"is_read_only\": true"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\"export-size\": 1048576"), std::string::npos) << r.out;
}

TEST_F(clients, nbdinfo_lists_exports_and_fails_cleanly_on_unknown_ones) {
    REQUIRE_CLIENT(NBDINFO);
    auto r = run({NBDINFO, "--list", "--json", uri("")});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("\"export-name\": \"disk\""), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\"export-name\": \"ro\""), std::string::npos) << r.out;
    r = run({NBDINFO, uri("nope")});
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("server replied with error to opt_go request"), std::string::npos) << r.err;
    EXPECT_TRUE(log.contains("unknown export 'nope'"));
}

TEST_F(clients, nbdinfo_map_matches_the_holes) {
    REQUIRE_CLIENT(NBDINFO);
    auto r = run({NBDINFO, "--map", uri()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::ostringstream got;
    std::istringstream in(r.out);
    std::uint64_t off, len;
    int type;
    std::string desc;
    while (in >> off >> len >> type >> desc)
        got << off / BLOCK << "+" << len / BLOCK << ":" << type << " ";
    EXPECT_EQ(got.str(), "0+1:3 1+2:0 3+2:3 5+1:0 6+34:3 40+1:0 41+87:3 ") << r.out;
}

TEST_F(clients, qemu_io_writes_and_reads_patterns) {
    REQUIRE_CLIENT(QEMU_IO);
    auto r = run({QEMU_IO, "-f", "raw", uri(), "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M", "-c",
                  "write -z 2M 128k", "-c", "discard 3M 1M", "-c", "write -f -P 0xcd 4M 64k", "-c", "flush", "-c",
                  "read -P 0 2M 128k", "-c", "read -P 0 3M 1M"});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.out;
    EXPECT_EQ(as_string(disk->bytes(0, 1 << 20)), std::string(1 << 20, '\xab'));
    EXPECT_EQ(as_string(disk->bytes(4 << 20, BLOCK)), std::string(BLOCK, '\xcd'));
    EXPECT_FALSE(disk->mapped((3 << 20) / BLOCK));  // the discard reached the export
    bool saw_fua = false, saw_flush = false;
    for (const auto& q : disk->requests()) {
        saw_fua |= q.op == io_op::write && q.fua;
        saw_flush |= q.op == io_op::flush;
    }
    EXPECT_TRUE(saw_fua);
    EXPECT_TRUE(saw_flush);
}

TEST_F(clients, qemu_io_is_refused_writes_on_a_read_only_export) {
    REQUIRE_CLIENT(QEMU_IO);
    auto r = run({QEMU_IO, "-f", "raw", "-r", uri("ro"), "-c", "read -P 0 0 64k"});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    r = run({QEMU_IO, "-f", "raw", uri("ro"), "-c", "write -P 1 0 64k"});
    EXPECT_NE(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(as_string(ro->bytes(0, BLOCK)), std::string(BLOCK, '\0'));
}

TEST_F(clients, nbdcopy_both_ways) {
    REQUIRE_CLIENT(NBDCOPY);
    // Export to file: the same bytes.
    std::string out = dir.file("out.img");
    auto r = run({NBDCOPY, uri(), out});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(file_bytes(out), as_string(disk->bytes(0, SIZE)));

    // File to export: patterned data with a zero stretch in the middle.
    std::string in = dir.file("in.img");
    std::string content(SIZE, '\0');
    for (std::size_t i = 0; i < content.size(); ++i)
        content[i] = i >= (2 << 20) && i < (5 << 20) ? 0 : char(i * 13 + (i >> 12));
    thinpool_test::write_file(in, content);
    r = run({NBDCOPY, in, uri()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(as_string(disk->bytes(0, SIZE)) == content) << "export differs from " << in;

    r = run({NBDCOPY, uri(), out});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(thinpool_test::files_equal(in, out));
}

TEST_F(clients, qemu_img_compare_and_convert) {
    REQUIRE_CLIENT(QEMU_IMG);
    std::string copy = dir.file("copy.img");
    auto r = run({QEMU_IMG, "convert", "-f", "raw", "-O", "raw", uri(), copy});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = run({QEMU_IMG, "compare", "-f", "raw", "-F", "raw", uri(), copy});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;

    std::string bytes = file_bytes(copy);
    bytes[5 * BLOCK + 100] ^= 1;
    thinpool_test::write_file(copy, bytes);
    r = run({QEMU_IMG, "compare", "-f", "raw", "-F", "raw", uri(), copy});
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    // qemu-img reports the sector.
    EXPECT_NE(r.out.find("Content mismatch at offset " + std::to_string(5 * BLOCK)), std::string::npos) << r.out;

    r = run({QEMU_IMG, "convert", "-n", "-f", "raw", "-O", "raw", copy, uri()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(as_string(disk->bytes(0, SIZE)) == bytes);
}

} // namespace
