// The data space map under heavy sharing (every data block mapped by several devices, so nearly
// every count is >= 3 and lives in the overflow structures): cost of range and single increments,
// of the commit that writes the whole overflow tree, and of commits after changes to a fraction
// of the tree (key-by-key updates below the rebuild threshold, a rebuilt tree above it). All
// metadata is in memory (memory_engine), so the numbers measure the code, not the disk.
//
//   build/release/sm_bench [--blocks N (2,000,000)] [--devices D (6)] [--md-blocks M (65536)]
//
// Columns: ns/op is the phase's time divided by its operations (increments, lookups, or changed
// counts for a commit; for a whole-tree commit, entries written); seconds is the phase's time
// (commits: the data map's commit only, the fastest of three for the partial ones); rss MB the
// process's peak RSS so far, of which the memory engine is M * 4 KiB. The partial commits show
// where key-by-key updates stop paying off against a rebuilt tree (REBUILD_FRACTION in
// persistent-data/space-maps/disk.cc).
#include "persistent-data/block_manager.h"
#include "persistent-data/io_engine.h"
#include "persistent-data/space-maps/disk.h"
#include "persistent-data/space-maps/metadata.h"
#include "persistent-data/transaction_manager.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <sys/resource.h>
#include <vector>

using namespace pdata;

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

long max_rss_mb() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024;
}

struct pool {
    std::shared_ptr<memory_engine> engine;
    std::unique_ptr<block_manager> bm;
    std::unique_ptr<space_map> msm;
    std::unique_ptr<transaction_manager> tm;
    std::unique_ptr<space_map> dsm;

    pool(block_address md_blocks, block_address data_blocks)
        : engine(std::make_shared<memory_engine>(md_blocks)), bm(std::make_unique<block_manager>(engine)) {
        // Fault the whole device in now, so first writes to a block do not weigh on a phase.
        for (block_address b = 0; b < md_blocks; ++b) std::memset(engine->raw(b), 0, MD_BLOCK_SIZE);
        msm = create_metadata_space_map(*bm, md_blocks);
        msm->inc(0);
        tm = std::make_unique<transaction_manager>(*bm, *msm);
        dsm = create_disk_space_map(*tm, data_blocks);
        commit();
    }

    // format.md §8.1 with the roots in block 0; returns the seconds spent in the data map's commit.
    double commit() {
        auto t0 = clock_type::now();
        dsm->commit();
        double dt = seconds_since(t0);
        msm->commit();
        tm->pre_commit();
        write_ref sb = bm->write_lock_zero(0, noop_validator());
        dsm->root().pack(sb.data() + 64);
        msm->root().pack(sb.data() + 192);
        tm->commit(std::move(sb));
        return dt;
    }
};

struct config {
    block_address blocks = 2'000'000;
    unsigned devices = 6;
    block_address md_blocks = 65536;
};

void usage() {
    std::fprintf(stderr, "usage: sm_bench [--blocks N] [--devices D] [--md-blocks M]\n");
}

} // namespace

int main(int argc, char** argv) try {
    config cfg;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> unsigned long long {
            if (i + 1 >= argc) {
                usage();
                std::exit(2);
            }
            return std::strtoull(argv[++i], nullptr, 10);
        };
        if (a == "--blocks") cfg.blocks = next();
        else if (a == "--devices") cfg.devices = unsigned(next());
        else if (a == "--md-blocks") cfg.md_blocks = next();
        else {
            usage();
            return 2;
        }
    }
    const block_address n = cfg.blocks;
    std::printf("data blocks %llu, devices %u, memory metadata of %llu blocks\n", (unsigned long long)n,
                cfg.devices, (unsigned long long)cfg.md_blocks);
    std::printf("%-44s %12s %10s %8s\n", "phase", "ns/op", "seconds", "rss MB");

    auto row = [](const char* name, double seconds, double ops) {
        std::printf("%-44s %12.1f %10.3f %8ld\n", name, ops ? seconds * 1e9 / ops : 0.0, seconds, max_rss_mb());
    };

    std::vector<block_address> perm(n);
    std::iota(perm.begin(), perm.end(), block_address(0));
    std::mt19937_64 rng(42);
    std::shuffle(perm.begin(), perm.end(), rng);

    {
        pool p(cfg.md_blocks, n);
        auto t0 = clock_type::now();
        for (unsigned d = 0; d < cfg.devices; ++d) p.dsm->inc_range(0, n);
        row("inc_range, whole map x devices", seconds_since(t0), double(n) * cfg.devices);
        double c = p.commit();
        row("commit (overflow tree written whole)", c, double(n));
    }
    {
        pool p(cfg.md_blocks, n);
        auto t0 = clock_type::now();
        for (unsigned d = 0; d < cfg.devices; ++d)
            for (block_address b : perm) p.dsm->inc(b);
        row("inc, random order x devices", seconds_since(t0), double(n) * cfg.devices);
        t0 = clock_type::now();
        std::uint64_t sum = 0;
        for (block_address b : perm) sum += p.dsm->get_count(b);
        row("get_count, random order", seconds_since(t0), double(n));
        if (sum != std::uint64_t(n) * cfg.devices) throw std::logic_error("wrong counts");
        double c = p.commit();
        row("commit (overflow tree written whole)", c, double(n));

        // Commits after changing k counts of the n in the tree: per-key below the rebuild
        // threshold (1/32 of the committed tree), rebuilt above.
        for (double f : {0.0001, 0.001, 1.0 / 200, 1.0 / 100, 1.0 / 66, 1.0 / 62, 1.0 / 32, 1.0 / 17, 1.0 / 15, 0.5}) {
            block_address k = std::max<block_address>(1, block_address(double(n) * f));
            double best = 1e9;
            for (int rep = 0; rep < 3; ++rep) {  // the fastest of three: the machine may be shared
                std::shuffle(perm.begin(), perm.end(), rng);
                std::sort(perm.begin(), perm.begin() + k);
                for (block_address i = 0; i < k; ++i) p.dsm->inc(perm[i]);
                best = std::min(best, p.commit());
            }
            char name[64];
            std::snprintf(name, sizeof(name), "commit after %llu changes (1/%.0f)", (unsigned long long)k, 1 / f);
            row(name, best, double(k));
        }
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "sm_bench: %s\n", e.what());
    return 1;
}
