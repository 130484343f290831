#pragma once
// A self-contained zlib codec (RFC 1950 wrapper around RFC 1951 deflate) for the pack format
// (tools.md §12). The project may not depend on zlib, so both directions live here:
//  - inflate: stored, fixed-Huffman and dynamic-Huffman blocks, Adler-32 verified; every malformed
//    stream is reported as a zlib_error naming the byte offset, never a crash or a hang;
//  - deflate: stored blocks (level 0) or one fixed-Huffman block fed by an LZ77 hash-chain matcher
//    (levels 1..9 choose how far the matcher searches). Any zlib can read the result.
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace thin::pack {

class zlib_error : public std::runtime_error {
public:
    zlib_error(std::size_t offset, const std::string& what)
        : std::runtime_error("zlib stream byte " + std::to_string(offset) + ": " + what), offset_(offset) {}
    // Byte offset within the compressed stream where the problem was found.
    std::size_t offset() const { return offset_; }

private:
    std::size_t offset_;
};

// Adler-32 (RFC 1950 §8.2); start with 1.
std::uint32_t adler32(std::uint32_t adler, const std::uint8_t* data, std::size_t len);

// Decompresses one complete zlib stream that must fill `in` exactly (no trailing bytes).
// Output beyond max_out bytes is an error (a guard against decompression bombs).
std::vector<std::uint8_t> zlib_decompress(std::span<const std::uint8_t> in, std::size_t max_out);

// Compresses to a zlib stream. level 0: stored blocks; 1..9: fixed Huffman + LZ77, higher levels
// search longer hash chains.
std::vector<std::uint8_t> zlib_compress(std::span<const std::uint8_t> in, int level = 6);

} // namespace thin::pack
