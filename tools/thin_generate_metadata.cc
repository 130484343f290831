// thin_generate_metadata: a developer command that formats a metadata file and fills it
// deterministically (per seed) through the thin metadata API, optionally writing the XML that
// thin_dump must print for it. See man/thin_generate_metadata.8.
#include "thin/generate/generator.h"
#include "thin/metadata/metadata.h"

#include <boost/program_options.hpp>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>

#ifndef THINPOOL_VERSION
#define THINPOOL_VERSION "unknown"
#endif

namespace po = boost::program_options;

namespace {

const char* const PROG = "thin_generate_metadata";

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::string help_text() {
    std::ostringstream os;
    os << "Usage: thin_generate_metadata [options] -o METADATA_FILE\n"
          "\n"
          "Formats METADATA_FILE as dm-thin pool metadata and fills it deterministically\n"
          "(the same seed and options always give the same metadata): thin devices,\n"
          "snapshots, writes that allocate data blocks, discards, deletes and commits, done\n"
          "through the thin metadata API. The generator keeps its own record of what the\n"
          "metadata must contain and can write it as the XML thin_dump prints.\n"
          "\n"
          "Options:\n"
          "  -o, --output FILE          Metadata file to write (created or truncated to\n"
          "                             the metadata size, sparse; a block device is\n"
          "                             used whole).\n"
          "      --xml FILE             Write the expected thin_dump XML to FILE.\n"
          "      --snap-xml FILE        With a held metadata snapshot, write the expected\n"
          "                             `thin_dump -m` XML to FILE.\n"
          "      --shape NAME           Built-in shape (default: sequential), see below.\n"
          "      --seed N               PRNG seed (default: 1).\n"
          "      --mappings N           Writes to the origin devices in total (each fresh\n"
          "                             sequential write makes one mapping).\n"
          "      --snapshots N          Number of snapshots.\n"
          "      --random               Random instead of sequential writes to the origins.\n"
          "      --hold-metadata-snap   Hold a metadata snapshot, then keep writing.\n"
          "      --data-block-size S    Data block size in sectors (multiple of 128,\n"
          "                             128..2097152).\n"
          "      --nr-data-blocks N     Data device size in data blocks.\n"
          "      --metadata-blocks N    Metadata size in 4 KiB blocks (at most 4161600).\n"
          "  -q, --quiet                No summary line.\n"
          "  -h, --help                 Print this help and exit.\n"
          "  -V, --version              Print the version and exit.\n"
          "\n"
          "Sizes left out are computed from the work to do. Shapes:\n";
    for (const auto& name : thin::generate::shape_names()) {
        std::string n = "  " + name;
        n.resize(20, ' ');
        os << n << thin::generate::describe_shape(name) << "\n";
    }
    os << "\n"
          "Exit status: 0 success, 1 error, 2 usage error.\n";
    return os.str();
}

std::uint64_t parse_uint(const std::string& opt, const std::string& text) {
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || p != text.data() + text.size())
        throw usage_error("--" + opt + ": '" + text + "' is not a non-negative integer");
    return v;
}

void write_xml_file(const std::string& path, const thin::generate::pool_record& rec) {
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (!f)
        throw std::runtime_error(path + ": cannot create: " + std::strerror(errno));
    try {
        thin::xml_writer w(f);
        rec.write_xml(w);
        w.flush();
    } catch (const std::exception&) {
        std::fclose(f);
        throw std::runtime_error(path + ": write failed");
    }
    if (std::fclose(f) != 0)
        throw std::runtime_error(path + ": write failed: " + std::strerror(errno));
}

int run(int argc, char** argv) {
    po::options_description opts;
    // Numbers are taken as strings: Boost accepts "-1" for unsigned types and wraps it.
    opts.add_options()
        ("help,h", "")
        ("version,V", "")
        ("output,o", po::value<std::string>(), "")
        ("xml", po::value<std::string>(), "")
        ("snap-xml", po::value<std::string>(), "")
        ("shape", po::value<std::string>(), "")
        ("seed", po::value<std::string>(), "")
        ("mappings", po::value<std::string>(), "")
        ("snapshots", po::value<std::string>(), "")
        ("random", "")
        ("hold-metadata-snap", "")
        ("data-block-size", po::value<std::string>(), "")
        ("nr-data-blocks", po::value<std::string>(), "")
        ("metadata-blocks", po::value<std::string>(), "")
        ("quiet,q", "");
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(argc, argv).options(opts).run(), vm);
        po::notify(vm);
    } catch (const po::error& e) {
        throw usage_error(e.what());
    }
    if (vm.count("help")) {
        std::cout << help_text();
        return 0;
    }
    if (vm.count("version")) {
        std::cout << THINPOOL_VERSION << "\n";
        return 0;
    }
    if (!vm.count("output"))
        throw usage_error("no output file given (-o METADATA_FILE)");
    const std::string output = vm["output"].as<std::string>();
    const bool quiet = vm.count("quiet") != 0;

    namespace gen = thin::generate;
    std::string shape_name = vm.count("shape") ? vm["shape"].as<std::string>() : "sequential";
    auto named = gen::named_shape(shape_name);
    if (!named) {
        std::string names;
        for (const auto& n : gen::shape_names())
            names += (names.empty() ? "" : ", ") + n;
        throw usage_error("unknown shape '" + shape_name + "' (known: " + names + ")");
    }
    gen::shape s = *named;
    auto num = [&](const char* name) { return parse_uint(name, vm[name].as<std::string>()); };
    bool work_changed = false;
    if (vm.count("seed"))
        s.seed = num("seed");
    if (vm.count("mappings")) {
        std::uint64_t n = num("mappings");
        if (!s.origins)
            s.origins = 1;
        s.writes_per_origin = (n + s.origins - 1) / s.origins;
        s.virtual_blocks = 0;
        work_changed = true;
    }
    if (vm.count("snapshots")) {
        std::uint64_t n = num("snapshots");
        if (n > thin::MAX_DEV_ID / 4)
            throw usage_error("--snapshots: at most " + std::to_string(thin::MAX_DEV_ID / 4));
        s.snapshots = static_cast<unsigned>(n);
        if (s.snapshots && !s.writes_per_snapshot)
            s.writes_per_snapshot = 100;
        work_changed = true;
    }
    if (vm.count("random")) {
        s.random = true;
        s.virtual_blocks = 0;
        s.max_burst = 0;
        work_changed = true;
    }
    if (vm.count("hold-metadata-snap")) {
        s.hold_metadata_snap = true;
        if (!s.writes_after_hold)
            s.writes_after_hold = std::max<std::uint64_t>(1, s.writes_per_origin / 4);
        work_changed = true;
    }
    if (vm.count("data-block-size")) {
        std::uint64_t v = num("data-block-size");
        if (v > thin::MAX_DATA_BLOCK_SIZE)
            throw usage_error("--data-block-size: " + std::to_string(v) + " is above 2097152 sectors");
        s.data_block_size = static_cast<std::uint32_t>(v);
    }
    try {
        thin::validate_data_block_size(s.data_block_size);
    } catch (const thin::metadata_error& e) {
        throw usage_error(std::string("--data-block-size: ") + e.what());
    }
    // Sizes a shape fixes grow with extra work; sizes given on the command line are kept.
    if (work_changed) {
        gen::shape automatic = s;
        automatic.nr_data_blocks = 0;
        automatic.metadata_blocks = 0;
        automatic = gen::resolve(automatic);
        s.nr_data_blocks = std::max(s.nr_data_blocks, automatic.nr_data_blocks);
        s.metadata_blocks = std::max(s.metadata_blocks, automatic.metadata_blocks);
    }
    if (vm.count("nr-data-blocks")) {
        s.nr_data_blocks = num("nr-data-blocks");
        if (!s.nr_data_blocks)
            throw usage_error("--nr-data-blocks must be at least 1");
    }
    if (vm.count("metadata-blocks")) {
        s.metadata_blocks = num("metadata-blocks");
        if (s.metadata_blocks < 16 || s.metadata_blocks > thin::MAX_METADATA_BLOCKS)
            throw usage_error("--metadata-blocks must be between 16 and " +
                              std::to_string(thin::MAX_METADATA_BLOCKS));
    }
    if (vm.count("snap-xml") && !s.hold_metadata_snap)
        throw usage_error("--snap-xml needs a held metadata snapshot (--hold-metadata-snap or a shape with one)");
    try {
        s = gen::resolve(s);
    } catch (const std::invalid_argument& e) {
        throw usage_error(e.what());
    }

    auto start = std::chrono::steady_clock::now();
    gen::generated_file result = gen::generate_file(output, s);
    const gen::generator& g = *result.gen;
    const auto& rec = g.record();

    if (vm.count("xml"))
        write_xml_file(vm["xml"].as<std::string>(), rec);
    if (vm.count("snap-xml"))
        write_xml_file(vm["snap-xml"].as<std::string>(), *g.held_snapshot());

    if (!quiet) {
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const auto& st = g.stats();
        char line[512];
        std::snprintf(line, sizeof line,
                      "%s: shape %s seed %llu: %zu devices, %llu mappings, %llu writes, %llu data blocks "
                      "in use of %llu, metadata %llu of %llu blocks, time %u, transaction %llu%s, %.2f s\n",
                      PROG, s.name.c_str(), (unsigned long long)s.seed, rec.devices.size(),
                      (unsigned long long)rec.total_mappings(), (unsigned long long)st.writes,
                      (unsigned long long)result.data_blocks_used, (unsigned long long)s.nr_data_blocks,
                      (unsigned long long)result.metadata_blocks_used, (unsigned long long)result.metadata_blocks, rec.time,
                      (unsigned long long)rec.transaction, g.held_snapshot() ? ", metadata snapshot held" : "",
                      secs);
        std::fputs(line, stderr);
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const usage_error& e) {
        std::cerr << PROG << ": " << e.what() << " (see --help)\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << PROG << ": " << e.what() << "\n";
        return 1;
    }
}
