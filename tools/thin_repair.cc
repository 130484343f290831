// thin_repair: damaged binary metadata → freshly built metadata on an existing device or file
// (tools.md §6, man/thin_repair.8). Option parsing and messages only; the work is thin/repair.
#include "thin/cli/common.h"
#include "thin/cli/progress.h"
#include "thin/repair/repair.h"

#include <boost/program_options.hpp>

#include <charconv>
#include <cstring>
#include <iostream>
#include <sys/stat.h>

namespace po = boost::program_options;
using namespace thin;

namespace {

const char* const TOOL = "thin_repair";

const char* const USAGE =
    "Usage: thin_repair [options] -i {device|file} -o {device|file}\n"
    "Options:\n"
    "  {-h|--help}\n"
    "  {-i|--input} <input metadata (binary format)>\n"
    "  {-o|--output} <output metadata (binary format)>\n"
    "  {--transaction-id} <natural>\n"
    "  {--data-block-size} <natural>\n"
    "  {--nr-data-blocks} <natural>\n"
    "  {-q|--quiet}\n"
    "  {-V|--version}\n";

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::uint64_t parse_natural(const std::string& opt, const std::string& text, std::uint64_t max = UINT64_MAX) {
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || p != text.data() + text.size() || v > max)
        throw usage_error(opt + ": '" + text + "' is not a valid number" +
                          (max != UINT64_MAX ? " (at most " + std::to_string(max) + ")" : ""));
    return v;
}

bool same_file(const std::string& a, const std::string& b) {
    struct stat sa {}, sb {};
    if (::stat(a.c_str(), &sa) < 0 || ::stat(b.c_str(), &sb) < 0) return false;
    if (S_ISBLK(sa.st_mode) && S_ISBLK(sb.st_mode)) return sa.st_rdev == sb.st_rdev;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int run_repair(int argc, char** argv, bool& quiet) {
    po::options_description opts;
    opts.add_options()
        ("help,h", "")
        ("version,V", "")
        ("input,i", po::value<std::string>(), "")
        ("output,o", po::value<std::string>(), "")
        ("transaction-id", po::value<std::string>(), "")
        ("data-block-size", po::value<std::string>(), "")
        ("nr-data-blocks", po::value<std::string>(), "")
        ("quiet,q", "");
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(argc, argv).options(opts).run(), vm);
        po::notify(vm);
    } catch (const po::error& e) {
        throw usage_error(e.what());
    }
    quiet = vm.count("quiet") != 0;
    if (vm.count("help")) {
        std::cout << USAGE;
        return cli::EXIT_OK;
    }
    if (vm.count("version")) {
        std::cout << cli::version() << "\n";
        return cli::EXIT_OK;
    }
    repair::repair_options o;
    if (vm.count("transaction-id"))
        o.transaction_id = parse_natural("--transaction-id", vm["transaction-id"].as<std::string>());
    if (vm.count("data-block-size"))
        o.data_block_size = static_cast<std::uint32_t>(
            parse_natural("--data-block-size", vm["data-block-size"].as<std::string>(), UINT32_MAX));
    if (vm.count("nr-data-blocks"))
        o.nr_data_blocks = parse_natural("--nr-data-blocks", vm["nr-data-blocks"].as<std::string>());

    if (!vm.count("input")) {
        if (!quiet) std::cerr << "No input file provided.\n" << USAGE;
        return cli::EXIT_FAIL;
    }
    if (!vm.count("output")) {
        if (!quiet) std::cerr << "No output file provided.\n" << USAGE;
        return cli::EXIT_FAIL;
    }
    const std::string input = vm["input"].as<std::string>();
    const std::string output = vm["output"].as<std::string>();

    cli::require_binary_metadata(TOOL, input, /*allow_bad_superblock=*/true);
    cli::require_output(output);
    if (same_file(input, output))
        throw cli::tool_error("the input and the output are the same (" + input +
                              "); thin_repair never writes to its input");

    if (!quiet) o.report = [](const std::string& line) { std::cerr << TOOL << ": " << line << "\n"; };
    cli::progress bar("Repairing", quiet);
    o.progress = [&](std::uint64_t done, std::uint64_t total) { bar.update(done, total); };

    auto in = cli::open_input(input);
    // Leaves are read a parent's worth at a time and each only twice: a small cache keeps the
    // memory flat (4 MiB) at no cost in speed.
    pdata::block_manager bm(in, 1024);
    auto out = cli::open_output(output);
    repair::repair_metadata(bm, out, o);
    bar.finish();
    return cli::EXIT_OK;
}

} // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    for (int i = 1; i < argc; ++i)
        if (!std::strcmp(argv[i], "-q") || !std::strcmp(argv[i], "--quiet")) quiet = true;
    return cli::run(TOOL, quiet, [&] {
        try {
            return run_repair(argc, argv, quiet);
        } catch (const usage_error& e) {
            if (!quiet) std::cerr << TOOL << ": " << e.what() << "\n" << USAGE;
            return cli::EXIT_FAIL;
        }
    });
}
