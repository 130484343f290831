#pragma once
// Helpers for the pool runtime's acceptance tests (tests/thin/pool/*): self-identifying data
// patterns, requests to a thin device waited for with a deadline (a hung request fails the test
// instead of hanging it), file- and memory-backed pool set-ups, metadata images, and the tools.
//
// Patterns: every 512-byte sector written by a test carries (tag, thin sector): word 0 is the tag,
// word 1 the sector, the rest a hash of both. A sector read back therefore says which write put it
// there and whether it sits where that write put it; an all-zero sector is "never written".
#include "tests/support/reference_tools.h"

#include "persistent-data/io/fault_engine.h"
#include "persistent-data/io_engine.h"
#include "thin/pool/data_device.h"
#include "thin/pool/pool.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace thinpool_test {

using namespace std::chrono_literals;

// ---- patterns ------------------------------------------------------------------------------------

constexpr std::uint64_t SECTOR = 512;

// tag must be non-zero.
void fill_sector(std::uint8_t* p, std::uint64_t tag, std::uint64_t sector);
void fill_sectors(std::uint8_t* p, std::uint64_t tag, std::uint64_t first_sector, std::uint64_t nr_sectors);
std::vector<std::uint8_t> make_pattern(std::uint64_t tag, std::uint64_t first_sector, std::uint64_t nr_sectors);

// 0 when the sector is all zeros, the tag when it holds that tag's pattern for `sector`, nullopt
// for anything else (torn, misplaced, stale garbage).
std::optional<std::uint64_t> sector_tag(const std::uint8_t* p, std::uint64_t sector);
// The tag every sector holds (0: all zeros); nullopt when sectors differ or one is garbage.
std::optional<std::uint64_t> uniform_tag(const std::uint8_t* p, std::uint64_t first_sector, std::uint64_t nr_sectors);
// "sectors 0-127 tag 5; sectors 128-255 zeros; ..." for failure messages.
std::string describe_sectors(const std::uint8_t* p, std::uint64_t first_sector, std::uint64_t nr_sectors);

// ---- hangs ---------------------------------------------------------------------------------------

// Set when a request or a watched operation missed its deadline. Pools and devices of a hung test
// are then abandoned (leaked) instead of closed, since closing waits for the hung request.
void note_hang();
bool hang_detected();
// Keeps an object alive forever (never destroyed), for abandoning a hung pool.
void abandon(std::shared_ptr<void> p);

// Runs fn on its own thread; true when it returned within the deadline. On a miss the thread is
// detached, note_hang() is called, and fn's captures must stay valid (abandon them).
bool finishes_within(std::function<void()> fn, std::chrono::milliseconds deadline);

// A watched operation missed its deadline and its threads still reference the test's stack: the
// test fails with `what` (printed at once) and the process exits with status 1 instead of hanging
// or running on with corrupt state.
[[noreturn]] void fail_hung_test(const std::string& what);

// Runs worker(0), ..., worker(n - 1) on n threads and waits for all of them; when they have not
// finished within the deadline the test fails at once with `what` (fail_hung_test).
void run_threads_or_fail(unsigned n, const std::function<void(unsigned)>& worker, std::chrono::milliseconds deadline,
                         const std::string& what);

// Polls pred every millisecond until it holds or the deadline passes (waiting for an event that
// has an observable effect, e.g. a status field).
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds deadline = 10s);

// ---- requests ------------------------------------------------------------------------------------

constexpr auto IO_DEADLINE = 30s;
constexpr int TIMED_OUT = -ETIMEDOUT;  // what the synchronous helpers return on a missed deadline

// One asynchronous request whose buffer lives as long as the request (even past a missed deadline).
class pending_io {
public:
    pending_io() = default;
    // For writes, `data` holds nr_sectors * 512 bytes; reads allocate their buffer.
    static pending_io submit(thin::pool::thin_device& dev, thin::pool::io_op op, std::uint64_t sector,
                             std::uint64_t nr_sectors, const std::uint8_t* data = nullptr, bool fua = false,
                             bool preflush = false);
    // Waits for completion; TIMED_OUT (and note_hang()) when the deadline passes.
    int wait(std::chrono::milliseconds deadline = IO_DEADLINE);
    bool ready() const;
    const std::vector<std::uint8_t>& data() const;  // read contents after wait()
    bool valid() const { return state_ != nullptr; }

private:
    struct state;
    std::shared_ptr<state> state_;
};

int write_sync(thin::pool::thin_device& dev, std::uint64_t sector, const std::vector<std::uint8_t>& data,
               bool fua = false, bool preflush = false);
int read_sync(thin::pool::thin_device& dev, std::uint64_t sector, std::uint64_t nr_sectors,
              std::vector<std::uint8_t>& out);
int discard_sync(thin::pool::thin_device& dev, std::uint64_t sector, std::uint64_t nr_sectors);
int flush_sync(thin::pool::thin_device& dev);
int write_zeroes_sync(thin::pool::thin_device& dev, std::uint64_t sector, std::uint64_t nr_sectors,
                      bool no_hole = false);

// Block-sized helpers (bs = data block size in sectors).
int write_block(thin::pool::thin_device& dev, std::uint32_t bs, std::uint64_t vblock, std::uint64_t tag,
                bool fua = false);
// The uniform tag of a whole block (0 = zeros), nullopt when mixed/garbage, TIMED_OUT/errno via rc.
std::optional<std::uint64_t> read_block_tag(thin::pool::thin_device& dev, std::uint32_t bs, std::uint64_t vblock,
                                            int* rc = nullptr, std::string* detail = nullptr);

// ---- pools ---------------------------------------------------------------------------------------

// Closes the pool unless a hang was detected (then abandons it).
struct pool_deleter {
    void operator()(thin::pool::pool* p) const;
};
using pool_ptr = std::unique_ptr<thin::pool::pool, pool_deleter>;
pool_ptr open_pool(const thin::pool::pool_options& opts);

// Options every test pool uses unless it says otherwise: no periodic commits (commit_period one
// hour) so commits happen only where a test triggers them, and log lines collected, not printed.
thin::pool::pool_options quiet_options();

// A pool on sparse files in a scratch directory.
struct file_pool {
    scratch_dir dir;
    std::string metadata, data;
    thin::pool::pool_options opts;
    // metadata_bytes of metadata file; data file of data_blocks blocks of bs sectors.
    file_pool(std::uint64_t metadata_bytes, std::uint64_t data_blocks, std::uint32_t bs = 128);
    pool_ptr open() const { return open_pool(opts); }
};

// A pool on a memory metadata engine (behind a fault_engine) and a memory data device.
struct memory_pool {
    std::shared_ptr<pdata::memory_engine> md;
    std::shared_ptr<pdata::fault_engine> fault;
    std::shared_ptr<thin::pool::memory_data_device> data;
    thin::pool::pool_options opts;
    memory_pool(pdata::block_address metadata_blocks, std::uint64_t data_blocks, std::uint32_t bs = 128,
                bool discard_supported = true);
    pool_ptr open() const { return open_pool(opts); }
};

// ---- metadata images and tools -----------------------------------------------------------------

// Copies every block of an engine into a file (created or truncated).
void save_image(pdata::io_engine& e, const std::string& path);
// A memory engine holding a file's blocks.
std::shared_ptr<pdata::memory_engine> load_image(const std::string& path);

// Our build's tool (THINPOOL_BINARY_DIR/<tool>) and Debian's (reference_tool()).
command_result run_ours(const std::string& tool, std::vector<std::string> args);
command_result run_theirs(const std::string& tool, std::vector<std::string> args);
std::string describe(const command_result& r);

// Our thin_check and, when installed, Debian's pass on a metadata file (extra options first);
// a missing reference fails when the environment requires it.
void expect_checks_pass(const std::string& metadata, const std::vector<std::string>& extra = {});
// The same on an engine's image (saved to a scratch file).
void expect_image_checks_pass(pdata::io_engine& md);

// Bytes allocated to a file (st_blocks * 512).
std::uint64_t allocated_bytes(const std::string& path);
std::vector<std::uint8_t> read_bytes(const std::string& path, std::uint64_t offset, std::uint64_t len);
void write_bytes(const std::string& path, std::uint64_t offset, const std::vector<std::uint8_t>& bytes);

// The errno of a pool_error thrown by fn, 0 when it does not throw (other exceptions propagate).
int pool_errno(const std::function<void()>& fn);

} // namespace thinpool_test
