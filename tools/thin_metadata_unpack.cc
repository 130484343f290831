// thin_metadata_unpack: rebuilds a metadata image from a thin_metadata_pack file (tools.md §12,
// man/thin_metadata_unpack.8).
#include "thin/cli/common.h"
#include "thin/cli/options.h"
#include "thin/pack/pack.h"

#include <boost/program_options.hpp>

#include <iostream>
#include <sys/stat.h>

namespace po = boost::program_options;

namespace {

const char* const PROG = "thin_metadata_unpack";

const char* const USAGE =
    "Usage: thin_metadata_unpack [options] -i {pack file} -o {device|file}\n"
    "Unpack a compressed file of thin metadata.\n"
    "Options:\n"
    "  {-h|--help}\n"
    "  {-V|--version}\n"
    "  {-i|--input} {file}          Pack file made by thin_metadata_pack.\n"
    "  {-o|--output} {device|file}  Metadata image to write (a file is created or\n"
    "                               truncated; a block device is overwritten).\n"
    "  {-f|--force}                 Overwrite the output if it exists.\n"
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
        switch (thin::cli::classify_input(input)) {
        case thin::cli::input_kind::xml:
            throw thin::cli::tool_error(input + ": this looks like XML, not a thin_metadata_pack file");
        case thin::cli::input_kind::empty:
            throw thin::cli::tool_error(input + ": the file is empty, not a thin_metadata_pack file");
        case thin::cli::input_kind::metadata:
            throw thin::cli::tool_error(input + ": this is dm-thin metadata, not a thin_metadata_pack file");
        default:
            break;
        }
        struct stat st {};
        if (!vm.count("force") && ::stat(output.c_str(), &st) == 0)
            throw thin::cli::tool_error(output + ": already exists; use -f to overwrite it");
        thin::pack::unpack_options o;
        o.quiet = quiet;
        thin::pack::unpack_file(input, output, o);
        return thin::cli::EXIT_OK;
    });
}
