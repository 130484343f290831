// A byte stream from a client into thin::nbd::server::serve on one end of a socketpair: the input
// is written to the other end, which then shuts down its write side, and every reply is drained.
// The server must finish (the client has left) without a crash, a hang or a sanitizer report.
// The export is a small in-memory volume completing requests on its own thread (as the pool does).
#include "thin/nbd/limits.h"
#include "thin/nbd/server.h"

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

class memory_volume : public thin::nbd::export_handle {
public:
    static constexpr std::uint64_t SIZE = 1 << 20;
    memory_volume() : data_(SIZE, 0), worker_([this] { work(); }) {}
    ~memory_volume() override {
        {
            std::lock_guard lk(m_);
            quit_ = true;
        }
        cv_.notify_all();
        worker_.join();
    }
    std::uint64_t size() const override { return SIZE; }
    bool read_only() const override { return false; }
    std::uint32_t preferred_block_size() const override { return 64 * 1024; }
    bool can_trim() const override { return true; }
    void submit(thin::pool::io_request r) override {
        std::lock_guard lk(m_);
        queue_.push_back(std::move(r));
        cv_.notify_all();
    }
    std::vector<thin::nbd::extent> block_status(std::uint64_t offset, std::uint64_t length) override {
        // Alternating 4 KiB runs of data and holes, clipped to the request and the volume.
        std::vector<thin::nbd::extent> out;
        std::uint64_t end = std::min(offset + length, SIZE);
        for (std::uint64_t pos = offset; pos < end;) {
            std::uint64_t next = std::min((pos / 4096 + 1) * 4096, end);
            bool hole = (pos / 4096) & 1;
            out.push_back({next - pos, hole, hole});
            pos = next;
        }
        return out;
    }

private:
    void work() {
        std::unique_lock lk(m_);
        for (;;) {
            cv_.wait(lk, [&] { return quit_ || !queue_.empty(); });
            if (queue_.empty()) return;
            thin::pool::io_request r = std::move(queue_.front());
            queue_.pop_front();
            int result = execute(r);
            lk.unlock();
            r.done(result);
            lk.lock();
        }
    }
    int execute(const thin::pool::io_request& r) {
        std::uint64_t off = r.sector * 512, n = r.nr_sectors * 512;
        if (r.nr_sectors > SIZE / 512 || off > SIZE || n > SIZE - off) return -EIO;
        if (r.op == thin::pool::io_op::read) std::memcpy(r.buf, data_.data() + off, n);
        if (r.op == thin::pool::io_op::write) std::memcpy(data_.data() + off, r.buf, n);
        if (r.op == thin::pool::io_op::write_zeroes || r.op == thin::pool::io_op::discard)
            std::memset(data_.data() + off, 0, n);
        return 0;
    }
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<thin::pool::io_request> queue_;
    bool quit_ = false;
    std::vector<std::uint8_t> data_;
    std::thread worker_;
};

class provider : public thin::nbd::export_provider {
public:
    std::vector<entry> list() override { return {{"vol", "a volume"}, {"broken", ""}}; }
    std::shared_ptr<thin::nbd::export_handle> open(const std::string& name) override {
        if (name == "broken") throw std::runtime_error("cannot open broken");
        if (name != "vol" && name != "") return nullptr;
        static auto vol = std::make_shared<memory_volume>();
        return vol;
    }
};

void write_all_then_close(int fd, const std::uint8_t* data, std::size_t size) {
    for (std::size_t off = 0; off < size;) {
        ssize_t n = ::send(fd, data + off, size - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;  // the server hung up: fine, it may refuse the client
        off += std::size_t(n);
    }
    ::shutdown(fd, SHUT_WR);
}

void drain(int fd) {
    char buf[65536];
    for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
    }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // A client that stops mid-handshake would otherwise hold each input for 30 s.
    thin::nbd::limits::set_handshake_timeout(std::chrono::milliseconds(500));
    thin::nbd::limits::set_drain_timeout(std::chrono::milliseconds(500));
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) __builtin_trap();
    thin::nbd::server_options o;
    o.max_request_bytes = 1 << 20;
    o.log = [](const std::string&) {};
    {
        thin::nbd::server srv(std::make_shared<provider>(), o);
        std::thread writer(write_all_then_close, sv[1], data, size);
        std::thread reader(drain, sv[1]);
        srv.serve(sv[0]);  // takes ownership of sv[0]
        writer.join();
        // serve() has returned and closed its end, so the reader sees EOF.
        reader.join();
    }
    ::close(sv[1]);
    return 0;
}
