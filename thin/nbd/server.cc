// The server: listening sockets, one accept thread each, one thread per connection (plus its
// writer), and a stop that winds all of it down in order.
#include "thin/nbd/server.h"

#include "thin/nbd/connection.h"
#include "thin/nbd/context.h"
#include "thin/nbd/limits.h"

#include <arpa/inet.h>
#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <mutex>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

namespace thin::nbd {

namespace {

std::system_error sys_error(int err, const std::string& what) {
    return std::system_error(err, std::generic_category(), what);
}

// A multiple of 512 that fits the protocol's 32-bit maximum block size.
std::uint32_t advertisable_max(std::size_t want) {
    std::size_t m = std::clamp<std::size_t>(want, 512, 0xffffffffu);
    return static_cast<std::uint32_t>(m / 512 * 512);
}

// True when something accepts connections on the Unix socket at `path`.
bool unix_socket_live(const sockaddr_un& addr) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return false;
    int r = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    bool live = r == 0 || errno == EAGAIN;  // EAGAIN: a full backlog is still a live server
    ::close(fd);
    return live;
}

std::string peer_name(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
        return {};
    char host[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET) {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        return std::string(host) + ":" + std::to_string(ntohs(a->sin_port));
    }
    if (ss.ss_family == AF_INET6) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        return "[" + std::string(host) + "]:" + std::to_string(ntohs(a->sin6_port));
    }
    return {};
}

} // namespace

struct server::impl {
    struct listener {
        int fd = -1;
        std::string name;       // for errors and logs
        std::string unix_path;  // removed at stop when it is still our socket
        dev_t dev = 0;
        ino_t ino = 0;
        std::thread thread;
    };
    struct conn_entry {
        std::shared_ptr<connection> conn;
        std::thread thread;  // none for serve() on the caller's thread
    };

    server_context ctx;
    mutable std::mutex m;
    std::condition_variable cv;
    std::vector<std::unique_ptr<listener>> listeners;
    std::map<std::uint64_t, conn_entry> conns;
    std::vector<std::thread> finished;  // connection threads that are done, to join
    std::uint64_t next_id = 1;
    bool stop_begun = false, stop_done = false;

    impl(std::shared_ptr<export_provider> exports, const server_options& opts) {
        ctx.provider = std::move(exports);
        ctx.read_only = opts.read_only;
        ctx.max_request_bytes = advertisable_max(opts.max_request_bytes);
        ctx.set_log(opts.log ? opts.log : [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); });
        ctx.stop_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (ctx.stop_fd < 0)
            throw sys_error(errno, "nbd server: eventfd");
    }

    ~impl() { ::close(ctx.stop_fd); }

    void add_listener(std::unique_ptr<listener> l) {
        std::lock_guard lk(m);
        if (stop_begun) {
            ::close(l->fd);
            throw sys_error(ESHUTDOWN, l->name + ": the NBD server is stopped");
        }
        listeners.push_back(std::move(l));
    }

    // ---- connections ----

    // Registers a connection for fd; nullptr (fd closed) when stopping or full.
    std::shared_ptr<connection> admit(int fd, const std::string& peer, std::uint64_t& id) {
        if (ctx.stopping || stop_begun) {
            ::close(fd);
            return nullptr;
        }
        if (conns.size() >= limits::MAX_CONNECTIONS) {
            ::close(fd);
            ctx.log("nbd: refusing a connection: " + std::to_string(conns.size()) + " already open");
            return nullptr;
        }
        id = next_id++;
        std::string who = "nbd connection " + std::to_string(id) + (peer.empty() ? "" : " (" + peer + ")");
        auto c = std::make_shared<connection>(fd, ctx, who);
        conns[id].conn = c;
        return c;
    }

    void finish(std::uint64_t id) {
        std::lock_guard lk(m);
        auto node = conns.extract(id);
        if (node && node.mapped().thread.joinable())
            finished.push_back(std::move(node.mapped().thread));
        cv.notify_all();
    }

    void reap() {
        std::vector<std::thread> done;
        {
            std::lock_guard lk(m);
            done.swap(finished);
        }
        for (auto& t : done)
            t.join();
    }

    void spawn(int fd) {
        std::string peer = peer_name(fd);
        std::lock_guard lk(m);
        std::uint64_t id = 0;
        auto c = admit(fd, peer, id);
        if (!c)
            return;
        // The thread's finish() takes the lock, so it finds its entry filled in.
        try {
            conns[id].thread = std::thread([this, c, id] {
                c->run();
                finish(id);
            });
        } catch (const std::system_error& e) {
            ctx.log("nbd: dropping a connection: no thread for it: " + std::string(e.what()));
            conns.erase(id);  // closes the socket
        }
    }

    // ---- accepting ----

    void accept_loop(listener* l) {
        for (;;) {
            pollfd p[2] = {{l->fd, POLLIN, 0}, {ctx.stop_fd, POLLIN, 0}};
            if (::poll(p, 2, -1) < 0 && errno != EINTR)
                return ctx.log("nbd: " + l->name + ": poll: " + std::strerror(errno));
            if (p[1].revents & POLLIN)
                return;
            if (!(p[0].revents & POLLIN))
                continue;
            int fd = ::accept4(l->fd, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) {
                accept_failed(l, errno);
                continue;
            }
            spawn(fd);
            reap();
        }
    }

    void accept_failed(listener* l, int err) {
        if (err == EINTR || err == EAGAIN || err == ECONNABORTED || err == EPROTO)
            return;
        ctx.log("nbd: " + l->name + ": accept: " + std::strerror(err));
        // Out of descriptors or memory: back off instead of spinning; the stop event cuts it short.
        pollfd p{ctx.stop_fd, POLLIN, 0};
        ::poll(&p, 1, 100);
    }

    // ---- stopping ----

    void stop() {
        {
            std::unique_lock lk(m);
            if (stop_begun) {
                cv.wait(lk, [&] { return stop_done; });
                return;
            }
            stop_begun = true;
        }
        ctx.stopping = true;
        std::uint64_t one = 1;
        [[maybe_unused]] ssize_t w = ::write(ctx.stop_fd, &one, sizeof one);
        close_listeners();
        {
            std::unique_lock lk(m);
            for (auto& [id, e] : conns)
                e.conn->request_stop();
            cv.wait(lk, [&] { return conns.empty(); });
        }
        reap();
        std::lock_guard lk(m);
        stop_done = true;
        cv.notify_all();
    }

    void close_listeners() {
        // stop_begun keeps the vector from changing now.
        for (auto& l : listeners) {
            if (l->thread.joinable())
                l->thread.join();
            ::close(l->fd);
            struct stat st;
            if (!l->unix_path.empty() && ::lstat(l->unix_path.c_str(), &st) == 0 && st.st_dev == l->dev &&
                st.st_ino == l->ino)
                ::unlink(l->unix_path.c_str());
        }
    }
};

server::server(std::shared_ptr<export_provider> exports, server_options opts)
    : impl_(std::make_unique<impl>(std::move(exports), opts)) {}

server::~server() { stop(); }

void server::listen_unix(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path)
        throw sys_error(ENAMETOOLONG, path + ": not usable as a Unix socket path");
    std::memcpy(addr.sun_path, path.c_str(), path.size());

    struct stat st;
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            throw sys_error(EEXIST, path + ": exists and is not a socket");
        if (unix_socket_live(addr))
            throw sys_error(EADDRINUSE, path + ": another server is listening on it");
        if (::unlink(path.c_str()) != 0 && errno != ENOENT)
            throw sys_error(errno, path + ": removing the stale socket");
    }
    auto l = std::make_unique<impl::listener>();
    l->name = path;
    l->fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l->fd < 0)
        throw sys_error(errno, path + ": socket");
    // On Linux the socket file takes the socket inode's mode: set it before bind so the file is
    // never reachable by others, then chmod in case the umask took bits away.
    ::fchmod(l->fd, 0600);
    if (::bind(l->fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::chmod(path.c_str(), 0600) != 0 ||
        ::listen(l->fd, SOMAXCONN) != 0 || ::lstat(path.c_str(), &st) != 0) {
        int err = errno;
        ::close(l->fd);
        throw sys_error(err, path);
    }
    l->unix_path = path;
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    impl_->add_listener(std::move(l));
}

void server::listen_tcp(const std::string& host, std::uint16_t port) {
    std::string name = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    std::string service = std::to_string(port);
    if (int r = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res); r != 0)
        throw sys_error(EINVAL, name + ": " + ::gai_strerror(r));
    int err = EADDRNOTAVAIL, fd = -1;
    for (addrinfo* a = res; a && fd < 0; a = a->ai_next) {
        fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int on = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
        if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, SOMAXCONN) != 0) {
            err = errno;
            ::close(fd);
            fd = -1;
        }
    }
    ::freeaddrinfo(res);
    if (fd < 0)
        throw sys_error(err, name);
    auto l = std::make_unique<impl::listener>();
    l->fd = fd;
    l->name = name;
    impl_->add_listener(std::move(l));
}

void server::start() {
    std::lock_guard lk(impl_->m);
    if (impl_->stop_begun)
        return;
    for (auto& l : impl_->listeners)
        if (!l->thread.joinable())
            l->thread = std::thread([this, lp = l.get()] { impl_->accept_loop(lp); });
}

void server::stop() { impl_->stop(); }

void server::serve(int fd) {
    std::shared_ptr<connection> c;
    std::uint64_t id = 0;
    {
        std::lock_guard lk(impl_->m);
        c = impl_->admit(fd, {}, id);
    }
    if (!c)
        return;
    c->run();
    impl_->finish(id);
}

std::size_t server::connections() const {
    std::lock_guard lk(impl_->m);
    return impl_->conns.size();
}

} // namespace thin::nbd
