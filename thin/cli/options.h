#pragma once
// Command-line handling shared by the small tools (Boost.ProgramOptions; header-only, since only
// the tools link Boost): parse, then --help / --version / a usage error end the run the same way
// in every tool.
#include "thin/cli/common.h"

#include <boost/program_options.hpp>

#include <iostream>
#include <optional>

namespace thin::cli {

// Parses argv into vm; opts must declare "help,h" and "version,V". Returns the exit status when
// the tool is done already: --help prints usage on stdout and --version the version (EXIT_OK); a
// parse error prints "<prog>: <error>" and the usage on stderr (EXIT_FAIL). nullopt: carry on.
inline std::optional<int> parse_options(const char* prog, const char* usage, int argc, char** argv,
                                        const boost::program_options::options_description& opts,
                                        boost::program_options::variables_map& vm) {
    namespace po = boost::program_options;
    try {
        po::store(po::command_line_parser(argc, argv).options(opts).run(), vm);
        po::notify(vm);
    } catch (const po::error& e) {
        std::cerr << prog << ": " << e.what() << "\n" << usage;
        return EXIT_FAIL;
    }
    if (vm.count("help")) {
        std::cout << usage;
        return EXIT_OK;
    }
    if (vm.count("version")) {
        std::cout << version() << "\n";
        return EXIT_OK;
    }
    return std::nullopt;
}

// The input/output pair of thin_metadata_pack and thin_metadata_unpack: both given, or a line
// saying which is missing and the usage (unless quiet).
inline bool require_input_and_output(const char* usage, const boost::program_options::variables_map& vm,
                                     bool quiet) {
    if (vm.count("input") && vm.count("output")) return true;
    if (!quiet) std::cerr << (vm.count("input") ? "No output file provided.\n" : "No input file provided.\n") << usage;
    return false;
}

} // namespace thin::cli
