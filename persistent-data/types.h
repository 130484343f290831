#pragma once
// Basic vocabulary of the persistent-data library: metadata block numbers, the block size and the
// errors every layer reports. Errors name the block and what is wrong (design.md §3).
#include <cstdint>
#include <cstddef>
#include <stdexcept>
#include <string>

namespace pdata {

using block_address = std::uint64_t;

constexpr std::size_t MD_BLOCK_SIZE = 4096;       // metadata block size in bytes (format.md §1)
constexpr unsigned SECTORS_PER_MD_BLOCK = 8;

// Base of every error thrown by the library.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A read or write of the underlying device failed (or a fault was injected).
class io_error : public error {
public:
    using error::error;
};

// A block read back is not what it should be: bad checksum, wrong self-location, bad node header...
class corrupt_block : public error {
public:
    corrupt_block(block_address b, const std::string& what)
        : error("metadata block " + std::to_string(b) + ": " + what), block_(b), what_(what) {}
    block_address block() const { return block_; }
    const std::string& problem() const { return what_; }
private:
    block_address block_;
    std::string what_;
};

// No free block left in a space map.
class no_space : public error {
public:
    using error::error;
};

} // namespace pdata
