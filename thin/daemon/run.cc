#include "thin/daemon/run.h"

#include "thin/daemon/daemon.h"
#include "thin/nbd/server.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <poll.h>
#include <sys/signalfd.h>
#include <unistd.h>

namespace thin::daemon {

namespace {

// The NBD listeners; empty socket path and no TCP address: no NBD at all.
std::unique_ptr<thin::nbd::server> start_nbd(daemon& d) {
    const daemon_options& o = d.options();
    if (o.nbd_socket_path.empty() && !o.nbd_tcp) return nullptr;
    thin::nbd::server_options so;
    so.read_only = o.features.read_only;
    so.log = [&d](const std::string& l) { d.log("nbd: " + l); };
    auto srv = std::make_unique<thin::nbd::server>(d.exports(), so);
    if (!o.nbd_socket_path.empty()) {
        srv->listen_unix(o.nbd_socket_path);
        d.log("nbd: listening on " + o.nbd_socket_path);
    }
    if (o.nbd_tcp) {
        auto [host, port] = split_host_port(*o.nbd_tcp);
        srv->listen_tcp(host, port);
        d.log("nbd: listening on " + *o.nbd_tcp + " (TCP: anyone who can reach it can read and write every volume)");
    }
    srv->start();
    return srv;
}

int wait_for_stop(daemon& d, int sfd) {
    pollfd p[2] = {{sfd, POLLIN, 0}, {d.stop_fd(), POLLIN, 0}};
    for (;;) {
        int r = ::poll(p, 2, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return errno;
        if (p[0].revents & POLLIN) {
            signalfd_siginfo si{};
            if (::read(sfd, &si, sizeof si) == ssize_t(sizeof si))
                d.log(std::string("received ") + (si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM") + ": shutting down");
            return 0;
        }
        if (p[1].revents & POLLIN) {
            d.log("shutting down on request");
            return 0;
        }
    }
}

} // namespace

int run_daemon(daemon_options opts) {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    if (::pthread_sigmask(SIG_BLOCK, &mask, nullptr) != 0) throw std::runtime_error("cannot block SIGINT/SIGTERM");
    int sfd = ::signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) throw std::runtime_error(std::string("signalfd: ") + std::strerror(errno));
    // A client that goes away mid-reply must not kill the daemon.
    std::signal(SIGPIPE, SIG_IGN);

    daemon d(std::move(opts));
    int status = 0;
    try {
        d.start();
    } catch (const startup_error& e) {
        d.log(std::string("refusing to start: ") + e.what());
        ::close(sfd);
        return 1;
    }
    std::unique_ptr<thin::nbd::server> nbd;
    try {
        nbd = start_nbd(d);
        wait_for_stop(d, sfd);
    } catch (const std::exception& e) {
        d.log(std::string("NBD server failed: ") + e.what());
        status = 1;
    }
    if (nbd) {
        nbd->stop();
        d.log("nbd: stopped, connections drained");
    }
    d.shutdown();
    ::close(sfd);
    d.log(status == 0 ? "stopped cleanly" : "stopped after an error");
    return status;
}

} // namespace thin::daemon
