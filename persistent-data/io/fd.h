#pragma once
// An open metadata device (file or block device), shared by the sync and aio engines.
#include "persistent-data/io_engine.h"

#include <string>

namespace pdata {

// open(2) of a device failed; err is the errno, so a caller can retry differently (for example
// without O_DIRECT when the file system refuses it with EINVAL).
class open_error : public io_error {
public:
    open_error(const std::string& msg, int err) : io_error(msg), err_(err) {}
    int error_number() const { return err_; }
private:
    int err_;
};

class device_file {
public:
    // direct: open with O_DIRECT. With opts.exclusive, block devices are opened O_EXCL and plain
    // files flock'ed (LOCK_EX read-write, LOCK_SH read-only); EBUSY when someone else holds them.
    device_file(const std::string& path, open_options opts, bool direct);
    ~device_file();
    device_file(const device_file&) = delete;
    device_file& operator=(const device_file&) = delete;

    int fd() const { return fd_; }
    const std::string& path() const { return path_; }
    bool is_block_device() const { return block_device_; }
    std::uint64_t size_bytes() const;
    void sync();

    // "<path>: <op> of block <b> failed: <why>"
    std::string describe(const char* op, block_address b, const std::string& why) const;

private:
    std::string path_;
    int fd_ = -1;
    bool block_device_ = false;
};

} // namespace pdata
