#include "tests/support/pool_support.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace thinpool_test {

namespace tp = thin::pool;

// ---- patterns ------------------------------------------------------------------------------------

namespace {
std::uint64_t mix(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
void put64(std::uint8_t* p, std::uint64_t v) { std::memcpy(p, &v, 8); }
std::uint64_t get64(const std::uint8_t* p) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}
} // namespace

void fill_sector(std::uint8_t* p, std::uint64_t tag, std::uint64_t sector) {
    put64(p, tag);
    put64(p + 8, sector);
    std::uint64_t seed = mix(tag * 0x100000001b3ull ^ mix(sector));
    for (unsigned i = 2; i < SECTOR / 8; ++i) put64(p + 8 * i, mix(seed + i));
}

void fill_sectors(std::uint8_t* p, std::uint64_t tag, std::uint64_t first_sector, std::uint64_t nr_sectors) {
    for (std::uint64_t s = 0; s < nr_sectors; ++s) fill_sector(p + s * SECTOR, tag, first_sector + s);
}

std::vector<std::uint8_t> make_pattern(std::uint64_t tag, std::uint64_t first_sector, std::uint64_t nr_sectors) {
    std::vector<std::uint8_t> v(nr_sectors * SECTOR);
    fill_sectors(v.data(), tag, first_sector, nr_sectors);
    return v;
}

std::optional<std::uint64_t> sector_tag(const std::uint8_t* p, std::uint64_t sector) {
    std::uint64_t tag = get64(p);
    if (tag == 0) {
        for (std::size_t i = 0; i < SECTOR; ++i)
            if (p[i]) return std::nullopt;
        return 0;
    }
    if (get64(p + 8) != sector) return std::nullopt;
    std::uint8_t expect[SECTOR];
    fill_sector(expect, tag, sector);
    if (std::memcmp(expect, p, SECTOR) != 0) return std::nullopt;
    return tag;
}

std::optional<std::uint64_t> uniform_tag(const std::uint8_t* p, std::uint64_t first_sector, std::uint64_t nr_sectors) {
    std::optional<std::uint64_t> all;
    for (std::uint64_t s = 0; s < nr_sectors; ++s) {
        auto t = sector_tag(p + s * SECTOR, first_sector + s);
        if (!t) return std::nullopt;
        if (all && *all != *t) return std::nullopt;
        all = t;
    }
    return all;
}

std::string describe_sectors(const std::uint8_t* p, std::uint64_t first_sector, std::uint64_t nr_sectors) {
    std::ostringstream os;
    std::uint64_t run_start = 0;
    std::optional<std::uint64_t> run_tag;
    bool run_garbage = false;
    auto flush = [&](std::uint64_t end) {
        if (end == run_start) return;
        os << "sectors " << first_sector + run_start << "-" << first_sector + end - 1 << ": ";
        if (run_garbage) os << "garbage";
        else if (*run_tag == 0) os << "zeros";
        else os << "tag " << *run_tag;
        os << "; ";
    };
    for (std::uint64_t s = 0; s < nr_sectors; ++s) {
        auto t = sector_tag(p + s * SECTOR, first_sector + s);
        bool garbage = !t;
        if (s == 0 || garbage != run_garbage || (!garbage && t != run_tag)) {
            if (s) flush(s);
            run_start = s;
            run_tag = t;
            run_garbage = garbage;
        }
    }
    flush(nr_sectors);
    return os.str();
}

// ---- hangs ---------------------------------------------------------------------------------------

namespace {
std::atomic<bool> g_hang{false};
std::mutex g_abandon_mutex;
std::vector<std::shared_ptr<void>>* g_abandoned = new std::vector<std::shared_ptr<void>>;  // never freed
} // namespace

void note_hang() { g_hang = true; }
bool hang_detected() { return g_hang; }

void abandon(std::shared_ptr<void> p) {
    std::lock_guard<std::mutex> l(g_abandon_mutex);
    g_abandoned->push_back(std::move(p));
}

bool finishes_within(std::function<void()> fn, std::chrono::milliseconds deadline) {
    auto done = std::make_shared<std::promise<void>>();
    auto fut = done->get_future();
    std::thread t([fn = std::move(fn), done]() {
        try {
            fn();
            done->set_value();
        } catch (...) {
            done->set_exception(std::current_exception());
        }
    });
    if (fut.wait_for(deadline) != std::future_status::ready) {
        t.detach();
        note_hang();
        return false;
    }
    t.join();
    fut.get();  // rethrows
    return true;
}

void fail_hung_test(const std::string& what) {
    note_hang();
    ADD_FAILURE() << "watchdog: " << what << " (the process exits now; its threads are stuck)";
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(1);
}

void run_threads_or_fail(unsigned n, const std::function<void(unsigned)>& worker, std::chrono::milliseconds deadline,
                         const std::string& what) {
    bool finished = finishes_within(
        [&] {
            std::vector<std::thread> ts;
            for (unsigned i = 0; i < n; ++i) ts.emplace_back(worker, i);
            for (auto& th : ts) th.join();
        },
        deadline);
    if (!finished) fail_hung_test(what);
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds deadline) {
    auto end = std::chrono::steady_clock::now() + deadline;
    for (;;) {
        if (pred()) return true;
        if (std::chrono::steady_clock::now() >= end) return pred();
        std::this_thread::sleep_for(1ms);
    }
}

// ---- requests ------------------------------------------------------------------------------------

struct pending_io::state {
    std::vector<std::uint8_t> buf;
    std::promise<int> promise;
    std::shared_future<int> result;
    std::atomic<int> calls{0};
};

pending_io pending_io::submit(tp::thin_device& dev, tp::io_op op, std::uint64_t sector, std::uint64_t nr_sectors,
                              const std::uint8_t* data, bool fua, bool preflush) {
    pending_io io;
    io.state_ = std::make_shared<state>();
    auto st = io.state_;
    st->result = st->promise.get_future().share();
    if (op == tp::io_op::read || op == tp::io_op::write) {
        st->buf.resize(nr_sectors * SECTOR);
        if (op == tp::io_op::write && data) std::memcpy(st->buf.data(), data, st->buf.size());
    }
    tp::io_request r;
    r.op = op;
    r.sector = sector;
    r.nr_sectors = nr_sectors;
    r.buf = st->buf.empty() ? nullptr : st->buf.data();
    r.fua = fua;
    r.preflush = preflush;
    r.done = [st](int rc) {
        // A second completion is a bug of the pool; report it as an impossible result.
        if (st->calls.fetch_add(1) == 0) st->promise.set_value(rc);
        else std::fprintf(stderr, "pool_support: request completed twice (%d)\n", rc);
    };
    dev.submit(std::move(r));
    return io;
}

int pending_io::wait(std::chrono::milliseconds deadline) {
    if (state_->result.wait_for(deadline) != std::future_status::ready) {
        note_hang();
        return TIMED_OUT;
    }
    return state_->result.get();
}

bool pending_io::ready() const { return state_->result.wait_for(0s) == std::future_status::ready; }

const std::vector<std::uint8_t>& pending_io::data() const { return state_->buf; }

int write_sync(tp::thin_device& dev, std::uint64_t sector, const std::vector<std::uint8_t>& data, bool fua,
               bool preflush) {
    return pending_io::submit(dev, tp::io_op::write, sector, data.size() / SECTOR, data.data(), fua, preflush).wait();
}

int read_sync(tp::thin_device& dev, std::uint64_t sector, std::uint64_t nr_sectors, std::vector<std::uint8_t>& out) {
    auto io = pending_io::submit(dev, tp::io_op::read, sector, nr_sectors);
    int rc = io.wait();
    if (rc != TIMED_OUT) out = io.data();
    return rc;
}

int discard_sync(tp::thin_device& dev, std::uint64_t sector, std::uint64_t nr_sectors) {
    return pending_io::submit(dev, tp::io_op::discard, sector, nr_sectors).wait();
}

int flush_sync(tp::thin_device& dev) { return pending_io::submit(dev, tp::io_op::flush, 0, 0).wait(); }

int write_zeroes_sync(tp::thin_device& dev, std::uint64_t sector, std::uint64_t nr_sectors, bool no_hole) {
    // no_hole needs the raw request; build it here.
    struct st_t {
        std::promise<int> p;
    };
    auto st = std::make_shared<st_t>();
    auto fut = st->p.get_future();
    tp::io_request r;
    r.op = tp::io_op::write_zeroes;
    r.sector = sector;
    r.nr_sectors = nr_sectors;
    r.no_hole = no_hole;
    r.done = [st](int rc) { st->p.set_value(rc); };
    dev.submit(std::move(r));
    if (fut.wait_for(IO_DEADLINE) != std::future_status::ready) {
        note_hang();
        return TIMED_OUT;
    }
    return fut.get();
}

int write_block(tp::thin_device& dev, std::uint32_t bs, std::uint64_t vblock, std::uint64_t tag, bool fua) {
    return write_sync(dev, vblock * bs, make_pattern(tag, vblock * bs, bs), fua);
}

std::optional<std::uint64_t> read_block_tag(tp::thin_device& dev, std::uint32_t bs, std::uint64_t vblock, int* rc,
                                            std::string* detail) {
    std::vector<std::uint8_t> buf;
    int r = read_sync(dev, vblock * bs, bs, buf);
    if (rc) *rc = r;
    if (r != 0) return std::nullopt;
    auto t = uniform_tag(buf.data(), vblock * bs, bs);
    if (!t && detail) *detail = describe_sectors(buf.data(), vblock * bs, bs);
    return t;
}

// ---- pools ---------------------------------------------------------------------------------------

void pool_deleter::operator()(tp::pool* p) const {
    if (!p) return;
    if (hang_detected()) {
        std::fprintf(stderr, "pool_support: a request hung; abandoning the pool instead of closing it\n");
        return;  // leaked on purpose
    }
    delete p;
}

pool_ptr open_pool(const tp::pool_options& opts) { return pool_ptr(tp::pool::open(opts).release()); }

tp::pool_options quiet_options() {
    tp::pool_options o;
    o.commit_period = std::chrono::hours(1);
    o.log = [](const std::string&) {};
    return o;
}

file_pool::file_pool(std::uint64_t metadata_bytes, std::uint64_t data_blocks, std::uint32_t bs)
    : metadata(dir.file("metadata")), data(dir.file("data")), opts(quiet_options()) {
    make_sparse_file(metadata, metadata_bytes);
    make_sparse_file(data, data_blocks * bs * SECTOR);
    opts.metadata_path = metadata;
    opts.data_path = data;
    opts.data_block_size = bs;
}

memory_pool::memory_pool(pdata::block_address metadata_blocks, std::uint64_t data_blocks, std::uint32_t bs,
                         bool discard_supported)
    : md(std::make_shared<pdata::memory_engine>(metadata_blocks)),
      fault(std::make_shared<pdata::fault_engine>(md)),
      data(std::make_shared<tp::memory_data_device>(data_blocks * bs, discard_supported)),
      opts(quiet_options()) {
    opts.metadata_engine = fault;
    opts.data_engine = data;
    opts.data_block_size = bs;
}

// ---- metadata images and tools -----------------------------------------------------------------

void save_image(pdata::io_engine& e, const std::string& path) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("save_image: cannot create " + path);
    auto buf = pdata::make_aligned_block();
    pdata::block_address n = e.nr_blocks();
    for (pdata::block_address b = 0; b < n; ++b) {
        e.read(b, buf.get());
        if (::pwrite(fd, buf.get(), pdata::MD_BLOCK_SIZE, static_cast<off_t>(b * pdata::MD_BLOCK_SIZE)) !=
            static_cast<ssize_t>(pdata::MD_BLOCK_SIZE)) {
            ::close(fd);
            throw std::runtime_error("save_image: short write to " + path);
        }
    }
    ::close(fd);
}

std::shared_ptr<pdata::memory_engine> load_image(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) throw std::runtime_error("load_image: cannot stat " + path);
    pdata::block_address n = static_cast<pdata::block_address>(st.st_size) / pdata::MD_BLOCK_SIZE;
    auto e = std::make_shared<pdata::memory_engine>(n);
    auto bytes = read_bytes(path, 0, n * pdata::MD_BLOCK_SIZE);
    for (pdata::block_address b = 0; b < n; ++b)
        std::memcpy(e->raw(b), bytes.data() + b * pdata::MD_BLOCK_SIZE, pdata::MD_BLOCK_SIZE);
    return e;
}

command_result run_ours(const std::string& tool, std::vector<std::string> args) {
    args.insert(args.begin(), std::string(THINPOOL_BINARY_DIR) + "/" + tool);
    return run_command(args);
}

command_result run_theirs(const std::string& tool, std::vector<std::string> args) {
    args.insert(args.begin(), reference_tool(tool));
    return run_command(args);
}

std::string describe(const command_result& r) {
    return "exit " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out.substr(0, 3000) + "\nstderr:\n" +
           r.err.substr(0, 3000);
}

void expect_checks_pass(const std::string& metadata, const std::vector<std::string>& extra) {
    std::vector<std::string> args = extra;
    args.push_back(metadata);
    auto ours = run_ours("thin_check", args);
    EXPECT_EQ(0, ours.exit_code) << "our thin_check: " << describe(ours);
    if (reference_tools_available()) {
        auto theirs = run_theirs("thin_check", args);
        EXPECT_EQ(0, theirs.exit_code) << "Debian's thin_check: " << describe(theirs);
    } else if (reference_tools_required()) {
        ADD_FAILURE() << "reference tools required but missing";
    }
}

void expect_image_checks_pass(pdata::io_engine& md) {
    scratch_dir d;
    save_image(md, d.file("metadata"));
    expect_checks_pass(d.file("metadata"));
}

std::uint64_t allocated_bytes(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) throw std::runtime_error("allocated_bytes: cannot stat " + path);
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

std::vector<std::uint8_t> read_bytes(const std::string& path, std::uint64_t offset, std::uint64_t len) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("read_bytes: cannot open " + path);
    std::vector<std::uint8_t> v(len);
    std::uint64_t done = 0;
    while (done < len) {
        ssize_t n = ::pread(fd, v.data() + done, len - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            ::close(fd);
            throw std::runtime_error("read_bytes: read error on " + path);
        }
        if (n == 0) break;  // past the end: zeros
        done += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
    return v;
}

void write_bytes(const std::string& path, std::uint64_t offset, const std::vector<std::uint8_t>& bytes) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("write_bytes: cannot open " + path);
    if (::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)) != static_cast<ssize_t>(bytes.size())) {
        ::close(fd);
        throw std::runtime_error("write_bytes: short write to " + path);
    }
    ::close(fd);
}

int pool_errno(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const tp::pool_error& e) {
        return e.error_code();
    }
    return 0;
}

} // namespace thinpool_test
