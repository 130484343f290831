// libaio engine: O_DIRECT reads and writes with up to queue_depth requests in flight.
#include "persistent-data/io/aio_engine.h"
#include "persistent-data/io/fd.h"

#include <libaio.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <optional>
#include <string>
#include <vector>

namespace pdata {
namespace {

bool is_aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % MD_BLOCK_SIZE == 0; }

// Opens with O_DIRECT when allowed and possible; `direct` says which it got.
std::unique_ptr<device_file> open_device(const std::string& path, open_options opts, bool try_direct,
                                         bool& direct) {
    if (try_direct) {
        try {
            direct = true;
            return std::make_unique<device_file>(path, opts, true);
        } catch (const open_error& e) {
            // tmpfs (before Linux 6.6) and some FUSE file systems refuse O_DIRECT with EINVAL.
            if (e.error_number() != EINVAL) throw;
        }
    }
    direct = false;
    return std::make_unique<device_file>(path, opts, false);
}

class aio_engine final : public io_engine {
public:
    aio_engine(const std::string& path, open_options opts, unsigned queue_depth, bool try_direct)
        : read_only_(opts.mode == open_mode::read_only) {
        dev_ = open_device(path, opts, try_direct, direct_);
        depth_ = queue_depth ? queue_depth : 1;
        // io_setup fails with EAGAIN when the system-wide aio-max-nr would be exceeded: a smaller
        // queue still works, only slower.
        for (;;) {
            int r = io_setup(static_cast<int>(depth_), &ctx_);
            if (r == 0) break;
            if (r == -EAGAIN && depth_ > 1) {
                depth_ /= 2;
                continue;
            }
            throw io_error(path + ": cannot set up asynchronous I/O (io_setup): " + std::strerror(-r) +
                           (r == -EAGAIN ? " (see /proc/sys/fs/aio-max-nr)" : ""));
        }
        iocbs_.resize(depth_);
        slot_request_.resize(depth_);
        events_.resize(depth_);
        free_slots_.reserve(depth_);
    }

    ~aio_engine() override { io_destroy(ctx_); }

    block_address nr_blocks() override { return dev_->size_bytes() / MD_BLOCK_SIZE; }

    void read(block_address b, void* buf) override {
        io_request r{b, buf};
        run(IO_CMD_PREAD, std::span<const io_request>(&r, 1));
    }

    void write(block_address b, const void* buf) override {
        io_request r{b, const_cast<void*>(buf)};
        run(IO_CMD_PWRITE, std::span<const io_request>(&r, 1));
    }

    void read_many(std::span<const io_request> reqs) override { run(IO_CMD_PREAD, reqs); }
    void write_many(std::span<const io_request> reqs) override { run(IO_CMD_PWRITE, reqs); }

    void flush() override { dev_->sync(); }

    std::string name() const override {
        if (direct_) return dev_->path();
        return dev_->path() + " (buffered: the file system does not support O_DIRECT)";
    }

private:
    void check_request(io_iocb_cmd op, const io_request& r) const {
        if (!is_aligned(r.buf))
            throw std::invalid_argument(dev_->describe(op == IO_CMD_PREAD ? "read" : "write", r.block,
                                                       "buffer is not 4096-byte aligned"));
    }

    // Submits every request, keeping at most depth_ in flight, and waits for all of them. On the
    // first failure no new requests are submitted; those in flight are waited for (their buffers
    // belong to the caller), then the failure is thrown.
    void run(io_iocb_cmd op, std::span<const io_request> reqs) {
        const char* what = op == IO_CMD_PREAD ? "read" : "write";
        for (auto& r : reqs) check_request(op, r);
        if (op == IO_CMD_PWRITE && read_only_ && !reqs.empty())
            throw io_error(dev_->describe(what, reqs[0].block, "device was opened read-only"));

        free_slots_.clear();
        for (unsigned i = depth_; i > 0; --i) free_slots_.push_back(i - 1);

        std::size_t next = 0;       // next request to submit
        std::size_t in_flight = 0;
        std::optional<std::string> failure;
        std::size_t more_failures = 0;
        auto fail = [&](std::string msg) {
            if (failure) ++more_failures; else failure = std::move(msg);
        };

        std::vector<iocb*> batch;
        std::vector<unsigned> slots;
        batch.reserve(depth_);
        slots.reserve(depth_);
        while ((!failure && next < reqs.size()) || in_flight > 0) {
            if (!failure && next < reqs.size() && !free_slots_.empty()) {
                batch.clear();
                slots.clear();
                while (next + batch.size() < reqs.size() && !free_slots_.empty()) {
                    unsigned s = free_slots_.back();
                    free_slots_.pop_back();
                    const io_request& r = reqs[next + batch.size()];
                    iocb* cb = &iocbs_[s];
                    off_t off = static_cast<off_t>(r.block * MD_BLOCK_SIZE);
                    if (op == IO_CMD_PREAD) io_prep_pread(cb, dev_->fd(), r.buf, MD_BLOCK_SIZE, off);
                    else io_prep_pwrite(cb, dev_->fd(), r.buf, MD_BLOCK_SIZE, off);
                    slot_request_[s] = next + batch.size();
                    slots.push_back(s);
                    batch.push_back(cb);
                }
                int r = io_submit(ctx_, static_cast<long>(batch.size()), batch.data());
                std::size_t submitted = r > 0 ? static_cast<std::size_t>(r) : 0;
                // Whatever was not taken goes back; it is prepared again next time round.
                for (std::size_t i = batch.size(); i > submitted; --i) free_slots_.push_back(slots[i - 1]);
                next += submitted;
                in_flight += submitted;
                if (r < 0 && r != -EAGAIN && r != -EINTR)
                    fail(dev_->describe(what, reqs[next].block, std::string("io_submit: ") + std::strerror(-r)));
                if (r < 0 && in_flight == 0 && !failure) {
                    // Out of kernel resources with nothing of ours to wait for: back off briefly.
                    struct timespec ts{0, 1000000};
                    nanosleep(&ts, nullptr);
                }
            }
            if (in_flight == 0) continue;
            int n = io_getevents(ctx_, 1, static_cast<long>(in_flight), events_.data(), nullptr);
            if (n == -EINTR) continue;
            if (n < 0) {
                // Cannot happen with a valid context; drain what is in flight before giving up.
                io_destroy(ctx_);
                ctx_ = io_context_t{};
                int r = io_setup(static_cast<int>(depth_), &ctx_);
                throw io_error(dev_->path() + ": io_getevents failed: " + std::strerror(-n) +
                               (r < 0 ? "; cannot set up asynchronous I/O again" : ""));
            }
            for (int i = 0; i < n; ++i) {
                const io_event& ev = events_[i];
                auto s = static_cast<unsigned>(ev.obj - iocbs_.data());
                const io_request& r = reqs[slot_request_[s]];
                long res = static_cast<long>(ev.res);
                if (res < 0) {
                    fail(dev_->describe(what, r.block, std::strerror(static_cast<int>(-res))));
                } else if (static_cast<std::size_t>(res) != MD_BLOCK_SIZE) {
                    if (res == 0 && op == IO_CMD_PREAD)
                        fail(dev_->describe(what, r.block, "unexpected end of device"));
                    else
                        fail(dev_->describe(what, r.block, std::string("short ") + what + " (" +
                                                               std::to_string(res) + " of " +
                                                               std::to_string(MD_BLOCK_SIZE) + " bytes)"));
                }
                free_slots_.push_back(s);
                --in_flight;
            }
        }
        if (failure) {
            if (more_failures)
                *failure += " (and " + std::to_string(more_failures) + " more failed request" +
                            (more_failures > 1 ? "s)" : ")");
            throw io_error(*failure);
        }
    }

    std::unique_ptr<device_file> dev_;
    bool direct_ = false;
    bool read_only_;
    unsigned depth_ = 1;
    io_context_t ctx_{};
    std::vector<iocb> iocbs_;
    std::vector<std::size_t> slot_request_;  // which request each iocb slot carries
    std::vector<io_event> events_;
    std::vector<unsigned> free_slots_;
};

} // namespace

std::unique_ptr<io_engine> open_aio_engine(const std::string& path, open_options opts, unsigned queue_depth) {
    return std::make_unique<aio_engine>(path, opts, queue_depth, true);
}

std::unique_ptr<io_engine> open_buffered_aio_engine(const std::string& path, open_options opts,
                                                    unsigned queue_depth) {
    return std::make_unique<aio_engine>(path, opts, queue_depth, false);
}

} // namespace pdata
