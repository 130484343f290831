#pragma once
// What every connection of one server shares: the exports, the settings, the stop signal, the log.
#include "thin/nbd/export.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

namespace thin::nbd {

struct server_context {
    std::shared_ptr<export_provider> provider;
    bool read_only = false;
    // server_options::max_request_bytes made advertisable: a multiple of 512 in [512, 2^32 - 512].
    std::uint32_t max_request_bytes = 32u << 20;
    // Readable from stop() on (an eventfd); every blocking wait on a client watches it.
    int stop_fd = -1;
    std::atomic<bool> stopping{false};

    void log(const std::string& line) {
        std::lock_guard lk(log_m_);  // one line at a time, whatever the sink
        log_fn_(line);
    }
    void set_log(std::function<void(const std::string&)> fn) { log_fn_ = std::move(fn); }

private:
    std::mutex log_m_;
    std::function<void(const std::string&)> log_fn_;
};

} // namespace thin::nbd
