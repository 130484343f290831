#pragma once
// The daemon's insides, shared by its parts (daemon.cc: life cycle; startup.cc: files and the
// pool; reconcile.cc: catalogue against metadata; commands.cc: the control commands; exports.cc:
// NBD exports). Not a public header.
#include "thin/daemon/catalogue.h"
#include "thin/daemon/config.h"
#include "thin/daemon/control_server.h"
#include "thin/daemon/events.h"
#include "thin/daemon/volumes.h"
#include "thin/nbd/export.h"
#include "thin/pool/pool.h"

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace thin::daemon {

// A command's refusal: errno and one line for the client.
class command_error : public std::runtime_error {
public:
    command_error(int err, const std::string& what) : std::runtime_error(what), errno_(err) {}
    int error_code() const { return errno_; }

private:
    int errno_;
};

struct state {
    explicit state(daemon_options o);
    ~state();

    daemon_options opts;
    std::mutex log_mutex;
    void log(const std::string& line);

    int dir_lock_fd = -1;  // flock on the state directory: one daemon per directory
    int stop_efd = -1;     // eventfd: a stop was requested
    std::unique_ptr<thin::pool::pool> pool;
    std::uint32_t block_sectors = 0;
    std::shared_ptr<volume_manager> volumes;
    event_hub events;
    std::unique_ptr<control_server> control;
    std::atomic<bool> started{false}, shut_down{false};
    // A change reached the metadata but its transaction id could not be recorded: the catalogue
    // on disk and the metadata disagree until a restart reconciles them; changes are refused.
    bool needs_restart = false;

    // Guards cat and serialises every change of catalogue or pool devices.
    std::mutex mutex;
    catalogue_store store;
    catalogue cat;

    std::uint64_t block_bytes() const { return std::uint64_t(block_sectors) * 512; }
};

// startup.cc
void prepare_files(state& s);   // directory lock, device files, needs_check, block size
void open_pool(state& s);
// reconcile.cc
void reconcile(state& s);
// A catalogue change (thinpool(8), CATALOGUE): writes `next` for transaction tid+1, runs change
// (the pool messages), then moves the metadata to tid+1. On a refused change the previous
// catalogue is restored. Caller holds s.mutex.
void apply_change(state& s, catalogue next, const std::function<void()>& change);
// n unused device ids: above every id in the catalogue and the metadata, or the lowest free ones
// when the top of the 24-bit range is reached.
std::vector<dev_id> new_device_ids(state& s, std::size_t n);
// commands.cc
void handle_request(state& s, int fd, int stop_fd, const std::vector<std::string>& words);
// exports.cc
std::shared_ptr<thin::nbd::export_provider> make_exports(std::shared_ptr<state> s);

} // namespace thin::daemon
