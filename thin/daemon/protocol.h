#pragma once
// The control protocol (thinpool(8), CONTROL PROTOCOL), over a Unix stream socket:
//
//   request:  one line of words, each %-encoded (text.h encode_word), separated by single spaces,
//             ending in "\n"; at most MAX_REQUEST_BYTES. The first word is the command.
//   response: "ok\n" or "error <errno> <message>\n", then the body (text) until the daemon closes
//             the connection. `events` streams its body, one line per event, until either side
//             closes.
//
// The client half lives here too: the thinpool command and the tests use it.
#include <chrono>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace thin::daemon {

constexpr std::size_t MAX_REQUEST_BYTES = 64 * 1024;

// The daemon could not be reached or answered garbage (one line, exit 1).
class client_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct response {
    bool ok = false;
    int error = 0;         // errno of an "error" response
    std::string message;   // its text
    std::string body;
};

// "error 22 invalid volume name" for a response header; ok -> "ok".
std::string format_status_line(bool ok, int err, const std::string& message);

// Whether a daemon answers on the socket (a connect succeeds).
bool control_socket_live(const std::string& socket_path);

// One client connection. Deadlines: a negative duration waits forever.
class connection {
public:
    // client_error "no thinpool daemon is listening on PATH (...)" when nothing answers there.
    explicit connection(const std::string& socket_path);
    ~connection();
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    void send(const std::vector<std::string>& words);
    void send_raw(const std::string& bytes);  // tests: malformed requests
    // The status line (ok / error); client_error on a malformed one, EOF or timeout.
    response read_status(std::chrono::milliseconds deadline);
    // The next body line without its newline; nullopt at the end of the stream.
    std::optional<std::string> read_line(std::chrono::milliseconds deadline);
    // The rest of the body.
    std::string read_rest(std::chrono::milliseconds deadline);
    int fd() const { return fd_; }

private:
    bool fill(std::chrono::steady_clock::time_point until, bool forever);
    std::string socket_path_;
    int fd_ = -1;
    std::string buf_;
    bool eof_ = false;
};

// One request and its whole response; client_error when the deadline passes first.
response request(const std::string& socket_path, const std::vector<std::string>& words,
                 std::chrono::milliseconds deadline = std::chrono::minutes(2));

} // namespace thin::daemon
