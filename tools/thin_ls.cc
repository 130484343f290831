// thin_ls: one line per thin device with the chosen fields (tools.md §8), byte-compatible with
// thin-provisioning-tools 0.9.0, plus the HIGHEST_* fields and JSON output (--json, or -o json).
// See man/thin_ls.8.
#include "thin/cli/common.h"
#include "thin/cli/metadata_source.h"
#include "thin/ls/ls.h"

#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace po = boost::program_options;
using namespace thin;

namespace {

const char* const TOOL = "thin_ls";

std::string usage() {
    std::string s =
        "Usage: thin_ls [options] {metadata device}\n"
        "Options:\n"
        "  {-h|--help}\n"
        "  {-m|--metadata-snap}\n"
        "  {--no-headers}\n"
        "  {-o|--format <fields>}\n"
        "  {--json}\n"
        "  {-V|--version}\n"
        "\n"
        "where <fields> is a comma separated list from:\n";
    for (auto f : ls::all_fields()) s += std::string("  ") + ls::field_name(f) + "\n";
    s += "or the word json (JSON output of the default fields).\n";
    return s;
}

int run(int argc, char** argv) {
    po::options_description opts;
    opts.add_options()
        ("help,h", "")
        ("metadata-snap,m", "")
        ("no-headers", "")
        ("format,o", po::value<std::string>())
        ("json", "")
        ("version,V", "")
        ("input", po::value<std::vector<std::string>>());
    po::positional_options_description pos;
    pos.add("input", -1);

    po::parsed_options parsed(nullptr);
    try {
        parsed = po::command_line_parser(argc, argv).options(opts).positional(pos).run();
    } catch (const po::error& e) {
        std::cerr << TOOL << ": " << e.what() << "\n" << usage();
        return cli::EXIT_FAIL;
    }

    std::vector<ls::field> fields = ls::default_fields();
    bool headers = true, json = false;
    cli::snapshot_request snap;
    std::vector<std::string> inputs;
    for (const auto& o : parsed.options) {
        const std::string& k = o.string_key;
        if (k == "help") {
            std::cout << usage();
            return cli::EXIT_OK;
        }
        if (k == "version") {
            std::cout << cli::version() << "\n";
            return cli::EXIT_OK;
        }
        if (k == "metadata-snap") {
            snap.use = true;
        } else if (k == "no-headers") {
            headers = false;
        } else if (k == "json") {
            json = true;
        } else if (k == "format") {
            const std::string& v = o.value.front();
            if (v == "json") {
                json = true;
                fields = ls::default_fields();
                continue;
            }
            try {
                fields = ls::parse_fields(v);
            } catch (const std::invalid_argument& e) {
                std::cerr << e.what() << "\n";
                return cli::EXIT_FAIL;
            }
        } else if (k == "input") {
            inputs.insert(inputs.end(), o.value.begin(), o.value.end());
        }
    }
    if (inputs.empty()) {
        std::cerr << "No input file provided.\n" << usage();
        return cli::EXIT_FAIL;
    }

    return cli::run(TOOL, false, [&]() -> int {
        auto src = cli::metadata_source::open(TOOL, inputs.front(), snap);
        auto rows = ls::scan(src->block_manager(), src->sb(), src->live().data_sm().nr_blocks, fields);
        std::string text = json ? ls::format_json(rows, fields, src->sb().data_block_size)
                                : ls::format_table(rows, fields, src->sb().data_block_size, headers);
        if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0)
            throw cli::tool_error("write to standard output failed");
        return cli::EXIT_OK;
    });
}

} // namespace

int main(int argc, char** argv) {
    return run(argc, argv);
}
