#include "thin/restore/read_ahead.h"

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <unistd.h>

namespace thin::restore {

read_ahead::read_ahead(int fd, std::string path, std::size_t chunk_size, std::size_t chunks)
    : fd_(fd), path_(std::move(path)), chunk_size_(chunk_size ? chunk_size : 1), chunks_(chunks < 2 ? 2 : chunks) {
    for (chunk& c : chunks_) c.data.reset(new char[chunk_size_]);
    reader_ = std::thread([this] { run(); });
}

read_ahead::~read_ahead() {
    {
        std::lock_guard lock(mutex_);
        stop_ = true;
    }
    space_.notify_all();
    reader_.join();  // a read of a regular file always returns
}

void read_ahead::run() noexcept {
    int pending_error = 0;
    for (;;) {
        std::size_t idx;
        {
            std::unique_lock lock(mutex_);
            space_.wait(lock, [&] { return stop_ || filled_ + (holding_ ? 1 : 0) < chunks_.size(); });
            if (stop_) return;
            idx = (head_ + filled_) % chunks_.size();
        }
        // Only this thread touches chunks_[idx] until it is counted in filled_.
        chunk& c = chunks_[idx];
        std::size_t got = 0;
        int error = pending_error;
        bool end = error != 0;
        while (!end && got < chunk_size_) {
            ssize_t n = ::read(fd_, c.data.get() + got, chunk_size_ - got);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                error = errno;
                break;
            }
            if (n == 0) {
                end = true;
                break;
            }
            got += static_cast<std::size_t>(n);
        }
        if (error && got > 0) {
            // Hand over what was read; the error follows in a chunk of its own.
            pending_error = error;
            error = 0;
        }
        const bool last = end || error != 0;
        c.size = got;
        c.error = error;
        c.last = last;
        {
            std::lock_guard lock(mutex_);
            ++filled_;
        }
        ready_.notify_one();
        if (last) return;
    }
}

std::string_view read_ahead::next() {
    std::unique_lock lock(mutex_);
    if (holding_) {
        holding_ = false;
        space_.notify_one();
    }
    if (finished_) return {};
    ready_.wait(lock, [&] { return filled_ > 0; });
    chunk& c = chunks_[head_];
    head_ = (head_ + 1) % chunks_.size();
    --filled_;
    holding_ = true;
    if (c.last) finished_ = true;
    if (c.error) throw std::runtime_error(path_ + ": read failed: " + std::strerror(c.error));
    return {c.data.get(), c.size};
}

} // namespace thin::restore
