#include "thin/nbd/limits.h"

#include <atomic>

namespace thin::nbd::limits {

namespace {
std::atomic<long long> handshake_ms{30000};
std::atomic<long long> drain_ms{10000};
} // namespace

std::chrono::milliseconds handshake_timeout() { return std::chrono::milliseconds(handshake_ms.load()); }
void set_handshake_timeout(std::chrono::milliseconds t) { handshake_ms = t.count(); }

std::chrono::milliseconds drain_timeout() { return std::chrono::milliseconds(drain_ms.load()); }
void set_drain_timeout(std::chrono::milliseconds t) { drain_ms = t.count(); }

} // namespace thin::nbd::limits
