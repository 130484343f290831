// The pool runtime driven in process (issue 4's benchmark; bench/pool runs it beside fio on the raw
// data file and prints the ratios). Each case prints one line:
//   RESULT <case> iops=<n> mibps=<n> [median_ms=<n>]
// Cases (all on file-backed devices in --dir, data block size --block-size sectors):
//   randwrite-4k / randread-4k   4 KiB random I/O at --qd on a fully provisioned volume
//   seqwrite-1m-zero / -nozero   1 MiB sequential writes provisioning a fresh volume, with block
//                                zeroing on and skipped (whole-block writes need no zeroing, so
//                                the two differ only by what partial tails would cost)
//   snapwrite-4k                 4 KiB random writes just after a snapshot, each to a block whose
//                                sharing is not yet broken (copy-on-write of the whole block)
//   nested-100 / nested-0        4 KiB random rewrites of provisioned, unshared blocks of a volume
//                                at the end of a chain of 100 nested snapshots, and of one with none
//   snap-latency                 create_snap of the active origin while randwrite-4k runs on it (each
//                                snapshot is deleted again after 100 ms; only create_snap is timed)
#include "thin/pool/pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <iostream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace tp = thin::pool;
using clk = std::chrono::steady_clock;

namespace {

struct config {
    std::string dir = "/tmp/thinpool-bench";
    std::uint64_t size_mib = 2048;   // thin volume size
    std::uint32_t block_size = 128;  // sectors
    unsigned qd = 32;
    double runtime = 10;             // seconds per timed case
    std::vector<std::string> cases;
};

[[noreturn]] void die(const std::string& m) {
    std::cerr << "pool_bench: " << m << "\n";
    std::exit(1);
}

void make_file(const std::string& path, std::uint64_t bytes) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) die("cannot create " + path);
    ::close(fd);
}

// A pool on fresh files: metadata 256 MiB, data = volume size * data_factor.
struct bench_pool {
    std::unique_ptr<tp::pool> pool;
    bench_pool(const config& c, bool skip_zeroing, double data_factor) {
        std::filesystem::create_directories(c.dir);
        std::string md = c.dir + "/metadata", data = c.dir + "/data";
        make_file(md, 256ull << 20);
        make_file(data, static_cast<std::uint64_t>(c.size_mib * data_factor) << 20);
        tp::pool_options o;
        o.metadata_path = md;
        o.data_path = data;
        o.data_block_size = c.block_size;
        o.features.skip_block_zeroing = skip_zeroing;
        o.log = [](const std::string&) {};
        pool = tp::pool::open(o);
    }
    ~bench_pool() {
        if (pool) pool->close();
    }
};

void* aligned(std::size_t n) {
    void* p = nullptr;
    if (posix_memalign(&p, 4096, n)) die("out of memory");
    std::memset(p, 0xa5, n);
    return p;
}

// Keeps qd requests in flight until `until` or until next() says stop; returns completed count.
struct driver {
    tp::thin_device& dev;
    unsigned qd;
    std::uint64_t bytes;
    tp::io_op op;
    std::function<std::optional<std::uint64_t>()> next;  // next byte offset, nullopt: done

    std::uint64_t run(clk::time_point until) {
        std::mutex m;
        std::condition_variable cv;
        unsigned in_flight = 0;
        std::uint64_t done = 0;
        int error = 0;
        bool stop = false;
        std::vector<void*> bufs;
        for (unsigned i = 0; i < qd; ++i) bufs.push_back(aligned(bytes));
        std::function<void(void*)> issue;
        issue = [&](void* buf) {
            std::optional<std::uint64_t> off;
            {
                std::lock_guard<std::mutex> l(m);
                if (!stop && clk::now() < until && !error) off = next();
                if (!off) {
                    --in_flight;
                    cv.notify_all();
                    return;
                }
            }
            tp::io_request r;
            r.op = op;
            r.sector = *off / tp::SECTOR_SIZE;
            r.nr_sectors = bytes / tp::SECTOR_SIZE;
            r.buf = buf;
            r.done = [&, buf](int res) {
                {
                    std::lock_guard<std::mutex> l(m);
                    ++done;
                    if (res && !error) error = res;
                }
                issue(buf);
            };
            dev.submit(std::move(r));
        };
        {
            std::lock_guard<std::mutex> l(m);
            in_flight = qd;
        }
        for (unsigned i = 0; i < qd; ++i) issue(bufs[i]);
        std::unique_lock<std::mutex> l(m);
        cv.wait(l, [&] { return in_flight == 0; });
        for (void* b : bufs) std::free(b);
        if (error) die(std::string("I/O failed: ") + std::strerror(-error));
        return done;
    }
};

void report(const std::string& name, std::uint64_t ops, std::uint64_t bytes_each, double secs,
            const std::string& extra = "") {
    double iops = ops / secs;
    std::printf("RESULT %s iops=%.0f mibps=%.1f%s\n", name.c_str(), iops, iops * bytes_each / 1048576.0,
                extra.c_str());
    std::fflush(stdout);
}

std::uint64_t timed(const std::string& name, tp::thin_device& dev, const config& c, tp::io_op op,
                    std::uint64_t bytes, std::function<std::optional<std::uint64_t>()> next) {
    driver d{dev, c.qd, bytes, op, std::move(next)};
    auto t0 = clk::now();
    std::uint64_t n = d.run(t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(c.runtime)));
    double secs = std::chrono::duration<double>(clk::now() - t0).count();
    report(name, n, bytes, secs);
    return n;
}

// Writes the whole volume once with 1 MiB writes (untimed).
void provision(tp::thin_device& dev, const config& c) {
    std::uint64_t total = c.size_mib << 20, off = 0;
    driver d{dev, c.qd, 1 << 20, tp::io_op::write, [&]() -> std::optional<std::uint64_t> {
                 if (off >= total) return std::nullopt;
                 std::uint64_t o = off;
                 off += 1 << 20;
                 return o;
             }};
    d.run(clk::time_point::max());
}

std::function<std::optional<std::uint64_t>()> random_4k(const config& c, std::uint64_t seed) {
    auto rng = std::make_shared<std::mt19937_64>(seed);
    std::uint64_t units = (c.size_mib << 20) / 4096;
    return [rng, units]() -> std::optional<std::uint64_t> { return ((*rng)() % units) * 4096; };
}

void flush(tp::thin_device& dev) {
    std::promise<int> p;
    auto f = p.get_future();
    tp::io_request r;
    r.op = tp::io_op::flush;
    r.done = [&p](int res) { p.set_value(res); };
    dev.submit(std::move(r));
    if (int e = f.get()) die(std::string("flush failed: ") + std::strerror(-e));
}

std::uint64_t volume_sectors(const config& c) { return (c.size_mib << 20) / tp::SECTOR_SIZE; }

void case_provisioned(const config& c, bool want_write, bool want_read) {
    bench_pool bp(c, false, 1.1);
    bp.pool->message("create_thin 0");
    auto dev = bp.pool->activate(0, volume_sectors(c));
    provision(*dev, c);
    flush(*dev);
    if (want_write) timed("randwrite-4k", *dev, c, tp::io_op::write, 4096, random_4k(c, 1));
    if (want_read) timed("randread-4k", *dev, c, tp::io_op::read, 4096, random_4k(c, 2));
    dev->close();
}

void case_seqwrite(const config& c, bool skip_zeroing) {
    bench_pool bp(c, skip_zeroing, 1.1);
    bp.pool->message("create_thin 0");
    auto dev = bp.pool->activate(0, volume_sectors(c));
    std::uint64_t total = c.size_mib << 20, off = 0;
    timed(skip_zeroing ? "seqwrite-1m-nozero" : "seqwrite-1m-zero", *dev, c, tp::io_op::write, 1 << 20,
          [&]() -> std::optional<std::uint64_t> {
              if (off >= total) return std::nullopt;
              std::uint64_t o = off;
              off += 1 << 20;
              return o;
          });
    dev->close();
}

void case_snapwrite(const config& c) {
    bench_pool bp(c, false, 2.2);
    bp.pool->message("create_thin 0");
    auto dev = bp.pool->activate(0, volume_sectors(c));
    provision(*dev, c);
    flush(*dev);
    bp.pool->message("create_snap 1 0");
    // Each write goes to a different block, at a random 4 KiB offset inside it.
    std::uint64_t block_bytes = std::uint64_t(c.block_size) * tp::SECTOR_SIZE;
    std::uint64_t nr_blocks = (c.size_mib << 20) / block_bytes;
    auto order = std::make_shared<std::vector<std::uint64_t>>(nr_blocks);
    for (std::uint64_t i = 0; i < nr_blocks; ++i) (*order)[i] = i;
    std::mt19937_64 rng(3);
    std::shuffle(order->begin(), order->end(), rng);
    auto pos = std::make_shared<std::size_t>(0);
    auto rng2 = std::make_shared<std::mt19937_64>(4);
    timed("snapwrite-4k", *dev, c, tp::io_op::write, 4096, [=]() -> std::optional<std::uint64_t> {
        if (*pos >= order->size()) return std::nullopt;
        std::uint64_t b = (*order)[(*pos)++];
        return b * block_bytes + ((*rng2)() % (block_bytes / 4096)) * 4096;
    });
    dev->close();
}

void case_nested(const config& c, unsigned depth) {
    bench_pool bp(c, false, 2.2);
    bp.pool->message("create_thin 0");
    {
        auto origin = bp.pool->activate(0, volume_sectors(c));
        provision(*origin, c);
        flush(*origin);
        origin->close();
    }
    for (unsigned i = 1; i <= depth; ++i)
        bp.pool->message("create_snap " + std::to_string(i) + " " + std::to_string(i - 1));
    auto dev = bp.pool->activate(depth, volume_sectors(c));
    // Break all sharing once (untimed), so the timed writes measure the steady state.
    provision(*dev, c);
    flush(*dev);
    timed(depth ? "nested-" + std::to_string(depth) : "nested-0", *dev, c, tp::io_op::write, 4096, random_4k(c, 5));
    dev->close();
}

void case_snap_latency(const config& c) {
    bench_pool bp(c, false, 3.0);
    bp.pool->message("create_thin 0");
    auto dev = bp.pool->activate(0, volume_sectors(c));
    provision(*dev, c);
    flush(*dev);
    std::atomic<bool> stop{false};
    std::vector<double> ms;
    std::thread snapper([&] {
        for (unsigned i = 1; i <= 20 && !stop; ++i) {
            auto t0 = clk::now();
            bp.pool->message("create_snap " + std::to_string(i) + " 0");
            ms.push_back(std::chrono::duration<double, std::milli>(clk::now() - t0).count());
            // Dropping it again keeps the copy-on-write traffic within the data device.
            bp.pool->message("delete " + std::to_string(i));
            std::this_thread::sleep_for(std::chrono::milliseconds(100));  // pacing, not synchronisation
        }
        stop = true;
    });
    driver d{*dev, c.qd, 4096, tp::io_op::write, [&, next = random_4k(c, 6)]() -> std::optional<std::uint64_t> {
                 if (stop) return std::nullopt;
                 return next();
             }};
    auto t0 = clk::now();
    std::uint64_t n = d.run(clk::time_point::max());
    double secs = std::chrono::duration<double>(clk::now() - t0).count();
    snapper.join();
    std::sort(ms.begin(), ms.end());
    double median = ms.empty() ? 0 : ms[ms.size() / 2];
    char extra[64];
    std::snprintf(extra, sizeof extra, " median_ms=%.2f max_ms=%.2f", median, ms.empty() ? 0 : ms.back());
    report("snap-latency", n, 4096, secs, extra);
    dev->close();
}

void usage() {
    std::cout << "Usage: pool_bench [--dir DIR] [--size-mib N] [--block-size SECTORS] [--qd N] [--runtime SECS] [CASE...]\n"
                 "Cases: randwrite-4k randread-4k seqwrite-1m-zero seqwrite-1m-nozero snapwrite-4k nested-100 nested-0 snap-latency\n"
                 "       (default: all)\n";
}

} // namespace

int main(int argc, char** argv) {
    config c;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) die("missing value for " + a);
            return argv[++i];
        };
        if (a == "--dir") c.dir = val();
        else if (a == "--size-mib") c.size_mib = std::stoull(val());
        else if (a == "--block-size") c.block_size = static_cast<std::uint32_t>(std::stoul(val()));
        else if (a == "--qd") c.qd = static_cast<unsigned>(std::stoul(val()));
        else if (a == "--runtime") c.runtime = std::stod(val());
        else if (a == "-h" || a == "--help") {
            usage();
            return 0;
        } else if (!a.empty() && a[0] == '-') {
            usage();
            die("unknown option " + a);
        } else c.cases.push_back(a);
    }
    if (c.cases.empty())
        c.cases = {"randwrite-4k", "randread-4k", "seqwrite-1m-zero", "seqwrite-1m-nozero",
                   "snapwrite-4k", "nested-100", "nested-0", "snap-latency"};
    auto want = [&](const char* n) { return std::find(c.cases.begin(), c.cases.end(), n) != c.cases.end(); };
    try {
        if (want("randwrite-4k") || want("randread-4k")) case_provisioned(c, want("randwrite-4k"), want("randread-4k"));
        if (want("seqwrite-1m-zero")) case_seqwrite(c, false);
        if (want("seqwrite-1m-nozero")) case_seqwrite(c, true);
        if (want("snapwrite-4k")) case_snapwrite(c);
        if (want("nested-100")) case_nested(c, 100);
        if (want("nested-0")) case_nested(c, 0);
        if (want("snap-latency")) case_snap_latency(c);
    } catch (const std::exception& e) {
        die(e.what());
    }
    std::filesystem::remove_all(c.dir);
    return 0;
}
