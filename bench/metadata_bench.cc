// Mapping throughput and density of the thin metadata API: N mappings inserted into one thin
// device, in vblock order and in a random order, on a file-backed metadata device through the sync
// engine. Prints one row per order; see bench/README.md for the columns.
#include "thin/metadata/metadata.h"

#include "persistent-data/io_engine.h"
#include "persistent-data/types.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fcntl.h>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;

namespace {

// 16 bytes per leaf entry (key + block_time) and 2 bits per data block in the data space map: no
// packing of the format can do better.
constexpr double FLOOR_BYTES_PER_MAPPING = 16.25;
constexpr double TARGET_SEQUENTIAL_BYTES_PER_MAPPING = 17.0;
constexpr std::uint32_t DATA_BLOCK_SECTORS = 128;
constexpr std::uint64_t SEED = 20240229;

struct config {
    std::uint64_t mappings = 10'000'000;
    std::uint64_t lookups = 0;  // 0: min(mappings, 1,000,000)
    std::size_t cache_blocks = thin::open_options{}.cache_blocks;
    std::string dir;            // empty: a fresh directory under $TMPDIR (or /tmp)
    bool keep = false;
};

struct result {
    double insert_seconds = 0;
    double commit_seconds = 0;
    double lookup_seconds = 0;
    std::uint64_t lookups = 0;
    std::uint64_t metadata_blocks = 0;
};

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// Enough for random order (leaves about 2/3 full) with room to spare; the file is sparse.
std::uint64_t metadata_file_bytes(std::uint64_t mappings) {
    std::uint64_t bytes = std::max<std::uint64_t>(64ull << 20, mappings * 100);
    bytes = std::min<std::uint64_t>(bytes, thin::MAX_METADATA_BLOCKS * pdata::MD_BLOCK_SIZE);
    return bytes / pdata::MD_BLOCK_SIZE * pdata::MD_BLOCK_SIZE;
}

void create_sparse_file(const fs::path& path, std::uint64_t bytes) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        throw std::runtime_error(path.string() + ": cannot create: " + std::strerror(errno));
    int rc = ::ftruncate(fd, static_cast<off_t>(bytes));
    int err = errno;
    ::close(fd);
    if (rc != 0)
        throw std::runtime_error(path.string() + ": cannot size: " + std::strerror(err));
}

result run(const config& cfg, const fs::path& file, const std::vector<std::uint64_t>& order) {
    const std::uint64_t n = order.size();
    create_sparse_file(file, metadata_file_bytes(n));
    std::shared_ptr<pdata::io_engine> engine =
        pdata::open_sync_engine(file.string(), {pdata::open_mode::read_write, true});
    auto md = thin::metadata::format(engine, DATA_BLOCK_SECTORS, std::max<std::uint64_t>(n, 1), cfg.cache_blocks);
    const thin::dev_id dev = 0;
    md->create_thin(dev);
    md->commit();

    result r;
    auto t0 = clock_type::now();
    for (std::uint64_t vblock : order) {
        auto b = md->alloc_data_block();
        if (!b)
            throw std::runtime_error("data space full after " + std::to_string(md->mapped_blocks(dev)) + " mappings");
        md->insert(dev, vblock, *b);
    }
    r.insert_seconds = seconds_since(t0);

    t0 = clock_type::now();
    md->commit();
    r.commit_seconds = seconds_since(t0);
    r.metadata_blocks = md->nr_metadata_blocks() - md->nr_free_metadata_blocks();
    if (md->mapped_blocks(dev) != n)
        throw std::runtime_error("device reports " + std::to_string(md->mapped_blocks(dev)) + " mapped blocks, inserted " +
                                 std::to_string(n));

    // Random lookups of mapped blocks (every vblock in [0, n) is mapped).
    r.lookups = n == 0 ? 0 : (cfg.lookups ? cfg.lookups : std::min<std::uint64_t>(n, 1'000'000));
    std::mt19937_64 rng(SEED + 1);
    std::uniform_int_distribution<std::uint64_t> pick(0, n ? n - 1 : 0);
    std::uint64_t missing = 0;
    t0 = clock_type::now();
    for (std::uint64_t i = 0; i < r.lookups; ++i)
        if (!md->lookup(dev, pick(rng)))
            ++missing;
    r.lookup_seconds = seconds_since(t0);
    if (missing)
        throw std::runtime_error(std::to_string(missing) + " lookups of mapped blocks found nothing");

    md.reset();
    engine.reset();
    if (!cfg.keep)
        fs::remove(file);
    return r;
}

double per_second(std::uint64_t count, double seconds) {
    return seconds > 0 ? static_cast<double>(count) / seconds : 0.0;
}

void print_header() {
    std::printf("%-10s %12s %12s %10s %11s %10s %7s %8s\n", "order", "inserts/s", "lookups/s", "commit s",
                "md blocks", "bytes/map", "floor", "target");
}

void print_row(const char* name, std::uint64_t n, const result& r, bool has_target) {
    const double bytes = n ? static_cast<double>(r.metadata_blocks) * pdata::MD_BLOCK_SIZE / static_cast<double>(n) : 0;
    char target[32];
    if (has_target)
        std::snprintf(target, sizeof target, "<=%.0f %s", TARGET_SEQUENTIAL_BYTES_PER_MAPPING,
                      bytes <= TARGET_SEQUENTIAL_BYTES_PER_MAPPING ? "ok" : "MISS");
    else
        std::snprintf(target, sizeof target, "-");
    std::printf("%-10s %12.0f %12.0f %10.3f %11" PRIu64 " %10.2f %7.2f %8s\n", name,
                per_second(n, r.insert_seconds), per_second(r.lookups, r.lookup_seconds), r.commit_seconds,
                r.metadata_blocks, bytes, FLOOR_BYTES_PER_MAPPING, target);
    std::fflush(stdout);
}

const char* const USAGE =
    "Usage: metadata_bench [--mappings N] [--lookups N] [--cache-blocks N] [--dir DIR] [--keep]\n"
    "  --mappings N      mappings to insert per order (default 10000000)\n"
    "  --lookups N       random lookups after the commit (default min(N, 1000000))\n"
    "  --cache-blocks N  block cache size in 4 KiB blocks (default: the metadata API's, 16384)\n"
    "  --dir DIR         where the sparse metadata files go (default: a new directory in $TMPDIR or /tmp)\n"
    "  --keep            keep the metadata files\n";

std::uint64_t parse_count(const char* opt, const char* s) {
    char* end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(s, &end, 10);
    if (!*s || *end || errno || s[0] == '-')
        throw std::invalid_argument(std::string(opt) + ": not a count: '" + s + "'");
    return v;
}

config parse(int argc, char** argv) {
    config cfg;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc)
                throw std::invalid_argument(a + " needs a value");
            return argv[++i];
        };
        if (a == "--help" || a == "-h") {
            std::fputs(USAGE, stdout);
            std::exit(0);
        } else if (a == "--mappings") {
            cfg.mappings = parse_count("--mappings", value());
        } else if (a == "--lookups") {
            cfg.lookups = parse_count("--lookups", value());
        } else if (a == "--cache-blocks") {
            cfg.cache_blocks = parse_count("--cache-blocks", value());
        } else if (a == "--dir") {
            cfg.dir = value();
        } else if (a == "--keep") {
            cfg.keep = true;
        } else {
            throw std::invalid_argument("unknown option '" + a + "'");
        }
    }
    if (cfg.mappings > thin::MAX_DATA_BLOCK)
        throw std::invalid_argument("--mappings: at most " + std::to_string(thin::MAX_DATA_BLOCK));
    return cfg;
}

fs::path make_work_dir(const config& cfg, bool& created) {
    created = false;
    if (!cfg.dir.empty()) {
        fs::create_directories(cfg.dir);
        return cfg.dir;
    }
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/metadata_bench.XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data()))
        throw std::runtime_error(templ + ": mkdtemp: " + std::strerror(errno));
    created = true;
    return fs::path(buf.data());
}

} // namespace

int main(int argc, char** argv) {
    config cfg;
    try {
        cfg = parse(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "metadata_bench: %s\n%s", e.what(), USAGE);
        return 2;
    }

    bool created = false;
    fs::path dir;
    try {
        dir = make_work_dir(cfg, created);
        std::printf("metadata_bench: %" PRIu64 " mappings into one thin device; data block %u sectors; sync engine; "
                    "cache %zu blocks; files in %s\n",
                    cfg.mappings, DATA_BLOCK_SECTORS, cfg.cache_blocks, dir.c_str());
        print_header();

        std::vector<std::uint64_t> order(cfg.mappings);
        std::iota(order.begin(), order.end(), 0);
        print_row("sequential", cfg.mappings, run(cfg, dir / "sequential.metadata", order), true);

        std::shuffle(order.begin(), order.end(), std::mt19937_64(SEED));
        print_row("random", cfg.mappings, run(cfg, dir / "random.metadata", order), false);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "metadata_bench: %s\n", e.what());
        if (created && !cfg.keep)
            fs::remove_all(dir);
        return 1;
    }
    if (created && !cfg.keep)
        fs::remove_all(dir);
    return 0;
}
