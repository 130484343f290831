#pragma once
// Bounds the server puts on what a client can make it do. Fixed ones are constants; the two
// timeouts are process-wide settings so tests can shorten them (nothing else should change them).
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace thin::nbd::limits {

// Largest option payload read and parsed; options up to MAX_OPTION_DISCARD are read and dropped
// with NBD_REP_ERR_TOO_BIG, longer ones end the connection (reading them is not worth it).
inline constexpr std::size_t MAX_OPTION_BYTES = 64 * 1024;
inline constexpr std::size_t MAX_OPTION_DISCARD = 1024 * 1024;

// A write payload over max_request_bytes but at most this is consumed and refused with EINVAL;
// a longer one closes the connection.
inline constexpr std::uint64_t MAX_WRITE_DISCARD = 64ull << 20;

// Backpressure per connection: requests read but whose reply is not yet written. When either
// limit is reached the reader stops taking requests until replies drain (one request is always
// admitted when nothing is in flight, whatever its size).
inline constexpr std::size_t MAX_INFLIGHT_REQUESTS = 256;
inline constexpr std::size_t MIN_INFLIGHT_BYTES = 64ull << 20;  // or 2 x max_request_bytes if larger

// One block status reply holds at most this many descriptors (the client asks again for more).
inline constexpr std::size_t MAX_BLOCK_STATUS_EXTENTS = 1024;

// Connections beyond this are closed at once.
inline constexpr std::size_t MAX_CONNECTIONS = 512;

// Time a client has from connecting to finishing the handshake (default 30 s).
std::chrono::milliseconds handshake_timeout();
void set_handshake_timeout(std::chrono::milliseconds t);

// At stop(), how long replies still queued for a client that does not read them may take to go
// out before the connection is cut (default 10 s).
std::chrono::milliseconds drain_timeout();
void set_drain_timeout(std::chrono::milliseconds t);

} // namespace thin::nbd::limits
