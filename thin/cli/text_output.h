#pragma once
// Buffered text output for tools that print millions of short lines (thin_delta, thin_rmap):
// numbers are formatted with std::to_chars and the buffer goes to a FILE* in large writes.
// Write errors (a closed pipe, a full disk) throw std::runtime_error at flush.
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

namespace thin::cli {

class text_output {
public:
    explicit text_output(std::FILE* f, std::size_t flush_at = 1 << 16) : f_(f), flush_at_(flush_at) {
        buf_.reserve(flush_at + 256);
    }
    ~text_output() {
        try {
            flush();
        } catch (...) {
        }
    }
    text_output(const text_output&) = delete;
    text_output& operator=(const text_output&) = delete;

    text_output& operator<<(std::string_view s) {
        buf_.append(s);
        maybe_flush();
        return *this;
    }
    text_output& operator<<(char c) {
        buf_.push_back(c);
        maybe_flush();
        return *this;
    }
    text_output& operator<<(std::uint64_t v) {
        char tmp[24];
        auto r = std::to_chars(tmp, tmp + sizeof tmp, v);
        buf_.append(tmp, r.ptr);
        maybe_flush();
        return *this;
    }
    text_output& operator<<(std::uint32_t v) { return *this << std::uint64_t(v); }

    void flush() {
        if (!buf_.empty()) {
            std::size_t n = std::fwrite(buf_.data(), 1, buf_.size(), f_);
            bool ok = n == buf_.size();
            buf_.clear();
            if (!ok) throw std::runtime_error(std::string("write failed: ") + std::strerror(errno));
        }
        if (std::fflush(f_) != 0) throw std::runtime_error(std::string("write failed: ") + std::strerror(errno));
    }

private:
    void maybe_flush() {
        if (buf_.size() >= flush_at_) {
            std::size_t n = std::fwrite(buf_.data(), 1, buf_.size(), f_);
            bool ok = n == buf_.size();
            buf_.clear();
            if (!ok) throw std::runtime_error(std::string("write failed: ") + std::strerror(errno));
        }
    }

    std::FILE* f_;
    std::size_t flush_at_;
    std::string buf_;
};

} // namespace thin::cli
