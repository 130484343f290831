#include "thin/cli/progress.h"

#include <cstdio>
#include <unistd.h>

namespace thin::cli {

progress::progress(std::string title, bool quiet)
    : title_(std::move(title)), enabled_(!quiet && ::isatty(STDERR_FILENO)) {}

progress::~progress() { finish(); }

void progress::update(std::uint64_t done, std::uint64_t total) {
    if (!enabled_ || total == 0) return;
    auto now = std::chrono::steady_clock::now();
    if (drawn_ && now - last_ < std::chrono::milliseconds(200) && done < total) return;
    last_ = now;
    constexpr int WIDTH = 40;
    unsigned pct = static_cast<unsigned>(done * 100 / total);
    int filled = static_cast<int>(done * WIDTH / total);
    std::string bar(static_cast<std::size_t>(filled), '=');
    bar.resize(WIDTH, ' ');
    std::fprintf(stderr, "\r%s [%s] %3u%%", title_.c_str(), bar.c_str(), pct);
    std::fflush(stderr);
    drawn_ = true;
}

void progress::finish() {
    if (!drawn_) return;
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drawn_ = false;
}

} // namespace thin::cli
