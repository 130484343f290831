#pragma once
// An open metadata device (file or block device), shared by the sync and aio engines.
#include "persistent-data/io_engine.h"

#include <string>

namespace pdata {

class device_file {
public:
    // direct: open with O_DIRECT. Block devices are opened O_EXCL when opts.exclusive.
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
