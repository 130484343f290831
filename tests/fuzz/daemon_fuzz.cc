// Byte streams into a running daemon's control socket (thin/daemon: control_server + the command
// handlers). Each input is up to 16 request lines; each line goes to the daemon on its own
// connection, as `thinpool` sends them, so one input is a sequence of commands on one pool
// (create, snapshot, resize, delete, message passthrough, status, ...). Every input starts a
// fresh daemon on fresh files, so a crash reproduces from its input alone.
//
// Findings, besides sanitizer reports: a request that gets no status line, a malformed one, or no
// end of its response within the deadline (a hang); a daemon that, after `stop`, will not start
// again on its own files (the catalogue and the metadata must still agree).
#include "thin/daemon/config.h"
#include "thin/daemon/daemon.h"
#include "thin/daemon/protocol.h"
#include "thin/daemon/text.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdlib.h>  // mkdtemp
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace td = thin::daemon;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr std::size_t MAX_LINES = 16;
constexpr auto DEADLINE = 20s;  // beyond the server's own 10 s request deadline

[[noreturn]] void finding(const std::string& what, std::string_view line) {
    std::fprintf(stderr, "daemon_fuzz: %s (request %.*s)\n", what.c_str(), static_cast<int>(line.size()),
                 line.data());
    std::fflush(stderr);
    __builtin_trap();
}

td::daemon_options options(const std::string& dir) {
    td::settings s;
    s.data_size = 16ull << 20;     // 256 blocks of 64 KiB
    s.metadata_size = 1ull << 20;  // 256 metadata blocks
    s.nbd_socket = "";             // control socket only
    s.low_water_mark = 200;        // so events are raised
    td::daemon_options o = td::resolve(dir, s);
    o.commit_period = std::chrono::hours(1);
    o.no_space_timeout = 1s;
    o.log = [](const std::string&) {};
    return o;
}

std::unique_ptr<td::daemon> start(const std::string& dir, std::string_view after) {
    auto d = std::make_unique<td::daemon>(options(dir));
    try {
        d->start();
    } catch (const td::startup_error& e) {
        finding(std::string("the daemon would not start: ") + e.what(), after);
    }
    return d;
}

// One request on its own connection, answered in full.
void ask(const std::string& socket, std::string_view line) {
    bool events = false;
    try {
        auto words = td::decode_words(line);
        events = !words.empty() && words[0] == "events";
    } catch (const std::exception&) {
    }
    try {
        td::connection c(socket);
        c.send_raw(std::string(line) + "\n");
        td::response r = c.read_status(DEADLINE);
        if (events && r.ok) return;  // subscribed; closing the connection ends the stream
        c.read_rest(DEADLINE);
    } catch (const td::client_error& e) {
        finding(std::string("no complete response: ") + e.what(), line);
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    std::vector<std::string_view> lines;
    while (!text.empty() && lines.size() < MAX_LINES) {
        std::size_t nl = text.find('\n');
        lines.push_back(text.substr(0, nl));
        text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    }
    if (lines.empty()) return 0;

    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/daemon_fuzz.XXXXXX";
    if (!::mkdtemp(templ.data())) __builtin_trap();
    std::string dir = templ + "/pool";
    {
        auto d = start(dir, "(first start)");
        const std::string socket = d->options().socket_path;
        for (std::string_view line : lines) {
            ask(socket, line);
            if (d->wait_for_stop_request(0ms)) {  // `stop`: shut down, and the files must open again
                d->shutdown();
                d.reset();
                d = start(dir, line);
            }
        }
        d->shutdown();
    }
    std::error_code ec;
    fs::remove_all(templ, ec);
    return 0;
}
