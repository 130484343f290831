#pragma once
// A deferred set (pool.md §7.2): counts I/O in generations so a job can wait for exactly the I/O
// started before it was queued. A ring of 64 generations, each an in-flight count and the jobs
// waiting for it and every older generation to drain.
#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace thin::pool {

class deferred_set {
public:
    using job = std::function<void()>;
    static constexpr unsigned NR_GENERATIONS = 64;

    // Counts one I/O in the current generation; pass the result to dec() when it completes.
    unsigned inc();
    // Ends an I/O counted by inc(); returns the jobs that may run now (the caller runs them,
    // outside any lock of its own that those jobs might need).
    [[nodiscard]] std::vector<job> dec(unsigned generation);
    // False: nothing is in flight, j is left as it was and the caller runs it now. True: j was
    // queued behind every I/O counted so far (and moved from); later I/O does not delay it.
    [[nodiscard]] bool add_work(job& j);

    // I/O in flight in all generations (tests).
    std::uint64_t in_flight() const;

private:
    struct generation {
        std::uint64_t count = 0;
        std::vector<job> jobs;
    };
    static unsigned next(unsigned g) { return (g + 1) % NR_GENERATIONS; }

    mutable std::mutex m_;
    std::array<generation, NR_GENERATIONS> gens_;
    unsigned current_ = 0;
    // The oldest generation that may still have I/O or jobs; invariant: oldest_ == current_ or
    // gens_[oldest_].count > 0.
    unsigned oldest_ = 0;
};

} // namespace thin::pool
