#pragma once
// What the NBD server serves (design.md §1): exports, each one open volume shared by every
// connection that asked for it. The server knows nothing of pools or catalogues; the daemon
// (thin/daemon) implements export_provider over the pool's thin devices, tests over memory.
#include "thin/pool/pool.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace thin::nbd {

// One run of a block-status reply (NBD "base:allocation"): hole = not provisioned (NBD_STATE_HOLE),
// zero = reads as zeros (NBD_STATE_ZERO). A range served by an external origin is neither.
struct extent {
    std::uint64_t length = 0;  // bytes
    bool hole = false;
    bool zero = false;
};

// An open export. Thread-safe: several connections (multi-conn) use one handle at once.
class export_handle {
public:
    virtual ~export_handle() = default;
    virtual std::uint64_t size() const = 0;                 // bytes, a multiple of 512
    virtual bool read_only() const = 0;
    virtual std::uint32_t preferred_block_size() const = 0;  // bytes: the pool's data block size
    virtual bool can_trim() const = 0;                       // discards reach the pool
    // Asynchronous I/O in 512-byte sectors, exactly thin::pool::thin_device::submit's contract:
    // `done` runs once, on an internal thread, with 0 or a negative errno.
    virtual void submit(thin::pool::io_request r) = 0;
    // Allocation of [offset, offset + length) in bytes (both multiples of 512): runs in order from
    // offset, covering at least the first byte and at most the range; may stop early.
    virtual std::vector<extent> block_status(std::uint64_t offset, std::uint64_t length) = 0;
};

class export_provider {
public:
    virtual ~export_provider() = default;
    struct entry {
        std::string name;
        std::string description;
    };
    virtual std::vector<entry> list() = 0;
    // The export called `name`, or nullptr when there is none. The server drops its reference
    // when the connection that opened it ends; the provider may deactivate the volume when the
    // last reference goes. Throws std::exception (its what() becomes the NBD error text) when the
    // export exists but cannot be opened.
    virtual std::shared_ptr<export_handle> open(const std::string& name) = 0;
};

} // namespace thin::nbd
