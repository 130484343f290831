#pragma once
// Small text helpers of the daemon and its client: sizes, volume names, the word encoding of the
// control protocol, timestamps.
#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace thin::daemon {

// Bad input from a user or a peer: one line, no prefix.
class parse_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// "4096", "64K", "1.5G" is not accepted: an integer with an optional binary suffix K, M, G, T
// (also KiB, MiB, GiB, TiB; case-insensitive). Throws parse_error naming `what` on garbage,
// overflow, or (when multiple_of != 0) a size that is not a multiple of it.
std::uint64_t parse_size(std::string_view text, const std::string& what, std::uint64_t multiple_of = 512);
// A plain decimal u64 ("0", "1024"); parse_error naming `what` otherwise.
std::uint64_t parse_u64(std::string_view text, const std::string& what);

// "16 GiB", "64 KiB", "1.5 MiB", "512 B": for humans; exact sizes go out in bytes.
std::string human_size(std::uint64_t bytes);

// Volume names: [A-Za-z0-9._-]{1,64}, not starting with '-' or '.'.
bool valid_volume_name(std::string_view name);
// parse_error "invalid volume name 'x': ..." unless valid.
void check_volume_name(std::string_view name);

// The control protocol's word encoding: bytes outside [A-Za-z0-9._/:=,+@~-] as %XX, so a word never
// holds a space, a newline or a '%' of its own. Empty words are not representable.
std::string encode_word(std::string_view w);
// Throws parse_error on a bad escape or an empty result.
std::string decode_word(std::string_view w);
// Splits a line on single spaces and decodes each word.
std::vector<std::string> decode_words(std::string_view line);
std::string encode_words(const std::vector<std::string>& words);

// UTC "2024-06-10T12:00:00Z" and back (parse_error on anything else).
std::string iso_time(std::int64_t unix_seconds);
std::int64_t parse_iso_time(std::string_view text);
// "2024-06-10T12:00:00.123Z" for log lines.
std::string log_timestamp(std::chrono::system_clock::time_point t = std::chrono::system_clock::now());

} // namespace thin::daemon
