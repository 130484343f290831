#pragma once
// The NBD server (issue 5): fixed newstyle handshake, structured replies, base:allocation block
// status, one export per volume from an export_provider (thin/nbd/export.h). Listens on Unix
// sockets (and TCP only when asked); every connection gets its own threads, so a slow or hostile
// client never holds up another or the pool.
#include "thin/nbd/export.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace thin::nbd {

struct server_options {
    bool read_only = false;                       // every export read-only
    std::size_t max_request_bytes = 32u << 20;    // largest read/write payload (NBD maximum block size)
    // One line per connection event and protocol error; default: stderr.
    std::function<void(const std::string&)> log;
};

class server {
public:
    explicit server(std::shared_ptr<export_provider> exports, server_options opts = {});
    ~server();  // stop()
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    // Creates a listening socket. A Unix socket gets mode 0600 and replaces a stale socket file
    // (refusing a path that exists and is not a socket). Throws std::system_error naming the path
    // or address.
    void listen_unix(const std::string& path);
    void listen_tcp(const std::string& host, std::uint16_t port);
    // Accepts on every listener, each on its own thread.
    void start();
    // Stops accepting, lets requests in flight finish and their replies go out, closes every
    // connection, joins every thread, removes the Unix socket files. Idempotent.
    void stop();
    // Serves one connected socket on the calling thread until the client leaves or stop();
    // takes ownership of fd (tests and fuzzing).
    void serve(int fd);
    // Connections open now.
    std::size_t connections() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

} // namespace thin::nbd
