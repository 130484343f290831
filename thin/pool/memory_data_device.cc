// The in-memory data device (data_device.h): sparse contents, a completion thread that finishes
// requests in shuffled batches, a volatile write cache with crash(), and fault injection.
//
// Model:
//   - Contents live in 64 KiB chunks, allocated on first write; an absent chunk reads as zeros.
//     Two images share chunks copy-on-write: `current` (what reads see) and `durable` (what
//     survives a crash).
//   - Every request goes into one queue. The completion thread takes the whole queue as a batch,
//     shuffles it (seeded), and executes each request under the lock, then runs its callback
//     without the lock. So requests submitted together complete in any order, as on a real device.
//   - A write (also write_zeroes, copy, discard) is applied to `current` when executed and appended
//     to the volatile log with a completion sequence number. A flush records, when submitted, how
//     many writes had completed; when it executes, exactly those log entries are applied to
//     `durable` and leave the log. crash() rebuilds the contents as durable + chosen log entries.
//   - Faults are decided when a request is submitted (counting in submission order); crash() bumps
//     an epoch so that requests submitted before it fail too, even if they execute after reboot().
#include "thin/pool/data_device.h"
#include "thin/pool/data_device_util.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <random>
#include <stdexcept>
#include <thread>
#include <unordered_map>

namespace thin::pool {

namespace {

constexpr std::uint64_t CHUNK_BYTES = 64 * 1024;
using chunk = std::array<std::uint8_t, CHUNK_BYTES>;

// A sparse image: chunk index -> contents. Chunks may be shared between images; writers copy a
// shared chunk first.
class image {
public:
    void read(std::uint64_t offset, std::uint64_t len, std::uint8_t* out) const {
        for_each(offset, len, [&](std::uint64_t idx, std::uint64_t in_chunk, std::uint64_t n, std::uint64_t pos) {
            auto it = chunks_.find(idx);
            if (it == chunks_.end()) std::memset(out + pos, 0, n);
            else std::memcpy(out + pos, it->second->data() + in_chunk, n);
        });
    }

    // bytes == nullptr writes zeros (and frees chunks it covers completely).
    void write(std::uint64_t offset, std::uint64_t len, const std::uint8_t* bytes) {
        for_each(offset, len, [&](std::uint64_t idx, std::uint64_t in_chunk, std::uint64_t n, std::uint64_t pos) {
            if (!bytes && n == CHUNK_BYTES) {
                chunks_.erase(idx);
                return;
            }
            auto it = chunks_.find(idx);
            if (!bytes && it == chunks_.end()) return;
            auto& c = chunks_[idx];
            if (!c) c = std::make_shared<chunk>();  // value-initialised: zeros
            else if (c.use_count() > 1) c = std::make_shared<chunk>(*c);
            if (bytes) std::memcpy(c->data() + in_chunk, bytes + pos, n);
            else std::memset(c->data() + in_chunk, 0, n);
        });
    }

    // Drops everything at or beyond `bytes`.
    void truncate(std::uint64_t bytes) {
        for (auto it = chunks_.begin(); it != chunks_.end();) {
            if (it->first * CHUNK_BYTES >= bytes) it = chunks_.erase(it);
            else ++it;
        }
        if (bytes % CHUNK_BYTES) write(bytes, CHUNK_BYTES - bytes % CHUNK_BYTES, nullptr);
    }

private:
    template <typename F>
    static void for_each(std::uint64_t offset, std::uint64_t len, F&& f) {
        std::uint64_t pos = 0;
        while (pos < len) {
            std::uint64_t at = offset + pos;
            std::uint64_t in_chunk = at % CHUNK_BYTES;
            std::uint64_t n = std::min(len - pos, CHUNK_BYTES - in_chunk);
            f(at / CHUNK_BYTES, in_chunk, n, pos);
            pos += n;
        }
    }

    std::unordered_map<std::uint64_t, std::shared_ptr<chunk>> chunks_;
};

struct fault {
    bool armed = false;
    bool and_after = false;
    std::uint64_t n = 0;
    std::uint64_t seen = 0;

    void arm(std::uint64_t at, bool after) { *this = fault{true, after, at, 0}; }
    // Counts one request; true when it must fail.
    bool hit() {
        if (!armed) return false;
        ++seen;
        return seen == n || (and_after && seen > n);
    }
};

} // namespace

struct memory_data_device::impl {
    enum class kind { read, write, zeroes, copy_local, copy_in, discard, flush, result };

    struct op {
        kind k = kind::result;
        std::uint64_t sector = 0, nr = 0;
        std::uint64_t from_sector = 0;        // copy_local
        void* read_buf = nullptr;             // read
        const void* write_buf = nullptr;      // write
        std::shared_ptr<std::vector<std::uint8_t>> data;  // copy_in: what was read from the origin
        std::uint64_t flush_covers = 0;       // flush: writes completed before it was submitted
        std::uint64_t epoch = 0;
        bool fail = false;
        int result = 0;                       // kind::result
        io_callback done;
    };

    struct log_entry {
        std::uint64_t seq;
        std::uint64_t offset, len;
        std::vector<std::uint8_t> bytes;  // empty: zeros
    };

    mutable std::mutex mu;
    std::condition_variable work_cv;
    std::condition_variable idle_cv;
    std::uint64_t size;  // sectors
    bool discard_supported;
    image current, durable;
    std::deque<log_entry> volatile_log;  // in completion order
    std::uint64_t completed_writes = 0;  // sequence number of the next completing write
    fault read_fault, write_fault, flush_fault;
    bool crashed = false;
    std::uint64_t epoch = 0;
    std::uint64_t nr_writes = 0, nr_flushes = 0, nr_discards = 0;

    std::vector<op> queue;
    std::uint64_t outstanding = 0;  // submitted, callback not yet returned
    bool stopping = false;
    std::mt19937_64 rng;
    std::thread thread;
    std::thread::id thread_id;

    impl(std::uint64_t nr, bool discard, std::uint64_t seed) : size(nr), discard_supported(discard), rng(seed) {
        thread = std::thread([this] { run(); });
        thread_id = thread.get_id();
    }

    // Queues op; the lock must be held.
    void push_locked(op o) {
        if (crashed) o = result_op(-EIO, std::move(o.done));  // the machine is down until reboot()
        o.epoch = epoch;
        queue.push_back(std::move(o));
        work_cv.notify_one();
    }

    void push(op o) {
        std::lock_guard l(mu);
        ++outstanding;
        push_locked(std::move(o));
    }

    static op result_op(int r, io_callback done) {
        op o;
        o.k = kind::result;
        o.result = r;
        o.done = std::move(done);
        return o;
    }

    void log_write(std::uint64_t offset, std::uint64_t len, std::vector<std::uint8_t> bytes) {
        volatile_log.push_back(log_entry{completed_writes++, offset, len, std::move(bytes)});
        ++nr_writes;
    }

    // Runs under the lock on the completion thread.
    int execute(op& o) {
        if (o.k == kind::result) return o.result;
        if (crashed || o.epoch != epoch) return -EIO;
        if (o.fail) return -EIO;
        if (o.k != kind::flush && !range_ok(o.sector, o.nr, size)) return -EIO;  // shrunk meanwhile
        const std::uint64_t off = o.sector * SECTOR_SIZE, len = o.nr * SECTOR_SIZE;
        switch (o.k) {
        case kind::read:
            current.read(off, len, static_cast<std::uint8_t*>(o.read_buf));
            return 0;
        case kind::write: {
            auto* p = static_cast<const std::uint8_t*>(o.write_buf);
            current.write(off, len, p);
            log_write(off, len, std::vector<std::uint8_t>(p, p + len));
            return 0;
        }
        case kind::copy_in:
            current.write(off, len, o.data->data());
            log_write(off, len, std::move(*o.data));
            return 0;
        case kind::copy_local: {
            if (!range_ok(o.from_sector, o.nr, size)) return -EIO;
            std::vector<std::uint8_t> bytes(len);
            current.read(o.from_sector * SECTOR_SIZE, len, bytes.data());
            current.write(off, len, bytes.data());
            log_write(off, len, std::move(bytes));
            return 0;
        }
        case kind::zeroes:
            current.write(off, len, nullptr);
            log_write(off, len, {});
            return 0;
        case kind::discard:
            // Discarded contents are gone from the reader's view; like a write, the discard is
            // undone by a crash unless it is kept or flushed.
            current.write(off, len, nullptr);
            volatile_log.push_back(log_entry{completed_writes++, off, len, {}});
            ++nr_discards;
            return 0;
        case kind::flush:
            while (!volatile_log.empty() && volatile_log.front().seq < o.flush_covers) {
                if (volatile_log.back().seq < o.flush_covers) {
                    // Everything is covered: current is durable + the whole log, so share it.
                    volatile_log.clear();
                    durable = current;
                    break;
                }
                apply(durable, volatile_log.front());
                volatile_log.pop_front();
            }
            ++nr_flushes;
            return 0;
        case kind::result:
            break;
        }
        return o.result;
    }

    void apply(image& img, const log_entry& e) {
        if (!range_ok(e.offset / SECTOR_SIZE, e.len / SECTOR_SIZE, size)) return;  // beyond a shrunk end
        img.write(e.offset, e.len, e.bytes.empty() ? nullptr : e.bytes.data());
    }

    void run() {
        std::vector<op> batch;
        std::unique_lock l(mu);
        for (;;) {
            work_cv.wait(l, [&] { return stopping || !queue.empty(); });
            if (queue.empty()) return;  // stopping and idle
            batch.swap(queue);
            std::shuffle(batch.begin(), batch.end(), rng);
            for (auto& o : batch) {
                int r = execute(o);
                io_callback done = std::move(o.done);
                l.unlock();
                if (done) done(r);
                done = nullptr;  // whatever it captured goes before the request counts as finished
                l.lock();
                if (--outstanding == 0) idle_cv.notify_all();
            }
            batch.clear();
        }
    }
};

memory_data_device::memory_data_device(std::uint64_t nr_sectors, bool discard_supported, std::uint64_t seed)
    : impl_(std::make_unique<impl>(nr_sectors, discard_supported, seed)) {}

memory_data_device::~memory_data_device() {
    drain();
    {
        std::lock_guard l(impl_->mu);
        impl_->stopping = true;
    }
    impl_->work_cv.notify_all();
    impl_->thread.join();
}

std::uint64_t memory_data_device::nr_sectors() {
    std::lock_guard l(impl_->mu);
    return impl_->size;
}

void memory_data_device::read(std::uint64_t sector, std::uint64_t nr, void* buf, io_callback done) {
    std::lock_guard l(impl_->mu);
    ++impl_->outstanding;
    if (nr == 0) return impl_->push_locked(impl::result_op(0, std::move(done)));
    if (!range_ok(sector, nr, impl_->size)) return impl_->push_locked(impl::result_op(-EIO, std::move(done)));
    impl::op o;
    o.k = impl::kind::read;
    o.sector = sector;
    o.nr = nr;
    o.read_buf = buf;
    o.fail = impl_->read_fault.hit();
    o.done = std::move(done);
    impl_->push_locked(std::move(o));
}

void memory_data_device::write(std::uint64_t sector, std::uint64_t nr, const void* buf, io_callback done) {
    std::lock_guard l(impl_->mu);
    ++impl_->outstanding;
    if (nr == 0) return impl_->push_locked(impl::result_op(0, std::move(done)));
    if (!range_ok(sector, nr, impl_->size)) return impl_->push_locked(impl::result_op(-EIO, std::move(done)));
    impl::op o;
    o.k = impl::kind::write;
    o.sector = sector;
    o.nr = nr;
    o.write_buf = buf;
    o.fail = impl_->write_fault.hit();
    o.done = std::move(done);
    impl_->push_locked(std::move(o));
}

void memory_data_device::write_zeroes(std::uint64_t sector, std::uint64_t nr, io_callback done) {
    std::lock_guard l(impl_->mu);
    ++impl_->outstanding;
    if (nr == 0) return impl_->push_locked(impl::result_op(0, std::move(done)));
    if (!range_ok(sector, nr, impl_->size)) return impl_->push_locked(impl::result_op(-EIO, std::move(done)));
    impl::op o;
    o.k = impl::kind::zeroes;
    o.sector = sector;
    o.nr = nr;
    o.fail = impl_->write_fault.hit();
    o.done = std::move(done);
    impl_->push_locked(std::move(o));
}

void memory_data_device::copy(data_device& from, std::uint64_t from_sector, std::uint64_t to_sector,
                              std::uint64_t nr, io_callback done) {
    if (nr == 0) {
        std::lock_guard l(impl_->mu);
        ++impl_->outstanding;
        return impl_->push_locked(impl::result_op(0, std::move(done)));
    }
    if (&from == this) {
        std::lock_guard l(impl_->mu);
        ++impl_->outstanding;
        if (!range_ok(to_sector, nr, impl_->size) || !range_ok(from_sector, nr, impl_->size))
            return impl_->push_locked(impl::result_op(-EIO, std::move(done)));
        if (ranges_overlap(from_sector, to_sector, nr))
            return impl_->push_locked(impl::result_op(-EINVAL, std::move(done)));
        impl::op o;
        o.k = impl::kind::copy_local;
        o.sector = to_sector;
        o.from_sector = from_sector;
        o.nr = nr;
        o.fail = impl_->write_fault.hit();
        o.done = std::move(done);
        impl_->push_locked(std::move(o));
        return;
    }

    // From another device: read it (asynchronously, on its thread), then queue the write here.
    std::uint64_t from_size = from.nr_sectors();  // before our lock: `from` has locks of its own
    std::uint64_t epoch;
    bool fail;
    {
        std::lock_guard l(impl_->mu);
        ++impl_->outstanding;
        if (!range_ok(to_sector, nr, impl_->size) || !range_ok(from_sector, nr, from_size))
            return impl_->push_locked(impl::result_op(-EIO, std::move(done)));
        if (impl_->crashed) return impl_->push_locked(impl::result_op(-EIO, std::move(done)));
        fail = impl_->write_fault.hit();
        if (fail) return impl_->push_locked(impl::result_op(-EIO, std::move(done)));
        epoch = impl_->epoch;
    }
    auto data = std::make_shared<std::vector<std::uint8_t>>(nr * SECTOR_SIZE);
    auto cb = std::make_shared<io_callback>(std::move(done));
    from.read(from_sector, nr, data->data(), [this, data, cb, to_sector, nr, epoch](int r) {
        std::lock_guard l(impl_->mu);
        impl::op o;
        if (r < 0) {
            o = impl::result_op(r, std::move(*cb));
        } else {
            o.k = impl::kind::copy_in;
            o.sector = to_sector;
            o.nr = nr;
            o.data = data;
            o.done = std::move(*cb);
        }
        // Keeps the epoch of the submission: a crash since then fails the copy.
        o.epoch = epoch;
        impl_->queue.push_back(std::move(o));
        impl_->work_cv.notify_one();
    });
}

void memory_data_device::discard(std::uint64_t sector, std::uint64_t nr, io_callback done) {
    std::lock_guard l(impl_->mu);
    ++impl_->outstanding;
    if (nr == 0) return impl_->push_locked(impl::result_op(0, std::move(done)));
    if (!range_ok(sector, nr, impl_->size)) return impl_->push_locked(impl::result_op(-EIO, std::move(done)));
    if (!impl_->discard_supported) return impl_->push_locked(impl::result_op(-EOPNOTSUPP, std::move(done)));
    impl::op o;
    o.k = impl::kind::discard;
    o.sector = sector;
    o.nr = nr;
    o.done = std::move(done);
    impl_->push_locked(std::move(o));
}

bool memory_data_device::supports_discard() const {
    std::lock_guard l(impl_->mu);
    return impl_->discard_supported;
}

void memory_data_device::flush(io_callback done) {
    std::lock_guard l(impl_->mu);
    ++impl_->outstanding;
    impl::op o;
    o.k = impl::kind::flush;
    o.flush_covers = impl_->completed_writes;
    o.fail = impl_->flush_fault.hit();
    o.done = std::move(done);
    impl_->push_locked(std::move(o));
}

void memory_data_device::drain() {
    if (std::this_thread::get_id() == impl_->thread_id)
        throw std::logic_error("memory data device: drain() called from a completion callback");
    std::unique_lock l(impl_->mu);
    impl_->idle_cv.wait(l, [&] { return impl_->outstanding == 0; });
}

void memory_data_device::resize(std::uint64_t nr) {
    std::lock_guard l(impl_->mu);
    if (nr < impl_->size) {
        impl_->current.truncate(nr * SECTOR_SIZE);
        impl_->durable.truncate(nr * SECTOR_SIZE);
    }
    impl_->size = nr;
}

void memory_data_device::fail_read_at(std::uint64_t n, bool and_after) {
    std::lock_guard l(impl_->mu);
    impl_->read_fault.arm(n, and_after);
}

void memory_data_device::fail_write_at(std::uint64_t n, bool and_after) {
    std::lock_guard l(impl_->mu);
    impl_->write_fault.arm(n, and_after);
}

void memory_data_device::fail_flush_at(std::uint64_t n, bool and_after) {
    std::lock_guard l(impl_->mu);
    impl_->flush_fault.arm(n, and_after);
}

void memory_data_device::clear_faults() {
    std::lock_guard l(impl_->mu);
    impl_->read_fault = {};
    impl_->write_fault = {};
    impl_->flush_fault = {};
}

void memory_data_device::crash(const std::function<bool(std::size_t)>& keep) {
    std::lock_guard l(impl_->mu);
    image img = impl_->durable;  // shares chunks; writes below copy them
    for (std::size_t i = 0; i < impl_->volatile_log.size(); ++i)
        if (keep && keep(i)) impl_->apply(img, impl_->volatile_log[i]);
    impl_->current = img;
    impl_->durable = std::move(img);
    impl_->volatile_log.clear();
    impl_->crashed = true;
    ++impl_->epoch;
}

void memory_data_device::reboot() {
    std::lock_guard l(impl_->mu);
    impl_->crashed = false;
}

std::size_t memory_data_device::volatile_writes() const {
    std::lock_guard l(impl_->mu);
    return impl_->volatile_log.size();
}

std::vector<std::uint8_t> memory_data_device::contents(std::uint64_t sector, std::uint64_t nr) const {
    std::lock_guard l(impl_->mu);
    if (!range_ok(sector, nr, impl_->size)) throw std::out_of_range("memory data device: contents() beyond the end");
    std::vector<std::uint8_t> out(nr * SECTOR_SIZE);
    impl_->current.read(sector * SECTOR_SIZE, out.size(), out.data());
    return out;
}

void memory_data_device::set_contents(std::uint64_t sector, const std::vector<std::uint8_t>& bytes) {
    std::lock_guard l(impl_->mu);
    if (bytes.size() % SECTOR_SIZE || !range_ok(sector, bytes.size() / SECTOR_SIZE, impl_->size))
        throw std::out_of_range("memory data device: set_contents() needs whole sectors inside the device");
    // Set-up, not I/O: the bytes are durable at once.
    impl_->current.write(sector * SECTOR_SIZE, bytes.size(), bytes.data());
    impl_->durable.write(sector * SECTOR_SIZE, bytes.size(), bytes.data());
}

std::uint64_t memory_data_device::writes() const {
    std::lock_guard l(impl_->mu);
    return impl_->nr_writes;
}

std::uint64_t memory_data_device::flushes() const {
    std::lock_guard l(impl_->mu);
    return impl_->nr_flushes;
}

std::uint64_t memory_data_device::discards() const {
    std::lock_guard l(impl_->mu);
    return impl_->nr_discards;
}

} // namespace thin::pool
