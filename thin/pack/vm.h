#pragma once
// The block-encoding virtual machine of the pack format (tools.md §12).
//
// A program rebuilds one 4096-byte metadata block. The machine has one u64 register, `base` (0 at
// the start of every block); "emit" appends base as a little-endian u64. An instruction byte is
// tag << 4 | n; width nibbles n in {1, 2, 4, 8} select a little-endian operand of that many bytes.
// c is the repeat count (1 unless the instruction is prefixed by Count / Count8).
//
//   tag  name        effect
//    0   Set         base = operand(n); emit c times
//    1   Pos         c times { base += n; emit }
//    2   PosW        d = operand(n); c times { base += d; emit }
//    3   Neg         c times { base -= n; emit }                  (wrapping)
//    4   NegW        d = operand(n); c times { base -= d; emit }
//    5   Const       emit base n times                            (c must be 1)
//    6   Const8      emit base (n << 8 | next byte) times         (c must be 1)
//    7   Count       run the next instruction with c = n
//    8   Count8      run the next instruction with c = n << 8 | next byte
//    9   Lit         copy the next n bytes                        (c must be 1)
//   10   LitW        copy operand(n) bytes                        (c must be 1)
//   11   ShiftedRun  len = n << 8 | next byte; run the machine until it has emitted len values
//                    ("high"), then len more ("low"); emit high_i << 24 | (low_i & 0xFFFFFF)
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace thin::pack {

constexpr std::size_t PACK_BLOCK_SIZE = 4096;

enum class vm_tag : std::uint8_t {
    set = 0, pos, pos_w, neg, neg_w, const_, const8, count, count8, lit, lit_w, shifted_run,
};

class vm_error : public std::runtime_error {
public:
    vm_error(std::size_t offset, const std::string& what)
        : std::runtime_error("program byte " + std::to_string(offset) + ": " + what), offset_(offset) {}
    std::size_t offset() const { return offset_; }

private:
    std::size_t offset_;
};

// Runs the program starting at prog[pos] until it has emitted exactly 4096 bytes into block;
// pos is advanced past the program. Throws vm_error (offset relative to prog) when the program is
// malformed, runs off the end of prog, or emits more than a block.
void vm_run_block(std::span<const std::uint8_t> prog, std::size_t& pos, std::uint8_t* block);

// Encoders. encode_block appends a program rebuilding the 4096-byte block; it describes the block
// as 512 u64 words with Set / Pos / PosW / Neg / NegW / Const runs (counts via Count / Count8).
void encode_block(const std::uint8_t* block, std::vector<std::uint8_t>& out);
// The trivial encoding: one LitW (A2 00 10) followed by the block's bytes.
void encode_block_literal(const std::uint8_t* block, std::vector<std::uint8_t>& out);
// Building blocks, exposed for tests: instructions emitting the given words / copying bytes.
// encode_words assumes base == *base_io on entry and leaves the final base there.
void encode_words(std::span<const std::uint64_t> words, std::uint64_t& base_io, std::vector<std::uint8_t>& out);
void encode_literal(std::span<const std::uint8_t> bytes, std::vector<std::uint8_t>& out);
void encode_shifted_run(std::span<const std::uint64_t> words, std::uint64_t& base_io, std::vector<std::uint8_t>& out);

} // namespace thin::pack
