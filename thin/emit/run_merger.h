#pragma once
// Joins adjacent runs of the emitter IR into maximal runs (virtual and data blocks both advance
// by one, same time), the unit every text format prints. Sources may split runs anywhere.
#include <cstdint>

namespace thin::emit {

struct run {
    std::uint64_t vbegin = 0;
    std::uint64_t dbegin = 0;
    std::uint64_t len = 0;
    std::uint32_t time = 0;
};

class run_merger {
public:
    // Adds a run; returns true and sets *done when the run before it is complete.
    bool add(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time, run* done) {
        if (!len) return false;
        if (cur_.len && vbegin == cur_.vbegin + cur_.len && dbegin == cur_.dbegin + cur_.len && time == cur_.time) {
            cur_.len += len;
            return false;
        }
        bool had = cur_.len != 0;
        if (had) *done = cur_;
        cur_ = run{vbegin, dbegin, len, time};
        return had;
    }
    // The pending run, if any; the merger is empty afterwards.
    bool take(run* done) {
        if (!cur_.len) return false;
        *done = cur_;
        cur_.len = 0;
        return true;
    }

private:
    run cur_;
};

} // namespace thin::emit
