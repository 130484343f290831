#pragma once
// The NBD protocol's wire constants and big-endian packing (the public NBD protocol document,
// "doc/proto.md" of the reference implementation). Names follow the document without the NBD_
// prefix, so NBD_OPT_GO is proto::OPT_GO.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace thin::nbd::proto {

// ---- magics -----------------------------------------------------------------------------------
inline constexpr std::uint64_t NBDMAGIC = 0x4e42444d41474943;          // "NBDMAGIC"
inline constexpr std::uint64_t IHAVEOPT = 0x49484156454f5054;          // "IHAVEOPT"
inline constexpr std::uint64_t OPTION_REPLY_MAGIC = 0x0003e889045565a9;
inline constexpr std::uint32_t REQUEST_MAGIC = 0x25609513;
inline constexpr std::uint32_t SIMPLE_REPLY_MAGIC = 0x67446698;
inline constexpr std::uint32_t STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- handshake --------------------------------------------------------------------------------
// Handshake flags (server, 16 bits) and client flags (32 bits).
inline constexpr std::uint16_t FLAG_FIXED_NEWSTYLE = 1u << 0;
inline constexpr std::uint16_t FLAG_NO_ZEROES = 1u << 1;
inline constexpr std::uint32_t FLAG_C_FIXED_NEWSTYLE = 1u << 0;
inline constexpr std::uint32_t FLAG_C_NO_ZEROES = 1u << 1;

// Transmission flags (16 bits).
inline constexpr std::uint16_t FLAG_HAS_FLAGS = 1u << 0;
inline constexpr std::uint16_t FLAG_READ_ONLY = 1u << 1;
inline constexpr std::uint16_t FLAG_SEND_FLUSH = 1u << 2;
inline constexpr std::uint16_t FLAG_SEND_FUA = 1u << 3;
inline constexpr std::uint16_t FLAG_ROTATIONAL = 1u << 4;
inline constexpr std::uint16_t FLAG_SEND_TRIM = 1u << 5;
inline constexpr std::uint16_t FLAG_SEND_WRITE_ZEROES = 1u << 6;
inline constexpr std::uint16_t FLAG_SEND_DF = 1u << 7;
inline constexpr std::uint16_t FLAG_CAN_MULTI_CONN = 1u << 8;
inline constexpr std::uint16_t FLAG_SEND_RESIZE = 1u << 9;
inline constexpr std::uint16_t FLAG_SEND_CACHE = 1u << 10;
inline constexpr std::uint16_t FLAG_SEND_FAST_ZERO = 1u << 11;

// Options.
inline constexpr std::uint32_t OPT_EXPORT_NAME = 1;
inline constexpr std::uint32_t OPT_ABORT = 2;
inline constexpr std::uint32_t OPT_LIST = 3;
inline constexpr std::uint32_t OPT_STARTTLS = 5;
inline constexpr std::uint32_t OPT_INFO = 6;
inline constexpr std::uint32_t OPT_GO = 7;
inline constexpr std::uint32_t OPT_STRUCTURED_REPLY = 8;
inline constexpr std::uint32_t OPT_LIST_META_CONTEXT = 9;
inline constexpr std::uint32_t OPT_SET_META_CONTEXT = 10;
inline constexpr std::uint32_t OPT_EXTENDED_HEADERS = 11;

// Option replies; errors have bit 31 set.
inline constexpr std::uint32_t REP_ACK = 1;
inline constexpr std::uint32_t REP_SERVER = 2;
inline constexpr std::uint32_t REP_INFO = 3;
inline constexpr std::uint32_t REP_META_CONTEXT = 4;
inline constexpr std::uint32_t REP_FLAG_ERROR = 1u << 31;
inline constexpr std::uint32_t REP_ERR_UNSUP = REP_FLAG_ERROR | 1;
inline constexpr std::uint32_t REP_ERR_POLICY = REP_FLAG_ERROR | 2;
inline constexpr std::uint32_t REP_ERR_INVALID = REP_FLAG_ERROR | 3;
inline constexpr std::uint32_t REP_ERR_PLATFORM = REP_FLAG_ERROR | 4;
inline constexpr std::uint32_t REP_ERR_TLS_REQD = REP_FLAG_ERROR | 5;
inline constexpr std::uint32_t REP_ERR_UNKNOWN = REP_FLAG_ERROR | 6;
inline constexpr std::uint32_t REP_ERR_SHUTDOWN = REP_FLAG_ERROR | 7;
inline constexpr std::uint32_t REP_ERR_BLOCK_SIZE_REQD = REP_FLAG_ERROR | 8;
inline constexpr std::uint32_t REP_ERR_TOO_BIG = REP_FLAG_ERROR | 9;

// NBD_REP_INFO types (first 16 bits of its payload).
inline constexpr std::uint16_t INFO_EXPORT = 0;
inline constexpr std::uint16_t INFO_NAME = 1;
inline constexpr std::uint16_t INFO_DESCRIPTION = 2;
inline constexpr std::uint16_t INFO_BLOCK_SIZE = 3;

// The one metadata context served, and its NBD_REPLY_TYPE_BLOCK_STATUS flags.
inline constexpr std::string_view BASE_ALLOCATION = "base:allocation";
inline constexpr std::uint32_t STATE_HOLE = 1u << 0;
inline constexpr std::uint32_t STATE_ZERO = 1u << 1;

// Strings (export names, queries, messages) are at most this long.
inline constexpr std::size_t MAX_STRING = 4096;

// ---- transmission -----------------------------------------------------------------------------
// Commands.
inline constexpr std::uint16_t CMD_READ = 0;
inline constexpr std::uint16_t CMD_WRITE = 1;
inline constexpr std::uint16_t CMD_DISC = 2;
inline constexpr std::uint16_t CMD_FLUSH = 3;
inline constexpr std::uint16_t CMD_TRIM = 4;
inline constexpr std::uint16_t CMD_CACHE = 5;
inline constexpr std::uint16_t CMD_WRITE_ZEROES = 6;
inline constexpr std::uint16_t CMD_BLOCK_STATUS = 7;

// Command flags.
inline constexpr std::uint16_t CMD_FLAG_FUA = 1u << 0;
inline constexpr std::uint16_t CMD_FLAG_NO_HOLE = 1u << 1;
inline constexpr std::uint16_t CMD_FLAG_DF = 1u << 2;
inline constexpr std::uint16_t CMD_FLAG_REQ_ONE = 1u << 3;
inline constexpr std::uint16_t CMD_FLAG_FAST_ZERO = 1u << 4;

// Structured reply flags and chunk types.
inline constexpr std::uint16_t REPLY_FLAG_DONE = 1u << 0;
inline constexpr std::uint16_t REPLY_TYPE_NONE = 0;
inline constexpr std::uint16_t REPLY_TYPE_OFFSET_DATA = 1;
inline constexpr std::uint16_t REPLY_TYPE_OFFSET_HOLE = 2;
inline constexpr std::uint16_t REPLY_TYPE_BLOCK_STATUS = 5;
inline constexpr std::uint16_t REPLY_TYPE_ERROR = (1u << 15) + 1;
inline constexpr std::uint16_t REPLY_TYPE_ERROR_OFFSET = (1u << 15) + 2;

// Error values of replies (fixed by the protocol, not the host's errno).
inline constexpr std::uint32_t NBD_EPERM = 1;
inline constexpr std::uint32_t NBD_EIO = 5;
inline constexpr std::uint32_t NBD_ENOMEM = 12;
inline constexpr std::uint32_t NBD_EINVAL = 22;
inline constexpr std::uint32_t NBD_ENOSPC = 28;
inline constexpr std::uint32_t NBD_EOVERFLOW = 75;
inline constexpr std::uint32_t NBD_ENOTSUP = 95;
inline constexpr std::uint32_t NBD_ESHUTDOWN = 108;

// ---- message sizes ----------------------------------------------------------------------------
//   greeting            offset 0  u64 NBDMAGIC, 8 u64 IHAVEOPT, 16 u16 handshake flags   (18)
//   option request      offset 0  u64 IHAVEOPT, 8 u32 option, 12 u32 length            (16)
//   option reply        offset 0  u64 magic, 8 u32 option, 12 u32 type, 16 u32 length  (20)
//   request             offset 0  u32 magic, 4 u16 flags, 6 u16 type, 8 u64 cookie,
//                              16 u64 offset, 24 u32 length                             (28)
//   simple reply        offset 0  u32 magic, 4 u32 error, 8 u64 cookie                  (16)
//   structured chunk    offset 0  u32 magic, 4 u16 flags, 6 u16 type, 8 u64 cookie,
//                              16 u32 payload length                                    (20)
inline constexpr std::size_t GREETING_SIZE = 18;
inline constexpr std::size_t OPTION_HEADER_SIZE = 16;
inline constexpr std::size_t OPTION_REPLY_HEADER_SIZE = 20;
inline constexpr std::size_t REQUEST_SIZE = 28;
inline constexpr std::size_t SIMPLE_REPLY_SIZE = 16;
inline constexpr std::size_t CHUNK_HEADER_SIZE = 20;
inline constexpr std::size_t EXPORT_NAME_ZEROES = 124;  // padding after an NBD_OPT_EXPORT_NAME reply

// The protocol error for a negative errno from the export.
std::uint32_t error_from_errno(int negative_errno);
// For log lines: "NBD_OPT_GO", "NBD_CMD_READ", or the number.
std::string option_name(std::uint32_t opt);
std::string command_name(std::uint16_t cmd);
std::string hex(std::uint64_t v);  // "0x1f"

// ---- big-endian packing -----------------------------------------------------------------------

// Appends big-endian fields to a byte vector.
class packer {
public:
    explicit packer(std::vector<std::uint8_t>& out) : out_(out) {}
    packer& u16(std::uint16_t v) { return put(v, 2); }
    packer& u32(std::uint32_t v) { return put(v, 4); }
    packer& u64(std::uint64_t v) { return put(v, 8); }
    packer& bytes(std::string_view s) {
        out_.insert(out_.end(), s.begin(), s.end());
        return *this;
    }
    packer& zeroes(std::size_t n) {
        out_.insert(out_.end(), n, 0);
        return *this;
    }

private:
    packer& put(std::uint64_t v, int n) {
        std::uint8_t be[8];
        for (int i = 0; i < n; ++i) be[i] = static_cast<std::uint8_t>(v >> (8 * (n - 1 - i)));
        out_.insert(out_.end(), be, be + n);
        return *this;
    }
    std::vector<std::uint8_t>& out_;
};

// Reads big-endian fields from a buffer; any read past the end makes ok() false (and yields 0 or
// an empty string), so a parser checks once at the end.
class unpacker {
public:
    unpacker(const std::uint8_t* p, std::size_t n) : p_(p), n_(n) {}
    std::uint16_t u16() { return static_cast<std::uint16_t>(get(2)); }
    std::uint32_t u32() { return static_cast<std::uint32_t>(get(4)); }
    std::uint64_t u64() { return get(8); }
    std::string bytes(std::size_t n) {
        if (!take(n))
            return {};
        return std::string(reinterpret_cast<const char*>(p_ + pos_ - n), n);
    }
    std::size_t remaining() const { return ok_ ? n_ - pos_ : 0; }
    bool ok() const { return ok_; }

private:
    bool take(std::size_t n) {
        if (!ok_ || n > n_ - pos_)
            return ok_ = false;
        pos_ += n;
        return true;
    }
    std::uint64_t get(int n) {
        if (!take(static_cast<std::size_t>(n)))
            return 0;
        std::uint64_t v = 0;
        for (std::size_t i = pos_ - static_cast<std::size_t>(n); i < pos_; ++i)
            v = (v << 8) | p_[i];
        return v;
    }
    const std::uint8_t* p_;
    std::size_t n_;
    std::size_t pos_ = 0;
    bool ok_ = true;
};

} // namespace thin::nbd::proto
