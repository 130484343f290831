// thin_dump: binary thin metadata → XML, human-readable text or JSON (tools.md §4,
// man/thin_dump.8). Option parsing and messages only; the work is thin/dump and thin/emit.
#include "thin/cli/common.h"
#include "thin/dump/dump.h"
#include "thin/dump/filter_emitter.h"
#include "thin/emit/human_readable_emitter.h"
#include "thin/emit/json_emitter.h"
#include "thin/emit/xml_emitter.h"
#include "thin/repair/repair.h"

#include "persistent-data/block_manager.h"

#include <boost/program_options.hpp>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>

namespace po = boost::program_options;
using namespace thin;

namespace {

const char* const TOOL = "thin_dump";

const char* const USAGE =
    "Usage: thin_dump [options] {device|file}\n"
    "Options:\n"
    "  {-h|--help}\n"
    "  {-f|--format} {xml|human_readable|json}\n"
    "  {-r|--repair}\n"
    "  {-m|--metadata-snap} [block#]\n"
    "  {-o <xml file>}\n"
    "  {--dev-id} <dev-id>\n"
    "  {--skip-mappings}\n"
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

bool all_digits(const char* s) {
    if (!*s) return false;
    for (; *s; ++s)
        if (*s < '0' || *s > '9') return false;
    return true;
}

// -m takes an optional block number, written "-m 5" (as 0.9.0 accepts), "-m5" or
// "--metadata-snap=5": turn every form into the switch plus a separate value option.
std::vector<std::string> normalise_args(int argc, char** argv) {
    std::vector<std::string> args;
    const std::string long_eq = "--metadata-snap=";
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "-m" || a == "--metadata-snap") {
            args.push_back("--metadata-snap");
            if (i + 2 < argc && all_digits(argv[i + 1])) args.push_back("--metadata-snap-block=" + std::string(argv[++i]));
        } else if (a.size() > 2 && a.compare(0, 2, "-m") == 0 && a[2] != '-') {
            args.push_back("--metadata-snap");
            args.push_back("--metadata-snap-block=" + a.substr(2));
        } else if (a.compare(0, long_eq.size(), long_eq) == 0) {
            args.push_back("--metadata-snap");
            args.push_back("--metadata-snap-block=" + a.substr(long_eq.size()));
        } else {
            args.push_back(a);
        }
    }
    return args;
}

int run_dump(int argc, char** argv, bool& quiet) {
    po::options_description opts;
    opts.add_options()
        ("help,h", "")
        ("version,V", "")
        ("format,f", po::value<std::string>(), "")
        ("repair,r", "")
        ("metadata-snap,m", "")
        ("metadata-snap-block", po::value<std::string>(), "")
        ("output,o", po::value<std::string>(), "")
        ("dev-id", po::value<std::vector<std::string>>(), "")
        ("skip-mappings", "")
        ("transaction-id", po::value<std::string>(), "")
        ("data-block-size", po::value<std::string>(), "")
        ("nr-data-blocks", po::value<std::string>(), "")
        ("quiet,q", "")
        ("input", po::value<std::vector<std::string>>(), "");
    po::positional_options_description pos;
    pos.add("input", -1);
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(normalise_args(argc, argv)).options(opts).positional(pos).run(), vm);
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

    dump::dump_options o;
    std::string format = vm.count("format") ? vm["format"].as<std::string>() : "xml";
    if (format != "xml" && format != "human_readable" && format != "json")
        throw usage_error("unknown format '" + format + "' (use xml, human_readable or json)");
    if (vm.count("metadata-snap")) {
        o.metadata_snap = true;
        if (vm.count("metadata-snap-block"))
            o.metadata_snap_block = parse_natural("--metadata-snap", vm["metadata-snap-block"].as<std::string>());
    }
    if (vm.count("dev-id"))
        for (const auto& d : vm["dev-id"].as<std::vector<std::string>>())
            o.dev_ids.push_back(parse_natural("--dev-id", d));
    o.skip_mappings = vm.count("skip-mappings") != 0;
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
    const auto& inputs = vm["input"].as<std::vector<std::string>>();
    if (inputs.size() > 1) throw usage_error("only one input may be given ('" + inputs[1] + "' is extra)");
    const std::string& input = inputs[0];

    const bool repair = vm.count("repair") != 0;
    if (repair && o.metadata_snap)
        throw usage_error("--repair and --metadata-snap cannot be used together (repair considers the snapshot itself)");

    cli::require_binary_metadata(TOOL, input, repair);
    auto engine = cli::open_input(input, o.metadata_snap);
    pdata::block_manager bm(engine, 1024);

    std::FILE* out = stdout;
    std::string out_name = "standard output";
    if (vm.count("output")) {
        out_name = vm["output"].as<std::string>();
        out = std::fopen(out_name.c_str(), "w");
        if (!out) throw cli::tool_error(out_name + ": cannot create: " + std::strerror(errno));
    }
    struct closer {
        std::FILE* f;
        ~closer() {
            if (f != stdout) std::fclose(f);
        }
    } close_out{out};

    std::unique_ptr<emitter> e;
    std::function<void()> flush;
    if (format == "xml") {
        auto x = std::make_unique<emit::xml_emitter>(out);
        flush = [p = x.get()] { p->flush(); };
        e = std::move(x);
    } else if (format == "human_readable") {
        auto h = std::make_unique<emit::human_readable_emitter>(out);
        flush = [p = h.get()] { p->flush(); };
        e = std::move(h);
    } else {
        auto j = std::make_unique<emit::json_emitter>(out);
        flush = [p = j.get()] { p->flush(); };
        e = std::move(j);
    }

    if (repair) {
        repair::repair_options ro;
        ro.transaction_id = o.transaction_id;
        ro.data_block_size = o.data_block_size;
        ro.nr_data_blocks = o.nr_data_blocks;
        if (!quiet) ro.report = [](const std::string& line) { std::cerr << TOOL << ": " << line << "\n"; };
        dump::filter_emitter f(*e, o.dev_ids, o.skip_mappings);
        try {
            repair::repair_dump(bm, ro, f);
        } catch (const repair::missing_fields& m) {
            if (!quiet) std::cerr << m.what() << "\n";
            return cli::EXIT_FAIL;
        } catch (const repair::repair_error& r) {
            throw cli::tool_error(r.what());
        }
    } else {
        try {
            dump::dump_metadata(bm, o, *e);
        } catch (const dump::damaged_metadata& d) {
            try {
                flush();
            } catch (...) {
            }
            if (!quiet)
                std::cerr << "metadata contains errors (run thin_check for details).\n"
                             "perhaps you wanted to run with --repair\n"
                          << TOOL << ": " << d.what() << "\n";
            return cli::EXIT_FAIL;
        } catch (const dump::dump_error& d) {
            throw cli::tool_error(d.what());
        }
    }
    try {
        flush();
    } catch (const std::exception&) {
        throw cli::tool_error(out_name + ": write failed");
    }
    return cli::EXIT_OK;
}

} // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    for (int i = 1; i < argc; ++i)
        if (!std::strcmp(argv[i], "-q") || !std::strcmp(argv[i], "--quiet")) quiet = true;
    return cli::run(TOOL, quiet, [&] {
        try {
            return run_dump(argc, argv, quiet);
        } catch (const usage_error& e) {
            if (!quiet) std::cerr << TOOL << ": " << e.what() << "\n" << USAGE;
            return cli::EXIT_FAIL;
        }
    });
}
