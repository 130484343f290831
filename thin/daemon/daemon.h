#pragma once
// The pool daemon as a library (`thinpool run`; tests run it in process): opens the pool on its
// metadata and data devices, reconciles the catalogue with the metadata, serves the control
// socket, and provides the pool's volumes as NBD exports. The NBD server itself and signal
// handling are wired by run_daemon (run.h).
#include "thin/daemon/config.h"
#include "thin/nbd/export.h"
#include "thin/pool/pool.h"

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>

namespace thin::daemon {

// The daemon refuses to start: one line saying why and what to do.
class startup_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct state;

class daemon {
public:
    explicit daemon(daemon_options opts);
    ~daemon();  // shutdown()
    daemon(const daemon&) = delete;
    daemon& operator=(const daemon&) = delete;

    // Creates what a first run needs, opens the pool, reconciles the catalogue and starts serving
    // the control socket. startup_error on a refusal (nothing left running).
    void start();

    // A stop was asked for (the `stop` command or request_stop()): stop_fd() becomes readable.
    int stop_fd() const;
    void request_stop();
    bool wait_for_stop_request(std::chrono::milliseconds deadline);

    // Stops serving the control socket, deactivates every volume, commits and closes the pool.
    // The NBD server must be stopped first. Idempotent.
    void shutdown();

    // The volumes as NBD exports (valid until shutdown).
    std::shared_ptr<thin::nbd::export_provider> exports();
    thin::pool::pool& pool();
    const daemon_options& options() const;
    // A timestamped log line.
    void log(const std::string& line);

private:
    std::shared_ptr<state> s_;
};

} // namespace thin::daemon
