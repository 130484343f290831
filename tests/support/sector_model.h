#pragma once
// What a thin device may read back after a crash (the crash tests' model): per sector, its
// contents at its last durability point, any value written after that point, or zeros where a
// discard of the block came after it. Values are pattern tags (tests/support/pool_support.h).
#include <algorithm>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace thinpool_test {

struct sector_model {
    sector_model(std::uint64_t nr_blocks, std::uint32_t block_sectors)
        : bs(block_sectors), current(nr_blocks * block_sectors, 0), durable(nr_blocks * block_sectors, 0),
          post(nr_blocks * block_sectors), zero_ok(nr_blocks, false) {}

    std::uint32_t bs;
    std::vector<std::uint64_t> current;            // what a read returns now
    std::vector<std::uint64_t> durable;            // as of the last durability point
    std::vector<std::vector<std::uint64_t>> post;  // written since
    std::vector<bool> zero_ok;                     // per block: discarded since
    bool maybe_deleted = false;                    // a delete was in flight at the crash

    void make_durable() {
        durable = current;
        for (auto& p : post) p.clear();
        std::fill(zero_ok.begin(), zero_ok.end(), false);
    }
    bool allowed(std::uint64_t s, std::uint64_t v) const {
        if (v == durable[s]) return true;
        if (v == 0 && zero_ok[s / bs]) return true;
        return std::find(post[s].begin(), post[s].end(), v) != post[s].end();
    }
    std::string allowed_list(std::uint64_t s) const {
        std::ostringstream os;
        os << "durable " << durable[s];
        for (auto v : post[s]) os << ", " << v;
        if (zero_ok[s / bs]) os << ", zeros";
        return os.str();
    }
};

// Where the crash workloads write: anywhere on the device, 1 sector to 2 blocks long, or one time in
// three a whole block or two from a block boundary; clipped at the end of the device.
struct extent {
    std::uint64_t start, len;
};
inline extent random_write_extent(std::mt19937_64& rng, std::uint64_t nr_sectors, std::uint64_t block_sectors) {
    std::uint64_t start = rng() % nr_sectors;
    std::uint64_t len = 1 + rng() % (2 * block_sectors);
    if (rng() % 3 == 0) {
        start -= start % block_sectors;
        len = block_sectors * (1 + rng() % 2);
    }
    return {start, std::min(len, nr_sectors - start)};
}

} // namespace thinpool_test
