#include "thin/nbd/socket_io.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <poll.h>
#include <sys/socket.h>
#include <vector>

namespace thin::nbd {

const char* to_string(io_status s) {
    switch (s) {
    case io_status::ok: return "ok";
    case io_status::closed: return "closed by peer";
    case io_status::timeout: return "timed out";
    case io_status::stopped: return "server stopping";
    case io_status::error: return "socket error";
    }
    return "?";
}

namespace {

// Waits until fd is ready for `events`, the stop event fires or the deadline passes.
io_status wait_ready(int fd, short events, const io_bounds& b) {
    for (;;) {
        int timeout_ms = -1;
        if (b.deadline) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                *b.deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return io_status::timeout;
            timeout_ms = static_cast<int>(std::min<long long>(left.count() + 1, INT_MAX));
        }
        pollfd p[2] = {{fd, events, 0}, {b.stop_fd, POLLIN, 0}};
        int r = ::poll(p, b.stop_fd >= 0 ? 2 : 1, timeout_ms);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return io_status::error;
        }
        if (b.stop_fd >= 0 && (p[1].revents & POLLIN))
            return io_status::stopped;
        // Errors and hang-ups count as ready: the next recv/send reports them.
        if (p[0].revents)
            return io_status::ok;
    }
}

io_status send_status(int err) {
    return err == EPIPE || err == ECONNRESET ? io_status::closed : io_status::error;
}

} // namespace

io_status read_exact(int fd, void* buf, std::size_t n, const io_bounds& b) {
    auto* p = static_cast<char*>(buf);
    while (n > 0) {
        ssize_t r = ::recv(fd, p, n, MSG_DONTWAIT);
        if (r > 0) {
            p += r;
            n -= static_cast<std::size_t>(r);
            continue;
        }
        if (r == 0)
            return io_status::closed;
        if (errno == EINTR)
            continue;
        if (errno == ECONNRESET)
            return io_status::closed;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return io_status::error;
        if (io_status s = wait_ready(fd, POLLIN, b); s != io_status::ok)
            return s;
    }
    return io_status::ok;
}

io_status discard_exact(int fd, std::uint64_t n, const io_bounds& b) {
    std::vector<char> sink(std::min<std::uint64_t>(n, 64 * 1024));
    while (n > 0) {
        std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, sink.size()));
        if (io_status s = read_exact(fd, sink.data(), chunk, b); s != io_status::ok)
            return s;
        n -= chunk;
    }
    return io_status::ok;
}

io_status write_all(int fd, const iovec* iov_in, int iovcnt, const io_bounds& b) {
    std::vector<iovec> iov(iov_in, iov_in + iovcnt);
    std::size_t first = 0;
    while (first < iov.size()) {
        if (iov[first].iov_len == 0) {
            ++first;
            continue;
        }
        msghdr msg{};
        msg.msg_iov = iov.data() + first;
        msg.msg_iovlen = iov.size() - first;
        ssize_t r = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return send_status(errno);
            if (io_status s = wait_ready(fd, POLLOUT, b); s != io_status::ok)
                return s;
            continue;
        }
        auto sent = static_cast<std::size_t>(r);
        while (sent > 0 && first < iov.size()) {
            std::size_t step = std::min(sent, iov[first].iov_len);
            iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + step;
            iov[first].iov_len -= step;
            sent -= step;
            if (iov[first].iov_len == 0)
                ++first;
        }
    }
    return io_status::ok;
}

io_status write_all(int fd, const void* buf, std::size_t n, const io_bounds& b) {
    iovec v{const_cast<void*>(buf), n};
    return write_all(fd, &v, 1, b);
}

} // namespace thin::nbd
