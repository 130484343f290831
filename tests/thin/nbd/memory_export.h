#pragma once
// An in-memory export for the NBD server tests: bytes plus a map of provisioned blocks, requests
// completed in order on the export's own thread (as the pool does), with controls to hold
// completions, release them in any order, and count what the server asked for.
#include "thin/nbd/export.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace nbd_test {

using thin::pool::io_op;
using thin::pool::io_request;

inline constexpr auto DEADLINE = std::chrono::seconds(20);

class memory_export : public thin::nbd::export_handle {
public:
    struct options {
        std::uint64_t size = 8 << 20;
        std::uint32_t block = 64 * 1024;
        bool read_only = false;
        bool can_trim = true;
    };
    explicit memory_export(options o) : o_(o), data_(o.size, 0), mapped_((o.size + o.block - 1) / o.block, false) {
        worker_ = std::thread([this] { work(); });
    }
    ~memory_export() override {
        {
            std::lock_guard lk(m_);
            quit_ = true;
            held_ = false;
        }
        cv_.notify_all();
        worker_.join();
    }

    std::uint64_t size() const override { return o_.size; }
    bool read_only() const override { return o_.read_only; }
    std::uint32_t preferred_block_size() const override { return o_.block; }
    bool can_trim() const override { return o_.can_trim; }

    void submit(io_request r) override {
        std::lock_guard lk(m_);
        ++submitted_;
        max_pending_ = std::max(max_pending_, submitted_ - answered_);
        log_.push_back(r);
        log_.back().done = nullptr;
        pending_.push_back(std::move(r));
        cv_.notify_all();
    }

    std::vector<thin::nbd::extent> block_status(std::uint64_t offset, std::uint64_t length) override {
        std::lock_guard lk(m_);
        ++block_status_calls_;
        std::vector<thin::nbd::extent> out;
        std::uint64_t end = std::min(offset + length, o_.size);
        for (std::uint64_t pos = offset; pos < end;) {
            bool m = mapped_[pos / o_.block];
            std::uint64_t next = std::min((pos / o_.block + 1) * o_.block, end);
            if (!out.empty() && out.back().hole == !m)
                out.back().length += next - pos;
            else
                out.push_back({next - pos, !m, !m});
            pos = next;
        }
        return out;
    }

    // ---- test controls ----

    // Completions wait until released (the export still takes requests).
    void hold() {
        std::lock_guard lk(m_);
        held_ = true;
    }
    void open_gate() {
        std::lock_guard lk(m_);
        held_ = false;
        cv_.notify_all();
    }
    // Completes one held request: the newest (true) or the oldest.
    void release_one(bool newest) {
        std::lock_guard lk(m_);
        ASSERT_FALSE(pending_.empty());
        if (newest) {
            ready_.push_back(std::move(pending_.back()));
            pending_.pop_back();
        } else {
            ready_.push_back(std::move(pending_.front()));
            pending_.pop_front();
        }
        cv_.notify_all();
    }
    // The next request completes with this negative errno instead of running.
    void fail_next(int negative_errno) {
        std::lock_guard lk(m_);
        fail_next_ = negative_errno;
    }

    bool wait_for(const std::function<bool()>& pred) {
        std::unique_lock lk(m_);
        return cv_.wait_for(lk, DEADLINE, pred);
    }
    bool wait_submitted(std::uint64_t n) { return wait_for([&] { return submitted_ >= n; }); }
    bool wait_idle() { return wait_for([&] { return completed_ == submitted_; }); }

    std::uint64_t submitted() { return locked([&] { return submitted_; }); }
    std::uint64_t completed() { return locked([&] { return completed_; }); }
    std::uint64_t max_pending() { return locked([&] { return max_pending_; }); }
    int block_status_calls() { return locked([&] { return block_status_calls_; }); }
    std::vector<io_request> requests() { return locked([&] { return log_; }); }

    std::vector<std::uint8_t> bytes(std::uint64_t off, std::uint64_t n) {
        std::lock_guard lk(m_);
        return {data_.begin() + off, data_.begin() + off + n};
    }
    void fill(std::uint64_t off, std::uint64_t n, std::uint8_t v) {
        std::lock_guard lk(m_);
        std::fill_n(data_.begin() + off, n, v);
        map_range(off, n);
    }
    bool mapped(std::uint64_t block) { return locked([&] { return bool(mapped_[block]); }); }

private:
    template <typename F>
    auto locked(F f) -> decltype(f()) {
        std::lock_guard lk(m_);
        return f();
    }

    void work() {
        std::unique_lock lk(m_);
        for (;;) {
            cv_.wait(lk, [&] { return quit_ || !ready_.empty() || (!held_ && !pending_.empty()); });
            std::deque<io_request>& from = !ready_.empty() ? ready_ : pending_;
            if (from.empty())
                return;  // quitting with nothing left
            io_request r = std::move(from.front());
            from.pop_front();
            int result = fail_next_ ? fail_next_ : execute(r);
            fail_next_ = 0;
            ++answered_;  // counted before `done`, which may let the server submit more at once
            lk.unlock();
            r.done(result);  // outside the lock, as a real device would
            lk.lock();
            ++completed_;
            cv_.notify_all();
        }
    }

    int execute(const io_request& r) {
        std::uint64_t off = r.sector * 512, n = r.nr_sectors * 512;
        if (r.op != io_op::flush && (off > o_.size || n > o_.size - off))
            return -EIO;
        switch (r.op) {
        case io_op::read: std::memcpy(r.buf, data_.data() + off, n); break;
        case io_op::write:
            std::memcpy(data_.data() + off, r.buf, n);
            map_range(off, n);
            break;
        case io_op::flush: break;
        case io_op::discard:
            if (!o_.can_trim)
                return -EOPNOTSUPP;
            unmap_whole_blocks(off, n);
            break;
        case io_op::write_zeroes:
            std::fill_n(data_.begin() + off, n, 0);
            if (r.no_hole)
                map_range(off, n);
            else
                unmap_whole_blocks(off, n);
            break;
        }
        return 0;
    }

    void map_range(std::uint64_t off, std::uint64_t n) {
        for (std::uint64_t b = off / o_.block; b * o_.block < off + n; ++b)
            mapped_[b] = true;
    }
    void unmap_whole_blocks(std::uint64_t off, std::uint64_t n) {
        for (std::uint64_t b = (off + o_.block - 1) / o_.block; (b + 1) * o_.block <= off + n; ++b) {
            mapped_[b] = false;
            std::fill_n(data_.begin() + b * o_.block, o_.block, 0);
        }
    }

    options o_;
    std::mutex m_;
    std::condition_variable cv_;
    std::vector<std::uint8_t> data_;
    std::vector<bool> mapped_;
    std::deque<io_request> pending_, ready_;
    std::vector<io_request> log_;  // every request as submitted (without its callback)
    bool held_ = false, quit_ = false;
    int fail_next_ = 0;
    std::uint64_t submitted_ = 0, answered_ = 0, completed_ = 0, max_pending_ = 0;
    int block_status_calls_ = 0;
    std::thread worker_;
};

// Exports by name; "broken" ones throw from open().
class memory_provider : public thin::nbd::export_provider {
public:
    void add(const std::string& name, const std::string& description, std::shared_ptr<memory_export> e) {
        std::lock_guard lk(m_);
        exports_[name] = {description, std::move(e), {}};
    }
    void add_broken(const std::string& name, const std::string& error) {
        std::lock_guard lk(m_);
        exports_[name] = {"", nullptr, error};
    }
    std::vector<entry> list() override {
        std::lock_guard lk(m_);
        std::vector<entry> out;
        for (const auto& [name, e] : exports_)
            out.push_back({name, e.description});
        return out;
    }
    std::shared_ptr<thin::nbd::export_handle> open(const std::string& name) override {
        std::lock_guard lk(m_);
        auto it = exports_.find(name);
        if (it == exports_.end())
            return nullptr;
        if (!it->second.error.empty())
            throw std::runtime_error(it->second.error);
        ++opens_;
        return it->second.exp;
    }
    int opens() {
        std::lock_guard lk(m_);
        return opens_;
    }

private:
    struct item {
        std::string description;
        std::shared_ptr<memory_export> exp;
        std::string error;
    };
    std::mutex m_;
    std::map<std::string, item> exports_;
    int opens_ = 0;
};

// Collects the server's log lines.
class log_capture {
public:
    std::function<void(const std::string&)> sink() {
        return [this](const std::string& line) {
            std::lock_guard lk(m_);
            lines_.push_back(line);
            cv_.notify_all();
        };
    }
    bool contains(const std::string& needle) {
        std::lock_guard lk(m_);
        return std::any_of(lines_.begin(), lines_.end(), [&](const std::string& l) { return l.find(needle) != l.npos; });
    }
    // Waits for a line containing needle (log lines may come from other threads a little later).
    bool wait_for(const std::string& needle) {
        std::unique_lock lk(m_);
        return cv_.wait_for(lk, DEADLINE, [&] {
            return std::any_of(lines_.begin(), lines_.end(), [&](const std::string& l) { return l.find(needle) != l.npos; });
        });
    }
    std::string all() {
        std::lock_guard lk(m_);
        std::string s;
        for (const auto& l : lines_)
            s += l + "\n";
        return s;
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    std::vector<std::string> lines_;
};

} // namespace nbd_test
