#include "thin/daemon/control_server.h"

#include "thin/daemon/protocol.h"
#include "thin/daemon/text.h"

#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <system_error>
#include <unistd.h>

namespace thin::daemon {

namespace {

std::system_error sys_error(const std::string& what) {
    return std::system_error(errno, std::generic_category(), what);
}

void send_error(int fd, int err, const std::string& msg) { send_all(fd, format_status_line(false, err, msg)); }

// Reads one request line; nullopt (after answering with an error where the peer is still there)
// when there is none.
std::optional<std::string> read_request(int fd, int stop_fd) {
    using clock = std::chrono::steady_clock;
    auto until = clock::now() + control_server::REQUEST_DEADLINE;
    std::string line;
    char buf[4096];
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now()).count();
        if (left <= 0) {
            send_error(fd, ETIMEDOUT, "no complete request within 10 seconds");
            return std::nullopt;
        }
        pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
        int r = ::poll(p, 2, int(left));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 || (p[1].revents & POLLIN)) return std::nullopt;
        if (r == 0) continue;
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return std::nullopt;  // gone before finishing its request
        line.append(buf, std::size_t(n));
        auto nl = line.find('\n');
        if (nl != std::string::npos) {
            line.resize(nl);
            if (!line.empty() && line.back() == '\r') line.pop_back();
            return line;
        }
        if (line.size() > MAX_REQUEST_BYTES) {
            send_error(fd, E2BIG, "request longer than 64 KiB");
            return std::nullopt;
        }
    }
}

} // namespace

bool send_all(int fd, const std::string& text) {
    std::size_t off = 0;
    while (off < text.size()) {
        ssize_t n = ::send(fd, text.data() + off, text.size() - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        off += std::size_t(n);
    }
    return true;
}

control_server::control_server(std::string path, handler h, std::function<void(const std::string&)> log)
    : path_(std::move(path)), handler_(std::move(h)), log_(std::move(log)) {}

control_server::~control_server() { stop(); }

void control_server::start() {
    sockaddr_un addr{};
    if (path_.size() >= sizeof addr.sun_path)
        throw std::system_error(ENAMETOOLONG, std::generic_category(), path_);
    struct stat st;
    if (::lstat(path_.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            throw std::system_error(EEXIST, std::generic_category(), path_ + " exists and is not a socket");
        // The caller made sure nothing answers there: a stale socket of a daemon that died.
        ::unlink(path_.c_str());
    }
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_fd_ < 0) throw sys_error("eventfd");
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) throw sys_error("socket");
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
        throw sys_error(path_ + ": cannot bind the control socket");
    bound_ = true;
    // connect() needs write permission: with the usual umask nobody else has it even before this.
    if (::chmod(path_.c_str(), 0600) < 0) throw sys_error(path_ + ": chmod");
    if (::listen(listen_fd_, 64) < 0) throw sys_error(path_ + ": listen");
    acceptor_ = std::thread([this] { accept_loop(); });
}

void control_server::accept_loop() {
    for (;;) {
        pollfd p[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        int r = ::poll(p, 2, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 || (p[1].revents & POLLIN)) return;
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) continue;  // EMFILE, ECONNABORTED...: keep serving the others
        reap(false);
        std::lock_guard lk(mutex_);
        if (conns_.size() >= MAX_CONNECTIONS) {
            send_error(fd, EAGAIN, "too many control connections; try again");
            ::close(fd);
            continue;
        }
        conn& c = conns_.emplace_back();
        c.fd = fd;
        c.thread = std::thread([this, &c] { serve(c); });
    }
}

void control_server::serve(conn& c) {
    if (auto line = read_request(c.fd, stop_fd_)) {
        std::vector<std::string> words;
        bool ok = true;
        try {
            words = decode_words(*line);
        } catch (const parse_error& e) {
            send_error(c.fd, EINVAL, std::string("malformed request: ") + e.what());
            ok = false;
        }
        if (ok) {
            try {
                handler_(c.fd, stop_fd_, words);
            } catch (const std::exception& e) {
                // The handler answers its own errors; this is the last resort.
                send_error(c.fd, EIO, e.what());
                log_(std::string("control: request failed: ") + e.what());
            }
        }
    }
    ::shutdown(c.fd, SHUT_RDWR);
    c.done = true;
}

void control_server::reap(bool all) {
    std::list<conn> finished;
    {
        std::lock_guard lk(mutex_);
        for (auto it = conns_.begin(); it != conns_.end();) {
            auto next = std::next(it);
            if (all || it->done) finished.splice(finished.end(), conns_, it);
            it = next;
        }
    }
    for (auto& c : finished) {
        if (c.thread.joinable()) c.thread.join();
        ::close(c.fd);
    }
}

void control_server::stop() {
    {
        std::lock_guard lk(mutex_);
        if (stopped_) return;
        stopped_ = true;
    }
    if (stop_fd_ >= 0) {
        std::uint64_t one = 1;
        (void)!::write(stop_fd_, &one, sizeof one);
    }
    if (acceptor_.joinable()) acceptor_.join();
    reap(true);
    if (listen_fd_ >= 0) {
        ::close(listen_fd_);
        listen_fd_ = -1;
    }
    if (bound_) ::unlink(path_.c_str());
    if (stop_fd_ >= 0) ::close(stop_fd_);
    stop_fd_ = -1;
}

} // namespace thin::daemon
