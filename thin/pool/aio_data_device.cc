// The libaio data device (data_device.h): O_DIRECT reads and writes through one io_context, a
// completion thread that runs every callback, and helper threads for the calls that only exist
// synchronously (fdatasync, BLKDISCARD, fallocate) and for the rare transfers O_DIRECT cannot take.
//
// Threads:
//   - submitters (any thread) split a request into pieces, queue them and submit as many as there
//     are free slots; they never wait for a slot and never run a callback.
//   - the completion thread sleeps in poll(2) on an eventfd that every iocb signals (IOCB_FLAG_RESFD)
//     and that helpers and submitters write to wake it; it reaps with io_getevents, resubmits the
//     rest of short transfers, finishes pieces, runs the callbacks posted by helpers and refills
//     the free slots from the submission queue.
//   - two helper threads run fdatasync, discards and buffered pread/pwrite, then post the result to
//     the completion thread.
// Every callback runs on the completion thread, so a caller may hold its own locks while it submits.
#include "thin/pool/data_device.h"
#include "thin/pool/data_device_util.h"

#include <libaio.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <fstream>
#include <linux/fs.h>
#include <poll.h>
#include <stdexcept>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <system_error>
#include <thread>
#include <unistd.h>

namespace thin::pool {
namespace {

constexpr std::size_t MAX_PIECE = 1u << 20;  // bytes per iocb; also the zero buffer's size
constexpr unsigned NR_HELPERS = 2;           // a long discard must not hold up a flush

// A preallocated, shared source for write_zeroes (read by the kernel only, so one for all devices).
const std::uint8_t* zero_buffer() {
    static const aligned_buffer zeros = [] {
        auto b = allocate_aligned(MAX_PIECE, 4096);
        std::memset(b.get(), 0, MAX_PIECE);
        return b;
    }();
    return zeros.get();
}

std::system_error os_error(int err, const std::string& path, const std::string& what) {
    return std::system_error(err, std::generic_category(), path + ": " + what);
}

std::uint64_t round_down(std::uint64_t v, std::uint64_t a) { return v / a * a; }
std::uint64_t round_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

class aio_data_device final : public data_device {
public:
    aio_data_device(const std::string& path, const data_device_options& opts);
    ~aio_data_device() override;

    std::uint64_t nr_sectors() override;
    void read(std::uint64_t sector, std::uint64_t nr_sectors, void* buf, io_callback done) override;
    void write(std::uint64_t sector, std::uint64_t nr_sectors, const void* buf, io_callback done) override;
    void write_zeroes(std::uint64_t sector, std::uint64_t nr_sectors, io_callback done) override;
    void copy(data_device& from, std::uint64_t from_sector, std::uint64_t to_sector, std::uint64_t nr_sectors,
              io_callback done) override;
    void discard(std::uint64_t sector, std::uint64_t nr_sectors, io_callback done) override;
    bool supports_discard() const override { return !read_only_ && discard_ok_.load(std::memory_order_relaxed); }
    void flush(io_callback done) override;
    void drain() override;
    std::string name() const override;

private:
    // One caller request; only the completion thread touches it once its pieces are queued.
    struct request {
        io_callback done;
        std::size_t parts_left = 1;
        int error = 0;
    };

    // One transfer of at most MAX_PIECE bytes: an iocb, or a buffered pread/pwrite on a helper.
    struct piece {
        request* req = nullptr;
        bool is_write = false;
        bool buffered = false;      // through bfd_ on a helper thread
        std::uint64_t offset = 0;   // bytes, advanced by short transfers
        std::size_t len = 0;        // bytes still to transfer
        std::uint8_t* io_buf = nullptr;  // where the kernel reads or writes (advances with offset)
        std::uint8_t* copy_out = nullptr;  // reads through a bounce buffer: the caller's buffer
        std::size_t total = 0;             // bytes to copy out
        aligned_buffer bounce;
        iocb cb{};
    };

    void open_file(const std::string& path, const data_device_options& opts);
    void probe_alignment();
    void probe_discard();
    std::uint64_t query_bytes() const;
    bool in_range(std::uint64_t sector, std::uint64_t nr);

    request* begin(io_callback done);
    void complete(request* r, int result);  // from any thread: finishes r on the completion thread
    void finish_part(request* r, int result);  // completion thread only
    void post(std::function<void()> fn);
    void wake();

    void transfer(request* r, bool is_write, std::uint64_t offset, std::uint64_t len, std::uint8_t* buf,
                  bool zeroes);
    void prepare(piece* p);
    void queue(std::vector<piece*>& pieces);
    void pump();
    void finish_piece(piece* p, int result);
    void on_event(piece* p, long res);
    void run_buffered(piece* p);
    void run_helper(std::function<int()> job, request* r);

    void completion_loop();
    void helper_loop();

    std::string path_;
    int fd_ = -1;
    int bfd_ = -1;  // the same file without O_DIRECT, for transfers O_DIRECT cannot take
    int efd_ = -1;
    bool block_device_ = false;
    bool direct_ = false;
    bool read_only_ = false;
    std::uint64_t offset_align_ = 1;  // O_DIRECT: offsets and lengths (logical block size)
    std::uint64_t memory_align_ = 1;  // O_DIRECT: buffer addresses
    std::uint64_t discard_align_ = 512;  // BLKDISCARD: the logical block size, direct or not
    std::atomic<bool> discard_ok_{false};
    std::atomic<std::uint64_t> size_bytes_{0};

    unsigned depth_ = 1;
    io_context_t ctx_{};

    mutable std::mutex mu_;
    std::condition_variable drained_cv_;
    std::condition_variable helper_cv_;
    std::deque<piece*> pending_;  // waiting for a slot
    unsigned in_kernel_ = 0;      // iocbs submitted and not yet reaped
    bool retry_pending_ = false;  // io_submit said EAGAIN: retry on a timer if nothing completes
    std::vector<std::function<void()>> posted_;  // run on the completion thread
    std::deque<std::function<void()>> helper_jobs_;
    std::uint64_t outstanding_ = 0;  // caller requests whose callback has not returned
    bool stopping_ = false;

    std::thread completion_thread_;
    std::atomic<std::thread::id> completion_id_{};  // set by the thread itself, read by submitters
    std::vector<std::thread> helpers_;
};

aio_data_device::aio_data_device(const std::string& path, const data_device_options& opts)
    : path_(path), read_only_(opts.read_only) {
    open_file(path, opts);
    try {
        size_bytes_ = query_bytes();
        probe_alignment();
        probe_discard();
        if (direct_) {
            // A second open file description of the same inode, without O_DIRECT. The page cache
            // keeps it coherent with the direct descriptor: the kernel writes back and invalidates
            // cached pages around direct I/O.
            int flags = (read_only_ ? O_RDONLY : O_RDWR) | O_CLOEXEC;
            std::string self = "/proc/self/fd/" + std::to_string(fd_);
            bfd_ = ::open(self.c_str(), flags);
            if (bfd_ < 0) bfd_ = ::open(path.c_str(), flags);
            if (bfd_ < 0) throw os_error(errno, path, "cannot open for buffered I/O");
        } else {
            bfd_ = fd_;
        }
        efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (efd_ < 0) throw os_error(errno, path, "eventfd");
        depth_ = std::max(1u, opts.queue_depth);
        for (;;) {
            int r = io_setup(static_cast<int>(depth_), &ctx_);
            if (r == 0) break;
            // EAGAIN: the system-wide aio-max-nr would be exceeded; a shallower queue still works.
            if (r == -EAGAIN && depth_ > 1) {
                depth_ /= 2;
                continue;
            }
            throw os_error(-r, path, "cannot set up asynchronous I/O (io_setup)");
        }
        completion_thread_ = std::thread([this] {
            completion_id_ = std::this_thread::get_id();
            completion_loop();
        });
        for (unsigned i = 0; i < NR_HELPERS; ++i) helpers_.emplace_back([this] { helper_loop(); });
    } catch (...) {
        if (ctx_) io_destroy(ctx_);
        if (efd_ >= 0) ::close(efd_);
        if (bfd_ >= 0 && bfd_ != fd_) ::close(bfd_);
        ::close(fd_);
        throw;
    }
}

aio_data_device::~aio_data_device() {
    drain();
    {
        std::lock_guard l(mu_);
        stopping_ = true;
    }
    helper_cv_.notify_all();
    wake();
    for (auto& t : helpers_) t.join();
    completion_thread_.join();
    io_destroy(ctx_);
    ::close(efd_);
    if (bfd_ != fd_) ::close(bfd_);
    ::close(fd_);
}

void aio_data_device::open_file(const std::string& path, const data_device_options& opts) {
    struct stat st {};
    if (::stat(path.c_str(), &st) < 0) throw os_error(errno, path, "cannot open");
    block_device_ = S_ISBLK(st.st_mode);
    if (!block_device_ && !S_ISREG(st.st_mode)) throw os_error(EINVAL, path, "not a regular file or block device");
    int flags = (opts.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    if (block_device_ && opts.exclusive) flags |= O_EXCL;
    fd_ = ::open(path.c_str(), flags | O_DIRECT);
    direct_ = fd_ >= 0;
    // File systems without O_DIRECT (tmpfs before Linux 6.6, some FUSE) refuse it with EINVAL.
    if (fd_ < 0 && errno == EINVAL) fd_ = ::open(path.c_str(), flags);
    if (fd_ < 0) {
        int e = errno;
        if (e == EBUSY) throw os_error(e, path, "device is busy (in use by an active pool or another program)");
        throw os_error(e, path, "cannot open");
    }
}

void aio_data_device::probe_alignment() {
    if (block_device_) {
        int lbs = 0;
        if (::ioctl(fd_, BLKSSZGET, &lbs) == 0 && lbs > 512) discard_align_ = static_cast<std::uint64_t>(lbs);
    }
    if (!direct_) return;  // buffered I/O takes any offset, length and address
    std::uint64_t off = 512, mem = 512;
    struct statx sx {};
    bool have_statx = ::statx(fd_, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
                      sx.stx_dio_offset_align > 0;
    if (have_statx) {
        off = std::max<std::uint64_t>(off, sx.stx_dio_offset_align);
        mem = std::max<std::uint64_t>(mem, sx.stx_dio_mem_align);
    }
    if (block_device_) {
        off = std::max(off, discard_align_);
    } else if (!have_statx) {
        // Without statx's answer the file system block size is a safe (if pessimistic) alignment.
        struct stat st {};
        if (::fstat(fd_, &st) == 0 && st.st_blksize > 0) off = std::max<std::uint64_t>(off, st.st_blksize);
    }
    if (off > MAX_PIECE || mem > MAX_PIECE || (off & (off - 1)) || (mem & (mem - 1)))
        throw os_error(EINVAL, path_, "unsupported direct I/O alignment (" + std::to_string(off) + " bytes)");
    offset_align_ = off;
    memory_align_ = mem;
}

void aio_data_device::probe_discard() {
    if (read_only_) return;
    if (block_device_) {
        struct stat st {};
        if (::fstat(fd_, &st) < 0) return;
        // A partition has no queue/ of its own: its disk's is one level up.
        std::string base = "/sys/dev/block/" + std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev));
        for (const char* rel : {"/queue/discard_max_bytes", "/../queue/discard_max_bytes"}) {
            std::ifstream in(base + rel);
            std::uint64_t v = 0;
            if (in >> v) {
                discard_ok_ = v > 0;
                return;
            }
        }
        return;
    }
    // Punching beyond the end of the file changes nothing and tells whether the file system can.
    std::uint64_t at = round_up(size_bytes_.load(), 4096);
    int r = ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(at), 4096);
    discard_ok_ = r == 0 || (errno != EOPNOTSUPP && errno != ENOSYS);
}

std::uint64_t aio_data_device::query_bytes() const {
    if (block_device_) {
        std::uint64_t sz = 0;
        if (::ioctl(fd_, BLKGETSIZE64, &sz) < 0) return size_bytes_.load();
        return sz;
    }
    struct stat st {};
    if (::fstat(fd_, &st) < 0) return size_bytes_.load();
    return static_cast<std::uint64_t>(st.st_size);
}

std::uint64_t aio_data_device::nr_sectors() {
    std::uint64_t b = query_bytes();
    size_bytes_ = b;
    return b / SECTOR_SIZE;
}

bool aio_data_device::in_range(std::uint64_t sector, std::uint64_t nr) {
    if (!range_ok(sector, nr, size_bytes_.load(std::memory_order_relaxed) / SECTOR_SIZE)) {
        // The device may have grown since we last looked.
        return range_ok(sector, nr, nr_sectors());
    }
    return true;
}

std::string aio_data_device::name() const {
    if (direct_) return path_;
    return path_ + " (buffered: the file system does not support O_DIRECT)";
}

// ---- requests ---------------------------------------------------------------------------------

aio_data_device::request* aio_data_device::begin(io_callback done) {
    auto* r = new request{std::move(done)};
    std::lock_guard l(mu_);
    ++outstanding_;
    return r;
}

void aio_data_device::complete(request* r, int result) {
    post([this, r, result] { finish_part(r, result); });
}

void aio_data_device::finish_part(request* r, int result) {
    if (result < 0 && r->error == 0) r->error = result;
    if (--r->parts_left > 0) return;
    {
        // What the callback captured is gone before the request counts as finished (drain()).
        io_callback done = std::move(r->done);
        int e = r->error;
        delete r;
        if (done) done(e);
    }
    std::lock_guard l(mu_);
    if (--outstanding_ == 0) drained_cv_.notify_all();
}

void aio_data_device::post(std::function<void()> fn) {
    {
        std::lock_guard l(mu_);
        posted_.push_back(std::move(fn));
    }
    wake();
}

void aio_data_device::wake() {
    std::uint64_t one = 1;
    // Only fails when the counter would overflow, and then the thread is awake anyway.
    [[maybe_unused]] auto n = ::write(efd_, &one, sizeof one);
}

void aio_data_device::drain() {
    if (std::this_thread::get_id() == completion_id_)
        throw std::logic_error(path_ + ": drain() called from a completion callback");
    std::unique_lock l(mu_);
    drained_cv_.wait(l, [&] { return outstanding_ == 0; });
}

void aio_data_device::read(std::uint64_t sector, std::uint64_t nr, void* buf, io_callback done) {
    request* r = begin(std::move(done));
    if (nr == 0) return complete(r, 0);
    if (!in_range(sector, nr)) return complete(r, -EIO);
    transfer(r, false, sector * SECTOR_SIZE, nr * SECTOR_SIZE, static_cast<std::uint8_t*>(buf), false);
}

void aio_data_device::write(std::uint64_t sector, std::uint64_t nr, const void* buf, io_callback done) {
    request* r = begin(std::move(done));
    if (nr == 0) return complete(r, 0);
    if (!in_range(sector, nr)) return complete(r, -EIO);
    if (read_only_) return complete(r, -EROFS);
    // The kernel only reads the buffer of a write; const_cast lets reads and writes share pieces.
    transfer(r, true, sector * SECTOR_SIZE, nr * SECTOR_SIZE,
             const_cast<std::uint8_t*>(static_cast<const std::uint8_t*>(buf)), false);
}

void aio_data_device::write_zeroes(std::uint64_t sector, std::uint64_t nr, io_callback done) {
    request* r = begin(std::move(done));
    if (nr == 0) return complete(r, 0);
    if (!in_range(sector, nr)) return complete(r, -EIO);
    if (read_only_) return complete(r, -EROFS);
    transfer(r, true, sector * SECTOR_SIZE, nr * SECTOR_SIZE, nullptr, true);
}

// Splits [offset, offset+len) into pieces: the parts that are not aligned to the logical block
// size go through the buffered descriptor (the page cache does the read-modify-write a direct
// transfer cannot), the aligned middle goes through aio in MAX_PIECE chunks, bounced when the
// caller's buffer is not aligned enough.
void aio_data_device::transfer(request* r, bool is_write, std::uint64_t offset, std::uint64_t len,
                               std::uint8_t* buf, bool zeroes) {
    const std::uint64_t end = offset + len;
    std::vector<piece*> pieces;
    auto add = [&](std::uint64_t b, std::uint64_t e, bool buffered) {
        for (std::uint64_t at = b; at < e;) {
            // Aligned pieces stay aligned: the chunk size is a multiple of the logical block size.
            std::uint64_t n = std::min<std::uint64_t>(e - at, round_down(MAX_PIECE, offset_align_));
            auto* p = new piece;
            p->req = r;
            p->is_write = is_write;
            p->buffered = buffered;
            p->offset = at;
            p->len = static_cast<std::size_t>(n);
            std::uint8_t* user = zeroes ? const_cast<std::uint8_t*>(zero_buffer()) : buf + (at - offset);
            if (!buffered && direct_ && reinterpret_cast<std::uintptr_t>(user) % memory_align_) {
                p->bounce = allocate_aligned(p->len, std::max<std::uint64_t>(4096, memory_align_));
                if (is_write) {
                    std::memcpy(p->bounce.get(), user, p->len);
                } else {
                    p->copy_out = user;
                    p->total = p->len;
                }
                p->io_buf = p->bounce.get();
            } else {
                p->io_buf = user;
            }
            pieces.push_back(p);
            at += n;
        }
    };
    if (!direct_ || (offset % offset_align_ == 0 && end % offset_align_ == 0)) {
        add(offset, end, false);
    } else {
        std::uint64_t mid_b = round_up(offset, offset_align_), mid_e = round_down(end, offset_align_);
        if (mid_b >= mid_e) {
            add(offset, end, true);  // inside one logical block
        } else {
            if (offset < mid_b) add(offset, mid_b, true);
            add(mid_b, mid_e, false);
            if (mid_e < end) add(mid_e, end, true);
        }
    }
    r->parts_left = pieces.size();
    queue(pieces);
}

void aio_data_device::prepare(piece* p) {
    if (p->is_write)
        io_prep_pwrite(&p->cb, fd_, p->io_buf, p->len, static_cast<long long>(p->offset));
    else
        io_prep_pread(&p->cb, fd_, p->io_buf, p->len, static_cast<long long>(p->offset));
    io_set_eventfd(&p->cb, efd_);
    p->cb.data = p;
}

void aio_data_device::queue(std::vector<piece*>& pieces) {
    std::vector<piece*> buffered;
    {
        std::lock_guard l(mu_);
        for (piece* p : pieces) {
            if (p->buffered) {
                buffered.push_back(p);
            } else {
                prepare(p);
                pending_.push_back(p);
            }
        }
    }
    for (piece* p : buffered) run_buffered(p);
    pump();
}

// Moves queued pieces into free slots and submits them. Any thread may pump; the lock hands each
// piece to exactly one of them.
void aio_data_device::pump() {
    std::vector<iocb*> batch;
    {
        std::lock_guard l(mu_);
        while (!pending_.empty() && in_kernel_ < depth_) {
            batch.push_back(&pending_.front()->cb);
            pending_.pop_front();
            ++in_kernel_;
        }
    }
    std::size_t i = 0;
    while (i < batch.size()) {
        int r = io_submit(ctx_, static_cast<long>(batch.size() - i), batch.data() + i);
        if (r > 0) {
            i += static_cast<std::size_t>(r);
        } else if (r == -EINTR) {
            continue;
        } else if (r == -EAGAIN || r == 0) {
            // The kernel is short of resources: give the rest back, in order, and retry when
            // something completes (or on the completion thread's timer if nothing is in flight).
            {
                std::lock_guard l(mu_);
                for (std::size_t j = batch.size(); j > i; --j) pending_.push_front(static_cast<piece*>(batch[j - 1]->data));
                in_kernel_ -= static_cast<unsigned>(batch.size() - i);
                retry_pending_ = true;
            }
            if (std::this_thread::get_id() != completion_id_) wake();
            return;
        } else {
            // The first remaining iocb was refused on its own (EBADF, EINVAL, ...).
            auto* p = static_cast<piece*>(batch[i]->data);
            {
                std::lock_guard l(mu_);
                --in_kernel_;
            }
            post([this, p, r] { finish_piece(p, r); });
            ++i;
        }
    }
}

void aio_data_device::finish_piece(piece* p, int result) {
    if (result == 0 && p->copy_out) std::memcpy(p->copy_out, p->bounce.get(), p->total);
    request* r = p->req;
    delete p;
    finish_part(r, result);
}

void aio_data_device::on_event(piece* p, long res) {
    if (res < 0) return finish_piece(p, static_cast<int>(res));
    auto n = static_cast<std::size_t>(res);
    if (n >= p->len) return finish_piece(p, 0);
    if (n == 0) return finish_piece(p, -EIO);  // end of file or device: nothing more will come
    // A short transfer: go on with the rest.
    p->offset += n;
    p->io_buf += n;
    p->len -= n;
    if (direct_ && ((p->offset | p->len) % offset_align_ || reinterpret_cast<std::uintptr_t>(p->io_buf) % memory_align_)) {
        p->buffered = true;  // what is left cannot go direct
        run_buffered(p);
        return;
    }
    prepare(p);
    std::lock_guard l(mu_);
    pending_.push_front(p);
}

void aio_data_device::run_buffered(piece* p) {
    std::lock_guard l(mu_);
    helper_jobs_.push_back([this, p] {
        int result = 0;
        while (p->len > 0) {
            ssize_t n = p->is_write ? ::pwrite(bfd_, p->io_buf, p->len, static_cast<off_t>(p->offset))
                                    : ::pread(bfd_, p->io_buf, p->len, static_cast<off_t>(p->offset));
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                result = -errno;
                break;
            }
            if (n == 0) {
                result = -EIO;
                break;
            }
            p->offset += static_cast<std::uint64_t>(n);
            p->io_buf += n;
            p->len -= static_cast<std::size_t>(n);
        }
        post([this, p, result] { finish_piece(p, result); });
    });
    helper_cv_.notify_one();
}

void aio_data_device::run_helper(std::function<int()> job, request* r) {
    {
        std::lock_guard l(mu_);
        helper_jobs_.push_back([this, job = std::move(job), r] {
            int result = job();
            complete(r, result);
        });
    }
    helper_cv_.notify_one();
}

void aio_data_device::discard(std::uint64_t sector, std::uint64_t nr, io_callback done) {
    request* r = begin(std::move(done));
    if (nr == 0) return complete(r, 0);
    if (!in_range(sector, nr)) return complete(r, -EIO);
    if (read_only_) return complete(r, -EROFS);
    if (!supports_discard()) return complete(r, -EOPNOTSUPP);
    std::uint64_t b = sector * SECTOR_SIZE, e = (sector + nr) * SECTOR_SIZE;
    run_helper(
        [this, b, e]() -> int {
            int rc;
            if (block_device_) {
                // BLKDISCARD takes whole logical blocks only; a discard is advice, so drop the ends.
                std::uint64_t range[2] = {round_up(b, discard_align_), 0};
                std::uint64_t end = round_down(e, discard_align_);
                if (range[0] >= end) return 0;
                range[1] = end - range[0];
                rc = ::ioctl(fd_, BLKDISCARD, range);
            } else {
                rc = ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(b),
                                 static_cast<off_t>(e - b));
            }
            if (rc == 0) return 0;
            int err = errno;
            if (err == EOPNOTSUPP) discard_ok_ = false;
            return -err;
        },
        r);
}

void aio_data_device::flush(io_callback done) {
    request* r = begin(std::move(done));
    // Every write whose completion was reaped before this point is done in the kernel (for direct
    // I/O: in the device, possibly in its volatile cache; for buffered pieces: in the page cache).
    // fdatasync writes back the page cache and flushes the device cache.
    run_helper([this]() -> int { return ::fdatasync(fd_) == 0 ? 0 : -errno; }, r);
}

void aio_data_device::copy(data_device& from, std::uint64_t from_sector, std::uint64_t to_sector,
                           std::uint64_t nr, io_callback done) {
    request* r = begin(std::move(done));
    if (nr == 0) return complete(r, 0);
    if (!in_range(to_sector, nr)) return complete(r, -EIO);
    if (!range_ok(from_sector, nr, &from == this ? nr_sectors() : from.nr_sectors())) return complete(r, -EIO);
    if (read_only_) return complete(r, -EROFS);
    if (&from == this && ranges_overlap(from_sector, to_sector, nr)) return complete(r, -EINVAL);
    chunked_copy(from, *this, from_sector, to_sector, nr, [this, r](int result) { complete(r, result); });
}

// ---- threads ----------------------------------------------------------------------------------

void aio_data_device::completion_loop() {
    std::vector<io_event> events(depth_);
    std::vector<std::function<void()>> posted;
    for (;;) {
        int timeout = -1;
        {
            std::lock_guard l(mu_);
            if (stopping_) return;
            if (retry_pending_ && in_kernel_ == 0) timeout = 1;  // ms: retry a refused io_submit later
        }
        pollfd pfd{efd_, POLLIN, 0};
        ::poll(&pfd, 1, timeout);
        std::uint64_t count;
        [[maybe_unused]] auto rd = ::read(efd_, &count, sizeof count);  // reset before reaping

        for (;;) {
            timespec zero{0, 0};
            int n = io_getevents(ctx_, 0, static_cast<long>(depth_), events.data(), &zero);
            if (n <= 0) break;
            {
                // Also orders the submitters' writes to the pieces before our reads of them.
                std::lock_guard l(mu_);
                in_kernel_ -= static_cast<unsigned>(n);
            }
            for (int i = 0; i < n; ++i) on_event(static_cast<piece*>(events[i].data), static_cast<long>(events[i].res));
            if (n < static_cast<int>(depth_)) break;
        }
        {
            std::lock_guard l(mu_);
            posted.swap(posted_);
            retry_pending_ = false;
        }
        for (auto& fn : posted) fn();
        posted.clear();
        pump();
    }
}

void aio_data_device::helper_loop() {
    for (;;) {
        std::function<void()> job;
        {
            std::unique_lock l(mu_);
            helper_cv_.wait(l, [&] { return stopping_ || !helper_jobs_.empty(); });
            if (helper_jobs_.empty()) return;
            job = std::move(helper_jobs_.front());
            helper_jobs_.pop_front();
        }
        job();
    }
}

} // namespace

std::unique_ptr<data_device> open_aio_data_device(const std::string& path, const data_device_options& opts) {
    return std::make_unique<aio_data_device>(path, opts);
}

} // namespace thin::pool
