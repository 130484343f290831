#include "thin/daemon/daemon.h"

#include "thin/daemon/state.h"
#include "thin/daemon/text.h"

#include <cerrno>
#include <cstring>
#include <iostream>
#include <poll.h>
#include <sys/eventfd.h>
#include <system_error>
#include <unistd.h>

namespace thin::daemon {

state::state(daemon_options o) : opts(std::move(o)), store(opts.dir) {
    stop_efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_efd < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

state::~state() {
    if (stop_efd >= 0) ::close(stop_efd);
    if (dir_lock_fd >= 0) ::close(dir_lock_fd);
}

void state::log(const std::string& line) {
    std::string l = log_timestamp() + " " + line;
    std::lock_guard lk(log_mutex);
    if (opts.log)
        opts.log(l);
    else
        std::cerr << l << std::endl;
}

daemon::daemon(daemon_options opts) : s_(std::make_shared<state>(std::move(opts))) {}

daemon::~daemon() {
    try {
        shutdown();
    } catch (const std::exception& e) {
        s_->log(std::string("shutdown failed: ") + e.what());
    }
}

void daemon::start() {
    state& s = *s_;
    if (s.started.exchange(true)) throw startup_error("the daemon was already started");
    try {
        prepare_files(s);
        open_pool(s);
        reconcile(s);
        s.control = std::make_unique<control_server>(
            s.opts.socket_path,
            [w = std::weak_ptr<state>(s_)](int fd, int stop_fd, const std::vector<std::string>& words) {
                if (auto st = w.lock()) handle_request(*st, fd, stop_fd, words);
            },
            [this](const std::string& l) { log(l); });
        s.control->start();
    } catch (const startup_error&) {
        shutdown();
        throw;
    } catch (const std::exception& e) {
        shutdown();
        throw startup_error(e.what());
    }
    s.log("serving: control socket " + s.opts.socket_path);
}

int daemon::stop_fd() const { return s_->stop_efd; }

void daemon::request_stop() {
    std::uint64_t one = 1;
    (void)!::write(s_->stop_efd, &one, sizeof one);
}

bool daemon::wait_for_stop_request(std::chrono::milliseconds deadline) {
    pollfd p{s_->stop_efd, POLLIN, 0};
    for (;;) {
        int r = ::poll(&p, 1, int(deadline.count()));
        if (r < 0 && errno == EINTR) continue;
        return r > 0;
    }
}

void daemon::shutdown() {
    state& s = *s_;
    if (s.shut_down.exchange(true)) return;
    if (s.control) {
        s.control->stop();
        s.log("control socket closed");
    }
    if (s.volumes) s.volumes->close_all();
    if (s.pool) {
        try {
            if (s.pool->mode() != thin::pool::pool_mode::read_only && s.pool->mode() != thin::pool::pool_mode::fail &&
                !s.opts.features.read_only)
                s.pool->commit();
        } catch (const std::exception& e) {
            s.log(std::string("final commit failed: ") + e.what());
        }
        s.pool->close();
        s.log("pool closed at transaction " + std::to_string(s.cat.transaction_id));
    }
    if (s.dir_lock_fd >= 0) {
        ::close(s.dir_lock_fd);
        s.dir_lock_fd = -1;
    }
}

std::shared_ptr<thin::nbd::export_provider> daemon::exports() { return make_exports(s_); }

thin::pool::pool& daemon::pool() {
    if (!s_->pool) throw std::logic_error("the daemon has no pool open");
    return *s_->pool;
}

const daemon_options& daemon::options() const { return s_->opts; }

void daemon::log(const std::string& line) { s_->log(line); }

} // namespace thin::daemon
