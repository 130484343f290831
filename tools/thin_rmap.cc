// thin_rmap: the reverse map of data block ranges to thin devices and their blocks (tools.md §9),
// byte-compatible with thin-provisioning-tools 0.9.0. See man/thin_rmap.8.
#include "thin/cli/common.h"
#include "thin/cli/metadata_source.h"
#include "thin/cli/text_output.h"
#include "thin/rmap/rmap.h"

#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace po = boost::program_options;
using namespace thin;

namespace {

const char* const TOOL = "thin_rmap";

const char* const USAGE =
    "Usage: thin_rmap [options] {device|file}\n"
    "Options:\n"
    "  {-h|--help}\n"
    "  {-V|--version}\n"
    "  {--region <block range>}*\n"
    "  {--all-devices}\n"
    "Where:\n"
    "  <block range> is of the form <begin>..<one-past-the-end>\n"
    "  for example 5..45 denotes blocks 5 to 44 inclusive, but not block 45\n";

int run(int argc, char** argv) {
    po::options_description opts;
    opts.add_options()
        ("help,h", "")
        ("version,V", "")
        ("region", po::value<std::vector<std::string>>())
        ("all-devices", "")
        ("input", po::value<std::vector<std::string>>());
    po::positional_options_description pos;
    pos.add("input", -1);

    po::parsed_options parsed(nullptr);
    try {
        parsed = po::command_line_parser(argc, argv).options(opts).positional(pos).run();
    } catch (const po::error& e) {
        std::cerr << TOOL << ": " << e.what() << "\n" << USAGE;
        return cli::EXIT_FAIL;
    }

    std::vector<rmap::region> regions;
    rmap::rmap_options ropts;
    std::vector<std::string> inputs;
    for (const auto& o : parsed.options) {
        const std::string& k = o.string_key;
        if (k == "help") {
            std::cout << USAGE;
            return cli::EXIT_OK;
        }
        if (k == "version") {
            std::cout << cli::version() << "\n";
            return cli::EXIT_OK;
        }
        if (k == "region") {
            for (const auto& text : o.value) {
                try {
                    regions.push_back(rmap::parse_region(text));
                } catch (const std::invalid_argument& e) {
                    std::cerr << e.what() << ": '" << text << "'\n";
                    return cli::EXIT_FAIL;
                }
            }
        } else if (k == "all-devices") {
            ropts.all_devices = true;
        } else if (k == "input") {
            inputs.insert(inputs.end(), o.value.begin(), o.value.end());
        }
    }
    if (inputs.empty()) {
        std::cerr << "No input file provided.\n" << USAGE;
        return cli::EXIT_FAIL;
    }
    if (regions.empty()) {
        std::cerr << "No regions provided.\n" << USAGE;
        return cli::EXIT_FAIL;
    }

    return cli::run(TOOL, false, [&]() -> int {
        auto src = cli::metadata_source::open(TOOL, inputs.front(), cli::snapshot_request{});
        auto runs = rmap::reverse_map(src->block_manager(), src->sb().data_mapping_root, regions, ropts);
        cli::text_output out(stdout);
        rmap::write_runs(out, runs);
        return cli::EXIT_OK;
    });
}

} // namespace

int main(int argc, char** argv) {
    return run(argc, argv);
}
