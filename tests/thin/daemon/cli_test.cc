// The built `thinpool` binary: help and usage, the client against no daemon, and the daemon as a
// subprocess: start, create, SIGTERM, restart, thin_check (ours and Debian's), a live backup
// through the metadata snapshot, config files, refusals.
#include "daemon_helpers.h"

#include "tests/tools/cli_helpers.h"
#include "thin/daemon/text.h"

#include <filesystem>

using namespace daemon_test;
namespace fs = std::filesystem;

namespace {

class CliTest : public ::testing::Test {
protected:
    thinpool_test::scratch_dir dir;
    std::string pool_dir() const { return dir.file("pool"); }
    std::string sock() const { return pool_dir() + "/control.sock"; }

    thinpool_test::command_result tp(std::vector<std::string> args) {
        args.insert(args.begin(), thinpool_binary());
        return run_for(args, dir.path().string());
    }
    // A client command against the pool in pool_dir().
    thinpool_test::command_result client(std::vector<std::string> args) {
        args.insert(args.begin(), {"--dir", pool_dir()});
        return tp(args);
    }

    std::unique_ptr<process> run_daemon(std::vector<std::string> extra = {}, const std::string& name = "daemon",
                                        const std::string& nbd_socket = "") {
        std::vector<std::string> argv = {thinpool_binary(), "run", "--dir", pool_dir(), "--data-size", "256M",
                                         "--metadata-size", "16M", "--nbd-socket", nbd_socket};
        argv.insert(argv.end(), extra.begin(), extra.end());
        return std::make_unique<process>(argv, dir.path().string(), name);
    }
    // Waits until the daemon answers (or has exited).
    bool answers(process& p) {
        return wait_until([&] { return p.wait(0ms) || td::control_socket_live(sock()); }, 60s) &&
               td::control_socket_live(sock());
    }
    int stop_with(process& p, int sig) {
        p.signal(sig);
        auto st = p.wait(60s);
        EXPECT_TRUE(st) << "the daemon did not stop within 60 s";
        return st.value_or(-1);
    }
};

// ---- help and usage ----

TEST_F(CliTest, HelpVersionAndUsageErrors) {
    auto h = tp({"--help"});
    EXPECT_EQ(h.exit_code, 0);
    for (const char* c : {"run", "create", "snapshot", "delete", "resize", "list", "status", "message", "events", "stop"})
        EXPECT_NE(h.out.find(std::string("  ") + c), std::string::npos) << c;
    auto v = tp({"--version"});
    EXPECT_EQ(v.exit_code, 0);
    EXPECT_EQ(v.out.rfind("thinpool ", 0), 0u);
    auto rh = tp({"run", "--help"});
    EXPECT_EQ(rh.exit_code, 0);
    EXPECT_NE(rh.out.find("--low-water-mark"), std::string::npos);
    for (const char* c : {"create", "snapshot", "delete", "resize", "list", "status", "message", "events", "stop"}) {
        auto r = tp({c, "--help"});
        EXPECT_EQ(r.exit_code, 0) << c;
        EXPECT_NE(r.out.find(std::string("Usage: thinpool")), std::string::npos) << c;
    }
    for (std::vector<std::string> bad : std::vector<std::vector<std::string>>{
             {},
             {"frobnicate"},
             {"--bogus"},
             {"create", "vm"},
             {"create", "vm", "--size", "1000"},
             {"create", "vm", "--size", "1.5G"},
             {"create", "-vm", "--size", "1G"},
             {"create", "a", "b", "--size", "1G"},
             {"snapshot", "a"},
             {"snapshot", "a", "b", "c"},
             {"resize", "a"},
             {"list", "extra"},
             {"message"},
             {"run", "--block-size", "4K"},
             {"run", "--feature", "fast"},
             {"run", "extra"},
             {"--dir", "a", "--socket", "b", "list"},
         }) {
        auto r = tp(bad);
        EXPECT_EQ(r.exit_code, 2) << td::encode_words(bad) << "\n" << r.err;
        EXPECT_NE(r.err.find("Usage:"), std::string::npos) << r.err;
    }
}

TEST_F(CliTest, ManPageDocumentsEveryOption) {
    std::string man = std::string(THINPOOL_SOURCE_DIR) + "/man/thinpool.8";
    cli_test::expect_man_page_documents(man, tp({"--help"}).out + tp({"run", "--help"}).out + tp({"resize", "--help"}).out +
                                                 tp({"status", "--help"}).out + tp({"create", "--help"}).out);
    std::string text = thinpool_test::read_file(man);
    for (const char* c : {"create", "snapshot", "delete", "resize", "list", "status", "message", "events", "stop",
                          "catalogue", "thinpool\\-catalogue 1", "control.sock", "nbd.sock", "thinpool.conf"})
        EXPECT_NE(text.find(c), std::string::npos) << c;
}

TEST_F(CliTest, ClientWithoutADaemonSaysWhichSocket) {
    auto r = client({"list"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("no thinpool daemon is listening on " + sock()), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
}

// ---- the daemon as a process ----

TEST_F(CliTest, RunCreateSigtermRestartAndCheck) {
    auto d = run_daemon();
    ASSERT_TRUE(answers(*d)) << d->err();
    auto c = client({"create", "vm1", "--size", "64M"});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    ASSERT_EQ(client({"snapshot", "vm1", "snap1"}).exit_code, 0);
    auto bad = client({"create", "vm1", "--size", "1M"});
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_NE(bad.err.find("already exists"), std::string::npos) << bad.err;
    EXPECT_EQ(stop_with(*d, SIGTERM), 0) << d->err();
    EXPECT_NE(d->err().find("received SIGTERM"), std::string::npos) << d->err();
    EXPECT_NE(d->err().find("stopped cleanly"), std::string::npos) << d->err();
    EXPECT_FALSE(fs::exists(sock()));

    auto d2 = run_daemon({}, "daemon2");
    ASSERT_TRUE(answers(*d2)) << d2->err();
    auto l = client({"list", "--json"});
    ASSERT_EQ(l.exit_code, 0) << l.err;
    auto j = parse_json(l.out);
    ASSERT_EQ(j["volumes"].array().size(), 2u);
    EXPECT_EQ(j["volumes"].array()[1]["name"].str(), "vm1");
    EXPECT_EQ(j["volumes"].array()[1]["size"].num(), 64ull << 20);
    auto s = client({"stop"});
    EXPECT_EQ(s.exit_code, 0) << s.err;
    auto st = d2->wait(60s);
    ASSERT_TRUE(st);
    EXPECT_EQ(*st, 0) << d2->err();

    std::string md = pool_dir() + "/metadata";
    auto ours = run_for({std::string(THINPOOL_BINARY_DIR) + "/thin_check", md}, dir.path().string());
    EXPECT_EQ(ours.exit_code, 0) << ours.err;
    if (thinpool_test::reference_tools_available()) {
        auto theirs = run_for({thinpool_test::reference_tool("thin_check"), md}, dir.path().string());
        EXPECT_EQ(theirs.exit_code, 0) << theirs.err;
    } else if (thinpool_test::reference_tools_required()) {
        ADD_FAILURE() << "Debian's thin_check is required";
    }
}

TEST_F(CliTest, SigintAlsoStopsCleanly) {
    auto d = run_daemon();
    ASSERT_TRUE(answers(*d)) << d->err();
    EXPECT_EQ(stop_with(*d, SIGINT), 0) << d->err();
}

TEST_F(CliTest, LiveBackupThroughTheMetadataSnapshot) {
    auto d = run_daemon();
    ASSERT_TRUE(answers(*d)) << d->err();
    ASSERT_EQ(client({"create", "vm", "--size", "16M"}).exit_code, 0);
    ASSERT_EQ(client({"snapshot", "vm", "backup1"}).exit_code, 0);
    ASSERT_EQ(client({"message", "reserve_metadata_snap"}).exit_code, 0);
    auto st = parse_json(client({"status", "--json"}).out);
    ASSERT_FALSE(st["pool"]["held_metadata_root"].is_null());
    std::string vm_id, snap_id;
    for (const auto& v : st["volumes"].array()) {
        if (v["name"].str() == "vm") vm_id = std::to_string(v["id"].num());
        if (v["name"].str() == "backup1") snap_id = std::to_string(v["id"].num());
    }
    std::string md = pool_dir() + "/metadata";
    std::vector<std::string> dumpers = {std::string(THINPOOL_BINARY_DIR) + "/thin_dump"};
    if (thinpool_test::reference_tools_available()) dumpers.push_back(thinpool_test::reference_tool("thin_dump"));
    for (const auto& dump : dumpers) {
        auto r = run_for({dump, "-m", md}, dir.path().string());
        EXPECT_EQ(r.exit_code, 0) << dump << ": " << r.err;
        EXPECT_NE(r.out.find("dev_id=\"" + snap_id + "\""), std::string::npos) << r.out.substr(0, 500);
    }
    auto delta = run_for({std::string(THINPOOL_BINARY_DIR) + "/thin_delta", "-m", "--snap1", snap_id, "--snap2", vm_id, md},
                         dir.path().string());
    EXPECT_EQ(delta.exit_code, 0) << delta.err;
    EXPECT_NE(delta.out.find("<diff"), std::string::npos) << delta.out;
    ASSERT_EQ(client({"message", "release_metadata_snap"}).exit_code, 0);
    EXPECT_TRUE(parse_json(client({"status", "--json"}).out)["pool"]["held_metadata_root"].is_null());
    EXPECT_EQ(stop_with(*d, SIGTERM), 0);
}

TEST_F(CliTest, ConfigFileErrorsNameTheLineAndStopTheStart) {
    fs::create_directories(pool_dir());
    thinpool_test::write_file(pool_dir() + "/thinpool.conf", "# ok\nlow_water_mark = 10\nturbo = yes\n");
    auto r = tp({"run", "--dir", pool_dir()});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("thinpool.conf:3: unknown key 'turbo'"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(pool_dir() + "/metadata"));

    // The directory's config names the socket; the client finds it there.
    thinpool_test::write_file(pool_dir() + "/thinpool.conf",
                              "socket = " + dir.file("ctl.sock") + "\ndata_size = 128M\nmetadata_size = 8M\n"
                              "nbd_socket =\n");
    process d({thinpool_binary(), "run", "--dir", pool_dir()}, dir.path().string(), "confd");
    ASSERT_TRUE(wait_until([&] { return d.wait(0ms) || td::control_socket_live(dir.file("ctl.sock")); }, 60s));
    ASSERT_TRUE(td::control_socket_live(dir.file("ctl.sock"))) << d.err();
    auto s = client({"status", "--json"});
    ASSERT_EQ(s.exit_code, 0) << s.err;
    EXPECT_EQ(parse_json(s.out)["pool"]["data"]["total_bytes"].num(), 128ull << 20);
    d.signal(SIGTERM);
    EXPECT_EQ(d.wait(60s).value_or(-1), 0) << d.err();
}

TEST_F(CliTest, SecondDaemonRefusesWithOneLine) {
    auto d = run_daemon();
    ASSERT_TRUE(answers(*d)) << d->err();
    auto second = run_daemon({}, "second");
    auto st = second->wait(60s);
    ASSERT_TRUE(st);
    EXPECT_EQ(*st, 1);
    EXPECT_NE(second->err().find("refusing to start: a thinpool daemon is already running"), std::string::npos)
        << second->err();
    const std::string err = second->err();
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    EXPECT_EQ(stop_with(*d, SIGTERM), 0);
}

TEST_F(CliTest, EventsStreamsUntilTheDaemonStops) {
    auto d = run_daemon({"--low-water-mark", "4095"});
    ASSERT_TRUE(answers(*d)) << d->err();
    process ev({thinpool_binary(), "--dir", pool_dir(), "events"}, dir.path().string(), "events");
    // The low water event itself is tested in process (daemon_test); here: the stream is up,
    // and ends with exit 0 when the daemon stops.
    ASSERT_TRUE(wait_until([&] { return d->err().find("events: a client subscribed") != std::string::npos; }, 60s))
        << d->err();
    EXPECT_EQ(stop_with(*d, SIGTERM), 0);
    auto st = ev.wait(60s);
    ASSERT_TRUE(st);
    EXPECT_EQ(*st, 0) << ev.err();
}

// The NBD server wired by `thinpool run`, with Debian's NBD clients (skipped without them).
TEST_F(CliTest, VolumesAreServedOverNbd) {
    const std::string qemu_io = "/usr/bin/qemu-io", nbdinfo = "/usr/bin/nbdinfo";
    if (!fs::exists(qemu_io) || !fs::exists(nbdinfo)) GTEST_SKIP() << "qemu-io or nbdinfo not installed";
    const std::string nbd = pool_dir() + "/nbd.sock";
    auto d = run_daemon({}, "daemon", nbd);
    ASSERT_TRUE(answers(*d)) << d->err();
    ASSERT_EQ(client({"create", "vm", "--size", "8M"}).exit_code, 0);
    const std::string uri = "nbd+unix:///vm?socket=" + nbd;
    auto w = run_for({qemu_io, "-f", "raw", "-c", "write -P 0xab 65536 131072", uri}, dir.path().string());
    ASSERT_EQ(w.exit_code, 0) << w.out << w.err;
    auto r = run_for({qemu_io, "-f", "raw", "-c", "read -P 0xab 65536 131072", "-c", "read -P 0 0 65536", uri},
                     dir.path().string());
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.out;
    auto map = run_for({nbdinfo, "--map", uri}, dir.path().string());
    EXPECT_EQ(map.exit_code, 0) << map.err;
    EXPECT_NE(map.out.find("65536      131072    0  data"), std::string::npos) << map.out;
    auto list = run_for({nbdinfo, "--list", "nbd+unix:///?socket=" + nbd}, dir.path().string());
    EXPECT_NE(list.out.find("export=\"vm\""), std::string::npos) << list.out;
    auto st = parse_json(client({"status", "--json"}).out);
    EXPECT_EQ(st["volumes"].array()[0]["mapped_blocks"].num(), 2u);
    EXPECT_EQ(stop_with(*d, SIGTERM), 0) << d->err();
    EXPECT_NE(d->err().find("nbd: stopped"), std::string::npos) << d->err();
}

} // namespace
