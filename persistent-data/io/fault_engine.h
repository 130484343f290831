#pragma once
// An io_engine wrapper for reliability tests (design.md §1, layer 2; SQLite's habit of testing
// with fault-injecting I/O): fail the nth read or write, short reads, a crash point after which
// the machine is dead (writes and flushes are dropped), and a log of every write and flush that
// can be replayed, whole, as a prefix or as an arbitrary subset, onto another engine.
//
// Counting: "the nth read/write from now" counts calls to read()/write() (read_many/write_many
// count each request) made after the fault is armed, 1-based, whether they succeed or not.
#include "persistent-data/io_engine.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <vector>

namespace pdata {

// One entry of a write log: a write of one block (with a copy of its contents) or a flush.
struct write_log_entry {
    enum class kind { write, flush };
    kind type = kind::write;
    block_address block = 0;          // writes only
    std::vector<std::uint8_t> data;   // MD_BLOCK_SIZE bytes for writes, empty for flushes

    bool is_flush() const { return type == kind::flush; }
};
using write_log = std::vector<write_log_entry>;

class fault_engine : public io_engine {
public:
    explicit fault_engine(std::shared_ptr<io_engine> inner);

    block_address nr_blocks() override;
    void read(block_address b, void* buf) override;
    void write(block_address b, const void* buf) override;
    void flush() override;
    std::string name() const override;

    io_engine& inner() { return *inner_; }

    // --- faults -------------------------------------------------------------------------------
    // The nth read (write) from now throws io_error("... injected ..."); with and_after, so does
    // every later one. n >= 1 (std::invalid_argument otherwise).
    void fail_read_at(std::uint64_t n, bool and_after = false);
    void fail_write_at(std::uint64_t n, bool and_after = false);
    // Every read of block b fails (until clear_faults()).
    void fail_reads_of(block_address b);
    // The nth read from now transfers only `bytes` bytes (< MD_BLOCK_SIZE) into the buffer and
    // throws io_error naming the block, as a real short read does.
    void short_read_at(std::uint64_t n, std::size_t bytes = 0);
    // After n more successful writes the machine is dead: every later write and flush is dropped
    // and throws io_error("simulated crash"); reads still work. n == 0 crashes now.
    void crash_after_writes(std::uint64_t n);
    bool crashed() const;
    // Forgets pending faults (failures, short reads, crash countdown); a crash already happened
    // stays until reboot().
    void clear_faults();
    // The machine comes back: clears faults and the crashed state; the inner device holds what
    // was written before the crash.
    void reboot();

    // --- write log ----------------------------------------------------------------------------
    // While recording, every write that reaches the inner engine appends {block, copy} and every
    // flush that does appends a flush marker. Failed and dropped writes are not logged.
    void record(bool on);
    bool recording() const;
    const write_log& log() const { return log_; }  // not while another thread is writing
    write_log take_log();
    void clear_log();

    // Applies the writes among entries [0, upto) to target in order (flush markers are skipped).
    static void replay(const write_log& log, std::size_t upto_entries, io_engine& target);
    // Applies the writes at the entries where keep[i] is true, in log order (torn writes).
    static void replay_selected(const write_log& log, const std::vector<bool>& keep, io_engine& target);
    // Applies the writes at the given entry indices, in the order given.
    static void replay_indices(const write_log& log, std::span<const std::size_t> indices, io_engine& target);
    // Entry indices just after each flush marker: the prefixes a crash can durably leave behind.
    static std::vector<std::size_t> flush_points(const write_log& log);

    // --- counters (calls that reached the inner engine and succeeded) --------------------------
    std::uint64_t reads() const;
    std::uint64_t writes() const;
    std::uint64_t flushes() const;
    std::uint64_t dropped_writes() const;  // writes thrown away after the crash

private:
    struct nth_fault {
        std::uint64_t at = 0;  // call number (of read_calls_/write_calls_) of the first failure
        bool and_after = false;
        bool hits(std::uint64_t call) const { return at && (call == at || (and_after && call > at)); }
    };

    std::shared_ptr<io_engine> inner_;
    mutable std::mutex mutex_;

    std::uint64_t read_calls_ = 0;
    std::uint64_t write_calls_ = 0;
    nth_fault read_fault_;
    nth_fault write_fault_;
    std::set<block_address> bad_read_blocks_;
    std::uint64_t short_read_at_ = 0;
    std::size_t short_read_bytes_ = 0;
    std::optional<std::uint64_t> writes_until_crash_;
    bool crashed_ = false;

    bool recording_ = false;
    write_log log_;

    std::uint64_t reads_ = 0;
    std::uint64_t writes_ = 0;
    std::uint64_t flushes_ = 0;
    std::uint64_t dropped_writes_ = 0;
};

} // namespace pdata
