#include "persistent-data/io/fd.h"
#include "persistent-data/io_engine.h"

#include <cerrno>
#include <cstring>
#include <unistd.h>

namespace pdata {
namespace {

class sync_engine : public io_engine {
public:
    sync_engine(const std::string& path, open_options opts) : dev_(path, opts, false) {}

    block_address nr_blocks() override { return dev_.size_bytes() / MD_BLOCK_SIZE; }

    void read(block_address b, void* buf) override {
        std::size_t done = 0;
        auto p = static_cast<char*>(buf);
        while (done < MD_BLOCK_SIZE) {
            ssize_t r = ::pread(dev_.fd(), p + done, MD_BLOCK_SIZE - done,
                                static_cast<off_t>(b * MD_BLOCK_SIZE + done));
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) throw io_error(dev_.describe("read", b, std::strerror(errno)));
            if (r == 0) throw io_error(dev_.describe("read", b, "unexpected end of device"));
            done += static_cast<std::size_t>(r);
        }
    }

    void write(block_address b, const void* buf) override {
        std::size_t done = 0;
        auto p = static_cast<const char*>(buf);
        while (done < MD_BLOCK_SIZE) {
            ssize_t r = ::pwrite(dev_.fd(), p + done, MD_BLOCK_SIZE - done,
                                 static_cast<off_t>(b * MD_BLOCK_SIZE + done));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) throw io_error(dev_.describe("write", b, r < 0 ? std::strerror(errno) : "short write"));
            done += static_cast<std::size_t>(r);
        }
    }

    void flush() override { dev_.sync(); }

    std::string name() const override { return dev_.path(); }

private:
    device_file dev_;
};

} // namespace

std::unique_ptr<io_engine> open_sync_engine(const std::string& path, open_options opts) {
    return std::make_unique<sync_engine>(path, opts);
}

} // namespace pdata
