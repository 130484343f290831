#include "persistent-data/io/fd.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace pdata {

device_file::device_file(const std::string& path, open_options opts, bool direct) : path_(path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) < 0) {
        int e = errno;
        throw open_error(path + ": cannot open: " + std::strerror(e), e);
    }
    block_device_ = S_ISBLK(st.st_mode);
    if (!block_device_ && !S_ISREG(st.st_mode))
        throw io_error(path + ": not a regular file or block device");
    int flags = (opts.mode == open_mode::read_write ? O_RDWR : O_RDONLY) | O_CLOEXEC;
    if (direct) flags |= O_DIRECT;
    if (block_device_ && opts.exclusive) flags |= O_EXCL;
    fd_ = ::open(path.c_str(), flags);
    if (fd_ < 0) {
        int e = errno;
        if (e == EBUSY)
            throw open_error(path + ": device is busy (in use by an active pool or another program)", e);
        throw open_error(path + ": cannot open: " + std::strerror(e), e);
    }
    // A plain file has no O_EXCL: an advisory lock stands in for it, exclusive for writers and
    // shared for readers, so a running pool (a writer) keeps the tools off its live metadata while
    // readers of the metadata snapshot (exclusive off) still get in.
    if (!block_device_ && opts.exclusive) {
        int how = (opts.mode == open_mode::read_write ? LOCK_EX : LOCK_SH) | LOCK_NB;
        if (::flock(fd_, how) < 0) {
            int e = errno;
            ::close(fd_);
            fd_ = -1;
            if (e == EWOULDBLOCK)
                throw open_error(path + ": in use (locked by a running pool or another program)", EBUSY);
            throw open_error(path + ": cannot lock: " + std::strerror(e), e);
        }
    }
}

device_file::~device_file() {
    if (fd_ >= 0) ::close(fd_);
}

std::uint64_t device_file::size_bytes() const {
    if (block_device_) {
        std::uint64_t sz = 0;
        if (::ioctl(fd_, BLKGETSIZE64, &sz) < 0)
            throw io_error(path_ + ": cannot read the device size: " + std::strerror(errno));
        return sz;
    }
    struct stat st {};
    if (::fstat(fd_, &st) < 0) throw io_error(path_ + ": cannot stat: " + std::strerror(errno));
    return static_cast<std::uint64_t>(st.st_size);
}

void device_file::sync() {
    if (::fdatasync(fd_) < 0) throw io_error(path_ + ": flush failed: " + std::strerror(errno));
}

std::string device_file::describe(const char* op, block_address b, const std::string& why) const {
    return path_ + ": " + op + " of block " + std::to_string(b) + " failed: " + why;
}

} // namespace pdata
