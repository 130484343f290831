#include "thin/daemon/protocol.h"

#include "thin/daemon/text.h"

#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace thin::daemon {

namespace {

using clock = std::chrono::steady_clock;

int open_socket(const std::string& path, int* err) {
    sockaddr_un addr{};
    if (path.size() >= sizeof addr.sun_path) {
        *err = ENAMETOOLONG;
        return -1;
    }
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    while (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        if (errno == EINTR) continue;
        *err = errno;
        ::close(fd);
        return -1;
    }
    return fd;
}

} // namespace

std::string format_status_line(bool ok, int err, const std::string& message) {
    if (ok) return "ok\n";
    std::string m = message;
    for (char& c : m)
        if (c == '\n' || c == '\r') c = ' ';
    return "error " + std::to_string(err) + " " + m + "\n";
}

bool control_socket_live(const std::string& socket_path) {
    int err = 0;
    int fd = open_socket(socket_path, &err);
    if (fd < 0) return false;
    ::close(fd);
    return true;
}

connection::connection(const std::string& socket_path) : socket_path_(socket_path) {
    int err = 0;
    fd_ = open_socket(socket_path, &err);
    if (fd_ < 0)
        throw client_error("no thinpool daemon is listening on " + socket_path + " (" + std::strerror(err) +
                           "); start one with `thinpool run`, or name its socket with --dir or --socket");
}

connection::~connection() {
    if (fd_ >= 0) ::close(fd_);
}

void connection::send_raw(const std::string& bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
        ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw client_error("cannot send to the daemon on " + socket_path_ + ": " + std::strerror(errno));
        }
        off += std::size_t(n);
    }
}

void connection::send(const std::vector<std::string>& words) {
    std::string line = encode_words(words) + "\n";
    if (line.size() > MAX_REQUEST_BYTES) throw client_error("request too long (over 64 KiB)");
    send_raw(line);
}

bool connection::fill(clock::time_point until, bool forever) {
    if (eof_) return false;
    pollfd p{fd_, POLLIN, 0};
    for (;;) {
        int wait_ms = -1;
        if (!forever) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now()).count();
            if (left <= 0) throw client_error("no answer from the daemon on " + socket_path_ + " in time");
            wait_ms = int(std::min<long long>(left, 1000 * 1000));
        }
        int r = ::poll(&p, 1, wait_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) throw client_error(std::string("poll: ") + std::strerror(errno));
        if (r == 0) continue;
        char buf[65536];
        ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw client_error("cannot read from the daemon on " + socket_path_ + ": " + std::strerror(errno));
        if (n == 0) {
            eof_ = true;
            return false;
        }
        buf_.append(buf, std::size_t(n));
        return true;
    }
}

std::optional<std::string> connection::read_line(std::chrono::milliseconds deadline) {
    auto until = clock::now() + deadline;
    for (;;) {
        auto nl = buf_.find('\n');
        if (nl != std::string::npos) {
            std::string line = buf_.substr(0, nl);
            buf_.erase(0, nl + 1);
            return line;
        }
        if (!fill(until, deadline.count() < 0)) {
            if (buf_.empty()) return std::nullopt;
            std::string line;
            line.swap(buf_);
            return line;
        }
    }
}

response connection::read_status(std::chrono::milliseconds deadline) {
    auto line = read_line(deadline);
    if (!line) throw client_error("the daemon on " + socket_path_ + " closed the connection without an answer");
    response r;
    if (*line == "ok") {
        r.ok = true;
        return r;
    }
    if (line->rfind("error ", 0) == 0) {
        auto sp = line->find(' ', 6);
        std::string num = line->substr(6, sp == std::string::npos ? std::string::npos : sp - 6);
        try {
            r.error = int(parse_u64(num, "errno"));
        } catch (const parse_error&) {
            throw client_error("malformed answer from the daemon: " + *line);
        }
        r.message = sp == std::string::npos ? std::string() : line->substr(sp + 1);
        return r;
    }
    throw client_error("malformed answer from the daemon: " + line->substr(0, 200));
}

std::string connection::read_rest(std::chrono::milliseconds deadline) {
    auto until = clock::now() + deadline;
    while (fill(until, deadline.count() < 0)) {
    }
    std::string out;
    out.swap(buf_);
    return out;
}

response request(const std::string& socket_path, const std::vector<std::string>& words,
                 std::chrono::milliseconds deadline) {
    auto until = clock::now() + deadline;
    connection c(socket_path);
    c.send(words);
    response r = c.read_status(deadline);
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now());
    r.body = c.read_rest(std::max(left, std::chrono::milliseconds(1)));
    return r;
}

} // namespace thin::daemon
