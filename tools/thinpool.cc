// thinpool: the pool daemon (`thinpool run`) and its control client (every other command), one
// binary. The daemon lives in thin/daemon; this file is option parsing and printing.
#include "thin/daemon/config.h"
#include "thin/daemon/protocol.h"
#include "thin/daemon/run.h"
#include "thin/daemon/text.h"

#include <boost/program_options.hpp>

#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace po = boost::program_options;
namespace fs = std::filesystem;
namespace td = thin::daemon;

namespace {

const char* const USAGE =
    "Usage: thinpool [--dir DIR | --socket PATH] COMMAND [ARGS]\n"
    "       thinpool run [OPTIONS]\n"
    "       thinpool --help | --version | COMMAND --help\n";

const char* const HELP =
    "thinpool: a dm-thin pool in userspace. `thinpool run` serves a pool's thin volumes over NBD;\n"
    "the other commands talk to a running daemon through its control socket.\n"
    "\n"
    "Usage: thinpool [--dir DIR | --socket PATH] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  run                          run the daemon in the foreground (thinpool run --help)\n"
    "  create NAME --size SIZE [--origin PATH]\n"
    "                               create a thin volume (with a read-only external origin)\n"
    "  snapshot SRC NAME [SRC2 NAME2 ...]\n"
    "                               snapshot volumes, all at one point in time\n"
    "  delete NAME                  delete a volume (refused while it is in use)\n"
    "  resize NAME --size SIZE [--force]\n"
    "                               change a volume's length\n"
    "  list [--json]                list the volumes\n"
    "  status [--json]              pool and volume status\n"
    "  message WORD...              pass a dm-thin pool message (create_thin, create_snap, delete,\n"
    "                               set_transaction_id, reserve_metadata_snap, release_metadata_snap)\n"
    "  events                       print pool events (low water marks, mode changes) as they happen\n"
    "  stop                         shut the daemon down cleanly\n"
    "  ping                         check that the daemon answers\n"
    "\n"
    "Options:\n"
    "  --dir DIR       the pool's state directory (default ./pool); its control socket is\n"
    "                  DIR/control.sock unless DIR/thinpool.conf names another\n"
    "  --socket PATH   the daemon's control socket\n"
    "  -h, --help      print help (also after a command) and exit\n"
    "  -V, --version   print the version and exit\n"
    "\n"
    "SIZE is in bytes, or a number with K, M, G or T (binary units), a multiple of 512. Volume\n"
    "names are 1 to 64 of A-Z a-z 0-9 . _ -, not starting with '-' or '.'.\n"
    "\n"
    "Exit status: 0 success, 1 error (one line on stderr), 2 usage error. See thinpool(8).\n";

const char* const RUN_HELP =
    "Usage: thinpool run [OPTIONS]\n"
    "\n"
    "Runs the pool daemon in the foreground, logging to stderr; SIGINT or SIGTERM (or `thinpool\n"
    "stop`) shuts it down cleanly. With no options: a file-backed pool in ./pool, created on the\n"
    "first run (sparse 64 MiB metadata, sparse 16 GiB data, 64 KiB blocks).\n"
    "\n"
    "Options:\n"
    "  --dir DIR               state directory (default ./pool): catalogue, sockets, and the\n"
    "                          metadata and data files unless given below\n"
    "  --metadata PATH         metadata device or file (default DIR/metadata)\n"
    "  --data PATH             data device or file (default DIR/data)\n"
    "  --block-size SIZE       data block size for a new pool (64K to 1G, a multiple of 64K;\n"
    "                          default 64K); an existing pool keeps its own\n"
    "  --low-water-mark BLOCKS free data blocks at which a low water mark event is raised (0)\n"
    "  --feature F             pool feature: skip_block_zeroing, ignore_discard,\n"
    "                          no_discard_passdown, read_only, error_if_no_space (repeatable)\n"
    "  --config FILE           read settings from FILE (after DIR/thinpool.conf)\n"
    "  --socket PATH           control socket (default DIR/control.sock)\n"
    "  --nbd-socket PATH       NBD Unix socket (default DIR/nbd.sock; \"\" for none)\n"
    "  --nbd-tcp HOST:PORT     also serve NBD over TCP (unauthenticated: bind to a trusted address)\n"
    "  --data-size SIZE        size of a data file created or grown by the daemon (16G)\n"
    "  --metadata-size SIZE    size of a metadata file created or grown by the daemon (64M)\n"
    "  --no-space-timeout SECS how long writes wait when the pool is out of data space (60; 0:\n"
    "                          forever)\n"
    "  --read-only             open the pool read-only (the read_only feature)\n"
    "  --adopt                 rebuild the catalogue from the metadata when they disagree\n"
    "  -h, --help              print this help and exit\n";

struct command_help {
    const char* usage;
    const char* text;
};

const std::map<std::string, command_help> COMMAND_HELP = {
    {"create", {"create NAME --size SIZE [--origin PATH]",
                "Creates thin volume NAME of SIZE bytes. With --origin, unprovisioned blocks read from\n"
                "PATH (a file or block device, opened read-only, read in whole 512-byte sectors; the\n"
                "size defaults to its size, rounded down to a sector).\n"}},
    {"snapshot", {"snapshot SRC NAME [SRC2 NAME2 ...]",
                  "Creates snapshot NAME of volume SRC; several pairs are taken at one point in time.\n"}},
    {"delete", {"delete NAME", "Deletes volume NAME and frees its blocks; refused while it is in use.\n"}},
    {"resize", {"resize NAME --size SIZE [--force]",
                "Sets the length of volume NAME. Shrinking unmaps nothing; it is refused when blocks are\n"
                "mapped past the new end, unless --force.\n"}},
    {"list", {"list [--json]", "Lists the volumes: name, device id, size, creation time, origin.\n"}},
    {"status", {"status [--json]",
                "Pool mode, transaction id, data and metadata use, needs_check, held metadata root, low\n"
                "water mark, and per volume its size, mapped and exclusive blocks, origin, connections.\n"}},
    {"message", {"message WORD...",
                 "Passes a pool message through (create_thin ID, create_snap ID ORIGIN_ID, delete ID,\n"
                 "set_transaction_id OLD NEW, reserve_metadata_snap, release_metadata_snap); the\n"
                 "catalogue follows (new devices become volumes thin-ID).\n"}},
    {"events", {"events",
                "Prints one line per pool event on stdout until interrupted or the daemon stops (then\n"
                "exits 0); says on stderr once it is subscribed.\n"}},
    {"stop", {"stop", "Asks the daemon to shut down cleanly.\n"}},
    {"ping", {"ping", "Prints the daemon's version if it answers.\n"}},
};

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct global_options {
    std::optional<std::string> dir, socket;
};

// ---- the client ----

std::string socket_of(const global_options& g) {
    if (g.socket) return *g.socket;
    std::string dir = g.dir.value_or("./pool");
    std::string conf = dir + "/thinpool.conf";
    if (fs::exists(conf)) {
        td::settings s = td::read_config_file(conf);
        if (s.socket) return *s.socket;
    }
    return dir + "/control.sock";
}

int send_request(const global_options& g, const std::vector<std::string>& words) {
    td::response r = td::request(socket_of(g), words);
    if (!r.ok) {
        std::cerr << "thinpool: " << r.message << "\n";
        return 1;
    }
    std::cout << r.body << std::flush;
    return 0;
}

int stream_events(const global_options& g) {
    td::connection c(socket_of(g));
    c.send({"events"});
    td::response r = c.read_status(std::chrono::minutes(1));
    if (!r.ok) {
        std::cerr << "thinpool: " << r.message << "\n";
        return 1;
    }
    // Subscribed: no event from now on is missed. Said on stderr, so stdout stays events only
    // and a script can wait for this line before it sets off what it wants to see.
    std::cerr << "thinpool: following the pool's events on " << socket_of(g) << std::endl;
    while (auto line = c.read_line(std::chrono::milliseconds(-1))) std::cout << *line << std::endl;
    return 0;
}

// Parses a command's arguments: positional words and the listed options.
po::variables_map parse(const std::vector<std::string>& args, po::options_description& opts) {
    opts.add_options()("help,h", "print help");
    opts.add_options()("args", po::value<std::vector<std::string>>()->multitoken(), "arguments");
    po::positional_options_description pos;
    pos.add("args", -1);
    po::variables_map vm;
    po::store(po::command_line_parser(args).options(opts).positional(pos).run(), vm);
    po::notify(vm);
    return vm;
}

std::vector<std::string> positional(const po::variables_map& vm) {
    return vm.count("args") ? vm["args"].as<std::vector<std::string>>() : std::vector<std::string>{};
}

std::string size_word(const std::string& text) {
    try {
        return "size=" + std::to_string(td::parse_size(text, "size"));
    } catch (const td::parse_error& e) {
        throw usage_error(e.what());
    }
}

void check_name(const std::string& n) {
    try {
        td::check_volume_name(n);
    } catch (const td::parse_error& e) {
        throw usage_error(e.what());
    }
}

int client_command(const global_options& g, const std::string& cmd, const std::vector<std::string>& args) {
    po::options_description opts;
    if (cmd == "create" || cmd == "resize") opts.add_options()("size", po::value<std::string>(), "size");
    if (cmd == "create") opts.add_options()("origin", po::value<std::string>(), "origin");
    if (cmd == "resize") opts.add_options()("force", "force");
    if (cmd == "list" || cmd == "status") opts.add_options()("json", "json");
    auto vm = parse(args, opts);
    const auto& h = COMMAND_HELP.at(cmd);
    if (vm.count("help")) {
        std::cout << "Usage: thinpool [--dir DIR | --socket PATH] " << h.usage << "\n\n" << h.text;
        return 0;
    }
    auto pos = positional(vm);
    auto wrong = [&] { return usage_error(std::string("usage: thinpool ") + h.usage); };
    std::vector<std::string> words = {cmd};
    if (cmd == "create" || cmd == "resize" || cmd == "delete") {
        if (pos.size() != 1) throw wrong();
        check_name(pos[0]);
        words.push_back(pos[0]);
        if (cmd != "delete" && vm.count("size")) words.push_back(size_word(vm["size"].as<std::string>()));
        else if (cmd == "resize" || (cmd == "create" && !vm.count("origin")))
            throw usage_error(cmd + " needs --size SIZE");
        if (vm.count("origin")) {
            std::string o = vm["origin"].as<std::string>();
            if (o.empty()) throw usage_error("--origin needs a path");
            words.push_back("origin=" + fs::absolute(o).lexically_normal().string());
        }
        if (vm.count("force")) words.push_back("force");
    } else if (cmd == "snapshot") {
        if (pos.size() < 2 || pos.size() % 2) throw wrong();
        for (const auto& p : pos) check_name(p);
        words.insert(words.end(), pos.begin(), pos.end());
    } else if (cmd == "message") {
        if (pos.empty()) throw wrong();
        words.insert(words.end(), pos.begin(), pos.end());
    } else {
        if (!pos.empty()) throw wrong();
        if (vm.count("json")) words.push_back("json");
    }
    if (cmd == "events") return stream_events(g);
    return send_request(g, words);
}

// ---- the daemon ----

int run_command(const global_options& g, const std::vector<std::string>& args) {
    po::options_description opts;
    opts.add_options()("dir", po::value<std::string>())("metadata", po::value<std::string>())(
        "data", po::value<std::string>())("block-size", po::value<std::string>())(
        "low-water-mark", po::value<std::string>())("feature", po::value<std::vector<std::string>>())(
        "config", po::value<std::string>())("socket", po::value<std::string>())("nbd-socket", po::value<std::string>())(
        "nbd-tcp", po::value<std::string>())("data-size", po::value<std::string>())(
        "metadata-size", po::value<std::string>())("no-space-timeout", po::value<std::string>())("read-only", "")(
        "adopt", "");
    auto vm = parse(args, opts);
    if (vm.count("help")) {
        std::cout << RUN_HELP;
        return 0;
    }
    if (!positional(vm).empty()) throw usage_error("run takes no arguments, only options (thinpool run --help)");
    std::string dir = vm.count("dir") ? vm["dir"].as<std::string>() : g.dir.value_or("./pool");
    if (dir.empty()) throw usage_error("--dir needs a directory");

    // Command-line values first, so a bad one is a usage error before any file is read.
    td::settings cli;
    static const std::map<std::string, std::string> keys = {
        {"metadata", "metadata"},     {"data", "data"},           {"block-size", "block_size"},
        {"low-water-mark", "low_water_mark"}, {"socket", "socket"}, {"nbd-socket", "nbd_socket"},
        {"nbd-tcp", "nbd_tcp"},       {"data-size", "data_size"}, {"metadata-size", "metadata_size"},
        {"no-space-timeout", "no_space_timeout"}};
    try {
        for (const auto& [opt, key] : keys)
            if (vm.count(opt)) cli.set(key, vm[opt].as<std::string>());
        if (!vm.count("socket") && g.socket) cli.set("socket", *g.socket);
        if (vm.count("feature")) {
            std::string joined;
            for (const auto& f : vm["feature"].as<std::vector<std::string>>()) joined += f + ",";
            cli.set("features", joined);
        }
        if (vm.count("read-only")) cli.read_only = true;
    } catch (const td::parse_error& e) {
        throw usage_error(e.what());
    }

    td::settings merged;
    std::string dir_conf = dir + "/thinpool.conf";
    if (fs::exists(dir_conf)) merged.merge(td::read_config_file(dir_conf));
    if (vm.count("config")) merged.merge(td::read_config_file(vm["config"].as<std::string>()));
    merged.merge(cli);
    td::daemon_options o = td::resolve(dir, merged);
    o.adopt = vm.count("adopt") > 0;
    return td::run_daemon(o);
}

// ---- top level ----

int main_command(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    global_options g;
    std::size_t i = 0;
    for (; i < args.size() && !args[i].empty() && args[i][0] == '-'; ++i) {
        const std::string& a = args[i];
        auto value = [&](const std::string& name) {
            if (a.size() > name.size() && a.compare(0, name.size() + 1, name + "=") == 0) return a.substr(name.size() + 1);
            if (a != name) throw usage_error("unknown option '" + a + "'");
            if (++i >= args.size()) throw usage_error(name + " needs a value");
            return args[i];
        };
        if (a == "-h" || a == "--help") {
            std::cout << HELP;
            return 0;
        }
        if (a == "-V" || a == "--version") {
            std::cout << "thinpool " << THINPOOL_VERSION << "\n";
            return 0;
        }
        if (a.rfind("--dir", 0) == 0) g.dir = value("--dir");
        else if (a.rfind("--socket", 0) == 0) g.socket = value("--socket");
        else throw usage_error("unknown option '" + a + "'");
    }
    if (g.dir && g.socket) throw usage_error("give --dir or --socket, not both");
    if (i >= args.size()) throw usage_error("no command given");
    const std::string cmd = args[i];
    std::vector<std::string> rest(args.begin() + std::ptrdiff_t(i) + 1, args.end());
    if (cmd == "run") return run_command(g, rest);
    if (!COMMAND_HELP.count(cmd)) throw usage_error("unknown command '" + cmd + "'");
    return client_command(g, cmd, rest);
}

} // namespace

int main(int argc, char** argv) {
    try {
        return main_command(argc, argv);
    } catch (const usage_error& e) {
        std::cerr << "thinpool: " << e.what() << "\n" << USAGE;
        return 2;
    } catch (const po::error& e) {
        std::cerr << "thinpool: " << e.what() << "\n" << USAGE;
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "thinpool: " << e.what() << "\n";
        return 1;
    }
}
