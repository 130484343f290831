// thin_restore: XML (as thin_dump writes it) → binary thin metadata on an existing device or file
// (tools.md §5, man/thin_restore.8). Option parsing and messages only; the work is thin/restore.
#include "thin/cli/common.h"
#include "thin/cli/progress.h"
#include "thin/restore/restore.h"

#include <boost/program_options.hpp>

#include <charconv>
#include <cstring>
#include <iostream>
#include <sys/stat.h>

namespace po = boost::program_options;
using namespace thin;

namespace {

const char* const TOOL = "thin_restore";

const char* const USAGE =
    "Usage: thin_restore [options]\n"
    "Options:\n"
    "  {-h|--help}\n"
    "  {-i|--input} <input xml file>\n"
    "  {-o|--output} <output device or file>\n"
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

int run_restore(int argc, char** argv, bool& quiet) {
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
    restore::restore_options o;
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

    switch (cli::classify_input(input)) {
    case cli::input_kind::empty:
        throw cli::tool_error(input + ": the input file is empty (expected thin metadata XML)");
    case cli::input_kind::metadata:
        throw cli::tool_error(input + ": this is binary dm-thin metadata, not XML; thin_restore reads the XML "
                                      "that thin_dump writes");
    default:
        break;  // anything else is for the XML parser to judge
    }
    auto out = cli::open_output(output);

    struct stat st {};
    std::uint64_t total = ::stat(input.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
    cli::progress bar("Restoring", quiet);
    restore::restore_xml_file(input, out, o, [&](std::uint64_t done) { bar.update(done, total); });
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
            return run_restore(argc, argv, quiet);
        } catch (const usage_error& e) {
            if (!quiet) std::cerr << TOOL << ": " << e.what() << "\n" << USAGE;
            return cli::EXIT_FAIL;
        }
    });
}
