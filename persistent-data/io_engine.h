#pragma once
// Reads and writes of 4 KiB metadata blocks behind one interface (design.md §1, layer 2).
// Engines: sync (pread/pwrite), aio (libaio + O_DIRECT), memory (tests) and fault (reliability).
// Buffers handed to an engine must be 4096-byte aligned (see aligned_block).
#include "persistent-data/types.h"

#include <cstdlib>
#include <memory>
#include <span>
#include <string>

namespace pdata {

// A 4096-byte, 4096-aligned buffer (what O_DIRECT needs).
struct free_deleter {
    void operator()(void* p) const { std::free(p); }
};
using aligned_block = std::unique_ptr<std::uint8_t[], free_deleter>;
aligned_block make_aligned_block(bool zero = true);

struct io_request {
    block_address block;
    void* buf;  // MD_BLOCK_SIZE bytes, aligned
};

class io_engine {
public:
    virtual ~io_engine() = default;

    // Device size in whole 4 KiB blocks (queried again after the device grows).
    virtual block_address nr_blocks() = 0;

    // Each throws io_error naming the device and block on failure (including short I/O).
    virtual void read(block_address b, void* buf) = 0;
    virtual void write(block_address b, const void* buf) = 0;

    // Batches; engines that can keep several requests in flight override these.
    virtual void read_many(std::span<const io_request> reqs);
    virtual void write_many(std::span<const io_request> reqs);

    // Make every completed write durable.
    virtual void flush() = 0;

    virtual std::string name() const = 0;
};

enum class open_mode { read_only, read_write };

struct open_options {
    open_mode mode = open_mode::read_only;
    bool exclusive = true;  // O_EXCL on block devices, flock on files: refuse a device someone else holds
};

// pread/pwrite engine over a file or block device.
std::unique_ptr<io_engine> open_sync_engine(const std::string& path, open_options opts);

// libaio + O_DIRECT engine; keeps up to queue_depth requests in flight in read_many/write_many.
std::unique_ptr<io_engine> open_aio_engine(const std::string& path, open_options opts,
                                           unsigned queue_depth = 64);

// In-memory device of nr_blocks zeroed blocks; resize() grows or shrinks it.
class memory_engine : public io_engine {
public:
    explicit memory_engine(block_address nr_blocks);
    block_address nr_blocks() override;
    void read(block_address b, void* buf) override;
    void write(block_address b, const void* buf) override;
    void flush() override;
    std::string name() const override { return "memory"; }

    void resize(block_address nr_blocks);
    std::uint8_t* raw(block_address b);  // direct access for tests that corrupt blocks
    std::uint64_t writes() const { return writes_; }
    std::uint64_t flushes() const { return flushes_; }

private:
    void check_range(block_address b) const;
    std::unique_ptr<std::uint8_t[]> data_;
    block_address nr_blocks_;
    std::uint64_t writes_ = 0;
    std::uint64_t flushes_ = 0;
};

} // namespace pdata
