// thin_trim: discards the free space of an inactive pool's data device (tools.md §10,
// man/thin_trim.8).
#include "thin/cli/common.h"
#include "thin/cli/options.h"
#include "thin/trim/trim.h"

#include <boost/program_options.hpp>

#include <iostream>

namespace po = boost::program_options;

namespace {

const char* const PROG = "thin_trim";

const char* const USAGE =
    "Usage: thin_trim [options] --metadata-dev {device|file} --data-dev {device|file}\n"
    "Issue discard requests for free pool space (offline tool).\n"
    "Options:\n"
    "  {-h|--help}\n"
    "  {-V|--version}\n"
    "  {-q|--quiet}                Suppress error messages, return only the exit code.\n"
    "  --metadata-dev {device|file}  The pool metadata (opened exclusively: the pool must\n"
    "                              be inactive).\n"
    "  --data-dev {device|file}    The pool data device: BLKDISCARD on a block device,\n"
    "                              holes punched in a regular file.\n"
    "  --pool-inactive             Accepted for compatibility; not needed.\n";

} // namespace

int main(int argc, char** argv) {
    po::options_description opts;
    opts.add_options()
        ("help,h", "")
        ("version,V", "")
        ("quiet,q", "")
        ("metadata-dev", po::value<std::string>(), "")
        ("data-dev", po::value<std::string>(), "")
        ("pool-inactive", "");
    po::variables_map vm;
    if (auto done = thin::cli::parse_options(PROG, USAGE, argc, argv, opts, vm)) return *done;
    const bool quiet = vm.count("quiet") != 0;
    if (vm.count("pool-inactive") && !quiet)
        std::cerr << "--pool-inactive no longer required since we ensure the metadata device is opened "
                     "exclusively.\n";
    if (!vm.count("metadata-dev") || !vm.count("data-dev")) {
        if (!quiet) {
            std::cerr << (vm.count("metadata-dev") ? "No data device provided.\n" : "No metadata device provided.\n")
                      << USAGE;
        }
        return thin::cli::EXIT_FAIL;
    }
    return thin::cli::run(PROG, quiet, [&] {
        thin::trim::trim_options o;
        o.metadata_dev = vm["metadata-dev"].as<std::string>();
        o.data_dev = vm["data-dev"].as<std::string>();
        thin::trim::trim(o);
        return thin::cli::EXIT_OK;
    });
}
