#pragma once
// The fixed newstyle handshake (option haggling) of one connection.
#include "thin/nbd/context.h"
#include "thin/nbd/export.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace thin::nbd {

// What the client and server agreed on for the transmission phase.
struct session {
    std::shared_ptr<export_handle> exp;
    std::string export_name;
    bool read_only = false;
    bool structured_replies = false;
    std::optional<std::uint32_t> allocation_context;  // id of base:allocation when selected
    std::uint16_t transmission_flags = 0;
};

struct handshake_result {
    std::optional<session> s;  // nullopt: the connection ends
    std::string end_reason;    // why it ended (for the "closed" log line)
};

// Runs the handshake on fd, bounded by limits::handshake_timeout() and the server's stop.
// Protocol errors are logged as they happen, prefixed with `who`.
handshake_result negotiate(int fd, server_context& ctx, const std::string& who);

// The advertised block sizes (NBD_INFO_BLOCK_SIZE): minimum 512, preferred a power of two from the
// export's preferred size, maximum max_request_bytes.
struct block_sizes {
    std::uint32_t minimum = 512, preferred = 4096, maximum = 32u << 20;
};
block_sizes advertised_block_sizes(const export_handle& e, std::uint32_t max_request_bytes);

} // namespace thin::nbd
