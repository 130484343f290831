// thin/pool/data_device.h: the libaio device (on a temporary file, and on loop block devices with
// 512- and 4096-byte logical blocks when the machine lets us attach one) and the memory device.
#include "thin/pool/data_device.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <future>
#include <linux/loop.h>
#include <mutex>
#include <random>
#include <set>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace thin::pool;

namespace {

constexpr std::uint64_t DEV_SECTORS = 131072;  // 64 MiB
constexpr std::uint64_t BYTES = SECTOR_SIZE;

// ---- helpers ----------------------------------------------------------------------------------

// Runs one request and waits for its callback; also checks the callback ran on another thread.
template <typename Submit>
int sync_io(Submit&& submit) {
    std::promise<int> p;
    auto f = p.get_future();
    auto caller = std::this_thread::get_id();
    std::atomic<bool> other_thread{false};
    submit([&](int r) {
        other_thread = std::this_thread::get_id() != caller;
        p.set_value(r);
    });
    int r = f.get();
    EXPECT_TRUE(other_thread.load()) << "callback ran inside the submitting call";
    return r;
}

int do_read(data_device& d, std::uint64_t s, std::uint64_t n, void* buf) {
    return sync_io([&](io_callback cb) { d.read(s, n, buf, std::move(cb)); });
}
int do_write(data_device& d, std::uint64_t s, std::uint64_t n, const void* buf) {
    return sync_io([&](io_callback cb) { d.write(s, n, buf, std::move(cb)); });
}
int do_zeroes(data_device& d, std::uint64_t s, std::uint64_t n) {
    return sync_io([&](io_callback cb) { d.write_zeroes(s, n, std::move(cb)); });
}
int do_copy(data_device& to, data_device& from, std::uint64_t fs, std::uint64_t ts, std::uint64_t n) {
    return sync_io([&](io_callback cb) { to.copy(from, fs, ts, n, std::move(cb)); });
}
int do_discard(data_device& d, std::uint64_t s, std::uint64_t n) {
    return sync_io([&](io_callback cb) { d.discard(s, n, std::move(cb)); });
}
int do_flush(data_device& d) {
    return sync_io([&](io_callback cb) { d.flush(std::move(cb)); });
}

std::vector<std::uint8_t> read_back(data_device& d, std::uint64_t s, std::uint64_t n) {
    std::vector<std::uint8_t> out(n * BYTES);
    EXPECT_EQ(do_read(d, s, n, out.data()), 0);
    return out;
}

std::vector<std::uint8_t> random_bytes(std::size_t n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::uint8_t> v(n);
    for (auto& b : v) b = static_cast<std::uint8_t>(rng());
    return v;
}

// Counts callbacks and remembers failures; wait_for(n) blocks until n callbacks ran.
class completions {
public:
    io_callback callback() {
        return [this](int r) {
            std::lock_guard l(mu_);
            threads_.insert(std::this_thread::get_id());
            if (r != 0) errors_.push_back(r);
            ++seen_;
            cv_.notify_all();
        };
    }
    void wait_for(std::size_t n) {
        std::unique_lock l(mu_);
        cv_.wait(l, [&] { return seen_ >= n; });
    }
    std::size_t seen() {
        std::lock_guard l(mu_);
        return seen_;
    }
    std::vector<int> errors() {
        std::lock_guard l(mu_);
        return errors_;
    }
    std::set<std::thread::id> threads() {
        std::lock_guard l(mu_);
        return threads_;
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::size_t seen_ = 0;
    std::vector<int> errors_;
    std::set<std::thread::id> threads_;
};

struct free_delete {
    void operator()(std::uint8_t* p) const { std::free(p); }
};
std::unique_ptr<std::uint8_t[], free_delete> aligned(std::size_t n) {
    void* p = nullptr;
    if (posix_memalign(&p, 4096, n) != 0) throw std::bad_alloc();
    return std::unique_ptr<std::uint8_t[], free_delete>(static_cast<std::uint8_t*>(p));
}

std::string temp_file(std::uint64_t bytes) {
    char name[] = "/tmp/thinpool-data-device-XXXXXX";
    int fd = ::mkstemp(name);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "mkstemp");
    if (::ftruncate(fd, static_cast<off_t>(bytes)) < 0) throw std::system_error(errno, std::generic_category(), "ftruncate");
    ::close(fd);
    return name;
}

std::uint64_t allocated_bytes(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0);
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

// A loop block device over a file, detached automatically when the last descriptor closes.
struct loop_device {
    std::string path;
    int fd = -1;
    ~loop_device() {
        if (fd >= 0) ::close(fd);
    }
};

// Empty path when loop devices cannot be used here (not root, no /dev/loop-control, ...).
std::unique_ptr<loop_device> attach_loop(const std::string& backing, unsigned block_size, std::string& why) {
    int ctl = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
        why = std::string("/dev/loop-control: ") + std::strerror(errno);
        return nullptr;
    }
    std::unique_ptr<loop_device> result;
    for (int attempt = 0; attempt < 20 && !result; ++attempt) {
        int n = ::ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) {
            why = std::string("LOOP_CTL_GET_FREE: ") + std::strerror(errno);
            break;
        }
        std::string path = "/dev/loop" + std::to_string(n);
        int lfd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
        if (lfd < 0) {
            why = path + ": " + std::strerror(errno);
            break;
        }
        int bfd = ::open(backing.c_str(), O_RDWR | O_CLOEXEC);
        loop_config cfg{};
        cfg.fd = static_cast<__u32>(bfd);
        cfg.block_size = block_size;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        int r = ::ioctl(lfd, LOOP_CONFIGURE, &cfg);
        int err = errno;
        ::close(bfd);
        if (r == 0) {
            result = std::make_unique<loop_device>();
            result->path = path;
            result->fd = lfd;
        } else {
            ::close(lfd);
            why = path + ": LOOP_CONFIGURE: " + std::strerror(err);
            if (err != EBUSY) break;  // taken by someone else meanwhile: try another
        }
    }
    ::close(ctl);
    return result;
}

// ---- the devices under test -------------------------------------------------------------------

enum class kind { aio_file, aio_loop512, aio_loop4k, memory };

std::string kind_name(const testing::TestParamInfo<kind>& i) {
    switch (i.param) {
    case kind::aio_file: return "aio_file";
    case kind::aio_loop512: return "aio_loop512";
    case kind::aio_loop4k: return "aio_loop4k";
    case kind::memory: return "memory";
    }
    return "?";
}

class data_device_test : public testing::TestWithParam<kind> {
protected:
    void TearDown() override {
        dev.reset();
        loop.reset();
        for (auto& f : files) ::unlink(f.c_str());
    }

    // Opens a fresh device of DEV_SECTORS (skips the test when a loop device is unavailable).
    void open(unsigned queue_depth = 128) {
        if (GetParam() == kind::memory) {
            auto m = std::make_unique<memory_data_device>(DEV_SECTORS);
            memory = m.get();
            dev = std::move(m);
            return;
        }
        backing = temp_file(DEV_SECTORS * BYTES);
        files.push_back(backing);
        data_device_options opts;
        opts.queue_depth = queue_depth;
        if (GetParam() == kind::aio_file) {
            dev = open_aio_data_device(backing, opts);
            return;
        }
        std::string why;
        loop = attach_loop(backing, GetParam() == kind::aio_loop4k ? 4096 : 512, why);
        if (!loop) GTEST_SKIP() << "no loop device: " << why;
        dev = open_aio_data_device(loop->path, opts);
    }

    bool is_aio() const { return GetParam() != kind::memory; }

    std::unique_ptr<data_device> dev;
    memory_data_device* memory = nullptr;
    std::unique_ptr<loop_device> loop;
    std::string backing;
    std::vector<std::string> files;
};

TEST_P(data_device_test, size_and_name) {
    open();
    if (IsSkipped()) return;
    EXPECT_EQ(dev->nr_sectors(), DEV_SECTORS);
    EXPECT_FALSE(dev->name().empty());
    if (GetParam() == kind::aio_file) {
        EXPECT_EQ(dev->name(), backing);  // ext4 and friends take O_DIRECT: no "(buffered ...)"
    }
}

TEST_P(data_device_test, round_trips_at_odd_offsets_with_unaligned_buffers) {
    open();
    if (IsSkipped()) return;
    std::vector<std::uint8_t> model(DEV_SECTORS * BYTES, 0);
    struct range {
        std::uint64_t sector, nr;
    };
    const range ranges[] = {{1, 1},     {3, 7},        {1001, 129},      {4095, 3}, {8191, 2049},
                            {0, 1},     {20001, 4099}, {DEV_SECTORS - 5, 5}, {7, 8}, {65536, 4096}};
    std::uint64_t seed = 1;
    for (auto r : ranges) {
        auto data = random_bytes(r.nr * BYTES, seed++);
        // Write from an odd address: the device must bounce (or go buffered) for O_DIRECT.
        std::vector<std::uint8_t> wbuf(data.size() + 1);
        std::memcpy(wbuf.data() + 1, data.data(), data.size());
        ASSERT_EQ(do_write(*dev, r.sector, r.nr, wbuf.data() + 1), 0) << r.sector << "+" << r.nr;
        std::memcpy(model.data() + r.sector * BYTES, data.data(), data.size());

        std::vector<std::uint8_t> rbuf(data.size() + 3, 0xee);
        ASSERT_EQ(do_read(*dev, r.sector, r.nr, rbuf.data() + 3), 0);
        EXPECT_EQ(0, std::memcmp(rbuf.data() + 3, data.data(), data.size())) << r.sector << "+" << r.nr;
        EXPECT_EQ(rbuf[0], 0xee);  // nothing written outside the caller's buffer
        EXPECT_EQ(rbuf[1], 0xee);
        EXPECT_EQ(rbuf[2], 0xee);

        auto abuf = aligned(data.size());
        ASSERT_EQ(do_read(*dev, r.sector, r.nr, abuf.get()), 0);
        EXPECT_EQ(0, std::memcmp(abuf.get(), data.data(), data.size()));
    }
    // Later writes overlapped earlier ones; the whole device must match the model.
    for (std::uint64_t s = 0; s < DEV_SECTORS; s += 8192) {
        auto got = read_back(*dev, s, 8192);
        ASSERT_EQ(0, std::memcmp(got.data(), model.data() + s * BYTES, got.size())) << "at sector " << s;
    }
}

TEST_P(data_device_test, eight_threads_submit_concurrently) {
    open();
    if (IsSkipped()) return;
    constexpr unsigned THREADS = 8, SLOTS = 96, SLOT_SECTORS = 64;
    std::atomic<unsigned> failures{0};
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < THREADS; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937_64 rng(100 + t);
            const std::uint64_t base = t * SLOTS * SLOT_SECTORS;
            // Each slot gets one write in flight at a time; slots do not overlap, so the result
            // is known whatever order the device completes them in.
            struct slot_write {
                std::uint64_t sector, nr;
                std::vector<std::uint8_t> buf;  // one spare byte in front for misalignment
                std::size_t skew;
            };
            std::vector<slot_write> writes(SLOTS);
            completions done;
            for (unsigned i = 0; i < SLOTS; ++i) {
                auto& w = writes[i];
                std::uint64_t first = rng() % SLOT_SECTORS;
                w.nr = 1 + rng() % (SLOT_SECTORS - first);
                w.sector = base + i * SLOT_SECTORS + first;
                w.skew = rng() % 2;
                w.buf = random_bytes(w.nr * BYTES + 1, rng());
                dev->write(w.sector, w.nr, w.buf.data() + w.skew, done.callback());
            }
            done.wait_for(SLOTS);
            if (!done.errors().empty()) ++failures;
            // Read them back concurrently too.
            std::vector<std::vector<std::uint8_t>> got(SLOTS);
            completions reads;
            for (unsigned i = 0; i < SLOTS; ++i) {
                got[i].resize(writes[i].nr * BYTES + 1);
                dev->read(writes[i].sector, writes[i].nr, got[i].data() + (i % 2), reads.callback());
            }
            reads.wait_for(SLOTS);
            if (!reads.errors().empty()) ++failures;
            for (unsigned i = 0; i < SLOTS; ++i)
                if (std::memcmp(got[i].data() + (i % 2), writes[i].buf.data() + writes[i].skew, writes[i].nr * BYTES))
                    ++failures;
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(failures.load(), 0u);
}

TEST_P(data_device_test, a_thousand_requests_on_four_slots) {
    open(4);
    if (IsSkipped()) return;
    constexpr unsigned N = 1000, SECTORS = 8;
    std::vector<std::vector<std::uint8_t>> bufs(N);
    completions writes;
    auto submitter = std::this_thread::get_id();
    for (unsigned i = 0; i < N; ++i) {
        bufs[i] = random_bytes(SECTORS * BYTES, 5000 + i);
        dev->write(i * SECTORS, SECTORS, bufs[i].data(), writes.callback());
    }
    writes.wait_for(N);
    EXPECT_TRUE(writes.errors().empty());
    // Every callback ran on the one completion thread, never on the submitter's.
    auto threads = writes.threads();
    EXPECT_EQ(threads.size(), 1u);
    EXPECT_EQ(threads.count(submitter), 0u);

    std::vector<std::vector<std::uint8_t>> got(N, std::vector<std::uint8_t>(SECTORS * BYTES));
    completions reads;
    for (unsigned i = 0; i < N; ++i) dev->read(i * SECTORS, SECTORS, got[i].data(), reads.callback());
    reads.wait_for(N);
    EXPECT_TRUE(reads.errors().empty());
    for (unsigned i = 0; i < N; ++i) ASSERT_EQ(got[i], bufs[i]) << "request " << i;
}

TEST_P(data_device_test, write_zeroes) {
    open();
    if (IsSkipped()) return;
    const std::uint64_t start = 100, nr = 6144;
    auto data = random_bytes(nr * BYTES, 7);
    ASSERT_EQ(do_write(*dev, start, nr, data.data()), 0);
    // More than one 1 MiB zero chunk, at odd sectors.
    ASSERT_EQ(do_zeroes(*dev, start + 1, 4500), 0);
    ASSERT_EQ(do_zeroes(*dev, start + 5000, 3), 0);
    std::vector<std::uint8_t> expect = data;
    std::memset(expect.data() + 1 * BYTES, 0, 4500 * BYTES);
    std::memset(expect.data() + 5000 * BYTES, 0, 3 * BYTES);
    EXPECT_EQ(read_back(*dev, start, nr), expect);
}

TEST_P(data_device_test, copy_within_the_device) {
    open();
    if (IsSkipped()) return;
    const std::uint64_t from = 7, to = 20011, nr = 5000;  // five chunks, odd sectors
    auto data = random_bytes(nr * BYTES, 11);
    ASSERT_EQ(do_write(*dev, from, nr, data.data()), 0);
    ASSERT_EQ(do_copy(*dev, *dev, from, to, nr), 0);
    EXPECT_EQ(read_back(*dev, to, nr), data);
    EXPECT_EQ(read_back(*dev, from, nr), data);
    // Neighbours untouched.
    EXPECT_EQ(read_back(*dev, to - 1, 1), std::vector<std::uint8_t>(BYTES, 0));
    EXPECT_EQ(read_back(*dev, to + nr, 1), std::vector<std::uint8_t>(BYTES, 0));
    // Overlapping ranges within one device are refused.
    EXPECT_EQ(do_copy(*dev, *dev, from, from + 10, nr), -EINVAL);
    EXPECT_EQ(do_copy(*dev, *dev, 0, 0, 0), 0);
}

TEST_P(data_device_test, copy_from_another_device) {
    open();
    if (IsSkipped()) return;
    const std::uint64_t nr = 3000;
    auto data = random_bytes(nr * BYTES, 13);

    // An in-memory origin.
    memory_data_device origin(8192);
    origin.set_contents(5, data);
    ASSERT_EQ(do_copy(*dev, origin, 5, 1234, nr), 0);
    EXPECT_EQ(read_back(*dev, 1234, nr), data);

    // A file origin through aio.
    auto origin_file = temp_file(8192 * BYTES);
    files.push_back(origin_file);
    data_device_options ro;
    ro.read_only = true;
    {
        auto writer = open_aio_data_device(origin_file);
        auto other = random_bytes(nr * BYTES, 17);
        ASSERT_EQ(do_write(*writer, 77, nr, other.data()), 0);
        auto aio_origin = open_aio_data_device(origin_file, ro);
        ASSERT_EQ(do_copy(*dev, *aio_origin, 77, 40001, nr), 0);
        EXPECT_EQ(read_back(*dev, 40001, nr), other);
        // The origin's range is checked against the origin.
        EXPECT_EQ(do_copy(*dev, *aio_origin, 8000, 0, 300), -EIO);
    }
    EXPECT_EQ(do_copy(*dev, origin, 8192, 0, 1), -EIO);
}

TEST_P(data_device_test, out_of_range_requests_fail_with_eio) {
    open();
    if (IsSkipped()) return;
    std::vector<std::uint8_t> buf(4 * BYTES);
    const std::uint64_t end = DEV_SECTORS;
    EXPECT_EQ(do_read(*dev, end - 1, 2, buf.data()), -EIO);
    EXPECT_EQ(do_read(*dev, end, 1, buf.data()), -EIO);
    EXPECT_EQ(do_write(*dev, end - 1, 2, buf.data()), -EIO);
    EXPECT_EQ(do_write(*dev, UINT64_MAX, 1, buf.data()), -EIO);
    EXPECT_EQ(do_write(*dev, 1, UINT64_MAX, buf.data()), -EIO);  // sector + nr wraps
    EXPECT_EQ(do_zeroes(*dev, end - 3, 4), -EIO);
    EXPECT_EQ(do_copy(*dev, *dev, 0, end - 1, 2), -EIO);
    EXPECT_EQ(do_copy(*dev, *dev, end - 1, 0, 2), -EIO);
    EXPECT_EQ(do_discard(*dev, end - 1, 2), -EIO);
    // The last sector itself is fine, and so is nothing at all.
    EXPECT_EQ(do_write(*dev, end - 1, 1, buf.data()), 0);
    EXPECT_EQ(do_read(*dev, end - 1, 1, buf.data()), 0);
    EXPECT_EQ(do_read(*dev, 5, 0, buf.data()), 0);
}

TEST_P(data_device_test, discard_releases_the_range) {
    open();
    if (IsSkipped()) return;
    ASSERT_TRUE(dev->supports_discard());
    const std::uint64_t start = 8192, nr = 8192;  // 4 MiB
    auto data = random_bytes((nr + 16) * BYTES, 19);
    ASSERT_EQ(do_write(*dev, start - 8, nr + 16, data.data()), 0);
    ASSERT_EQ(do_flush(*dev), 0);
    std::uint64_t before = is_aio() ? allocated_bytes(backing) : 0;

    ASSERT_EQ(do_discard(*dev, start, nr), 0);
    EXPECT_EQ(read_back(*dev, start, nr), std::vector<std::uint8_t>(nr * BYTES, 0));
    // Just outside: still there.
    EXPECT_EQ(read_back(*dev, start - 8, 8), std::vector<std::uint8_t>(data.begin(), data.begin() + 8 * BYTES));
    EXPECT_EQ(read_back(*dev, start + nr, 8), std::vector<std::uint8_t>(data.end() - 8 * BYTES, data.end()));
    if (is_aio()) {
        // A hole was punched in the file (through the loop device's discard for loop devices).
        std::uint64_t after = allocated_bytes(backing);
        EXPECT_LE(after + nr * BYTES, before) << "before " << before << " after " << after;
    } else {
        EXPECT_EQ(memory->discards(), 1u);
    }
    // A range smaller than a logical block is advice that may do nothing, but it succeeds.
    EXPECT_EQ(do_discard(*dev, 3, 1), 0);
    EXPECT_EQ(do_discard(*dev, 3, 0), 0);
}

TEST_P(data_device_test, flush_and_callback_threads) {
    open();
    if (IsSkipped()) return;
    auto data = random_bytes(16 * BYTES, 23);
    // The caller holds its own lock while submitting; callbacks take the same lock, which would
    // deadlock if a callback ran inside the submitting call.
    std::mutex caller_lock;
    std::promise<int> flushed;
    std::vector<int> order;
    {
        std::lock_guard l(caller_lock);
        dev->write(64, 16, data.data(), [&](int r) {
            std::lock_guard l2(caller_lock);
            order.push_back(1);
            EXPECT_EQ(r, 0);
            // Submit from the completion thread: the flush covers this completed write.
            dev->flush([&](int f) {
                std::lock_guard l3(caller_lock);
                order.push_back(2);
                flushed.set_value(f);
            });
        });
    }
    EXPECT_EQ(flushed.get_future().get(), 0);
    {
        std::lock_guard l(caller_lock);
        EXPECT_EQ(order, (std::vector<int>{1, 2}));
    }
    EXPECT_EQ(read_back(*dev, 64, 16), data);
    if (memory) {
        EXPECT_EQ(memory->volatile_writes(), 0u);
        EXPECT_EQ(memory->flushes(), 1u);
    }
}

TEST_P(data_device_test, drain_waits_for_everything) {
    open(8);
    if (IsSkipped()) return;
    completions done;
    auto data = random_bytes(64 * BYTES, 29);
    for (unsigned i = 0; i < 300; ++i) dev->write(i * 64, 64, data.data(), done.callback());
    for (unsigned i = 0; i < 20; ++i) dev->flush(done.callback());
    for (unsigned i = 0; i < 20; ++i) dev->discard(100000 + i * 128, 128, done.callback());
    dev->drain();
    EXPECT_EQ(done.seen(), 340u);
    EXPECT_TRUE(done.errors().empty());

    // The destructor drains as well.
    for (unsigned i = 0; i < 200; ++i) dev->write(i * 64, 64, data.data(), done.callback());
    dev.reset();
    EXPECT_EQ(done.seen(), 540u);
}

INSTANTIATE_TEST_SUITE_P(all, data_device_test,
                         testing::Values(kind::aio_file, kind::aio_loop512, kind::aio_loop4k, kind::memory), kind_name);

// ---- aio only ---------------------------------------------------------------------------------

class aio_file_test : public testing::Test {
protected:
    void TearDown() override {
        for (auto& f : files) ::unlink(f.c_str());
    }
    std::string make(std::uint64_t sectors) {
        files.push_back(temp_file(sectors * BYTES));
        return files.back();
    }
    std::vector<std::string> files;
};

TEST_F(aio_file_test, read_only_device_refuses_changes_with_erofs) {
    auto path = make(4096);
    auto data = random_bytes(8 * BYTES, 31);
    {
        auto rw = open_aio_data_device(path);
        ASSERT_EQ(do_write(*rw, 8, 8, data.data()), 0);
    }
    data_device_options opts;
    opts.read_only = true;
    auto ro = open_aio_data_device(path, opts);
    EXPECT_EQ(read_back(*ro, 8, 8), data);
    std::vector<std::uint8_t> other(8 * BYTES, 1);
    EXPECT_EQ(do_write(*ro, 8, 8, other.data()), -EROFS);
    EXPECT_EQ(do_zeroes(*ro, 8, 8), -EROFS);
    EXPECT_EQ(do_copy(*ro, *ro, 8, 100, 8), -EROFS);
    EXPECT_EQ(do_discard(*ro, 8, 8), -EROFS);
    EXPECT_FALSE(ro->supports_discard());
    EXPECT_EQ(do_flush(*ro), 0);
    EXPECT_EQ(read_back(*ro, 8, 8), data);
}

TEST_F(aio_file_test, open_errors_name_the_path) {
    try {
        open_aio_data_device("/nonexistent/thinpool-data");
        FAIL() << "opened a missing file";
    } catch (const std::system_error& e) {
        EXPECT_EQ(e.code().value(), ENOENT);
        EXPECT_NE(std::string(e.what()).find("/nonexistent/thinpool-data"), std::string::npos) << e.what();
    }
    EXPECT_THROW(open_aio_data_device("/tmp"), std::system_error);  // a directory
}

TEST_F(aio_file_test, size_is_queried_again_after_growth) {
    auto path = make(1024);
    auto dev = open_aio_data_device(path);
    EXPECT_EQ(dev->nr_sectors(), 1024u);
    std::vector<std::uint8_t> buf(8 * BYTES, 0x5a);
    EXPECT_EQ(do_write(*dev, 2000, 8, buf.data()), -EIO);
    ASSERT_EQ(::truncate(path.c_str(), 4096 * BYTES), 0);
    // No nr_sectors() call in between: the request itself notices the growth.
    EXPECT_EQ(do_write(*dev, 2000, 8, buf.data()), 0);
    EXPECT_EQ(dev->nr_sectors(), 4096u);
    EXPECT_EQ(read_back(*dev, 2000, 8), buf);
}

TEST_F(aio_file_test, a_transfer_cut_short_by_the_end_reports_eio) {
    // The device believes it has 8192 sectors; the file shrinks behind its back so that a read
    // straddling the new end transfers only part (a short transfer), and the rest finds nothing.
    auto path = make(8192);
    auto dev = open_aio_data_device(path);
    ASSERT_EQ(dev->nr_sectors(), 8192u);
    auto data = random_bytes(64 * BYTES, 37);
    ASSERT_EQ(do_write(*dev, 4064, 64, data.data()), 0);
    ASSERT_EQ(::truncate(path.c_str(), 4096 * BYTES), 0);
    std::vector<std::uint8_t> buf(64 * BYTES);
    EXPECT_EQ(do_read(*dev, 4064, 64, buf.data()), -EIO);
    // The part before the new end is still readable.
    EXPECT_EQ(read_back(*dev, 4064, 32), std::vector<std::uint8_t>(data.begin(), data.begin() + 32 * BYTES));
}

TEST_F(aio_file_test, exclusive_block_device_open) {
    auto path = make(16384);
    std::string why;
    auto loop = attach_loop(path, 512, why);
    if (!loop) GTEST_SKIP() << "no loop device: " << why;
    auto first = open_aio_data_device(loop->path);
    EXPECT_EQ(first->nr_sectors(), 16384u);
    try {
        open_aio_data_device(loop->path);
        FAIL() << "a second exclusive open succeeded";
    } catch (const std::system_error& e) {
        EXPECT_EQ(e.code().value(), EBUSY) << e.what();
    }
    data_device_options shared;
    shared.exclusive = false;
    shared.read_only = true;
    EXPECT_NO_THROW(open_aio_data_device(loop->path, shared));
}

// ---- memory device only -----------------------------------------------------------------------

std::vector<std::uint8_t> pattern(std::uint64_t nr, std::uint8_t v) { return std::vector<std::uint8_t>(nr * BYTES, v); }

TEST(memory_data_device_test, completes_out_of_submission_order) {
    memory_data_device dev(4096);
    // Hold the completion thread inside a callback while 200 more requests queue up; they then
    // form one batch, which the device shuffles.
    std::promise<void> release;
    auto released = release.get_future().share();
    std::promise<void> entered;
    auto buf = pattern(1, 1);
    dev.write(0, 1, buf.data(), [&](int) {
        entered.set_value();
        released.wait();
    });
    entered.get_future().wait();
    std::mutex mu;
    std::vector<unsigned> order;
    completions done;
    for (unsigned i = 0; i < 200; ++i) {
        auto cb = done.callback();
        dev.write(1 + i, 1, buf.data(), [&, i, cb](int r) {
            {
                std::lock_guard l(mu);
                order.push_back(i);
            }
            cb(r);
        });
    }
    release.set_value();
    done.wait_for(200);
    std::lock_guard l(mu);
    ASSERT_EQ(order.size(), 200u);
    EXPECT_FALSE(std::is_sorted(order.begin(), order.end()));
}

TEST(memory_data_device_test, is_sparse) {
    const std::uint64_t huge = std::uint64_t(1) << 40;  // 512 TiB
    memory_data_device dev(huge);
    auto a = random_bytes(9 * BYTES, 41);
    ASSERT_EQ(do_write(dev, huge - 9, 9, a.data()), 0);
    ASSERT_EQ(do_write(dev, huge / 2 + 3, 9, a.data()), 0);
    EXPECT_EQ(read_back(dev, huge - 9, 9), a);
    EXPECT_EQ(read_back(dev, huge / 2 + 3, 9), a);
    EXPECT_EQ(read_back(dev, 12345678, 16), pattern(16, 0));
    EXPECT_EQ(dev.contents(huge / 2 + 3, 9), a);
}

TEST(memory_data_device_test, flushed_writes_survive_a_crash_unflushed_ones_do_not) {
    memory_data_device dev(4096);
    auto a = pattern(8, 0xaa), b = pattern(8, 0xbb), c = pattern(8, 0xcc);
    ASSERT_EQ(do_write(dev, 0, 8, a.data()), 0);
    ASSERT_EQ(do_flush(dev), 0);
    ASSERT_EQ(do_write(dev, 0, 8, b.data()), 0);   // overwrites flushed data, volatile
    ASSERT_EQ(do_write(dev, 100, 8, c.data()), 0); // volatile
    ASSERT_EQ(do_zeroes(dev, 200, 8), 0);          // volatile too
    EXPECT_EQ(dev.volatile_writes(), 3u);
    EXPECT_EQ(dev.writes(), 4u);
    EXPECT_EQ(dev.flushes(), 1u);

    dev.crash();
    // Down: everything fails until reboot.
    std::vector<std::uint8_t> buf(8 * BYTES);
    EXPECT_EQ(do_read(dev, 0, 8, buf.data()), -EIO);
    EXPECT_EQ(do_write(dev, 0, 8, b.data()), -EIO);
    EXPECT_EQ(do_flush(dev), -EIO);
    EXPECT_EQ(do_discard(dev, 0, 8), -EIO);
    EXPECT_EQ(do_copy(dev, dev, 0, 50, 8), -EIO);
    dev.reboot();

    EXPECT_EQ(read_back(dev, 0, 8), a);
    EXPECT_EQ(read_back(dev, 100, 8), pattern(8, 0));
    EXPECT_EQ(dev.volatile_writes(), 0u);
}

TEST(memory_data_device_test, crash_keeps_the_chosen_volatile_writes) {
    memory_data_device dev(4096);
    for (std::uint8_t i = 0; i < 6; ++i) {
        auto p = pattern(1, static_cast<std::uint8_t>(i + 1));
        ASSERT_EQ(do_write(dev, i, 1, p.data()), 0);  // one at a time: completion order = i
    }
    // A later write over sector 0 (index 6) is dropped; the earlier one (index 0) is kept.
    auto over = pattern(1, 0x77);
    ASSERT_EQ(do_write(dev, 0, 1, over.data()), 0);
    ASSERT_EQ(dev.volatile_writes(), 7u);
    std::vector<std::size_t> asked;
    dev.crash([&](std::size_t i) {
        asked.push_back(i);
        return i % 2 == 0 && i != 6;
    });
    dev.reboot();
    EXPECT_EQ(asked, (std::vector<std::size_t>{0, 1, 2, 3, 4, 5, 6}));
    auto got = read_back(dev, 0, 6);
    for (unsigned i = 0; i < 6; ++i) {
        std::uint8_t expect = i % 2 == 0 ? static_cast<std::uint8_t>(i + 1) : 0;
        EXPECT_EQ(got[i * BYTES], expect) << "sector " << i;
        EXPECT_EQ(got[i * BYTES + BYTES - 1], expect) << "sector " << i;
    }
}

TEST(memory_data_device_test, flush_covers_only_writes_completed_before_it) {
    memory_data_device dev(4096);
    auto a = pattern(4, 0xa1), b = pattern(4, 0xb2);
    ASSERT_EQ(do_write(dev, 0, 4, a.data()), 0);
    // The flush and a second write go in together; the device may complete them in either
    // order, but the write was not complete when the flush was submitted.
    completions done;
    dev.flush(done.callback());
    dev.write(8, 4, b.data(), done.callback());
    done.wait_for(2);
    EXPECT_TRUE(done.errors().empty());
    EXPECT_EQ(dev.volatile_writes(), 1u);
    dev.crash();
    dev.reboot();
    EXPECT_EQ(read_back(dev, 0, 4), a);
    EXPECT_EQ(read_back(dev, 8, 4), pattern(4, 0));
}

TEST(memory_data_device_test, requests_in_flight_at_a_crash_fail) {
    memory_data_device dev(4096);
    std::promise<void> release;
    auto released = release.get_future().share();
    std::promise<void> entered;
    auto buf = pattern(1, 9);
    // Park the completion thread so that the next writes are queued, not done, at the crash.
    dev.read(0, 1, buf.data(), [&](int) {
        entered.set_value();
        released.wait();
    });
    entered.get_future().wait();
    completions done;
    for (unsigned i = 0; i < 10; ++i) dev.write(10 + i, 1, buf.data(), done.callback());
    dev.crash();
    dev.reboot();
    release.set_value();
    done.wait_for(10);
    EXPECT_EQ(done.errors(), std::vector<int>(10, -EIO));
    EXPECT_EQ(read_back(dev, 10, 10), pattern(10, 0));
}

TEST(memory_data_device_test, fault_injection) {
    memory_data_device dev(4096);
    auto a = pattern(1, 0xa), b = pattern(1, 0xb);
    ASSERT_EQ(do_write(dev, 0, 1, a.data()), 0);

    dev.fail_write_at(2);
    EXPECT_EQ(do_write(dev, 1, 1, a.data()), 0);
    EXPECT_EQ(do_write(dev, 0, 1, b.data()), -EIO);  // the 2nd write since arming
    EXPECT_EQ(do_zeroes(dev, 2, 1), 0);
    EXPECT_EQ(read_back(dev, 0, 1), a);  // the failed write changed nothing

    dev.fail_write_at(2, true);
    EXPECT_EQ(do_write(dev, 3, 1, a.data()), 0);
    EXPECT_EQ(do_zeroes(dev, 3, 1), -EIO);
    EXPECT_EQ(do_copy(dev, dev, 0, 3, 1), -EIO);
    memory_data_device other(16);
    EXPECT_EQ(do_copy(dev, other, 0, 3, 1), -EIO);
    EXPECT_EQ(read_back(dev, 3, 1), a);

    dev.clear_faults();
    dev.fail_read_at(1);
    std::vector<std::uint8_t> buf(BYTES, 0x33);
    EXPECT_EQ(do_read(dev, 0, 1, buf.data()), -EIO);
    EXPECT_EQ(buf, pattern(1, 0x33));  // untouched
    EXPECT_EQ(do_read(dev, 0, 1, buf.data()), 0);
    EXPECT_EQ(buf, a);

    // A failed flush makes nothing durable.
    dev.clear_faults();
    ASSERT_EQ(do_flush(dev), 0);
    ASSERT_EQ(do_write(dev, 5, 1, b.data()), 0);
    dev.fail_flush_at(1);
    EXPECT_EQ(do_flush(dev), -EIO);
    EXPECT_EQ(dev.volatile_writes(), 1u);
    dev.crash();
    dev.reboot();
    EXPECT_EQ(read_back(dev, 5, 1), pattern(1, 0));
    EXPECT_EQ(read_back(dev, 0, 1), a);
    // Flush faults were armed without and_after: the next flush works.
    EXPECT_EQ(do_flush(dev), 0);

    // Fail everything.
    dev.fail_read_at(1, true);
    dev.fail_write_at(1, true);
    dev.fail_flush_at(1, true);
    EXPECT_EQ(do_read(dev, 0, 1, buf.data()), -EIO);
    EXPECT_EQ(do_write(dev, 0, 1, a.data()), -EIO);
    EXPECT_EQ(do_flush(dev), -EIO);
    dev.clear_faults();
    EXPECT_EQ(do_read(dev, 0, 1, buf.data()), 0);
}

TEST(memory_data_device_test, discard_unsupported_and_resize) {
    memory_data_device dev(1024, false);
    EXPECT_FALSE(dev.supports_discard());
    EXPECT_EQ(do_discard(dev, 0, 8), -EOPNOTSUPP);
    EXPECT_EQ(dev.discards(), 0u);

    auto a = pattern(8, 0x42);
    ASSERT_EQ(do_write(dev, 1016, 8, a.data()), 0);
    dev.resize(2048);
    EXPECT_EQ(dev.nr_sectors(), 2048u);
    EXPECT_EQ(do_write(dev, 2040, 8, a.data()), 0);
    dev.resize(1020);
    EXPECT_EQ(do_read(dev, 1016, 8, a.data()), -EIO);
    dev.resize(1024);
    // What was beyond the shrunk end is gone.
    EXPECT_EQ(read_back(dev, 1016, 8), [] {
        auto v = pattern(8, 0);
        std::memset(v.data(), 0x42, 4 * BYTES);
        return v;
    }());
}

TEST(memory_data_device_test, set_contents_is_durable) {
    memory_data_device dev(64);
    auto a = random_bytes(3 * BYTES, 43);
    dev.set_contents(10, a);
    dev.crash();
    dev.reboot();
    EXPECT_EQ(dev.contents(10, 3), a);
    EXPECT_THROW(dev.set_contents(63, a), std::out_of_range);
}

} // namespace
