// thin_check: validates dm-thin pool metadata (tools.md §3, format.md §10); see man/thin_check.8.
// Exit status 0 when no problem was found (non-fatal ones tolerated with
// --ignore-non-fatal-errors), 1 otherwise.
#include "persistent-data/io/aio_engine.h"
#include "thin/check/check.h"
#include "thin/check/repair.h"
#include "thin/cli/common.h"
#include "thin/cli/progress.h"

#include <boost/program_options.hpp>

#include <charconv>
#include <sys/stat.h>
#include <iostream>
#include <optional>
#include <string>

namespace po = boost::program_options;
namespace cli = thin::cli;
namespace chk = thin::check;

namespace {

const char* const PROG = "thin_check";

const char* const USAGE =
    "Usage: thin_check [options] {device|file}\n"
    "Options:\n"
    "  {-q|--quiet}\n"
    "  {-h|--help}\n"
    "  {-V|--version}\n"
    "  {-m|--metadata-snap}\n"
    "  {--auto-repair}\n"
    "  {--override-mapping-root}\n"
    "  {--override-details-root}\n"
    "  {--clear-needs-check-flag}\n"
    "  {--ignore-non-fatal-errors}\n"
    "  {--skip-mappings}\n"
    "  {--super-block-only}\n";

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::uint64_t parse_block(const std::string& opt, const std::string& text) {
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || p != text.data() + text.size())
        throw usage_error("--" + opt + ": '" + text + "' is not a block number");
    return v;
}

struct options {
    std::string input;
    bool quiet = false;
    bool auto_repair = false;
    bool clear_needs_check = false;
    bool ignore_non_fatal = false;
    chk::check_options check;
};

// nullopt: --help or --version was handled.
std::optional<options> parse(int argc, char** argv) {
    po::options_description desc;
    desc.add_options()
        ("help,h", "")
        ("version,V", "")
        ("quiet,q", "")
        ("metadata-snap,m", "")
        ("auto-repair", "")
        ("override-mapping-root", po::value<std::string>(), "")
        ("override-details-root", po::value<std::string>(), "")
        ("clear-needs-check-flag", "")
        ("ignore-non-fatal-errors", "")
        ("skip-mappings", "")
        ("super-block-only", "")
        ("input", po::value<std::vector<std::string>>(), "");
    po::positional_options_description pos;
    pos.add("input", -1);
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(argc, argv).options(desc).positional(pos).run(), vm);
        po::notify(vm);
    } catch (const po::error& e) {
        throw usage_error(e.what());
    }
    if (vm.count("help")) {
        std::cout << USAGE;
        return std::nullopt;
    }
    if (vm.count("version")) {
        std::cout << cli::version() << "\n";
        return std::nullopt;
    }
    options o;
    o.quiet = vm.count("quiet");
    o.auto_repair = vm.count("auto-repair");
    o.clear_needs_check = vm.count("clear-needs-check-flag");
    o.ignore_non_fatal = vm.count("ignore-non-fatal-errors");
    o.check.use_metadata_snap = vm.count("metadata-snap");
    o.check.skip_mappings = vm.count("skip-mappings");
    o.check.super_block_only = vm.count("super-block-only");
    if (vm.count("override-mapping-root"))
        o.check.override_mapping_root = parse_block("override-mapping-root", vm["override-mapping-root"].as<std::string>());
    if (vm.count("override-details-root"))
        o.check.override_details_root = parse_block("override-details-root", vm["override-details-root"].as<std::string>());
    if (vm.count("input")) {
        auto& in = vm["input"].as<std::vector<std::string>>();
        if (in.size() > 1) throw usage_error("only one input file may be given");
        o.input = in[0];
    }
    return o;
}

// The fixes write; they make no sense on a snapshot, an overridden tree or a tolerant verdict.
void check_fix_conflicts(const options& o) {
    if (!o.auto_repair && !o.clear_needs_check) return;
    if (o.check.use_metadata_snap) throw cli::tool_error("cannot perform fix within metadata snap");
    if (o.ignore_non_fatal) throw cli::tool_error("cannot perform fix by ignoring non-fatal errors");
    if (o.check.override_mapping_root) throw cli::tool_error("cannot perform fix with an overridden mapping root");
    if (o.check.override_details_root) throw cli::tool_error("cannot perform fix with an overridden details root");
}

// A block device is read with O_DIRECT and many reads in flight: its page cache may hold blocks
// older than what the kernel's pool wrote through its own buffer cache. A regular file's page cache
// is coherent with every write to the file (O_DIRECT ones included), so files are read through it:
// warm pages cost no I/O. Files on file systems without O_DIRECT fall back to buffered reads anyway.
std::shared_ptr<pdata::io_engine> open_metadata(const std::string& path, bool shared, bool writable) {
    pdata::open_options o;
    o.mode = writable ? pdata::open_mode::read_write : pdata::open_mode::read_only;
    o.exclusive = !shared;
    struct stat st{};
    bool regular = ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
    try {
        if (regular) return std::shared_ptr<pdata::io_engine>(pdata::open_buffered_aio_engine(path, o, 256));
        return std::shared_ptr<pdata::io_engine>(pdata::open_aio_engine(path, o, 256));
    } catch (const pdata::io_error& e) {
        throw cli::tool_error(e.what());
    }
}

int check(const options& o) {
    check_fix_conflicts(o);
    cli::require_binary_metadata(PROG, o.input, true);
    bool fix = o.auto_repair || o.clear_needs_check;
    auto engine = open_metadata(o.input, o.check.use_metadata_snap, fix);

    chk::reporter rep(o.quiet ? nullptr : &std::cerr);
    cli::progress bar("reading mapping tree leaves", o.quiet);
    chk::check_options copts = o.check;
    if (bar.enabled()) copts.progress = [&bar](std::uint64_t done, std::uint64_t total) { bar.update(done, total); };
    chk::check_result r = chk::check_metadata(engine, copts, rep, o.quiet ? nullptr : &std::cout);
    bar.finish();

    auto say = [&](const std::string& line) {
        if (!o.quiet) std::cerr << line << "\n";
    };
    bool ok = r.worst == chk::severity::none || (r.worst == chk::severity::non_fatal && o.ignore_non_fatal);

    if (!ok && o.auto_repair && r.only_repairable_errors && r.has_repairable_differences()) {
        chk::repair_leaks(engine, r.metadata_differences, r.data_differences);
        std::uint64_t md = 0, data = 0;
        for (auto& d : r.metadata_differences.ranges())
            if (d.repairable()) md += d.end - d.begin;
        for (auto& d : r.data_differences.ranges())
            if (d.repairable()) data += d.end - d.begin;
        say("repaired " + std::to_string(md) + " leaked metadata block(s) and " + std::to_string(data) +
            " leaked data block(s)");
        // The repair committed with NEEDS_CHECK clear; confirm the result is clean.
        chk::reporter quiet_rep;
        chk::check_options again = o.check;
        chk::check_result after = chk::check_metadata(engine, again, quiet_rep);
        ok = after.worst == chk::severity::none;
        if (!ok) {
            for (auto& l : quiet_rep.lines()) say(l);
            say("metadata still has problems after the repair");
        } else if (r.needs_check) {
            say("cleared needs_check flag");
        }
        return ok ? cli::EXIT_OK : cli::EXIT_FAIL;
    }
    if (ok && fix && r.superblock_ok && chk::clear_needs_check(*engine)) say("cleared needs_check flag");
    return ok ? cli::EXIT_OK : cli::EXIT_FAIL;
}

} // namespace

int main(int argc, char** argv) {
    std::optional<options> o;
    try {
        o = parse(argc, argv);
    } catch (const usage_error& e) {
        std::cerr << PROG << ": " << e.what() << "\n" << USAGE;
        return cli::EXIT_FAIL;
    }
    if (!o) return cli::EXIT_OK;
    if (o->input.empty()) {
        std::cerr << "No input file provided.\n" << USAGE;
        return cli::EXIT_FAIL;
    }
    return cli::run(PROG, o->quiet, [&] { return check(*o); });
}
