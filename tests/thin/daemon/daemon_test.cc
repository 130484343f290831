// The daemon in process on a scratch directory, driven through its control socket and its NBD
// export provider: first run, the commands, the catalogue's crash windows, refusals, events and
// malformed requests.
#include "daemon_helpers.h"

#include "persistent-data/io_engine.h"
#include "thin/daemon/catalogue.h"
#include "thin/daemon/daemon.h"
#include "thin/daemon/text.h"
#include "thin/metadata/metadata.h"
#include "thin/pool/pool.h"

#include <filesystem>
#include <future>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

using namespace daemon_test;
namespace fs = std::filesystem;

namespace {

using thin::pool::io_op;

class DaemonTest : public ::testing::Test {
protected:
    thinpool_test::scratch_dir dir;
    log_capture log;
    std::string root() const { return dir.path().string(); }
    std::string sock() const { return dir.file("control.sock"); }
    td::daemon_options options() { return small_options(root(), &log); }

    std::unique_ptr<td::daemon> start(td::daemon_options o) {
        auto d = std::make_unique<td::daemon>(std::move(o));
        d->start();
        return d;
    }
    std::unique_ptr<td::daemon> start() { return start(options()); }

    // The request's body; fails the test on an error response.
    std::string ok(const std::vector<std::string>& words) {
        auto r = ask(sock(), words);
        EXPECT_TRUE(r.ok) << td::encode_words(words) << ": " << r.message;
        return r.body;
    }
    td::response fails(const std::vector<std::string>& words, int err) {
        auto r = ask(sock(), words);
        EXPECT_FALSE(r.ok) << td::encode_words(words) << " succeeded";
        EXPECT_EQ(r.error, err) << td::encode_words(words) << ": " << r.message;
        return r;
    }
    json status() { return parse_json(ok({"status", "json"})); }
    const json* volume_of(const json& st, const std::string& name) {
        for (const auto& v : st["volumes"].array())
            if (v["name"].str() == name) return &v;
        return nullptr;
    }
    td::catalogue catalogue() { return *td::catalogue_store(root()).load(); }

    // Refusal text of a start, "" when it started (and was shut down again).
    std::string refusal(td::daemon_options o) {
        try {
            start(std::move(o))->shutdown();
        } catch (const td::startup_error& e) {
            return e.what();
        }
        return "";
    }

    // The metadata opened by a pool of our own (the daemon stopped): what a crash leaves.
    std::unique_ptr<thin::pool::pool> raw_pool() {
        thin::pool::pool_options po;
        po.metadata_path = dir.file("metadata");
        po.data_path = dir.file("data");
        po.log = [](const std::string&) {};
        return thin::pool::pool::open(po);
    }
};

int io(thin::nbd::export_handle& h, io_op op, std::uint64_t sector, std::uint64_t nr, void* buf) {
    auto p = std::make_shared<std::promise<int>>();
    auto f = p->get_future();
    thin::pool::io_request r;
    r.op = op;
    r.sector = sector;
    r.nr_sectors = nr;
    r.buf = buf;
    r.done = [p](int rc) { p->set_value(rc); };
    h.submit(std::move(r));
    if (f.wait_for(30s) != std::future_status::ready) {
        ADD_FAILURE() << "I/O did not complete in 30 s";
        std::abort();  // the request still references buf
    }
    return f.get();
}

int write_bytes(thin::nbd::export_handle& h, std::uint64_t offset, std::uint64_t len, std::uint8_t value) {
    std::vector<std::uint8_t> b(len, value);
    return io(h, io_op::write, offset / 512, len / 512, b.data());
}

// ---- first run and the commands ----

TEST_F(DaemonTest, FirstRunCreatesSparseFilesAndAnEmptyCatalogue) {
    auto d = start();
    struct stat st;
    ASSERT_EQ(::stat(dir.file("metadata").c_str(), &st), 0);
    EXPECT_EQ(std::uint64_t(st.st_size), MD_BYTES);
    ASSERT_EQ(::stat(dir.file("data").c_str(), &st), 0);
    EXPECT_EQ(std::uint64_t(st.st_size), DATA_BYTES);
    EXPECT_LT(std::uint64_t(st.st_blocks) * 512, DATA_BYTES / 16) << "the data file should be sparse";
    ASSERT_EQ(::stat(sock().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(catalogue().transaction_id, 0u);
    EXPECT_TRUE(catalogue().volumes.empty());
    EXPECT_NE(ok({"ping"}).find("thinpool"), std::string::npos);
    auto s = status();
    EXPECT_EQ(s["pool"]["block_size"].num(), 65536u);
    EXPECT_EQ(s["pool"]["data"]["total_blocks"].num(), DATA_BYTES / 65536);
    EXPECT_EQ(s["pool"]["mode"].str(), "write");
    EXPECT_TRUE(log.contains("created metadata file"));
    d->shutdown();
    EXPECT_FALSE(fs::exists(sock()));
}

TEST_F(DaemonTest, CreateListStatusAndTheirJsonShape) {
    auto d = start();
    EXPECT_NE(ok({"create", "vm1", "size=1073741824"}).find("created vm1"), std::string::npos);
    ok({"create", "vm2", "size=1048576"});
    fails({"create", "vm1", "size=512"}, EEXIST);
    fails({"create", "bad name", "size=512"}, EINVAL);
    fails({"create", "vm3", "size=1000"}, EINVAL);
    fails({"create", "vm3"}, EINVAL);
    fails({"create", "vm3", "size=512", "colour=red"}, EINVAL);

    auto list = parse_json(ok({"list", "json"}));
    ASSERT_EQ(list["volumes"].array().size(), 2u);
    const json& v1 = list["volumes"].array()[0];
    EXPECT_EQ(v1["name"].str(), "vm1");
    EXPECT_EQ(v1["size"].num(), 1ull << 30);
    EXPECT_TRUE(v1["origin"].is_null());
    EXPECT_EQ(v1["created"].str().size(), 20u);
    EXPECT_EQ(list["transaction_id"].num(), 2u);

    auto st = status();
    for (const char* k : {"dir", "metadata", "data", "mode", "transaction_id", "block_size", "data", "metadata",
                          "needs_check", "held_metadata_root", "low_water_mark", "discard", "read_only"})
        EXPECT_TRUE(st["pool"].has(k)) << k;
    EXPECT_EQ(st["pool"]["transaction_id"].num(), 2u);
    EXPECT_FALSE(st["pool"]["needs_check"].boolean());
    EXPECT_TRUE(st["pool"]["held_metadata_root"].is_null());
    const json* s1 = volume_of(st, "vm1");
    ASSERT_TRUE(s1);
    for (const char* k : {"name", "id", "size", "mapped_blocks", "exclusive_blocks", "origin", "connections"})
        EXPECT_TRUE(s1->has(k)) << k;
    EXPECT_EQ((*s1)["mapped_blocks"].num(), 0u);
    EXPECT_EQ((*s1)["connections"].num(), 0u);

    std::string text = ok({"list"});
    EXPECT_NE(text.find("vm2"), std::string::npos);
    EXPECT_NE(ok({"status"}).find("transaction"), std::string::npos);
}

TEST_F(DaemonTest, VolumesServeIoThroughTheExports) {
    auto d = start();
    ok({"create", "vm", "size=4194304"});
    auto exports = d->exports();
    EXPECT_EQ(exports->open("nope"), nullptr);
    auto h = exports->open("vm");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->size(), 4194304u);
    EXPECT_EQ(h->preferred_block_size(), 65536u);
    EXPECT_TRUE(h->can_trim());
    EXPECT_FALSE(h->read_only());
    ASSERT_EQ(write_bytes(*h, 65536, 65536, 0x5a), 0);
    std::vector<std::uint8_t> back(65536);
    ASSERT_EQ(io(*h, io_op::read, 128, 128, back.data()), 0);
    EXPECT_EQ(back, std::vector<std::uint8_t>(65536, 0x5a));

    auto ext = h->block_status(0, 4194304);
    ASSERT_GE(ext.size(), 3u);
    EXPECT_EQ(ext[0].length, 65536u);
    EXPECT_TRUE(ext[0].hole && ext[0].zero);
    EXPECT_EQ(ext[1].length, 65536u);
    EXPECT_FALSE(ext[1].hole || ext[1].zero);
    EXPECT_TRUE(ext[2].hole);

    auto list = exports->list();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0].name, "vm");
    EXPECT_EQ((*volume_of(status(), "vm"))["connections"].num(), 1u);
    h.reset();
    EXPECT_EQ((*volume_of(status(), "vm"))["connections"].num(), 0u);
    EXPECT_EQ((*volume_of(status(), "vm"))["mapped_blocks"].num(), 1u);
}

TEST_F(DaemonTest, ExternalOriginReadsThroughAndShowsAsData) {
    std::string origin = dir.file("origin.img");
    thinpool_test::write_file(origin, std::string(131072, 'o'));
    auto d = start();
    fails({"create", "ext", "origin=relative/path"}, EINVAL);
    fails({"create", "ext", "origin=" + dir.file("missing.img")}, ENOENT);
    ok({"create", "ext", "origin=" + origin});
    auto vol = *catalogue().find("ext");
    EXPECT_EQ(vol.size, 131072u);
    EXPECT_EQ(*vol.origin, origin);
    auto h = d->exports()->open("ext");
    ASSERT_TRUE(h);
    std::vector<std::uint8_t> back(512);
    ASSERT_EQ(io(*h, io_op::read, 0, 1, back.data()), 0);
    EXPECT_EQ(back, std::vector<std::uint8_t>(512, 'o'));
    auto ext = h->block_status(0, 131072);
    ASSERT_FALSE(ext.empty());
    EXPECT_FALSE(ext[0].hole || ext[0].zero);
    h.reset();
    ok({"snapshot", "ext", "ext-snap"});
    EXPECT_EQ(*catalogue().find("ext-snap")->origin, origin);
}

TEST_F(DaemonTest, SnapshotsSeveralVolumesAtOnceOrNone) {
    auto d = start();
    ok({"create", "a", "size=1048576"});
    ok({"create", "b", "size=2097152"});
    {
        auto h = d->exports()->open("a");
        ASSERT_EQ(write_bytes(*h, 0, 131072, 1), 0);
        // A snapshot of an active volume in use: the pool quiesces it.
        ok({"snapshot", "a", "a-snap", "b", "b-snap"});
        ASSERT_EQ(write_bytes(*h, 0, 65536, 2), 0);
    }
    auto st = status();
    EXPECT_EQ((*volume_of(st, "a-snap"))["mapped_blocks"].num(), 2u);
    EXPECT_EQ((*volume_of(st, "a-snap"))["size"].num(), 1048576u);
    EXPECT_EQ((*volume_of(st, "b-snap"))["size"].num(), 2097152u);
    EXPECT_EQ((*volume_of(st, "a"))["exclusive_blocks"].num(), 1u);

    // One bad pair: nothing is created.
    const auto before = catalogue();
    fails({"snapshot", "a", "a2", "missing", "m2"}, ENOENT);
    fails({"snapshot", "a", "x", "b", "x"}, EEXIST);
    fails({"snapshot", "a", "b"}, EEXIST);
    fails({"snapshot", "a"}, EINVAL);
    EXPECT_EQ(catalogue(), before);
    EXPECT_EQ(d->pool().devices().size(), 4u);
}

TEST_F(DaemonTest, DeleteIsRefusedWhileInUse) {
    auto d = start();
    ok({"create", "v", "size=1048576"});
    auto h = d->exports()->open("v");
    auto r = fails({"delete", "v"}, EBUSY);
    EXPECT_NE(r.message.find("in use"), std::string::npos);
    auto id = catalogue().find("v")->id;
    fails({"message", "delete", std::to_string(id)}, EBUSY);
    h.reset();
    ok({"delete", "v"});
    EXPECT_FALSE(catalogue().find("v"));
    EXPECT_TRUE(d->pool().devices().empty());
    fails({"delete", "v"}, ENOENT);
}

TEST_F(DaemonTest, ResizeGrowsAndShrinksOnlyWithForcePastMappedBlocks) {
    auto d = start();
    ok({"create", "v", "size=1048576"});
    auto h = d->exports()->open("v");
    ASSERT_EQ(write_bytes(*h, 524288, 65536, 7), 0);
    ok({"resize", "v", "size=2097152"});
    EXPECT_EQ(h->size(), 2097152u);
    auto r = fails({"resize", "v", "size=524288"}, EINVAL);
    EXPECT_NE(r.message.find("--force"), std::string::npos) << r.message;
    ok({"resize", "v", "size=589824"});  // the mapped block still fits
    ok({"resize", "v", "size=65536", "force"});
    EXPECT_EQ(h->size(), 65536u);
    EXPECT_EQ(catalogue().find("v")->size, 65536u);
    fails({"resize", "v"}, EINVAL);
    fails({"resize", "nope", "size=512"}, ENOENT);
}

TEST_F(DaemonTest, MessagePassthroughAndTheCatalogueFollowing) {
    auto d = start();
    ok({"create", "base", "size=1048576"});
    EXPECT_NE(ok({"message", "create_thin", "50"}).find("thin-50"), std::string::npos);
    EXPECT_EQ(catalogue().find("thin-50")->size, 0u);
    ok({"message", "create_snap", "51", "0"});
    EXPECT_EQ(catalogue().find("thin-51")->size, 1048576u);
    ok({"message", "delete", "50"});
    EXPECT_FALSE(catalogue().find("thin-50"));
    auto tid = catalogue().transaction_id;
    EXPECT_EQ(d->pool().status_info(true).transaction_id, tid);

    ok({"message", "set_transaction_id", std::to_string(tid), "100"});
    EXPECT_EQ(catalogue().transaction_id, 100u);
    auto r = fails({"message", "set_transaction_id", "5", "6"}, EINVAL);
    EXPECT_NE(r.message.find("mismatched transaction id"), std::string::npos) << r.message;
    fails({"message", "create_thin", "51"}, EEXIST);
    fails({"message", "delete", "77"}, ENODATA);
    fails({"message", "create_thin"}, EINVAL);
    fails({"message", "frobnicate"}, EINVAL);

    ok({"message", "reserve_metadata_snap"});
    EXPECT_FALSE(status()["pool"]["held_metadata_root"].is_null());
    fails({"message", "reserve_metadata_snap"}, EBUSY);
    ok({"message", "release_metadata_snap"});
    EXPECT_TRUE(status()["pool"]["held_metadata_root"].is_null());

    d->shutdown();
    auto d2 = start();  // catalogue and metadata still agree
    EXPECT_TRUE(log.contains("matches the metadata"));
}

TEST_F(DaemonTest, EventsStreamReceivesTheLowWaterMark) {
    auto o = options();
    o.low_water_mark = DATA_BYTES / 65536 - 2;  // two free blocks left... then one under
    auto d = start(o);
    ok({"create", "v", "size=1048576"});
    td::connection events(sock());
    events.send({"events"});
    ASSERT_TRUE(events.read_status(30s).ok);
    auto h = d->exports()->open("v");
    ASSERT_EQ(write_bytes(*h, 0, 4 * 65536, 9), 0);
    auto line = events.read_line(30s);
    ASSERT_TRUE(line);
    EXPECT_NE(line->find("data_low_water"), std::string::npos) << *line;
    EXPECT_NE(line->find("mode=write"), std::string::npos) << *line;
    h.reset();
    d->shutdown();  // ends the stream
    EXPECT_FALSE(events.read_line(30s));
}

TEST_F(DaemonTest, StopCommandAsksTheOwnerToShutDown) {
    auto d = start();
    EXPECT_FALSE(d->wait_for_stop_request(0ms));
    ok({"stop"});
    EXPECT_TRUE(d->wait_for_stop_request(30s));
}

// ---- malformed requests ----

TEST_F(DaemonTest, MalformedRequestsGetErrorsAndTheDaemonCarriesOn) {
    auto d = start();
    auto raw = [&](const std::string& bytes) {
        td::connection c(sock());
        c.send_raw(bytes);
        auto r = c.read_status(30s);
        EXPECT_FALSE(r.ok) << bytes.substr(0, 40);
        return r;
    };
    EXPECT_EQ(raw("\n").error, EINVAL);
    EXPECT_EQ(raw("%zz\n").error, EINVAL);
    EXPECT_EQ(raw("create  vm\n").error, EINVAL);
    EXPECT_EQ(raw("frobnicate\n").error, EINVAL);
    EXPECT_EQ(raw(std::string("\x01\x02\xff\n", 4)).error, EINVAL);
    EXPECT_EQ(raw(std::string(70000, 'a')).error, E2BIG);
    EXPECT_EQ(raw("status json extra\n").error, EINVAL);
    EXPECT_EQ(raw("events now\n").error, EINVAL);
    {
        td::connection c(sock());  // half a request, then gone
        c.send_raw("crea");
    }
    // Many connections at once, all closed without a word.
    std::vector<std::unique_ptr<td::connection>> idle;
    for (int i = 0; i < 80; ++i) idle.push_back(std::make_unique<td::connection>(sock()));
    idle.clear();
    EXPECT_TRUE(wait_until([&] { return ask(sock(), {"ping"}).ok; }));
    ok({"create", "still", "size=512"});
}

// ---- refusals ----

TEST_F(DaemonTest, RefusesASecondDaemonOnTheSameDirectoryOrMetadata) {
    auto d = start();
    std::string why = refusal(options());
    EXPECT_NE(why.find("already running"), std::string::npos) << why;

    // Another directory (so another socket) but the same metadata: the pool refuses.
    thinpool_test::scratch_dir other;
    auto o = small_options(other.path().string(), &log);
    o.metadata_path = dir.file("metadata");
    o.data_path = dir.file("data");
    why = refusal(o);
    EXPECT_NE(why.find("in use"), std::string::npos) << why;

    // The same directory with a stale socket file but a live daemon holding the lock.
    auto o2 = options();
    o2.socket_path = dir.file("other.sock");
    why = refusal(o2);
    EXPECT_NE(why.find("another thinpool daemon is using"), std::string::npos) << why;
    EXPECT_TRUE(ask(sock(), {"ping"}).ok);
}

TEST_F(DaemonTest, StaleSocketIsReplaced) {
    start()->shutdown();
    // A socket file nobody listens on (a daemon that was killed).
    thinpool_test::write_file(dir.file("x"), "");
    {
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strcpy(a.sun_path, sock().c_str());
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        ::close(fd);
    }
    auto d = start();
    EXPECT_TRUE(ask(sock(), {"ping"}).ok);
}

TEST_F(DaemonTest, RefusesMetadataWithNeedsCheck) {
    start()->shutdown();
    {
        auto e = pdata::open_sync_engine(dir.file("metadata"), {pdata::open_mode::read_write, true});
        thin::open_options oo;
        auto md = thin::metadata::open(std::shared_ptr<pdata::io_engine>(std::move(e)), oo);
        md->set_needs_check();
        md->commit();
    }
    std::string why = refusal(options());
    EXPECT_NE(why.find("needs_check"), std::string::npos) << why;
    EXPECT_NE(why.find("thin_check"), std::string::npos) << why;
    EXPECT_FALSE(fs::exists(sock()));
}

TEST_F(DaemonTest, RefusesAnUnreadableCatalogueNamingTheLine) {
    start()->shutdown();
    thinpool_test::write_file(dir.file("catalogue"), "thinpool-catalogue 1\ntransaction 0\nvolume x\n");
    std::string why = refusal(options());
    EXPECT_NE(why.find("catalogue:3:"), std::string::npos) << why;
}

TEST_F(DaemonTest, RefusesADifferentBlockSizeForAnExistingPool) {
    start()->shutdown();
    auto o = options();
    o.block_size = 256;
    std::string why = refusal(o);
    EXPECT_NE(why.find("differs from the pool's data block size"), std::string::npos) << why;
}

TEST_F(DaemonTest, AFirstStartThatCannotCreateTheDataFileLeavesNoDeviceFiles) {
    auto o = options();
    o.data_size = 1ull << 62;  // beyond any file system's largest file: ftruncate fails (EFBIG)
    std::string why = refusal(o);
    EXPECT_NE(why.find("cannot size " + dir.file("data")), std::string::npos) << why;
    // The metadata file made a moment earlier for this pool goes too: the next start begins afresh.
    EXPECT_FALSE(fs::exists(dir.file("data")));
    EXPECT_FALSE(fs::exists(dir.file("metadata")));
    // Files that were there before are never removed.
    start()->shutdown();
    auto again = options();
    again.data_size = 1ull << 62;
    again.data_size_given = true;
    EXPECT_NE(refusal(again).find("cannot grow"), std::string::npos);
    EXPECT_TRUE(fs::exists(dir.file("data")));
    EXPECT_TRUE(fs::exists(dir.file("metadata")));
}

// ---- the catalogue's crash windows ----

TEST_F(DaemonTest, CrashAfterTheCatalogueWriteRollsBack) {
    {
        auto d = start();
        ok({"create", "keep", "size=1048576"});
    }
    // The daemon died after writing the catalogue for `create new` and before any pool message.
    auto cat = catalogue();
    auto next = cat;
    next.transaction_id++;
    next.add({"new", 1, 512, 0, std::nullopt});
    td::catalogue_store(root()).commit(next);

    auto d = start();
    EXPECT_TRUE(log.contains("rolled back to transaction " + std::to_string(cat.transaction_id))) << log.all();
    EXPECT_EQ(catalogue(), cat);
    EXPECT_TRUE(fs::exists(dir.file("catalogue.rolled-back")));
    EXPECT_FALSE(ask(sock(), {"list"}).body.find("new") != std::string::npos);
}

TEST_F(DaemonTest, CrashAfterThePoolMessageUndoesTheHalfDoneCreate) {
    {
        auto d = start();
        ok({"create", "keep", "size=1048576"});
    }
    auto cat = catalogue();
    auto next = cat;
    next.transaction_id++;
    next.add({"new", 7, 512, 0, std::nullopt});
    td::catalogue_store(root()).commit(next);
    raw_pool()->message("create_thin 7");  // ... and the device was created, the tid not moved

    auto d = start();
    EXPECT_TRUE(log.contains("deleted device 7")) << log.all();
    EXPECT_FALSE(catalogue().find("new"));
    for (const auto& dev : d->pool().devices()) EXPECT_NE(dev.id, 7u);
    EXPECT_EQ(d->pool().status_info(true).transaction_id, catalogue().transaction_id);
}

TEST_F(DaemonTest, CrashAfterThePoolMessageFinishesTheHalfDoneDelete) {
    {
        auto d = start();
        ok({"create", "keep", "size=1048576"});
        ok({"create", "gone", "size=1048576"});
    }
    auto cat = catalogue();
    auto next = cat;
    next.transaction_id++;
    next.remove("gone");
    td::catalogue_store(root()).commit(next);
    raw_pool()->message("delete " + std::to_string(cat.find("gone")->id));

    auto d = start();
    EXPECT_TRUE(log.contains("volume gone removed")) << log.all();
    EXPECT_FALSE(catalogue().find("gone"));
    EXPECT_TRUE(catalogue().find("keep"));
    EXPECT_EQ(d->pool().status_info(true).transaction_id, catalogue().transaction_id);
}

TEST_F(DaemonTest, UnrelatedTransactionIdsAreRefusedUnlessAdopted) {
    {
        auto d = start();
        ok({"create", "named", "size=1048576"});
        auto h = d->exports()->open("named");
        ASSERT_EQ(write_bytes(*h, 0, 65536, 3), 0);
    }
    auto cat = catalogue();
    {
        // Someone changed the metadata behind the daemon's back.
        auto p = raw_pool();
        p->message("create_snap 9 0");
        p->message("set_transaction_id " + std::to_string(cat.transaction_id) + " 42");
    }
    std::string why = refusal(options());
    EXPECT_NE(why.find("transaction " + std::to_string(cat.transaction_id)), std::string::npos) << why;
    EXPECT_NE(why.find("transaction 42"), std::string::npos) << why;
    EXPECT_NE(why.find("--adopt"), std::string::npos) << why;
    EXPECT_EQ(catalogue(), cat);

    auto o = options();
    o.adopt = true;
    auto d = start(o);
    auto c = catalogue();
    EXPECT_EQ(c.transaction_id, 42u);
    ASSERT_TRUE(c.find("named"));
    EXPECT_EQ(c.find("named")->size, 1048576u);
    ASSERT_TRUE(c.find("thin-9"));
    EXPECT_EQ(c.find("thin-9")->size, 65536u);  // up to the highest mapped block
}

TEST_F(DaemonTest, MissingCatalogueWithDevicesNeedsAdopt) {
    {
        auto d = start();
        ok({"create", "v", "size=1048576"});
    }
    fs::remove(dir.file("catalogue"));
    fs::remove(dir.file("catalogue.prev"));
    EXPECT_NE(refusal(options()).find("--adopt"), std::string::npos);
    auto o = options();
    o.adopt = true;
    auto d = start(o);
    EXPECT_TRUE(catalogue().find("thin-0"));
}

TEST_F(DaemonTest, UnknownDevicesAreAdoptedAndMissingOnesReported) {
    {
        auto d = start();
        ok({"create", "v", "size=1048576"});
        ok({"create", "w", "size=1048576"});
    }
    auto cat = catalogue();
    {
        auto p = raw_pool();
        p->message("delete " + std::to_string(cat.find("w")->id));
        p->message("create_thin 33");
    }
    auto d = start();
    EXPECT_TRUE(log.contains("added as volume thin-33")) << log.all();
    EXPECT_TRUE(log.contains("volume w has no device")) << log.all();
    EXPECT_TRUE((*volume_of(status(), "thin-33"))["present"].boolean());
    EXPECT_FALSE((*volume_of(status(), "w"))["present"].boolean());
    EXPECT_THROW(d->exports()->open("w"), std::runtime_error);
    ok({"delete", "w"});  // removes the entry of a device that is gone
    EXPECT_FALSE(catalogue().find("w"));
}

} // namespace
