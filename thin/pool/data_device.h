#pragma once
// The pool's data device (design.md §1, thin/pool): asynchronous reads, writes, discards and
// flushes at 512-byte granularity, completed through callbacks. The pool never waits on the data
// device in a thread that serves requests; completions run on the device's own completion thread
// and must only move work between lists and wake the pool's worker (pool.md §7.3 rule 11).
//
// Implementations:
//   open_aio_data_device     libaio + O_DIRECT on a block device or a plain file (buffered fallback
//                            when the file system refuses O_DIRECT), its own completion thread;
//                            discard = BLKDISCARD on a block device, FALLOC_FL_PUNCH_HOLE |
//                            FALLOC_FL_KEEP_SIZE on a file; flush = fdatasync.
//   memory_data_device       an in-memory device for tests that models a volatile write cache:
//                            completed writes are "durable" only after a completed flush; crash()
//                            keeps the durable image plus any chosen subset of later writes; faults
//                            (fail the nth read/write/flush, fail everything) for reliability tests.
//
// Threads and ordering (both implementations):
//   - Every callback runs on the device's own completion thread, never inside the submitting call,
//     so a caller may hold its locks while it submits. (chunked copies from another device: the
//     final callback is still re-posted to this device's completion thread.) Callbacks must not
//     throw, must not call drain() and must not destroy the device; they may submit more requests.
//   - Submitting is thread-safe and never waits for the device: when the queue depth is used up
//     the request waits in a submission queue that the completion thread feeds as slots free up.
//   - No ordering between requests in flight: two requests submitted without waiting for the first
//     to complete may complete, and reach the media, in either order (the memory device shuffles
//     them on purpose). Overlapping writes in flight at once leave either result.
//   - flush(done) makes durable every write (write, write_zeroes, copy) whose callback had run
//     before flush() was called. Writes still in flight when it is called are not guaranteed to be
//     covered, even if they complete before the flush does (the memory device never covers them).
//     So: wait for a write's callback, then flush, then rely on it (pool.md §7.3 rule 6).
//   - Errors: -EIO (out of range, media error, short transfer that cannot finish), -EROFS (a write,
//     write_zeroes, copy into or discard on a device opened read-only), -EOPNOTSUPP (discard when
//     !supports_discard()), -EINVAL (copy within one device between overlapping ranges), or the
//     errno the kernel reported. A zero-length request succeeds and does nothing.
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace thin::pool {

constexpr std::uint64_t SECTOR_SIZE = 512;

// Completion: 0 on success, a negative errno on failure (-EIO, -ENOSPC, ...).
using io_callback = std::function<void(int result)>;

class data_device {
public:
    virtual ~data_device() = default;

    // Current size in 512-byte sectors (queried again after the device grows).
    virtual std::uint64_t nr_sectors() = 0;

    // buf holds nr_sectors * 512 bytes; any alignment (the device bounces unaligned buffers when
    // it needs to). Offsets and lengths are in sectors; the range must lie inside the device
    // (callers check; an out-of-range request completes with -EIO). Short transfers are retried
    // internally; a transfer that cannot complete reports -EIO.
    virtual void read(std::uint64_t sector, std::uint64_t nr_sectors, void* buf, io_callback done) = 0;
    virtual void write(std::uint64_t sector, std::uint64_t nr_sectors, const void* buf, io_callback done) = 0;
    // Writes zeros over the range (for zeroing new blocks) without a caller buffer.
    virtual void write_zeroes(std::uint64_t sector, std::uint64_t nr_sectors, io_callback done) = 0;
    // Copies a range within this device (breaking sharing) or, with from != this, from another
    // device (an external origin) into this one.
    virtual void copy(data_device& from, std::uint64_t from_sector, std::uint64_t to_sector,
                      std::uint64_t nr_sectors, io_callback done) = 0;
    // Releases the range (errors are reported but callers may ignore them). supports_discard()
    // false: completes with -EOPNOTSUPP.
    virtual void discard(std::uint64_t sector, std::uint64_t nr_sectors, io_callback done) = 0;
    virtual bool supports_discard() const = 0;
    // Makes every write completed before the call durable, then calls done.
    virtual void flush(io_callback done) = 0;

    // Blocks until every request submitted so far has completed (teardown and tests only).
    virtual void drain() = 0;

    virtual std::string name() const = 0;
};

struct data_device_options {
    bool read_only = false;
    bool exclusive = true;      // O_EXCL on a block device
    unsigned queue_depth = 128; // requests in flight in the kernel
};

// Throws std::system_error naming the path when it cannot be opened.
// Offsets, lengths or buffers that O_DIRECT cannot take (buffer not aligned to the device's memory
// alignment: bounced through a 4096-aligned buffer; parts of a request not aligned to a logical
// block size above 512: pread/pwrite without O_DIRECT on a helper thread) are handled inside.
// write_zeroes writes from a shared zero buffer through aio; discard and flush (fdatasync) run on
// helper threads; in buffered mode (no O_DIRECT) io_submit copies the data itself.
std::unique_ptr<data_device> open_aio_data_device(const std::string& path, const data_device_options& opts = {});

// ---- tests -----------------------------------------------------------------------------------

// In-memory device with a volatile write cache. Requests complete on a completion thread of its
// own (asynchronously, as a real device's do), in an order that may differ from submission: the
// thread takes everything queued as one batch and executes it in an order shuffled by a generator
// seeded with `seed`. Contents are sparse (64 KiB chunks allocated on first write; the rest reads
// as zeros), so a large device costs only what is written.
class memory_data_device : public data_device {
public:
    explicit memory_data_device(std::uint64_t nr_sectors, bool discard_supported = true,
                                std::uint64_t seed = 0x5eed);
    ~memory_data_device() override;

    std::uint64_t nr_sectors() override;
    void read(std::uint64_t sector, std::uint64_t nr_sectors, void* buf, io_callback done) override;
    void write(std::uint64_t sector, std::uint64_t nr_sectors, const void* buf, io_callback done) override;
    void write_zeroes(std::uint64_t sector, std::uint64_t nr_sectors, io_callback done) override;
    void copy(data_device& from, std::uint64_t from_sector, std::uint64_t to_sector, std::uint64_t nr_sectors,
              io_callback done) override;
    void discard(std::uint64_t sector, std::uint64_t nr_sectors, io_callback done) override;
    bool supports_discard() const override;
    void flush(io_callback done) override;
    void drain() override;
    std::string name() const override { return "memory"; }

    void resize(std::uint64_t nr_sectors);

    // --- faults: counted from when they are armed, 1-based, in submission order; a failed
    // request completes with -EIO and changes nothing ----------------------------------------
    void fail_read_at(std::uint64_t n, bool and_after = false);
    void fail_write_at(std::uint64_t n, bool and_after = false);  // writes, zeroes and copies
    void fail_flush_at(std::uint64_t n, bool and_after = false);
    void clear_faults();

    // --- crash model --------------------------------------------------------------------------
    // Every completed write since the last completed flush is volatile. crash() ends the machine:
    // later requests fail with -EIO; the contents become the durable image plus the volatile
    // writes for which keep(i) returns true (i counts the volatile writes in completion order),
    // or none when keep is empty. reboot() brings the device back with those contents.
    // Discards count as volatile writes (of zeros) here. Requests submitted before crash() that
    // had not completed fail with -EIO too, even if they complete after reboot(). keep runs under
    // the device's lock: it must not call the device.
    void crash(const std::function<bool(std::size_t)>& keep = {});
    void reboot();
    std::size_t volatile_writes() const;

    // Direct access to the current contents (tests only; not while requests are in flight).
    // set_contents takes whole sectors and makes them durable at once (set-up, not I/O).
    std::vector<std::uint8_t> contents(std::uint64_t sector, std::uint64_t nr_sectors) const;
    void set_contents(std::uint64_t sector, const std::vector<std::uint8_t>& bytes);
    // Requests that completed successfully: writes (write, write_zeroes, copy), flushes, discards.
    std::uint64_t writes() const;
    std::uint64_t flushes() const;
    std::uint64_t discards() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

} // namespace thin::pool
