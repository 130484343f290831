#pragma once
// Whole-message reads and writes on a blocking stream socket that a server stop or a deadline can
// interrupt. The socket is used with MSG_DONTWAIT and poll(), so a wait always also watches the
// server's stop event (an eventfd that becomes readable once, for good, at stop()).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <sys/uio.h>

namespace thin::nbd {

enum class io_status {
    ok,
    closed,    // the peer closed (EOF before the whole message)
    timeout,   // the deadline passed
    stopped,   // the stop event fired
    error,     // a socket error (reset, broken pipe, shut down by us)
};
const char* to_string(io_status s);

struct io_bounds {
    std::optional<std::chrono::steady_clock::time_point> deadline;
    int stop_fd = -1;  // -1: not interruptible by stop
};

io_status read_exact(int fd, void* buf, std::size_t n, const io_bounds& b);
// Reads and drops n bytes (a payload we refuse but must consume to keep the framing).
io_status discard_exact(int fd, std::uint64_t n, const io_bounds& b);
// Sends every byte of the vectors (MSG_NOSIGNAL: a vanished peer is an error, not SIGPIPE).
io_status write_all(int fd, const iovec* iov, int iovcnt, const io_bounds& b);
io_status write_all(int fd, const void* buf, std::size_t n, const io_bounds& b);

} // namespace thin::nbd
