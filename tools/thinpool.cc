// thinpool: the pool command. Today it has one subcommand, `demo`, which exercises the thin
// metadata API on a file-backed pool the way the pool runtime will: provision a thin device,
// snapshot it, break sharing on writes, commit, and read everything back read-only.
#include "thin/metadata/metadata.h"

#include "persistent-data/io_engine.h"
#include "persistent-data/types.h"

#include <boost/program_options.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fcntl.h>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

#ifndef THINPOOL_VERSION
#define THINPOOL_VERSION "unknown"
#endif

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

// ---- usage ----

const char* const USAGE =
    "Usage: thinpool [--help] [--version]\n"
    "       thinpool [demo [--dir DIR]]\n";

const char* const HELP_TEXT =
    "thinpool: dm-thin rebuilt in C++ as userspace.\n"
    "\n"
    "Usage: thinpool [--help] [--version]\n"
    "       thinpool [demo [--dir DIR]]\n"
    "\n"
    "Commands:\n"
    "  demo          Exercise the thin metadata API on a file-backed pool in DIR (default\n"
    "                ./pool): format the metadata (or open it if it exists), create a thin\n"
    "                device and map blocks, snapshot it, write to the origin so shared blocks\n"
    "                get new data blocks, commit, print the pool's summary, then reopen the\n"
    "                metadata read-only and verify it. Running it again continues the same\n"
    "                pool with another snapshot. This is also what `thinpool` with no\n"
    "                arguments runs.\n"
    "\n"
    "Options:\n"
    "  -h, --help     Print this help and exit.\n"
    "  -V, --version  Print the version and exit.\n"
    "\n"
    "Demo options:\n"
    "  --dir DIR      Pool directory (default ./pool). Holds `metadata` (16 MiB, sparse) and\n"
    "                 `data` (1 GiB, sparse). The demo writes metadata only; the data file is\n"
    "                 never written.\n"
    "\n"
    "Not yet written: the pool daemon (`thinpool run`) that serves thin volumes from the pool.\n"
    "\n"
    "Exit status: 0 success, 1 error (including a failed verification), 2 usage error.\n";

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---- the demo pool ----

constexpr std::uint32_t DATA_BLOCK_SECTORS = 128;  // 64 KiB, the smallest the kernel accepts
constexpr std::uint64_t DATA_BLOCK_BYTES = DATA_BLOCK_SECTORS * 512ull;
constexpr std::uint64_t NR_DATA_BLOCKS = 16384;    // 1 GiB of data
constexpr std::uint64_t METADATA_BYTES = 16ull << 20;

constexpr thin::dev_id ORIGIN = 0;
constexpr std::uint64_t ORIGIN_BLOCKS = 1000;     // mapped when the origin is created
constexpr std::uint64_t OVERWRITE_BLOCKS = 250;   // written per run to (shared) mapped blocks
constexpr std::uint64_t APPEND_BLOCKS = 250;      // written per run past the highest mapped block

struct device_summary {
    thin::dev_id id = 0;
    std::uint64_t mapped_blocks = 0;
    std::uint32_t creation_time = 0;
    std::uint32_t snapshotted_time = 0;
    std::optional<std::uint64_t> highest_mapped;
    bool operator==(const device_summary&) const = default;
};

struct pool_summary {
    std::uint64_t transaction_id = 0;
    std::uint32_t time = 0;
    std::uint64_t data_used = 0, data_total = 0;
    std::uint64_t metadata_used = 0, metadata_total = 0;
    std::vector<device_summary> devices;
    bool operator==(const pool_summary&) const = default;
};

pool_summary summarize(const thin::metadata& md) {
    pool_summary s;
    s.transaction_id = md.transaction_id();
    s.time = md.time();
    s.data_total = md.nr_data_blocks();
    s.data_used = s.data_total - md.nr_free_data_blocks();
    s.metadata_total = md.nr_metadata_blocks();
    s.metadata_used = s.metadata_total - md.nr_free_metadata_blocks();
    for (thin::dev_id id : md.devices()) {
        auto d = md.details(id);
        s.devices.push_back({id, d.mapped_blocks, d.creation_time, d.snapshotted_time, md.highest_mapped(id)});
    }
    return s;
}

std::string highest_string(const std::optional<std::uint64_t>& h) {
    return h ? std::to_string(*h) : std::string("none");
}

void print_summary(std::ostream& out, const pool_summary& s) {
    out << "pool summary:\n"
        << "  transaction id:  " << s.transaction_id << "\n"
        << "  time:            " << s.time << "\n"
        << "  data blocks:     " << s.data_used << " used / " << s.data_total << " total ("
        << DATA_BLOCK_BYTES / 1024 << " KiB each)\n"
        << "  metadata blocks: " << s.metadata_used << " used / " << s.metadata_total << " total (4 KiB each)\n"
        << "  devices:         " << s.devices.size() << "\n";
    for (const auto& d : s.devices)
        out << "  device " << d.id << ": mapped_blocks=" << d.mapped_blocks
            << " creation_time=" << d.creation_time << " snapshotted_time=" << d.snapshotted_time
            << " highest_mapped=" << highest_string(d.highest_mapped) << "\n";
}

// Lists how two summaries differ, one line per field.
std::vector<std::string> differences(const pool_summary& wrote, const pool_summary& read) {
    std::vector<std::string> out;
    auto cmp = [&](const std::string& what, auto a, auto b) {
        if (a != b) {
            std::ostringstream m;
            m << what << ": wrote " << a << ", read back " << b;
            out.push_back(m.str());
        }
    };
    cmp("transaction id", wrote.transaction_id, read.transaction_id);
    cmp("time", wrote.time, read.time);
    cmp("data blocks used", wrote.data_used, read.data_used);
    cmp("data blocks total", wrote.data_total, read.data_total);
    cmp("metadata blocks used", wrote.metadata_used, read.metadata_used);
    cmp("metadata blocks total", wrote.metadata_total, read.metadata_total);
    cmp("number of devices", wrote.devices.size(), read.devices.size());
    for (std::size_t i = 0; i < std::min(wrote.devices.size(), read.devices.size()); ++i) {
        const auto& a = wrote.devices[i];
        const auto& b = read.devices[i];
        std::string dev = "device #" + std::to_string(i);
        cmp(dev + " id", a.id, b.id);
        dev = "device " + std::to_string(a.id);
        cmp(dev + " mapped_blocks", a.mapped_blocks, b.mapped_blocks);
        cmp(dev + " creation_time", a.creation_time, b.creation_time);
        cmp(dev + " snapshotted_time", a.snapshotted_time, b.snapshotted_time);
        cmp(dev + " highest_mapped", highest_string(a.highest_mapped), highest_string(b.highest_mapped));
    }
    return out;
}

void create_sparse_file(const fs::path& path, std::uint64_t bytes) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        throw std::runtime_error(path.string() + ": cannot create: " + std::strerror(errno));
    if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
        int err = errno;
        ::close(fd);
        throw std::runtime_error(path.string() + ": cannot size to " + std::to_string(bytes) +
                                 " bytes: " + std::strerror(err));
    }
    ::close(fd);
}

enum class write_kind { in_place, new_mapping, broke_sharing };

// What the pool does for a write covering a whole block: a mapped block the device owns alone is
// written where it is; an unmapped block, or one shared with a snapshot, gets a new data block.
write_kind write_block(thin::metadata& md, thin::dev_id dev, std::uint64_t vblock,
                       std::map<std::uint64_t, std::uint64_t>& wrote) {
    auto r = md.lookup(dev, vblock);
    if (r && !r->shared) {
        wrote[vblock] = r->data_block;
        return write_kind::in_place;
    }
    auto b = md.alloc_data_block();
    if (!b)
        throw std::runtime_error("the demo pool's data space is full (" + std::to_string(md.nr_data_blocks()) +
                                 " blocks); remove the pool directory to start again");
    md.insert(dev, vblock, *b);
    wrote[vblock] = *b;
    return r ? write_kind::broke_sharing : write_kind::new_mapping;
}

struct write_counts {
    std::uint64_t in_place = 0, new_mapping = 0, broke_sharing = 0;
    void add(write_kind k) {
        switch (k) {
        case write_kind::in_place: ++in_place; break;
        case write_kind::new_mapping: ++new_mapping; break;
        case write_kind::broke_sharing: ++broke_sharing; break;
        }
    }
};

std::string describe(const write_counts& c) {
    std::ostringstream o;
    o << c.new_mapping << " newly mapped, " << c.broke_sharing << " shared (given new data blocks), "
      << c.in_place << " written in place";
    return o.str();
}

// Commits the way LVM drives the pool: bump the transaction id, then commit.
void commit(thin::metadata& md) {
    md.set_transaction_id(md.transaction_id(), md.transaction_id() + 1);
    md.commit();
}

int run_demo(const fs::path& dir) {
    fs::create_directories(dir);
    const fs::path md_path = dir / "metadata";
    const fs::path data_path = dir / "data";

    const bool fresh = !fs::exists(md_path);
    if (fresh)
        create_sparse_file(md_path, METADATA_BYTES);
    if (!fs::exists(data_path))
        create_sparse_file(data_path, NR_DATA_BLOCKS * DATA_BLOCK_BYTES);

    std::cout << "pool directory: " << dir.string() << "\n"
              << "  metadata: " << md_path.string() << "\n"
              << "  data:     " << data_path.string() << " (sparse; the demo writes metadata only)\n";

    std::shared_ptr<pdata::io_engine> engine =
        pdata::open_sync_engine(md_path.string(), {pdata::open_mode::read_write, true});
    std::unique_ptr<thin::metadata> md;
    if (fresh) {
        md = thin::metadata::format(engine, DATA_BLOCK_SECTORS, NR_DATA_BLOCKS);
        std::cout << "formatted metadata: data block size " << DATA_BLOCK_SECTORS << " sectors, "
                  << NR_DATA_BLOCKS << " data blocks\n";
    } else {
        thin::open_options opts;
        opts.data_block_size = DATA_BLOCK_SECTORS;
        // A previous run may have died between creating the file and formatting it.
        opts.format_if_unformatted = true;
        opts.nr_data_blocks = NR_DATA_BLOCKS;
        md = thin::metadata::open(engine, opts);
        std::cout << "opened existing metadata at transaction " << md->transaction_id() << "\n";
    }

    // What this run wrote to the origin, to check against the read-only reopen.
    std::map<std::uint64_t, std::uint64_t> wrote;

    if (!md->device_exists(ORIGIN)) {
        md->create_thin(ORIGIN);
        write_counts c;
        for (std::uint64_t v = 0; v < ORIGIN_BLOCKS; ++v)
            c.add(write_block(*md, ORIGIN, v, wrote));
        commit(*md);
        std::cout << "created thin device " << ORIGIN << " and wrote " << ORIGIN_BLOCKS << " blocks: "
                  << describe(c) << "; committed transaction " << md->transaction_id() << "\n";
    }

    auto devs = md->devices();
    const thin::dev_id snap = *std::max_element(devs.begin(), devs.end()) + 1;
    if (snap > thin::MAX_DEV_ID)
        throw std::runtime_error("no device id left for another snapshot; remove the pool directory to start again");
    md->create_snap(snap, ORIGIN);
    std::cout << "created snapshot " << snap << " of device " << ORIGIN << " (time is now " << md->time() << ")\n";

    // Overwrite a window of the origin that moves on each run, then extend it.
    const std::uint64_t origin_mapped = md->highest_mapped(ORIGIN).value_or(0) + 1;
    const std::uint64_t window = ((snap - 1) * OVERWRITE_BLOCKS) % std::max<std::uint64_t>(origin_mapped, 1);
    write_counts over;
    for (std::uint64_t i = 0; i < OVERWRITE_BLOCKS; ++i)
        over.add(write_block(*md, ORIGIN, (window + i) % origin_mapped, wrote));
    write_counts append;
    for (std::uint64_t i = 0; i < APPEND_BLOCKS; ++i)
        append.add(write_block(*md, ORIGIN, origin_mapped + i, wrote));
    commit(*md);
    std::cout << "wrote " << OVERWRITE_BLOCKS << " blocks of device " << ORIGIN << " from block " << window
              << ": " << describe(over) << "\n"
              << "wrote " << APPEND_BLOCKS << " blocks of device " << ORIGIN << " from block " << origin_mapped
              << ": " << describe(append) << "\n"
              << "committed transaction " << md->transaction_id() << "\n";

    const pool_summary written = summarize(*md);
    print_summary(std::cout, written);
    md.reset();
    engine.reset();

    // Read it all back through a fresh, read-only open.
    std::shared_ptr<pdata::io_engine> ro_engine =
        pdata::open_sync_engine(md_path.string(), {pdata::open_mode::read_only, true});
    thin::open_options ro_opts;
    ro_opts.read_only = true;
    ro_opts.data_block_size = DATA_BLOCK_SECTORS;
    auto ro = thin::metadata::open(ro_engine, ro_opts);

    std::vector<std::string> problems = differences(written, summarize(*ro));
    for (const auto& [vblock, data_block] : wrote) {
        auto r = ro->lookup(ORIGIN, vblock);
        if (!r)
            problems.push_back("device 0 block " + std::to_string(vblock) + ": not mapped, wrote data block " +
                               std::to_string(data_block));
        else if (r->data_block != data_block)
            problems.push_back("device 0 block " + std::to_string(vblock) + ": maps data block " +
                               std::to_string(r->data_block) + ", wrote " + std::to_string(data_block));
    }
    std::uint64_t total_mappings = 0;
    for (thin::dev_id id : ro->devices()) {
        std::uint64_t n = 0;
        std::optional<std::uint64_t> last;
        ro->for_each_mapping(id, [&](std::uint64_t vblock, thin::block_time) {
            ++n;
            last = vblock;
            return true;
        });
        total_mappings += n;
        if (n != ro->mapped_blocks(id))
            problems.push_back("device " + std::to_string(id) + ": " + std::to_string(n) +
                               " mappings in its tree, details say " + std::to_string(ro->mapped_blocks(id)));
        if (last != ro->highest_mapped(id))
            problems.push_back("device " + std::to_string(id) + ": last mapping " + highest_string(last) +
                               ", highest_mapped says " + highest_string(ro->highest_mapped(id)));
    }

    if (!problems.empty()) {
        std::cerr << "thinpool: verification failed: the metadata read back differs from what was written:\n";
        for (const auto& p : problems)
            std::cerr << "  " << p << "\n";
        return 1;
    }
    std::cout << "verified: read-only reopen matches the summary, " << wrote.size()
              << " blocks written this run and " << total_mappings << " mappings walked\n";
    return 0;
}

// ---- command line ----

// top_level: `thinpool [OPTIONS]` with no command, which also takes --version.
int demo_command(const std::vector<std::string>& args, bool top_level) {
    po::options_description opts("Options");
    opts.add_options()
        ("help,h", "print help")
        ("dir", po::value<std::string>()->default_value("./pool"), "pool directory");
    if (top_level)
        opts.add_options()("version,V", "print version");
    po::variables_map vm;
    po::store(po::command_line_parser(args).options(opts).run(), vm);
    po::notify(vm);
    if (vm.count("help")) {
        std::cout << HELP_TEXT;
        return 0;
    }
    if (vm.count("version")) {
        std::cout << "thinpool " << THINPOOL_VERSION << "\n";
        return 0;
    }
    const std::string dir = vm["dir"].as<std::string>();
    if (dir.empty())
        throw usage_error("--dir needs a directory");
    return run_demo(fs::path(dir));
}

int main_command(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0].empty() || args[0][0] == '-')
        return demo_command(args, true);

    // `thinpool COMMAND ...`: the command's own parser takes the rest.
    const std::string cmd = args[0];
    args.erase(args.begin());
    if (cmd == "demo")
        return demo_command(args, false);
    if (cmd == "run")
        throw usage_error("'run' is not available yet: the pool daemon is still to be written");
    throw usage_error("unknown command '" + cmd + "'");
}

} // namespace

int main(int argc, char** argv) {
    try {
        return main_command(argc, argv);
    } catch (const usage_error& e) {
        std::cerr << "thinpool: " << e.what() << "\n" << USAGE;
        return 2;
    } catch (const po::error& e) {
        std::cerr << "thinpool: " << e.what() << "\n" << USAGE;
        return 2;
    } catch (const thin::metadata_error& e) {
        std::cerr << "thinpool: " << e.what() << " (" << std::strerror(e.error_code()) << ")\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "thinpool: " << e.what() << "\n";
        return 1;
    }
}
