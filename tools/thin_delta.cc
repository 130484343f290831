// thin_delta: the differences between the mappings of two thin devices (tools.md §7), as
// thin-provisioning-tools 0.9.0 prints them, plus --root1/--root2 (any two level-2 roots) and
// --format json. See man/thin_delta.8.
#include "thin/cli/common.h"
#include "thin/cli/metadata_source.h"
#include "thin/cli/text_output.h"
#include "thin/delta/delta.h"
#include "thin/metadata/mapping_leaves.h"

#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace po = boost::program_options;
using namespace thin;

namespace {

const char* const TOOL = "thin_delta";

const char* const USAGE =
    "Usage: thin_delta [options] <device or file>\n"
    "Options:\n"
    "  {--thin1, --snap1} <dev id>\n"
    "  {--thin2, --snap2} <dev id>\n"
    "  {--root1} <block#>\n"
    "  {--root2} <block#>\n"
    "  {-m, --metadata-snap} [block#]\n"
    "  {--verbose}\n"
    "  {--format} xml|json\n"
    "  {-h|--help}\n"
    "  {-V|--version}\n";

// A failure that 0.9.0 follows with the usage text.
struct usage_failure {
    std::string message;
};

// As boost::lexical_cast<uint64_t> (what 0.9.0 uses): the whole text is an optional sign and
// decimal digits; a minus wraps modulo 2^64.
std::optional<std::uint64_t> parse_u64(const std::string& s) {
    std::size_t i = 0;
    bool negative = false;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
    if (i == s.size()) return std::nullopt;
    std::uint64_t v = 0;
    for (; i < s.size(); ++i) {
        if (s[i] < '0' || s[i] > '9') return std::nullopt;
        unsigned d = unsigned(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return std::nullopt;
        v = v * 10 + d;
    }
    return negative ? ~v + 1 : v;
}

// -m/--metadata-snap takes an optional block that must be attached (-m6, --metadata-snap=6), as
// with getopt: Boost would take the next word (the input file) as the value. So attached values
// are taken out here, in command-line order, and -m is a plain switch for Boost.
std::vector<std::optional<std::string>> take_snapshot_values(std::vector<std::string>& args) {
    std::vector<std::optional<std::string>> values;
    const std::string long_name = "metadata-snap";
    for (auto& a : args) {
        if (a == "--") break;
        if (a.rfind("--", 0) == 0) {
            std::size_t eq = a.find('=');
            std::string name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
            // getopt_long accepts any unambiguous prefix; no other long option starts with 'm'.
            if (name.empty() || long_name.rfind(name, 0) != 0) continue;
            if (eq == std::string::npos) {
                values.push_back(std::nullopt);
            } else {
                values.push_back(a.substr(eq + 1));
                a = "--metadata-snap";
            }
        } else if (a.size() >= 2 && a[0] == '-' && a[1] == 'm') {
            values.push_back(a.size() > 2 ? std::optional<std::string>(a.substr(2)) : std::nullopt);
            a = "-m";
        }
    }
    return values;
}

struct side_arg {
    std::optional<std::uint64_t> snap;
    std::optional<std::uint64_t> root;
};

int run(int argc, char** argv) {
    po::options_description opts;
    opts.add_options()
        ("thin1", po::value<std::string>())
        ("snap1", po::value<std::string>())
        ("thin2", po::value<std::string>())
        ("snap2", po::value<std::string>())
        ("root1", po::value<std::string>())
        ("root2", po::value<std::string>())
        ("metadata-snap,m", "")
        ("verbose", "")
        ("format", po::value<std::string>())
        ("help,h", "")
        ("version,V", "")
        ("input", po::value<std::vector<std::string>>());
    po::positional_options_description pos;
    pos.add("input", -1);

    std::vector<std::string> args(argv + 1, argv + argc);
    auto snap_values = take_snapshot_values(args);
    std::size_t next_snap_value = 0;
    po::parsed_options parsed(nullptr);
    try {
        parsed = po::command_line_parser(args).options(opts).positional(pos).run();
    } catch (const po::error& e) {
        std::cerr << TOOL << ": " << e.what() << "\n" << USAGE;
        return cli::EXIT_FAIL;
    }

    side_arg sides[2];
    cli::snapshot_request snap;
    delta::report_options report;
    std::vector<std::string> inputs;
    try {
        // Options in command-line order; a repeated option: the last one wins (as with getopt).
        for (const auto& o : parsed.options) {
            const std::string& k = o.string_key;
            const std::string v = o.value.empty() ? std::string() : o.value.front();
            if (k == "help") {
                std::cout << USAGE;
                return cli::EXIT_OK;
            }
            if (k == "version") {
                std::cout << cli::version() << "\n";
                return cli::EXIT_OK;
            }
            if (k == "thin1" || k == "snap1" || k == "thin2" || k == "snap2") {
                int n = k.back() - '1';
                auto id = parse_u64(v);
                if (!id) throw usage_failure{"Couldn't parse thin id " + std::to_string(n + 1) + ": '" + v + "'"};
                sides[n].snap = *id;
            } else if (k == "root1" || k == "root2") {
                int n = k.back() - '1';
                auto b = parse_u64(v);
                if (!b) throw usage_failure{"Couldn't parse root block " + std::to_string(n + 1) + ": '" + v + "'"};
                sides[n].root = *b;
            } else if (k == "metadata-snap") {
                snap.use = true;
                snap.block.reset();
                std::optional<std::string> value;
                if (next_snap_value < snap_values.size()) value = snap_values[next_snap_value++];
                if (value) {
                    auto b = parse_u64(*value);
                    if (!b) throw usage_failure{"Couldn't parse metadata snapshot block: '" + *value + "'"};
                    snap.block = *b;
                }
            } else if (k == "verbose") {
                report.verbose = true;
            } else if (k == "format") {
                if (v == "xml")
                    report.fmt = delta::format::xml;
                else if (v == "json")
                    report.fmt = delta::format::json;
                else
                    throw usage_failure{"unknown format '" + v + "' (xml or json)"};
            } else if (k == "input") {
                inputs.insert(inputs.end(), o.value.begin(), o.value.end());
            }
        }
        if (inputs.empty()) throw usage_failure{"No input device provided."};
        for (int n = 0; n < 2; ++n) {
            std::string snap_opt = "--snap" + std::to_string(n + 1), root_opt = "--root" + std::to_string(n + 1);
            if (!sides[n].snap && !sides[n].root) throw usage_failure{snap_opt + " not specified."};
            if (sides[n].snap && sides[n].root)
                throw usage_failure{snap_opt + " and " + root_opt + " cannot be used together."};
        }
    } catch (const usage_failure& f) {
        std::cerr << f.message << "\n" << USAGE;
        return cli::EXIT_FAIL;
    }

    return cli::run(TOOL, false, [&]() -> int {
        auto src = cli::metadata_source::open(TOOL, inputs.front(), snap);
        pdata::block_address roots[2] = {0, 0};
        std::map<dev_id, pdata::block_address> trees;
        bool have_trees = false;
        for (int n = 0; n < 2; ++n) {
            if (sides[n].root) {
                if (*sides[n].root >= src->block_manager().nr_blocks())
                    throw cli::tool_error("--root" + std::to_string(n + 1) + " " + std::to_string(*sides[n].root) +
                                          " is beyond the end of the metadata (" +
                                          std::to_string(src->block_manager().nr_blocks()) + " blocks)");
                roots[n] = *sides[n].root;
                continue;
            }
            if (!have_trees) {
                trees = read_mapping_roots(src->block_manager(), src->sb().data_mapping_root);
                have_trees = true;
            }
            auto it = trees.find(*sides[n].snap);
            if (it == trees.end()) {
                std::cerr << "Unable to find mapping tree for snap" << (n + 1) << " (" << *sides[n].snap << ")\n"
                          << USAGE;
                return cli::EXIT_FAIL;
            }
            roots[n] = it->second;
        }
        cli::text_output out(stdout);
        delta::side left{sides[0].root.has_value(), sides[0].root ? *sides[0].root : *sides[0].snap};
        delta::side right{sides[1].root.has_value(), sides[1].root ? *sides[1].root : *sides[1].snap};
        auto em = delta::make_emitter(out, report, src->sb(), left, right);
        delta::diff_trees(src->block_manager(), roots[0], roots[1], *em);
        em->finish();
        return cli::EXIT_OK;
    });
}

} // namespace

int main(int argc, char** argv) {
    return run(argc, argv);
}
