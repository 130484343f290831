// Shared pieces of the data devices: aligned buffers and the chunked copy (data_device_util.h).
#include "thin/pool/data_device_util.h"

#include <algorithm>
#include <cerrno>
#include <functional>
#include <mutex>
#include <new>
#include <vector>

namespace thin::pool {

aligned_buffer allocate_aligned(std::size_t bytes, std::size_t alignment) {
    void* p = nullptr;
    if (::posix_memalign(&p, alignment, std::max<std::size_t>(bytes, 1)) != 0) throw std::bad_alloc();
    return aligned_buffer(static_cast<std::uint8_t*>(p));
}

namespace {

constexpr std::uint64_t COPY_CHUNK = 2048;  // sectors: 1 MiB
constexpr unsigned COPY_IN_FLIGHT = 4;

// Lives as long as a chunk holds it; callbacks of both devices may run at once, hence the lock.
struct copy_job : std::enable_shared_from_this<copy_job> {
    data_device* from;
    data_device* to;
    std::uint64_t from_sector, to_sector, nr;
    io_callback done;

    std::mutex mu;
    std::uint64_t next = 0;  // sectors handed out
    unsigned in_flight = 0;
    int error = 0;
    bool finished = false;

    struct chunk {
        std::uint64_t at, nr;
        aligned_buffer buf;
    };

    // Hands out chunks while there is room; finishes when nothing is left in flight.
    void launch() {
        std::vector<std::shared_ptr<chunk>> start;
        io_callback finish;
        int result = 0;
        {
            std::lock_guard l(mu);
            while (error == 0 && next < nr && in_flight < COPY_IN_FLIGHT) {
                auto c = std::make_shared<chunk>();
                c->at = next;
                c->nr = std::min(COPY_CHUNK, nr - next);
                next += c->nr;
                ++in_flight;
                start.push_back(std::move(c));
            }
            if (in_flight == 0 && !finished && (error != 0 || next == nr)) {
                finished = true;
                finish = std::move(done);
                result = error;
            }
        }
        // Outside the lock: neither device promises not to call back before returning.
        for (auto& c : start) {
            try {
                c->buf = allocate_aligned(c->nr * SECTOR_SIZE, 4096);
            } catch (const std::bad_alloc&) {
                chunk_done(-ENOMEM);
                continue;
            }
            auto self = shared_from_this();
            from->read(from_sector + c->at, c->nr, c->buf.get(), [self, c](int r) {
                if (r < 0) return self->chunk_done(r);
                self->to->write(self->to_sector + c->at, c->nr, c->buf.get(), [self, c](int w) { self->chunk_done(w); });
            });
        }
        if (finish) finish(result);
    }

    void chunk_done(int r) {
        {
            std::lock_guard l(mu);
            --in_flight;
            if (r < 0 && error == 0) error = r;
        }
        launch();
    }
};

} // namespace

void chunked_copy(data_device& from, data_device& to, std::uint64_t from_sector, std::uint64_t to_sector,
                  std::uint64_t nr, io_callback done) {
    auto job = std::make_shared<copy_job>();
    job->from = &from;
    job->to = &to;
    job->from_sector = from_sector;
    job->to_sector = to_sector;
    job->nr = nr;
    job->done = std::move(done);
    job->launch();
}

} // namespace thin::pool
