#pragma once
// One client connection: the handshake, then the transmission phase with two threads. The reader
// (the thread that calls run()) parses requests, checks them and submits them to the export
// without waiting; completions turn into replies on a queue; a writer thread sends the queue in
// completion order, one whole reply at a time. Requests read but not yet answered are bounded
// (limits.h), so a client that stops reading stalls only its own reader, never the pool.
#include "thin/nbd/context.h"
#include "thin/nbd/handshake.h"

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace thin::nbd {

class connection {
public:
    // Takes ownership of fd. `who` names the connection in log lines.
    connection(int fd, server_context& ctx, std::string who);
    ~connection();
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    // Serves the client until it leaves, breaks the protocol or the server stops; then waits for
    // in-flight requests and their replies, and closes the socket.
    void run();
    // The server is stopping (ctx.stopping is already set): wake whatever waits.
    void request_stop();

private:
    struct request {
        std::uint16_t flags = 0, type = 0;
        std::uint64_t cookie = 0, offset = 0;
        std::uint32_t length = 0;
    };
    struct reply {
        std::vector<std::uint8_t> head;        // message header and fixed chunk fields
        std::unique_ptr<std::uint8_t[]> data;  // read data, sent after head
        std::size_t data_len = 0;
    };
    struct queued {
        reply r;
        std::size_t cost = 0;  // backpressure charge, released once written
    };
    struct in_flight;
    struct refusal {
        std::uint32_t error = 0;  // NBD error; 0: the request is fine
        std::string message;
    };

    std::string read_loop();
    bool handle(const request& r);
    bool refuse(const request& r, const refusal& no, std::uint64_t payload, std::size_t cost);
    bool read_payload(std::uint8_t* buf, std::uint64_t n, std::size_t cost);
    static std::unique_ptr<std::uint8_t[]> allocate(std::size_t n);
    refusal check(const request& r) const;
    refusal check_flags(const request& r) const;
    refusal check_range(const request& r) const;
    bool fast_zero(const request& r) const;
    void submit(const request& r, std::unique_ptr<std::uint8_t[]> buf, std::size_t cost);
    void submit_io(in_flight* f, thin::pool::io_request io);
    void completed(in_flight* f, int result);
    void block_status(const request& r, std::size_t cost);
    std::size_t reply_cost(const request& r) const;

    reply success_reply(const request& r, std::unique_ptr<std::uint8_t[]> data) const;
    reply error_reply(const request& r, std::uint32_t error, const std::string& message) const;
    reply chunk(const request& r, std::uint16_t type, std::uint32_t payload_len) const;
    reply simple(const request& r, std::uint32_t error) const;

    bool admit(std::size_t cost);
    void release(std::size_t cost);
    void enqueue(reply r, std::size_t cost);
    void writer_loop();
    void drain();
    void protocol_error(const std::string& what);

    int fd_;
    server_context& ctx_;
    std::string who_;
    session s_;
    std::string end_reason_;

    std::mutex m_;
    std::condition_variable cv_;
    std::deque<queued> queue_;
    std::size_t inflight_requests_ = 0;  // admitted, reply not yet written (or dropped)
    std::size_t inflight_bytes_ = 0;
    std::size_t max_inflight_bytes_;
    bool send_failed_ = false;
    bool writer_exit_ = false;
    std::thread writer_;
};

} // namespace thin::nbd
