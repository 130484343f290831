#include "thin/size/metadata_size.h"

#include <array>
#include <cmath>
#include <cstdio>

namespace thin::metadata_size {

namespace {

constexpr std::uint64_t wrapping_pow(std::uint64_t base, unsigned exp) {
    std::uint64_t v = 1;
    while (exp--) v *= base;  // unsigned: wraps modulo 2^64 like the 0.9.0 multipliers
    return v;
}

constexpr std::array<unit, 18> UNITS = {{
    {'b', "bytes", 1},
    {'s', "sectors", 512},
    {'k', "kibibytes", wrapping_pow(1024, 1)},
    {'K', "kilobytes", wrapping_pow(1000, 1)},
    {'m', "mebibytes", wrapping_pow(1024, 2)},
    {'M', "megabytes", wrapping_pow(1000, 2)},
    {'g', "gibibytes", wrapping_pow(1024, 3)},
    {'G', "gigabytes", wrapping_pow(1000, 3)},
    {'t', "tebibytes", wrapping_pow(1024, 4)},
    {'T', "terabytes", wrapping_pow(1000, 4)},
    {'p', "pebibytes", wrapping_pow(1024, 5)},
    {'P', "petabytes", wrapping_pow(1000, 5)},
    {'e', "ebibytes", wrapping_pow(1024, 6)},
    {'E', "exabytes", wrapping_pow(1000, 6)},
    {'z', "zebibytes", wrapping_pow(1024, 7)},
    {'Z', "zetabytes", wrapping_pow(1000, 7)},
    {'y', "yobibytes", wrapping_pow(1024, 8)},
    {'Y', "yottabytes", wrapping_pow(1000, 8)},
}};

constexpr std::uint64_t SECTOR = 512;
constexpr std::uint64_t METADATA_BLOCK_BYTES = 4096;

// The x86-64 conversion gcc emits for (uint64_t) of a double: exact below 2^64, and 0 for values
// from 2^64 up (and for infinity), which is what 0.9.0 prints for such values.
std::uint64_t x86_double_to_u64(double v) {
    constexpr double TWO63 = 9223372036854775808.0;
    if (!(v >= TWO63)) {
        if (std::isnan(v) || v <= -TWO63) return std::uint64_t(1) << 63;
        return static_cast<std::uint64_t>(static_cast<std::int64_t>(v));
    }
    double w = v - TWO63;
    if (w >= TWO63) return 0;  // cvttsd2si yields 0x8000000000000000, xor'ed with the top bit
    return static_cast<std::uint64_t>(static_cast<std::int64_t>(w)) ^ (std::uint64_t(1) << 63);
}

} // namespace

const unit* unit_for_letter(char c) {
    for (const auto& u : UNITS)
        if (u.letter == c) return &u;
    return nullptr;
}

const unit* parse_output_unit(std::string_view text) {
    if (text.size() == 1) return unit_for_letter(text[0]);
    for (const auto& u : UNITS)
        if (std::string_view(u.word).starts_with(text)) return &u;
    return nullptr;
}

std::optional<sized_arg> parse_sized(std::string_view text) {
    sized_arg a;
    std::size_t i = 0;
    constexpr std::uint64_t SATURATED = 9223372036854775807ull;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
        unsigned d = unsigned(text[i] - '0');
        a.number = a.number > (SATURATED - d) / 10 ? SATURATED : a.number * 10 + d;
        ++i;
    }
    a.digits = std::string(text.substr(0, i));
    std::string_view rest = text.substr(i);
    if (!rest.empty()) {
        a.u = parse_output_unit(rest);
        if (!a.u) return std::nullopt;
    }
    return a;
}

std::uint64_t to_sectors(const sized_arg& a) { return a.number * (a.u ? a.u->bytes : SECTOR) / SECTOR; }

std::uint64_t to_count(const sized_arg& a) { return a.u ? a.number * a.u->bytes : a.number * SECTOR / SECTOR; }

double estimate_blocks(std::uint64_t block_sectors, std::uint64_t pool_sectors, std::uint64_t max_thins) {
    std::uint64_t mapping_blocks = (2 * pool_sectors / block_sectors) / 252;
    return static_cast<double>(mapping_blocks + max_thins) + 1.0;
}

double in_unit(double blocks, const unit& u) {
    return blocks * static_cast<double>(METADATA_BLOCK_BYTES) / static_cast<double>(u.bytes);
}

std::string format_value(double v) {
    double whole = 0;
    double frac = std::modf(v, &whole);
    char buf[64];
    if (frac == 0)
        std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(x86_double_to_u64(v)));
    else if (frac < 0.01)
        std::snprintf(buf, sizeof buf, "%.2e", v);
    else
        std::snprintf(buf, sizeof buf, "%.2f", v);
    return buf;
}

} // namespace thin::metadata_size
