#pragma once
// `thinpool run`: the daemon in the foreground with the NBD server and signal handling.
#include "thin/daemon/config.h"

namespace thin::daemon {

// Blocks SIGINT and SIGTERM (before any thread starts, so they reach the signalfd only), starts
// the daemon and the NBD server, waits for a signal or the `stop` command, then stops accepting,
// drains the NBD connections, commits and closes the pool. Returns the exit status: 0 after a
// clean shutdown, 1 when the daemon refused to start (the reason logged as one line).
int run_daemon(daemon_options opts);

} // namespace thin::daemon
