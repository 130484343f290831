// thin_metadata_pack: packs the metadata blocks of a dm-thin metadata device into a small file
// (tools.md §12, man/thin_metadata_pack.8).
#include "thin/cli/common.h"
#include "thin/cli/options.h"
#include "thin/pack/pack.h"

#include <boost/program_options.hpp>

#include <iostream>
#include <sys/stat.h>

namespace po = boost::program_options;

namespace {

const char* const PROG = "thin_metadata_pack";

const char* const USAGE =
    "Usage: thin_metadata_pack [options] -i {device|file} -o {file}\n"
    "Produces a compressed file of thin metadata. Only packs metadata blocks that are\n"
    "actually used.\n"
    "Options:\n"
    "  {-h|--help}\n"
    "  {-V|--version}\n"
    "  {-i|--input} {device|file}   Metadata device or file to pack.\n"
    "  {-o|--output} {file}         Pack file to write.\n"
    "  {-f|--force}                 Overwrite the output file if it exists.\n"
    "  {-q|--quiet}                 No progress bar and no error messages.\n";

} // namespace

int main(int argc, char** argv) {
    po::options_description opts;
    opts.add_options()
        ("help,h", "")
        ("version,V", "")
        ("input,i", po::value<std::string>(), "")
        ("output,o", po::value<std::string>(), "")
        ("force,f", "")
        ("quiet,q", "");
    po::variables_map vm;
    if (auto done = thin::cli::parse_options(PROG, USAGE, argc, argv, opts, vm)) return *done;
    const bool quiet = vm.count("quiet") != 0;
    if (!thin::cli::require_input_and_output(USAGE, vm, quiet)) return thin::cli::EXIT_FAIL;
    return thin::cli::run(PROG, quiet, [&] {
        const std::string input = vm["input"].as<std::string>();
        const std::string output = vm["output"].as<std::string>();
        // Damaged metadata is worth packing (for a bug report), so only non-metadata is refused.
        thin::cli::require_binary_metadata(PROG, input, true);
        struct stat st {};
        if (!vm.count("force") && ::stat(output.c_str(), &st) == 0)
            throw thin::cli::tool_error(output + ": already exists; use -f to overwrite it");
        thin::pack::pack_options o;
        o.quiet = quiet;
        thin::pack::pack_file(input, output, o);
        return thin::cli::EXIT_OK;
    });
}
