#pragma once
// The control socket's server side: a Unix socket (mode 0600), one thread accepting and one per
// connection (bounded), each reading one request line with a deadline and handing its words to
// the handler, which writes the response and returns; the connection is then closed. A request
// that is too long, never ends or does not decode gets an error response; nothing a peer sends
// can take the daemon down.
#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace thin::daemon {

// Writes all of text to a socket; false when the peer is gone.
bool send_all(int fd, const std::string& text);

class control_server {
public:
    // fd: the connection; stop_fd: readable once the server is stopping (long handlers such as
    // the event stream poll it).
    using handler = std::function<void(int fd, int stop_fd, const std::vector<std::string>& words)>;
    static constexpr std::size_t MAX_CONNECTIONS = 64;
    static constexpr std::chrono::seconds REQUEST_DEADLINE{10};

    control_server(std::string path, handler h, std::function<void(const std::string&)> log);
    ~control_server();  // stop()
    control_server(const control_server&) = delete;
    control_server& operator=(const control_server&) = delete;

    // Binds (replacing a stale socket file; refusing a path that is not a socket) and starts
    // accepting. std::system_error naming the path on failure.
    void start();
    // Stops accepting, wakes every connection, joins every thread, removes the socket file.
    void stop();

private:
    struct conn {
        std::thread thread;
        std::atomic<bool> done{false};
        int fd = -1;
    };
    void accept_loop();
    void serve(conn& c);
    void reap(bool all);

    std::string path_;
    handler handler_;
    std::function<void(const std::string&)> log_;
    int listen_fd_ = -1;
    int stop_fd_ = -1;  // eventfd, written once by stop()
    std::thread acceptor_;
    std::mutex mutex_;
    std::list<conn> conns_;
    bool stopped_ = false;
    bool bound_ = false;  // the socket file is ours to remove
};

} // namespace thin::daemon
