#pragma once
// Sequential reads of a regular file on a thread of its own, a few fixed-size chunks ahead of the
// caller, so that the thread running Expat (the restore's slowest stage) spends no time in read():
// neither on page-cache copies nor, when the file is not cached, on bringing it in.
//
// For regular files only: a read from a pipe may wait for ever, and the reader must always be
// able to finish its current read so that it can be joined.
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace thin::restore {

class read_ahead {
public:
    // Reads fd (kept open by the caller until this is destroyed) from its current offset; path
    // names it in messages.
    read_ahead(int fd, std::string path, std::size_t chunk_size, std::size_t chunks);
    // Stops the reader and joins it.
    ~read_ahead();
    read_ahead(const read_ahead&) = delete;
    read_ahead& operator=(const read_ahead&) = delete;

    // The next piece of the file in order, valid until the next call; empty at the end of the
    // file. Throws std::runtime_error where the read failed.
    std::string_view next();

private:
    struct chunk {
        std::unique_ptr<char[]> data;
        std::size_t size = 0;
        int error = 0;  // errno of a failed read; the end of the stream
        bool last = false;
    };
    void run() noexcept;

    int fd_;
    std::string path_;
    std::size_t chunk_size_;
    std::vector<chunk> chunks_;  // a ring: the reader fills them in order, the caller takes them
    std::size_t filled_ = 0;     // chunks ready for the caller
    std::size_t head_ = 0;       // the caller's next chunk
    bool holding_ = false;       // the caller still uses chunks_[head_ - 1]
    bool finished_ = false;      // the caller has taken the last chunk
    bool stop_ = false;
    std::mutex mutex_;
    std::condition_variable ready_, space_;
    std::thread reader_;
};

} // namespace thin::restore
