// Tests of persistent-data/io: the sync, aio and memory engines against each other, and the fault
// engine (nth failures, short reads, crash point, write log and replay).
#include "persistent-data/io/aio_engine.h"
#include "persistent-data/io/fault_engine.h"
#include "persistent-data/io_engine.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <functional>
#include <map>
#include <unistd.h>
#include <vector>

using namespace pdata;
namespace fs = std::filesystem;

namespace {

// A private directory under $TMPDIR (or /tmp), removed with everything in it.
class temp_dir {
public:
    explicit temp_dir(const std::string& base = "") {
        std::string root = base;
        if (root.empty()) {
            const char* t = std::getenv("TMPDIR");
            root = t && *t ? t : "/tmp";
        }
        std::string tmpl = root + "/thinpool-io-XXXXXX";
        std::vector<char> buf(tmpl.begin(), tmpl.end());
        buf.push_back('\0');
        if (!::mkdtemp(buf.data())) throw std::runtime_error("mkdtemp " + tmpl + ": " + std::strerror(errno));
        path_ = buf.data();
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    std::string file(const std::string& name) const { return path_ + "/" + name; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

void make_file(const std::string& path, std::uint64_t bytes) {
    int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0) << path;
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
    ::close(fd);
}

// Deterministic contents of block b in generation seed.
void fill(void* buf, block_address b, unsigned seed) {
    auto p = static_cast<std::uint8_t*>(buf);
    std::uint64_t x = (b + 1) * 0x9E3779B97F4A7C15ull ^ (seed + 1) * 0xC2B2AE3D27D4EB4Full;
    for (std::size_t i = 0; i < MD_BLOCK_SIZE; i += 8) {
        x ^= x >> 31;
        x *= 0xBF58476D1CE4E5B9ull;
        x ^= x >> 29;
        std::memcpy(p + i, &x, 8);
    }
}

bool holds(const void* buf, block_address b, unsigned seed) {
    auto want = make_aligned_block(false);
    fill(want.get(), b, seed);
    return std::memcmp(buf, want.get(), MD_BLOCK_SIZE) == 0;
}

bool is_zero(const void* buf) {
    auto p = static_cast<const std::uint8_t*>(buf);
    return std::all_of(p, p + MD_BLOCK_SIZE, [](std::uint8_t c) { return c == 0; });
}

std::string io_error_message(const std::function<void()>& f) {
    try {
        f();
    } catch (const io_error& e) {
        return e.what();
    }
    return "<no io_error thrown>";
}

// --- the engines, one behaviour --------------------------------------------------------------

enum class kind { sync, aio, aio_qd1, aio_buffered, memory };

std::string kind_name(kind k) {
    switch (k) {
    case kind::sync: return "sync";
    case kind::aio: return "aio";
    case kind::aio_qd1: return "aio_qd1";
    case kind::aio_buffered: return "aio_buffered";
    case kind::memory: return "memory";
    }
    return "?";
}

class engines : public ::testing::TestWithParam<kind> {
protected:
    std::unique_ptr<io_engine> open(block_address nr_blocks, open_mode mode = open_mode::read_write) {
        std::string path = dir_.file("dev");
        if (!fs::exists(path)) make_file(path, nr_blocks * MD_BLOCK_SIZE);
        open_options opts{mode, true};
        switch (GetParam()) {
        case kind::sync: return open_sync_engine(path, opts);
        case kind::aio: return open_aio_engine(path, opts);
        case kind::aio_qd1: return open_aio_engine(path, opts, 1);
        case kind::aio_buffered: return open_buffered_aio_engine(path, opts, 8);
        case kind::memory: return std::make_unique<memory_engine>(nr_blocks);
        }
        return nullptr;
    }
    temp_dir dir_;
};

TEST_P(engines, reports_its_size) {
    auto e = open(37);
    EXPECT_EQ(e->nr_blocks(), 37u);
}

TEST_P(engines, new_device_reads_zeroes) {
    auto e = open(8);
    auto buf = make_aligned_block(false);
    std::memset(buf.get(), 0xAA, MD_BLOCK_SIZE);
    e->read(5, buf.get());
    EXPECT_TRUE(is_zero(buf.get()));
}

TEST_P(engines, writes_read_back_in_any_order) {
    auto e = open(64);
    auto buf = make_aligned_block();
    for (block_address b = 0; b < 64; b += 3) {
        fill(buf.get(), b, 1);
        e->write(b, buf.get());
    }
    e->flush();
    for (block_address i = 0; i < 64; ++i) {
        block_address b = (i * 37) % 64;  // a permutation
        e->read(b, buf.get());
        if (b % 3 == 0) EXPECT_TRUE(holds(buf.get(), b, 1)) << "block " << b;
        else EXPECT_TRUE(is_zero(buf.get())) << "block " << b;
    }
    // Overwrite and read again.
    fill(buf.get(), 9, 2);
    e->write(9, buf.get());
    e->read(9, buf.get());
    EXPECT_TRUE(holds(buf.get(), 9, 2));
}

TEST_P(engines, read_many_and_write_many_with_1000_blocks) {
    const block_address n = 1000;
    auto e = open(n + 24);
    std::vector<aligned_block> bufs;
    std::vector<io_request> reqs;
    // Out of order, with gaps: block = (i * 7) % (n + 24), distinct since gcd(7, 1024) = 1.
    for (block_address i = 0; i < n; ++i) {
        block_address b = (i * 7) % (n + 24);
        bufs.push_back(make_aligned_block(false));
        fill(bufs.back().get(), b, 3);
        reqs.push_back({b, bufs.back().get()});
    }
    e->write_many(reqs);
    e->flush();
    for (auto& b : bufs) std::memset(b.get(), 0, MD_BLOCK_SIZE);
    e->read_many(reqs);
    for (std::size_t i = 0; i < reqs.size(); ++i) EXPECT_TRUE(holds(reqs[i].buf, reqs[i].block, 3)) << i;
    // One by one agrees with the batch.
    auto one = make_aligned_block();
    for (std::size_t i = 0; i < reqs.size(); i += 97) {
        e->read(reqs[i].block, one.get());
        EXPECT_TRUE(holds(one.get(), reqs[i].block, 3));
    }
    // An empty batch is fine.
    e->read_many({});
    e->write_many({});
}

TEST_P(engines, read_beyond_the_end_names_the_block) {
    auto e = open(16);
    auto buf = make_aligned_block();
    std::string msg = io_error_message([&] { e->read(20, buf.get()); });
    EXPECT_NE(msg.find("block 20"), std::string::npos) << msg;

    // In a batch, the failing request is the one named.
    std::vector<aligned_block> bufs;
    std::vector<io_request> reqs;
    for (block_address b : {1, 2, 3, 17, 4}) {
        bufs.push_back(make_aligned_block());
        reqs.push_back({b, bufs.back().get()});
    }
    msg = io_error_message([&] { e->read_many(reqs); });
    EXPECT_NE(msg.find("block 17"), std::string::npos) << msg;
}

// The engines over a device (the memory engine has no read-only mode).
class device_engines : public engines {};

TEST_P(device_engines, read_only_refuses_writes) {
    {
        auto rw = open(4);
        auto buf = make_aligned_block();
        fill(buf.get(), 2, 4);
        rw->write(2, buf.get());
        rw->flush();
    }
    auto ro = open(4, open_mode::read_only);
    auto buf = make_aligned_block();
    fill(buf.get(), 2, 5);
    std::string msg = io_error_message([&] { ro->write(2, buf.get()); });
    EXPECT_NE(msg.find("block 2"), std::string::npos) << msg;
    io_request r{2, buf.get()};
    EXPECT_THROW(ro->write_many(std::span<const io_request>(&r, 1)), io_error);
    ro->read(2, buf.get());
    EXPECT_TRUE(holds(buf.get(), 2, 4));
}

INSTANTIATE_TEST_SUITE_P(all, engines,
                         ::testing::Values(kind::sync, kind::aio, kind::aio_qd1, kind::aio_buffered, kind::memory),
                         [](const auto& info) { return kind_name(info.param); });
INSTANTIATE_TEST_SUITE_P(all, device_engines,
                         ::testing::Values(kind::sync, kind::aio, kind::aio_qd1, kind::aio_buffered),
                         [](const auto& info) { return kind_name(info.param); });

// --- engines against each other ------------------------------------------------------------

TEST(engine_agreement, what_one_writes_the_others_read) {
    temp_dir dir;
    std::string path = dir.file("dev");
    const block_address n = 300;
    make_file(path, n * MD_BLOCK_SIZE);
    open_options rw{open_mode::read_write, true};
    memory_engine model(n);

    auto buf = make_aligned_block();
    {
        auto sync = open_sync_engine(path, rw);
        for (block_address b = 0; b < n; b += 2) {
            fill(buf.get(), b, 10);
            sync->write(b, buf.get());
            model.write(b, buf.get());
        }
        sync->flush();
    }
    {
        auto aio = open_aio_engine(path, rw, 16);
        std::vector<aligned_block> bufs;
        std::vector<io_request> reqs;
        for (block_address b = 1; b < n; b += 2) {
            bufs.push_back(make_aligned_block(false));
            fill(bufs.back().get(), b, 11);
            reqs.push_back({b, bufs.back().get()});
            model.write(b, bufs.back().get());
        }
        aio->write_many(reqs);
        aio->flush();
        // aio reads what sync wrote.
        for (block_address b = 0; b < n; b += 2) {
            aio->read(b, buf.get());
            ASSERT_EQ(std::memcmp(buf.get(), model.raw(b), MD_BLOCK_SIZE), 0) << "block " << b;
        }
    }
    auto sync = open_sync_engine(path, {open_mode::read_only, true});
    for (block_address b = 0; b < n; ++b) {
        sync->read(b, buf.get());
        ASSERT_EQ(std::memcmp(buf.get(), model.raw(b), MD_BLOCK_SIZE), 0) << "block " << b;
    }
}

// --- opening ---------------------------------------------------------------------------------

TEST(engine_open, a_missing_file_gives_a_clear_error) {
    temp_dir dir;
    std::string path = dir.file("no-such-device");
    using opener_fn = std::function<std::unique_ptr<io_engine>(const std::string&, open_options)>;
    std::vector<opener_fn> openers{open_sync_engine,
                                   [](const std::string& p, open_options o) { return open_aio_engine(p, o); }};
    for (auto& opener : openers) {
        try {
            opener(path, {open_mode::read_only, true});
            FAIL() << "opened a missing file";
        } catch (const io_error& e) {
            std::string msg = e.what();
            EXPECT_NE(msg.find(path), std::string::npos) << msg;
            EXPECT_NE(msg.find("No such file"), std::string::npos) << msg;
        }
    }
}

TEST(engine_open, a_directory_is_not_a_device) {
    temp_dir dir;
    EXPECT_THROW(open_sync_engine(dir.path(), {}), io_error);
    EXPECT_THROW(open_aio_engine(dir.path(), {}), io_error);
}

// --- aio specifics ---------------------------------------------------------------------------

TEST(aio_engine, works_on_tmpfs_with_or_without_o_direct) {
    if (!fs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
    temp_dir dir("/dev/shm");
    std::string path = dir.file("dev");
    make_file(path, 200 * MD_BLOCK_SIZE);
    auto e = open_aio_engine(path, {open_mode::read_write, true}, 8);
    // Older kernels refuse O_DIRECT on tmpfs: then the engine says it runs buffered.
    EXPECT_EQ(e->name().find(path), 0u);
    std::vector<aligned_block> bufs;
    std::vector<io_request> reqs;
    for (block_address b = 0; b < 200; ++b) {
        bufs.push_back(make_aligned_block(false));
        fill(bufs.back().get(), b, 20);
        reqs.push_back({b, bufs.back().get()});
    }
    e->write_many(reqs);
    e->flush();
    auto sync = open_sync_engine(path, {open_mode::read_only, false});  // e holds the file's lock
    auto buf = make_aligned_block();
    for (block_address b = 0; b < 200; b += 13) {
        sync->read(b, buf.get());
        EXPECT_TRUE(holds(buf.get(), b, 20)) << b;
    }
}

TEST(aio_engine, buffered_fallback_says_so) {
    temp_dir dir;
    std::string path = dir.file("dev");
    make_file(path, 4 * MD_BLOCK_SIZE);
    auto e = open_buffered_aio_engine(path, {open_mode::read_write, true});
    EXPECT_NE(e->name().find("O_DIRECT"), std::string::npos) << e->name();
    auto d = open_aio_engine(path, {open_mode::read_write, false});  // e holds the file's lock
    EXPECT_EQ(d->name(), path);  // ext4 and friends take O_DIRECT
}

TEST(aio_engine, unaligned_buffers_are_refused) {
    temp_dir dir;
    std::string path = dir.file("dev");
    make_file(path, 4 * MD_BLOCK_SIZE);
    auto e = open_aio_engine(path, {open_mode::read_write, true});
    std::vector<std::uint8_t> raw(2 * MD_BLOCK_SIZE);
    auto p = raw.data();
    while (reinterpret_cast<std::uintptr_t>(p) % MD_BLOCK_SIZE != 512) ++p;
    EXPECT_THROW(e->read(0, p), std::invalid_argument);
    EXPECT_THROW(e->write(0, p), std::invalid_argument);
    auto good = make_aligned_block();
    std::vector<io_request> reqs{{0, good.get()}, {1, p}};
    EXPECT_THROW(e->read_many(reqs), std::invalid_argument);
}

TEST(aio_engine, a_short_read_names_the_block) {
    temp_dir dir;
    std::string path = dir.file("dev");
    make_file(path, 3 * MD_BLOCK_SIZE + 100);  // the last block is only partly there
    for (bool direct : {true, false}) {
        auto e = direct ? open_aio_engine(path, {open_mode::read_only, true})
                        : open_buffered_aio_engine(path, {open_mode::read_only, true});
        EXPECT_EQ(e->nr_blocks(), 3u);
        auto buf = make_aligned_block();
        e->read(2, buf.get());
        std::string msg = io_error_message([&] { e->read(3, buf.get()); });
        EXPECT_NE(msg.find("block 3"), std::string::npos) << msg;
        EXPECT_NE(msg.find("short read"), std::string::npos) << msg;
        EXPECT_NE(msg.find("100 of 4096"), std::string::npos) << msg;
    }
}

TEST(aio_engine, failures_in_a_batch_are_all_waited_for) {
    // Several bad requests among good ones: one error, naming the first bad block it saw, and the
    // good requests after it may or may not have run, but none is left in flight.
    temp_dir dir;
    std::string path = dir.file("dev");
    make_file(path, 64 * MD_BLOCK_SIZE);
    auto e = open_aio_engine(path, {open_mode::read_only, true}, 4);
    std::vector<aligned_block> bufs;
    std::vector<io_request> reqs;
    for (block_address b = 0; b < 40; ++b) {
        bufs.push_back(make_aligned_block());
        reqs.push_back({b % 5 == 4 ? 1000 + b : b, bufs.back().get()});
    }
    std::string msg = io_error_message([&] { e->read_many(reqs); });
    EXPECT_NE(msg.find("block 10"), std::string::npos) << msg;  // 1004, 1009, ...: a bad one
    // The engine is still usable.
    auto buf = make_aligned_block();
    e->read(1, buf.get());
    std::vector<io_request> good{{0, bufs[0].get()}, {1, bufs[1].get()}};
    e->read_many(good);
}

// --- the fault engine ------------------------------------------------------------------------

struct faulty {
    std::shared_ptr<memory_engine> mem = std::make_shared<memory_engine>(64);
    fault_engine fe{mem};
    aligned_block buf = make_aligned_block();
};

TEST(fault_engine, the_nth_read_fails_once) {
    faulty f;
    f.fe.read(0, f.buf.get());
    f.fe.fail_read_at(3);
    f.fe.read(1, f.buf.get());
    f.fe.read(2, f.buf.get());
    std::string msg = io_error_message([&] { f.fe.read(7, f.buf.get()); });
    EXPECT_NE(msg.find("injected"), std::string::npos) << msg;
    EXPECT_NE(msg.find("block 7"), std::string::npos) << msg;
    f.fe.read(7, f.buf.get());
    EXPECT_EQ(f.fe.reads(), 4u);
}

TEST(fault_engine, the_nth_read_and_every_later_one_fail) {
    faulty f;
    f.fe.fail_read_at(2, true);
    f.fe.read(0, f.buf.get());
    for (int i = 0; i < 5; ++i) EXPECT_THROW(f.fe.read(1, f.buf.get()), io_error);
    f.fe.clear_faults();
    f.fe.read(1, f.buf.get());
    EXPECT_THROW(f.fe.fail_read_at(0), std::invalid_argument);
}

TEST(fault_engine, the_nth_write_fails_and_changes_nothing) {
    faulty f;
    f.fe.fail_write_at(2);
    fill(f.buf.get(), 1, 1);
    f.fe.write(1, f.buf.get());
    fill(f.buf.get(), 2, 1);
    std::string msg = io_error_message([&] { f.fe.write(2, f.buf.get()); });
    EXPECT_NE(msg.find("injected"), std::string::npos) << msg;
    EXPECT_NE(msg.find("block 2"), std::string::npos) << msg;
    EXPECT_TRUE(is_zero(f.mem->raw(2)));
    EXPECT_TRUE(holds(f.mem->raw(1), 1, 1));
    f.fe.write(2, f.buf.get());
    EXPECT_TRUE(holds(f.mem->raw(2), 2, 1));
    EXPECT_EQ(f.fe.writes(), 2u);

    // Within a batch, requests before the failing one are done, later ones are not.
    f.fe.fail_write_at(3, true);
    std::vector<aligned_block> bufs;
    std::vector<io_request> reqs;
    for (block_address b = 10; b < 15; ++b) {
        bufs.push_back(make_aligned_block(false));
        fill(bufs.back().get(), b, 2);
        reqs.push_back({b, bufs.back().get()});
    }
    EXPECT_THROW(f.fe.write_many(reqs), io_error);
    EXPECT_TRUE(holds(f.mem->raw(10), 10, 2));
    EXPECT_TRUE(holds(f.mem->raw(11), 11, 2));
    EXPECT_TRUE(is_zero(f.mem->raw(12)));
    EXPECT_TRUE(is_zero(f.mem->raw(14)));
}

TEST(fault_engine, reads_of_a_bad_block_fail) {
    faulty f;
    f.fe.fail_reads_of(9);
    f.fe.read(8, f.buf.get());
    EXPECT_THROW(f.fe.read(9, f.buf.get()), io_error);
    EXPECT_THROW(f.fe.read(9, f.buf.get()), io_error);
    f.fe.clear_faults();
    f.fe.read(9, f.buf.get());
}

TEST(fault_engine, a_short_read_is_an_error_naming_the_block) {
    faulty f;
    fill(f.mem->raw(5), 5, 7);
    f.fe.short_read_at(1, 512);
    std::memset(f.buf.get(), 0xEE, MD_BLOCK_SIZE);
    std::string msg = io_error_message([&] { f.fe.read(5, f.buf.get()); });
    EXPECT_NE(msg.find("block 5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("short read"), std::string::npos) << msg;
    EXPECT_EQ(std::memcmp(f.buf.get(), f.mem->raw(5), 512), 0);
    EXPECT_EQ(f.buf[512], 0xEE);
    f.fe.read(5, f.buf.get());
    EXPECT_TRUE(holds(f.buf.get(), 5, 7));
    EXPECT_THROW(f.fe.short_read_at(1, MD_BLOCK_SIZE), std::invalid_argument);
}

TEST(fault_engine, after_the_crash_point_writes_and_flushes_are_dropped) {
    faulty f;
    f.fe.crash_after_writes(3);
    for (block_address b = 0; b < 3; ++b) {
        fill(f.buf.get(), b, 1);
        f.fe.write(b, f.buf.get());
    }
    EXPECT_TRUE(f.fe.crashed());
    fill(f.buf.get(), 3, 1);
    std::string msg = io_error_message([&] { f.fe.write(3, f.buf.get()); });
    EXPECT_NE(msg.find("simulated crash"), std::string::npos) << msg;
    EXPECT_THROW(f.fe.flush(), io_error);
    EXPECT_TRUE(is_zero(f.mem->raw(3)));
    EXPECT_EQ(f.mem->flushes(), 0u);
    // Reads still work and see what was written before the crash.
    f.fe.read(2, f.buf.get());
    EXPECT_TRUE(holds(f.buf.get(), 2, 1));
    EXPECT_EQ(f.fe.writes(), 3u);
    EXPECT_EQ(f.fe.dropped_writes(), 1u);

    // Injected write failures do not count towards the crash point.
    f.fe.reboot();
    EXPECT_FALSE(f.fe.crashed());
    f.fe.crash_after_writes(1);
    f.fe.fail_write_at(1);
    EXPECT_THROW(f.fe.write(4, f.buf.get()), io_error);
    EXPECT_FALSE(f.fe.crashed());
    f.fe.write(4, f.buf.get());
    EXPECT_TRUE(f.fe.crashed());

    f.fe.reboot();
    f.fe.crash_after_writes(0);
    EXPECT_TRUE(f.fe.crashed());
}

TEST(fault_engine, the_write_log_replays_the_image_up_to_any_point) {
    const block_address n = 32;
    auto mem = std::make_shared<memory_engine>(n);
    // A base image, present before recording starts.
    for (block_address b = 0; b < n; ++b) fill(mem->raw(b), b, 100);
    memory_engine base(n);
    for (block_address b = 0; b < n; ++b) std::memcpy(base.raw(b), mem->raw(b), MD_BLOCK_SIZE);

    fault_engine fe(mem);
    fe.record(true);
    auto buf = make_aligned_block();
    // Writes with overwrites and flushes between them; remember the image after each entry.
    std::vector<std::map<block_address, unsigned>> images;  // block -> seed, after entry i
    std::map<block_address, unsigned> now;
    unsigned seed = 200;
    for (int step = 0; step < 60; ++step) {
        if (step % 7 == 6) {
            fe.flush();
        } else {
            block_address b = (step * 5) % 11;
            fill(buf.get(), b, ++seed);
            fe.write(b, buf.get());
            now[b] = seed;
        }
        images.push_back(now);
    }
    fe.record(false);
    fe.write(0, buf.get());  // not logged
    const write_log& log = fe.log();
    ASSERT_EQ(log.size(), 60u);
    EXPECT_TRUE(log[6].is_flush());
    EXPECT_EQ(log[0].block, 0u);
    EXPECT_EQ(log[1].block, 5u);

    for (std::size_t upto = 0; upto <= log.size(); ++upto) {
        memory_engine img(n);
        fault_engine::replay({}, 0, img);
        for (block_address b = 0; b < n; ++b) std::memcpy(img.raw(b), base.raw(b), MD_BLOCK_SIZE);
        fault_engine::replay(log, upto, img);
        for (block_address b = 0; b < n; ++b) {
            unsigned want = 100;
            if (upto > 0) {
                auto it = images[upto - 1].find(b);
                if (it != images[upto - 1].end()) want = it->second;
            }
            ASSERT_TRUE(holds(img.raw(b), b, want)) << "prefix " << upto << ", block " << b;
        }
    }
    memory_engine img(n);
    EXPECT_THROW(fault_engine::replay(log, log.size() + 1, img), std::out_of_range);

    auto points = fault_engine::flush_points(log);
    ASSERT_EQ(points.size(), 8u);
    EXPECT_EQ(points[0], 7u);
    EXPECT_EQ(points[1], 14u);

    write_log taken = fe.take_log();
    EXPECT_EQ(taken.size(), 60u);
    EXPECT_TRUE(fe.log().empty());
}

TEST(fault_engine, subsets_of_the_log_replay_for_torn_writes) {
    faulty f;
    f.fe.record(true);
    for (block_address b = 0; b < 6; ++b) {
        fill(f.buf.get(), b, 1);
        f.fe.write(b, f.buf.get());
    }
    f.fe.flush();
    fill(f.buf.get(), 2, 2);
    f.fe.write(2, f.buf.get());  // entry 7 overwrites block 2
    const write_log& log = f.fe.log();
    ASSERT_EQ(log.size(), 8u);

    memory_engine a(64);
    fault_engine::replay_selected(log, {true, false, true, false, false, true, true}, a);
    EXPECT_TRUE(holds(a.raw(0), 0, 1));
    EXPECT_TRUE(is_zero(a.raw(1)));
    EXPECT_TRUE(holds(a.raw(2), 2, 1));
    EXPECT_TRUE(holds(a.raw(5), 5, 1));
    EXPECT_EQ(a.flushes(), 0u);  // flush markers are not replayed

    memory_engine b(64);
    std::vector<std::size_t> order{7, 2};  // in the order given: the older write lands last
    fault_engine::replay_indices(log, order, b);
    EXPECT_TRUE(holds(b.raw(2), 2, 1));
    EXPECT_THROW(fault_engine::replay_indices(log, std::vector<std::size_t>{8}, b), std::out_of_range);
}

TEST(fault_engine, wraps_a_real_device) {
    temp_dir dir;
    std::string path = dir.file("dev");
    make_file(path, 16 * MD_BLOCK_SIZE);
    auto fe = std::make_shared<fault_engine>(
        std::shared_ptr<io_engine>(open_aio_engine(path, {open_mode::read_write, true})));
    EXPECT_EQ(fe->nr_blocks(), 16u);
    EXPECT_NE(fe->name().find(path), std::string::npos);
    fe->record(true);
    std::vector<aligned_block> bufs;
    std::vector<io_request> reqs;
    for (block_address b = 0; b < 16; ++b) {
        bufs.push_back(make_aligned_block(false));
        fill(bufs.back().get(), b, 30);
        reqs.push_back({b, bufs.back().get()});
    }
    fe->write_many(reqs);
    fe->flush();
    EXPECT_EQ(fe->writes(), 16u);
    EXPECT_EQ(fe->flushes(), 1u);
    EXPECT_EQ(fe->log().size(), 17u);
    fe->fail_read_at(5);
    EXPECT_THROW(fe->read_many(reqs), io_error);
    fe->read_many(reqs);
    for (auto& r : reqs) EXPECT_TRUE(holds(r.buf, r.block, 30));
}

} // namespace
