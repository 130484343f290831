#pragma once
// A large output buffer in front of a FILE*, for the text emitters: numbers are formatted with
// std::to_chars straight into the buffer, and the FILE sees few, big writes.
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string_view>

namespace thin::emit {

class output_buffer {
public:
    explicit output_buffer(std::FILE* out, std::size_t size = 1 << 20);
    // Writes what is left; errors are only reported by flush().
    ~output_buffer();
    output_buffer(const output_buffer&) = delete;
    output_buffer& operator=(const output_buffer&) = delete;

    void put(std::string_view s) {
        if (s.size() > size_ - used_) {
            drain();
            if (s.size() > size_) {
                write_out(s.data(), s.size());
                return;
            }
        }
        std::memcpy(buf_.get() + used_, s.data(), s.size());
        used_ += s.size();
    }
    void put(char c) {
        if (used_ == size_) drain();
        buf_[used_++] = c;
    }
    void put_uint(std::uint64_t v) {
        if (size_ - used_ < 20) drain();
        auto r = std::to_chars(buf_.get() + used_, buf_.get() + size_, v);
        used_ = static_cast<std::size_t>(r.ptr - buf_.get());
    }

    // Writes the buffer and flushes the FILE; throws std::runtime_error if anything failed.
    void flush();

private:
    void drain();
    void write_out(const char* p, std::size_t n);

    std::FILE* out_;
    std::size_t size_;
    std::unique_ptr<char[]> buf_;
    std::size_t used_ = 0;
    bool failed_ = false;
};

} // namespace thin::emit
