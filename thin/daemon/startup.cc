// Starting the daemon: the state directory and its lock, the device files of a first run, the
// checks on existing metadata (needs_check, block size), and opening the pool.
#include "thin/daemon/daemon.h"
#include "thin/daemon/protocol.h"
#include "thin/daemon/state.h"
#include "thin/daemon/text.h"
#include "thin/metadata/superblock.h"

#include "persistent-data/io_engine.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <fcntl.h>
#include <filesystem>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace thin::daemon {

namespace {

namespace fs = std::filesystem;

std::string errno_text(int e) { return std::strerror(e); }

// Takes the directory lock; a second daemon on the same directory (in any process) is refused.
void lock_directory(state& s) {
    const std::string& dir = s.opts.dir;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw startup_error("cannot create the state directory " + dir + ": " + ec.message());
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw startup_error("cannot open the state directory " + dir + ": " + errno_text(errno));
    if (::flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        ::close(fd);
        if (e == EWOULDBLOCK)
            throw startup_error("another thinpool daemon is using " + dir + " (the directory is locked); stop it first "
                                "(`thinpool --dir " + dir + " stop`)");
        throw startup_error("cannot lock the state directory " + dir + ": " + errno_text(e));
    }
    s.dir_lock_fd = fd;
}

// Creates a sparse file of `bytes`, or grows an existing regular file to it when the size was
// asked for explicitly. Block devices are used as they are. True when it created the file.
bool ensure_device_file(state& s, const std::string& path, std::uint64_t bytes, bool size_given, const char* what) {
    struct stat st;
    if (::stat(path.c_str(), &st) < 0) {
        if (errno != ENOENT) throw startup_error(path + ": " + errno_text(errno));
        int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) throw startup_error("cannot create the " + std::string(what) + " file " + path + ": " + errno_text(errno));
        int rc = ::ftruncate(fd, off_t(bytes));
        int e = errno;
        ::close(fd);
        if (rc < 0) {
            ::unlink(path.c_str());  // ours (O_EXCL) and still empty
            throw startup_error("cannot size " + path + " to " + human_size(bytes) + ": " + errno_text(e));
        }
        s.log("created " + std::string(what) + " file " + path + " (" + human_size(bytes) + ", sparse)");
        return true;
    }
    if (S_ISBLK(st.st_mode)) {
        if (size_given)
            throw startup_error("--" + std::string(what) + "-size applies to files the daemon creates; " + path +
                                " is a block device");
        return false;
    }
    if (!S_ISREG(st.st_mode)) throw startup_error(path + ": not a regular file or block device");
    std::uint64_t have = std::uint64_t(st.st_size);
    if (!size_given || bytes == have) return false;
    if (bytes < have)
        throw startup_error("--" + std::string(what) + "-size " + human_size(bytes) + " is smaller than " + path + " (" +
                            human_size(have) + "): a pool device cannot shrink");
    if (::truncate(path.c_str(), off_t(bytes)) < 0)
        throw startup_error("cannot grow " + path + " to " + human_size(bytes) + ": " + errno_text(errno));
    s.log("grew " + std::string(what) + " file " + path + " from " + human_size(have) + " to " + human_size(bytes));
    return false;
}

// What the existing metadata says before the pool opens it: needs_check refuses the start, and
// its data block size is the pool's (a different --block-size is an error).
void check_superblock(state& s) {
    const std::string& path = s.opts.metadata_path;
    // Aligned: the engine may read with O_DIRECT.
    std::unique_ptr<std::uint8_t, decltype(&std::free)> buf(
        static_cast<std::uint8_t*>(std::aligned_alloc(pdata::MD_BLOCK_SIZE, pdata::MD_BLOCK_SIZE)), &std::free);
    if (!buf) throw std::bad_alloc();
    std::uint8_t* block = buf.get();
    try {
        auto e = pdata::open_sync_engine(path, {pdata::open_mode::read_only, false});
        if (e->nr_blocks() == 0) throw startup_error(path + ": the metadata device is empty");
        e->read(thin::SUPERBLOCK_LOCATION, block);
    } catch (const startup_error&) {
        throw;
    } catch (const std::exception& ex) {
        throw startup_error("cannot read the metadata " + path + ": " + ex.what());
    }
    std::uint32_t bs = s.opts.block_size.value_or(DEFAULT_BLOCK_SECTORS);
    if (thin::block_is_all_zero(block)) {
        s.block_sectors = bs;
        s.log("metadata " + path + " is unformatted: a new pool with " + human_size(std::uint64_t(bs) * 512) + " blocks");
        return;
    }
    thin::superblock sb = thin::superblock::unpack(block);
    if (sb.magic != thin::SUPERBLOCK_MAGIC)
        throw startup_error(path + " is not dm-thin metadata (bad superblock magic) and not all zeros; refusing to "
                            "format over it");
    if (sb.needs_check())
        throw startup_error("the metadata " + path + " has needs_check set: run `thin_check " + path +
                            "` and, if it reports damage, thin_repair; then `thin_check --clear-needs-check-flag " +
                            path + "`");
    if (s.opts.block_size && *s.opts.block_size != sb.data_block_size)
        throw startup_error("--block-size " + human_size(std::uint64_t(*s.opts.block_size) * 512) +
                            " differs from the pool's data block size (" +
                            human_size(std::uint64_t(sb.data_block_size) * 512) + " in " + path + ")");
    s.block_sectors = sb.data_block_size;
}

} // namespace

void prepare_files(state& s) {
    const daemon_options& o = s.opts;
    // A live socket means a daemon runs (perhaps with another directory but this socket).
    if (control_socket_live(o.socket_path))
        throw startup_error("a thinpool daemon is already running: its control socket " + o.socket_path +
                            " answers; stop it first (`thinpool --socket " + o.socket_path + " stop`)");
    lock_directory(s);
    s.log("starting: state directory " + o.dir + ", metadata " + o.metadata_path + ", data " + o.data_path);
    bool made_metadata = ensure_device_file(s, o.metadata_path, o.metadata_size, o.metadata_size_given, "metadata");
    try {
        ensure_device_file(s, o.data_path, o.data_size, o.data_size_given, "data");
    } catch (const startup_error&) {
        // A metadata file made a moment ago holds nothing yet: take it away, so the next start
        // begins afresh instead of finding half a first run.
        if (made_metadata && ::unlink(o.metadata_path.c_str()) == 0)
            s.log("removed the metadata file " + o.metadata_path + " created for this start");
        throw;
    }
    check_superblock(s);
}

void open_pool(state& s) {
    thin::pool::pool_options po;
    po.metadata_path = s.opts.metadata_path;
    po.data_path = s.opts.data_path;
    po.data_block_size = s.block_sectors;
    po.low_water_mark = s.opts.low_water_mark;
    po.features = s.opts.features;
    po.no_space_timeout = s.opts.no_space_timeout;
    po.commit_period = s.opts.commit_period;
    state* sp = &s;
    // The pool calls these on its internal threads: queue and log only, never call back into it.
    po.log = [sp](const std::string& l) { sp->log("pool: " + l); };
    po.on_event = [sp](const thin::pool::pool_event& ev) {
        static const char* const kinds[] = {"data_low_water", "metadata_low_water", "mode_changed"};
        std::string line = log_timestamp() + " " + kinds[int(ev.kind)] + " mode=" + thin::pool::to_string(ev.mode) +
                           " " + ev.message;
        sp->events.publish(line);
        sp->log(std::string("event: ") + kinds[int(ev.kind)] + " (mode " + thin::pool::to_string(ev.mode) + "): " +
                ev.message);
    };
    try {
        s.pool = thin::pool::pool::open(po);
    } catch (const thin::pool::pool_error& e) {
        if (e.error_code() == EBUSY)
            throw startup_error("the pool's metadata " + s.opts.metadata_path +
                                " is in use by another process or pool (" + e.what() + ")");
        throw startup_error(std::string("cannot open the pool: ") + e.what());
    }
    thin::pool::pool_status st = s.pool->status_info(true);
    if (st.needs_check)
        throw startup_error("the metadata " + s.opts.metadata_path +
                            " has needs_check set: run thin_check and thin_repair on it before starting");
    s.volumes = std::make_shared<volume_manager>(*s.pool);
    s.log("pool: block size " + human_size(s.block_bytes()) + ", " + std::to_string(st.total_data_blocks) +
          " data blocks (" + human_size(st.total_data_blocks * s.block_bytes()) + "), " +
          std::to_string(st.used_data_blocks) + " used; metadata " + std::to_string(st.used_metadata_blocks) + " of " +
          std::to_string(st.total_metadata_blocks) + " blocks used; low water mark " +
          std::to_string(s.opts.low_water_mark) + " blocks; mode " + thin::pool::to_string(st.mode) +
          "; transaction " + std::to_string(st.transaction_id) +
          (s.opts.feature_words.empty() ? std::string() : "; features " + encode_words(s.opts.feature_words)));
}

} // namespace thin::daemon
