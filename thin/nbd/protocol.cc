#include "thin/nbd/protocol.h"

#include <cerrno>
#include <cstdio>

namespace thin::nbd::proto {

std::uint32_t error_from_errno(int negative_errno) {
    switch (-negative_errno) {
    case EPERM:
    case EROFS:
        return NBD_EPERM;
    case ENOMEM:
        return NBD_ENOMEM;
    case EINVAL:
        return NBD_EINVAL;
    // The protocol asks for quota and file-size limits to read as "no space".
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case EOPNOTSUPP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EIO;
    }
}

std::string option_name(std::uint32_t opt) {
    switch (opt) {
    case OPT_EXPORT_NAME: return "NBD_OPT_EXPORT_NAME";
    case OPT_ABORT: return "NBD_OPT_ABORT";
    case OPT_LIST: return "NBD_OPT_LIST";
    case OPT_STARTTLS: return "NBD_OPT_STARTTLS";
    case OPT_INFO: return "NBD_OPT_INFO";
    case OPT_GO: return "NBD_OPT_GO";
    case OPT_STRUCTURED_REPLY: return "NBD_OPT_STRUCTURED_REPLY";
    case OPT_LIST_META_CONTEXT: return "NBD_OPT_LIST_META_CONTEXT";
    case OPT_SET_META_CONTEXT: return "NBD_OPT_SET_META_CONTEXT";
    case OPT_EXTENDED_HEADERS: return "NBD_OPT_EXTENDED_HEADERS";
    default: return "option " + std::to_string(opt);
    }
}

std::string command_name(std::uint16_t cmd) {
    switch (cmd) {
    case CMD_READ: return "NBD_CMD_READ";
    case CMD_WRITE: return "NBD_CMD_WRITE";
    case CMD_DISC: return "NBD_CMD_DISC";
    case CMD_FLUSH: return "NBD_CMD_FLUSH";
    case CMD_TRIM: return "NBD_CMD_TRIM";
    case CMD_CACHE: return "NBD_CMD_CACHE";
    case CMD_WRITE_ZEROES: return "NBD_CMD_WRITE_ZEROES";
    case CMD_BLOCK_STATUS: return "NBD_CMD_BLOCK_STATUS";
    default: return "command " + std::to_string(cmd);
    }
}

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

} // namespace thin::nbd::proto
