#pragma once
// thin_metadata_size (tools.md §11): the 0.9.0 estimate, units and value formatting, reproduced
// byte for byte - including its 64-bit wrap-arounds (a zebibyte multiplier is 2^70 mod 2^64 = 0) and
// its double-precision output arithmetic, which the command-line tests compare against 0.9.0.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace thin::metadata_size {

struct unit {
    char letter;           // b s k K m M g G t T p P e E z Z y Y
    const char* word;      // "bytes", "sectors", "kibibytes", "kilobytes", ...
    std::uint64_t bytes;   // multiplier, computed modulo 2^64 as 0.9.0 does
};

// The unit a single letter names, or nullptr.
const unit* unit_for_letter(char c);
// The output unit (-u): a single unit letter, or else the first unit word (in the order b s k K m M
// ...) that starts with text; "" selects bytes. nullptr when nothing matches.
const unit* parse_output_unit(std::string_view text);

// A -b/-s/-m argument: leading decimal digits (saturating at 2^63 - 1; none = 0) followed by an
// optional unit (a letter or a word prefix as for -u, except that "" means "no unit").
struct sized_arg {
    std::string digits;        // the digit text as given, printed back in the summary line
    std::uint64_t number = 0;
    const unit* u = nullptr;   // nullptr: no unit given
};
std::optional<sized_arg> parse_sized(std::string_view text);  // nullopt: invalid unit

// -b / -s in sectors: number * (unit bytes, default a sector) / 512, with 64-bit wrap-around.
std::uint64_t to_sectors(const sized_arg& a);
// -m: a plain count, or number * unit bytes when a unit is given (wrapping as 0.9.0).
std::uint64_t to_count(const sized_arg& a);

// 1 + floor(floor(2 * pool / block) / 252) + max_thins, in 4 KiB metadata blocks. Evaluated as 0.9.0
// does: the last two terms as a wrapping u64 sum, converted to double, then 1 added in double
// arithmetic (so for huge values the + 1 can vanish in rounding, exactly as in 0.9.0).
double estimate_blocks(std::uint64_t block_sectors, std::uint64_t pool_sectors, std::uint64_t max_thins);

// The estimate in the given unit.
double in_unit(double blocks, const unit& u);

// An integer when whole, "%.2e" when the fraction is below 0.01, else "%.2f". Whole values are
// printed after the x86-64 double -> u64 conversion 0.9.0 uses (values >= 2^64 print as 0).
std::string format_value(double v);

} // namespace thin::metadata_size
