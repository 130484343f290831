#pragma once
// A progress bar on stderr for long runs: drawn only when stderr is a terminal and not quiet,
// redrawn at most a few times a second, erased when done.
#include <chrono>
#include <cstdint>
#include <string>

namespace thin::cli {

class progress {
public:
    progress(std::string title, bool quiet);
    ~progress();
    progress(const progress&) = delete;
    progress& operator=(const progress&) = delete;

    bool enabled() const { return enabled_; }
    void update(std::uint64_t done, std::uint64_t total);
    void finish();

private:
    std::string title_;
    bool enabled_;
    bool drawn_ = false;
    std::chrono::steady_clock::time_point last_{};
};

} // namespace thin::cli
