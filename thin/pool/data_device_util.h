#pragma once
// Helpers shared by the data_device implementations (internal to thin/pool).
#include "thin/pool/data_device.h"

#include <cstdint>
#include <cstdlib>
#include <memory>

namespace thin::pool {

struct free_deleter {
    void operator()(std::uint8_t* p) const { std::free(p); }
};
using aligned_buffer = std::unique_ptr<std::uint8_t[], free_deleter>;

// Throws std::bad_alloc.
aligned_buffer allocate_aligned(std::size_t bytes, std::size_t alignment);

// [sector, sector + nr) lies inside a device of `size` sectors (and does not wrap).
inline bool range_ok(std::uint64_t sector, std::uint64_t nr, std::uint64_t size) {
    return sector <= size && nr <= size - sector;
}

inline bool ranges_overlap(std::uint64_t a, std::uint64_t b, std::uint64_t nr) {
    return a < b + nr && b < a + nr;
}

// Copies nr sectors from `from` to `to` with from.read() and to.write(): chunks of up to 1 MiB,
// up to four in flight. done(result) runs on whichever thread completes the last chunk (a
// completion thread of `from` or of `to`); callers that promise a thread re-post it. The ranges
// must be checked by the caller and must not overlap when from and to are the same device.
void chunked_copy(data_device& from, data_device& to, std::uint64_t from_sector, std::uint64_t to_sector,
                  std::uint64_t nr, io_callback done);

} // namespace thin::pool
