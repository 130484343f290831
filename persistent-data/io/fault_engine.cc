#include "persistent-data/io/fault_engine.h"

#include <cstring>
#include <stdexcept>

namespace pdata {

fault_engine::fault_engine(std::shared_ptr<io_engine> inner) : inner_(std::move(inner)) {
    if (!inner_) throw std::invalid_argument("fault_engine: no engine to wrap");
}

block_address fault_engine::nr_blocks() { return inner_->nr_blocks(); }

std::string fault_engine::name() const { return "fault(" + inner_->name() + ")"; }

void fault_engine::read(block_address b, void* buf) {
    std::lock_guard lk(mutex_);
    std::uint64_t call = ++read_calls_;
    if (read_fault_.hits(call) || bad_read_blocks_.count(b))
        throw io_error(name() + ": read of block " + std::to_string(b) + " failed: injected read error");
    if (short_read_at_ && call == short_read_at_) {
        short_read_at_ = 0;
        // Fill only what a real short read would have transferred.
        auto tmp = make_aligned_block(false);
        inner_->read(b, tmp.get());
        std::memcpy(buf, tmp.get(), short_read_bytes_);
        throw io_error(name() + ": read of block " + std::to_string(b) + " failed: short read (" +
                       std::to_string(short_read_bytes_) + " of " + std::to_string(MD_BLOCK_SIZE) +
                       " bytes, injected)");
    }
    inner_->read(b, buf);
    ++reads_;
}

void fault_engine::write(block_address b, const void* buf) {
    std::lock_guard lk(mutex_);
    std::uint64_t call = ++write_calls_;
    if (crashed_) {
        ++dropped_writes_;
        throw io_error(name() + ": write of block " + std::to_string(b) + " failed: simulated crash");
    }
    if (write_fault_.hits(call))
        throw io_error(name() + ": write of block " + std::to_string(b) + " failed: injected write error");
    inner_->write(b, buf);
    ++writes_;
    if (recording_) {
        auto p = static_cast<const std::uint8_t*>(buf);
        log_.push_back({write_log_entry::kind::write, b, std::vector<std::uint8_t>(p, p + MD_BLOCK_SIZE)});
    }
    if (writes_until_crash_ && --*writes_until_crash_ == 0) {
        writes_until_crash_.reset();
        crashed_ = true;
    }
}

void fault_engine::flush() {
    std::lock_guard lk(mutex_);
    if (crashed_) throw io_error(name() + ": flush failed: simulated crash");
    inner_->flush();
    ++flushes_;
    if (recording_) log_.push_back({write_log_entry::kind::flush, 0, {}});
}

void fault_engine::fail_read_at(std::uint64_t n, bool and_after) {
    if (n == 0) throw std::invalid_argument("fault_engine::fail_read_at: n counts from 1");
    std::lock_guard lk(mutex_);
    read_fault_ = {read_calls_ + n, and_after};
}

void fault_engine::fail_write_at(std::uint64_t n, bool and_after) {
    if (n == 0) throw std::invalid_argument("fault_engine::fail_write_at: n counts from 1");
    std::lock_guard lk(mutex_);
    write_fault_ = {write_calls_ + n, and_after};
}

void fault_engine::fail_reads_of(block_address b) {
    std::lock_guard lk(mutex_);
    bad_read_blocks_.insert(b);
}

void fault_engine::short_read_at(std::uint64_t n, std::size_t bytes) {
    if (n == 0) throw std::invalid_argument("fault_engine::short_read_at: n counts from 1");
    if (bytes >= MD_BLOCK_SIZE) throw std::invalid_argument("fault_engine::short_read_at: not short");
    std::lock_guard lk(mutex_);
    short_read_at_ = read_calls_ + n;
    short_read_bytes_ = bytes;
}

void fault_engine::crash_after_writes(std::uint64_t n) {
    std::lock_guard lk(mutex_);
    if (n == 0) {
        crashed_ = true;
        writes_until_crash_.reset();
    } else {
        writes_until_crash_ = n;
    }
}

bool fault_engine::crashed() const {
    std::lock_guard lk(mutex_);
    return crashed_;
}

void fault_engine::clear_faults() {
    std::lock_guard lk(mutex_);
    read_fault_ = {};
    write_fault_ = {};
    bad_read_blocks_.clear();
    short_read_at_ = 0;
    writes_until_crash_.reset();
}

void fault_engine::reboot() {
    clear_faults();
    std::lock_guard lk(mutex_);
    crashed_ = false;
}

void fault_engine::record(bool on) {
    std::lock_guard lk(mutex_);
    recording_ = on;
}

bool fault_engine::recording() const {
    std::lock_guard lk(mutex_);
    return recording_;
}

write_log fault_engine::take_log() {
    std::lock_guard lk(mutex_);
    write_log l = std::move(log_);
    log_.clear();
    return l;
}

void fault_engine::clear_log() {
    std::lock_guard lk(mutex_);
    log_.clear();
}

namespace {
void apply(const write_log_entry& e, io_engine& target, aligned_block& buf) {
    if (e.is_flush()) return;
    if (e.data.size() != MD_BLOCK_SIZE)
        throw std::invalid_argument("write log entry for block " + std::to_string(e.block) +
                                    " does not hold a whole block");
    std::memcpy(buf.get(), e.data.data(), MD_BLOCK_SIZE);  // engines want aligned buffers
    target.write(e.block, buf.get());
}
} // namespace

void fault_engine::replay(const write_log& log, std::size_t upto_entries, io_engine& target) {
    if (upto_entries > log.size())
        throw std::out_of_range("fault_engine::replay: " + std::to_string(upto_entries) +
                                " entries asked for, the log holds " + std::to_string(log.size()));
    auto buf = make_aligned_block(false);
    for (std::size_t i = 0; i < upto_entries; ++i) apply(log[i], target, buf);
}

void fault_engine::replay_selected(const write_log& log, const std::vector<bool>& keep, io_engine& target) {
    if (keep.size() > log.size())
        throw std::out_of_range("fault_engine::replay_selected: selection is longer than the log");
    auto buf = make_aligned_block(false);
    for (std::size_t i = 0; i < keep.size(); ++i)
        if (keep[i]) apply(log[i], target, buf);
}

void fault_engine::replay_indices(const write_log& log, std::span<const std::size_t> indices,
                                  io_engine& target) {
    auto buf = make_aligned_block(false);
    for (auto i : indices) {
        if (i >= log.size())
            throw std::out_of_range("fault_engine::replay_indices: entry " + std::to_string(i) +
                                    " is beyond the log (" + std::to_string(log.size()) + " entries)");
        apply(log[i], target, buf);
    }
}

std::vector<std::size_t> fault_engine::flush_points(const write_log& log) {
    std::vector<std::size_t> points;
    for (std::size_t i = 0; i < log.size(); ++i)
        if (log[i].is_flush()) points.push_back(i + 1);
    return points;
}

std::uint64_t fault_engine::reads() const {
    std::lock_guard lk(mutex_);
    return reads_;
}

std::uint64_t fault_engine::writes() const {
    std::lock_guard lk(mutex_);
    return writes_;
}

std::uint64_t fault_engine::flushes() const {
    std::lock_guard lk(mutex_);
    return flushes_;
}

std::uint64_t fault_engine::dropped_writes() const {
    std::lock_guard lk(mutex_);
    return dropped_writes_;
}

} // namespace pdata
