#pragma once
// Recording for write-log crash replay (design.md §4, SQLite's power-loss testing; issue 6): one
// workload runs on a metadata engine and a data device that log every write and flush on one
// shared timeline, so a crash can afterwards be replayed at any point of it without re-running the
// workload.
//
// The timeline orders, under one mutex: metadata writes and flushes (their contents are the
// pdata::fault_engine log, entry k being the kth metadata event), data writes when submitted and
// when completed, data flushes when called and when completed, and marks the workload adds
// (operation starts and ends). A device event is stamped before the caller learns of it (the
// completion callback runs after the stamp), so causality holds: anything the pool did because a
// flush completed comes later on the timeline.
//
// A crash at point p (the first p events happened) leaves:
//   - metadata: every write before the last metadata flush before p, plus a chosen subset of the
//     writes after it (a volatile cache, writes torn in any order);
//   - data: every write covered by the data flushes completed before p (a flush covers the writes
//     whose completion came before the flush was called), plus a chosen subset of the writes
//     submitted before p that are not covered - completed or still in flight.
#include "persistent-data/io/fault_engine.h"
#include "persistent-data/io_engine.h"
#include "thin/pool/data_device.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <vector>

namespace thinpool_test {

struct crash_event {
    enum class kind { md_write, md_flush, data_submit, data_complete, data_flush_call, data_flush_done, mark };
    kind type;
    std::uint64_t id;  // md: log entry; data_submit/complete: write; flush_call/done: flush; mark: caller's
};

class crash_timeline {
public:
    std::size_t add(crash_event::kind k, std::uint64_t id);
    std::size_t mark(std::uint64_t id) { return add(crash_event::kind::mark, id); }
    std::size_t size() const;
    // Not while devices are recording.
    const std::vector<crash_event>& events() const { return events_; }
    std::mutex& mutex() { return mutex_; }
    // With mutex() held: append without locking.
    std::size_t add_locked(crash_event::kind k, std::uint64_t id);

private:
    mutable std::mutex mutex_;
    std::vector<crash_event> events_;
};

// Forwards to a fault_engine that records (record(true) is set here) and stamps every metadata
// write and flush on the timeline. nr_blocks() is the visible size, grown by grow() (the inner
// engine holds the largest size from the start, so growing never reallocates under the pool).
class recording_metadata_engine : public pdata::io_engine {
public:
    recording_metadata_engine(std::shared_ptr<pdata::fault_engine> f, crash_timeline& t,
                              pdata::block_address visible_blocks);
    pdata::block_address nr_blocks() override { return visible_.load(); }
    void read(pdata::block_address b, void* buf) override { f_->read(b, buf); }
    void write(pdata::block_address b, const void* buf) override;
    void flush() override;
    std::string name() const override { return "recording(" + f_->name() + ")"; }
    void grow(pdata::block_address blocks) { visible_ = blocks; }

private:
    std::shared_ptr<pdata::fault_engine> f_;
    crash_timeline& t_;
    std::atomic<pdata::block_address> visible_;
    std::mutex mutex_;  // keeps fault_engine log order == timeline order
    std::uint64_t next_entry_ = 0;
};

// One data write as the device received it (write, write_zeroes, copy, discard).
struct recorded_data_write {
    std::uint64_t sector = 0, nr_sectors = 0;
    std::vector<std::uint8_t> bytes;  // empty: zeros (write_zeroes, discard)
};

// A data device forwarding to a memory_data_device and recording every write and flush. A copy
// is done as a read then a write (a device is free to do that; the write is what is recorded).
class recording_data_device : public thin::pool::data_device {
public:
    recording_data_device(std::shared_ptr<thin::pool::data_device> inner, crash_timeline& t,
                          std::uint64_t visible_sectors);
    ~recording_data_device() override;

    std::uint64_t nr_sectors() override { return visible_.load(); }
    void read(std::uint64_t sector, std::uint64_t n, void* buf, thin::pool::io_callback done) override;
    void write(std::uint64_t sector, std::uint64_t n, const void* buf, thin::pool::io_callback done) override;
    void write_zeroes(std::uint64_t sector, std::uint64_t n, thin::pool::io_callback done) override;
    void copy(data_device& from, std::uint64_t from_sector, std::uint64_t to_sector, std::uint64_t n,
              thin::pool::io_callback done) override;
    void discard(std::uint64_t sector, std::uint64_t n, thin::pool::io_callback done) override;
    bool supports_discard() const override { return inner_->supports_discard(); }
    void flush(thin::pool::io_callback done) override;
    void drain() override;
    std::string name() const override { return "recording(" + inner_->name() + ")"; }
    void grow(std::uint64_t sectors) { visible_ = sectors; }

    // Not while requests are in flight.
    const std::vector<recorded_data_write>& writes() const { return writes_; }
    // Per flush: how many writes (in completion order) had completed when it was called.
    const std::vector<std::size_t>& flush_coverage() const { return flush_coverage_; }

private:
    // Stamps the submission, forwards, stamps the completion. buf null: zeros (write_zeroes, discard).
    void record_write(std::uint64_t sector, std::uint64_t n, const void* buf, thin::pool::io_callback done,
                      bool discard);
    thin::pool::io_callback tracked(thin::pool::io_callback done);

    std::shared_ptr<thin::pool::data_device> inner_;
    crash_timeline& t_;
    std::atomic<std::uint64_t> visible_;
    std::vector<recorded_data_write> writes_;    // under t_.mutex()
    std::vector<std::size_t> flush_coverage_;    // under t_.mutex()
    std::size_t completed_ = 0;                  // under t_.mutex()
    std::mutex drain_mutex_;
    std::condition_variable drained_;
    std::uint64_t outstanding_ = 0;
};

// Rebuilds the devices' contents at crash points, walking the timeline forward: points must be
// asked for in non-decreasing order. Chooses torn subsets with the generator it is given.
class crash_replayer {
public:
    crash_replayer(const std::vector<crash_event>& events, const pdata::write_log& md_log,
                   const std::vector<std::uint8_t>& md_base, pdata::block_address md_blocks,
                   const std::vector<recorded_data_write>& data_writes, const std::vector<std::size_t>& flush_coverage,
                   std::uint64_t data_sectors);

    struct image {
        std::shared_ptr<pdata::memory_engine> metadata;
        std::shared_ptr<thin::pool::memory_data_device> data;
        std::size_t md_torn_candidates = 0, md_torn_kept = 0;      // writes after the last md flush
        std::size_t data_torn_candidates = 0, data_torn_kept = 0;  // data writes not yet durable
    };
    // The devices after a crash at point p (the first p timeline events happened).
    image at(std::size_t p, std::mt19937_64& rng);

private:
    void advance(std::size_t p);
    void apply_data(std::map<std::uint64_t, std::vector<std::uint8_t>>& chunks, const recorded_data_write& w) const;

    const std::vector<crash_event>& events_;
    const pdata::write_log& md_log_;
    const std::vector<recorded_data_write>& data_writes_;
    const std::vector<std::size_t>& flush_coverage_;
    pdata::block_address md_blocks_;
    std::uint64_t data_sectors_;

    std::size_t pos_ = 0;
    // Metadata: the durable image holds entries [0, md_durable_); entries up to md_seen_ happened.
    std::shared_ptr<pdata::memory_engine> md_durable_image_;
    std::size_t md_durable_ = 0, md_seen_ = 0;
    // Data: write ids in completion order; the first data_durable_ of them are in durable_chunks_.
    std::vector<std::uint64_t> completion_order_;
    std::size_t data_durable_ = 0, data_applied_ = 0;
    std::vector<bool> completed_;
    std::vector<std::uint64_t> in_flight_;  // submitted, not completed as of pos_ (submission order)
    std::map<std::uint64_t, std::vector<std::uint8_t>> durable_chunks_;  // 64 KiB chunks by index
};

} // namespace thinpool_test
