#include "thin/pool/deferred_set.h"

#include <stdexcept>

namespace thin::pool {

unsigned deferred_set::inc() {
    std::lock_guard lk(m_);
    ++gens_[current_].count;
    return current_;
}

std::vector<deferred_set::job> deferred_set::dec(unsigned g) {
    std::vector<job> ready;
    std::lock_guard lk(m_);
    if (g >= NR_GENERATIONS || gens_[g].count == 0) throw std::logic_error("deferred_set: dec without inc");
    --gens_[g].count;
    auto take = [&](generation& gen) {
        for (auto& j : gen.jobs) ready.push_back(std::move(j));
        gen.jobs.clear();
    };
    // Generations older than the current one only drain; once the oldest is empty its jobs (and
    // those of the drained generations after it) may run.
    while (oldest_ != current_ && gens_[oldest_].count == 0) {
        take(gens_[oldest_]);
        oldest_ = next(oldest_);
    }
    if (oldest_ == current_ && gens_[current_].count == 0) take(gens_[current_]);
    return ready;
}

bool deferred_set::add_work(job& j) {
    std::lock_guard lk(m_);
    if (oldest_ == current_ && gens_[current_].count == 0) return false;
    gens_[current_].jobs.push_back(std::move(j));
    // Later I/O goes to a new generation, so it does not hold this job up; when the ring is full
    // (the next generation is the oldest, still busy) it joins this one, which only delays.
    unsigned n = next(current_);
    if (gens_[n].count == 0 && n != oldest_) current_ = n;
    return true;
}

std::uint64_t deferred_set::in_flight() const {
    std::lock_guard lk(m_);
    std::uint64_t n = 0;
    for (auto& g : gens_) n += g.count;
    return n;
}

} // namespace thin::pool
