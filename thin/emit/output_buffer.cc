#include "thin/emit/output_buffer.h"

#include <stdexcept>

namespace thin::emit {

output_buffer::output_buffer(std::FILE* out, std::size_t size)
    : out_(out), size_(size < 64 ? 64 : size), buf_(new char[size_]) {}

output_buffer::~output_buffer() {
    try {
        drain();
        std::fflush(out_);
    } catch (...) {
    }
}

void output_buffer::write_out(const char* p, std::size_t n) {
    if (n && std::fwrite(p, 1, n, out_) != n) failed_ = true;
    if (failed_) throw std::runtime_error("writing the output failed");
}

void output_buffer::drain() {
    std::size_t n = used_;
    used_ = 0;
    write_out(buf_.get(), n);
}

void output_buffer::flush() {
    drain();
    if (std::fflush(out_) != 0) failed_ = true;
    if (failed_) throw std::runtime_error("writing the output failed");
}

} // namespace thin::emit
