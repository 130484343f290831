// thin/nbd/server.cc: listeners, the connection registry, backpressure and stop().
#include "tests/thin/nbd/raw_client.h"
#include "tests/support/reference_tools.h"
#include "thin/nbd/limits.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <algorithm>
#include <fstream>
#include <set>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <system_error>

using namespace nbd_test;
namespace limits = thin::nbd::limits;

namespace {

int connect_unix(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

int connect_tcp(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// A loopback port free a moment ago.
std::uint16_t free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

// Restores a process-wide limit when the test ends.
struct drain_timeout_for_test {
    explicit drain_timeout_for_test(std::chrono::milliseconds t) : saved(limits::drain_timeout()) {
        limits::set_drain_timeout(t);
    }
    ~drain_timeout_for_test() { limits::set_drain_timeout(saved); }
    std::chrono::milliseconds saved;
};

std::string expect_throw(const std::function<void()>& f) {
    try {
        f();
    } catch (const std::system_error& e) {
        return e.what();
    }
    ADD_FAILURE() << "no std::system_error";
    return {};
}

// ---- listening --------------------------------------------------------------------------------

class listening : public ::testing::Test {
protected:
    thinpool_test::scratch_dir dir;
    socketpair_server s;
};

TEST_F(listening, unix_socket_is_private_serves_and_is_removed_at_stop) {
    std::string path = dir.file("nbd.sock");
    s.srv->listen_unix(path);
    struct stat st;
    ASSERT_EQ(::lstat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    s.srv->start();
    raw_client c(connect_unix(path));
    ASSERT_GE(c.fd(), 0);
    c.go("disk");
    ASSERT_EQ(c.write(0, pattern(4096, 3)), 0u);
    EXPECT_EQ(s.disk->bytes(0, 4096), pattern(4096, 3));
    EXPECT_EQ(s.srv->connections(), 1u);
    s.srv->stop();
    EXPECT_TRUE(c.closed_by_server());
    EXPECT_NE(::lstat(path.c_str(), &st), 0) << "socket file left behind";
    EXPECT_EQ(s.srv->connections(), 0u);
}

TEST_F(listening, stale_socket_file_is_replaced) {
    std::string path = dir.file("stale.sock");
    {
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        ::close(fd);  // the file stays, nobody listens
    }
    s.srv->listen_unix(path);
    s.srv->start();
    raw_client c(connect_unix(path));
    ASSERT_GE(c.fd(), 0);
    EXPECT_EQ(c.greeting(), proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES);
}

TEST_F(listening, refuses_a_path_that_is_not_a_socket_or_is_in_use) {
    std::string file = dir.file("plain");
    std::ofstream(file) << "keep me";
    std::string what = expect_throw([&] { s.srv->listen_unix(file); });
    EXPECT_NE(what.find(file + ": exists and is not a socket"), std::string::npos) << what;
    EXPECT_EQ(thinpool_test::read_file(file), "keep me");

    std::string live = dir.file("live.sock");
    s.srv->listen_unix(live);
    socketpair_server other;
    what = expect_throw([&] { other.srv->listen_unix(live); });
    EXPECT_NE(what.find("another server is listening"), std::string::npos) << what;

    what = expect_throw([&] { s.srv->listen_unix(dir.file(std::string(200, 'x'))); });
    EXPECT_NE(what.find("not usable as a Unix socket path"), std::string::npos) << what;
    what = expect_throw([&] { s.srv->listen_unix(dir.file("no/such/dir/s")); });
    EXPECT_NE(what.find("no/such/dir/s"), std::string::npos) << what;
}

TEST_F(listening, tcp_serves_on_loopback) {
    std::uint16_t port = free_port();
    s.srv->listen_tcp("127.0.0.1", port);
    s.srv->start();
    raw_client c(connect_tcp(port));
    ASSERT_GE(c.fd(), 0);
    c.go("disk");
    EXPECT_EQ(c.read(0, 512), bytes(512, 0));
    EXPECT_TRUE(s.log.wait_for("(127.0.0.1:"));
}

TEST_F(listening, tcp_errors_name_the_address) {
    std::string what = expect_throw([&] { s.srv->listen_tcp("no-such-host.invalid", 10809); });
    EXPECT_NE(what.find("no-such-host.invalid:10809"), std::string::npos) << what;
    std::uint16_t port = free_port();
    s.srv->listen_tcp("127.0.0.1", port);
    what = expect_throw([&] { s.srv->listen_tcp("127.0.0.1", port); });
    EXPECT_NE(what.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << what;
}

TEST_F(listening, nothing_is_accepted_after_stop) {
    s.srv->stop();
    raw_client c = s.connect();  // serve() on a stopped server closes at once
    EXPECT_TRUE(c.closed_by_server());
    EXPECT_THROW(s.srv->listen_unix(dir.file("late.sock")), std::system_error);
    s.srv->start();  // harmless
    s.srv->stop();   // idempotent
}

// ---- logging ----------------------------------------------------------------------------------

TEST(logging, one_line_when_a_connection_opens_and_closes) {
    socketpair_server s;
    raw_client c = s.connect();
    c.go("disk");
    c.disconnect();
    EXPECT_TRUE(s.served_done(0));
    EXPECT_TRUE(s.log.contains("nbd connection 1: opened export 'disk' (read-write, structured replies)"));
    EXPECT_TRUE(s.log.contains("nbd connection 1: closed export 'disk': client disconnected (NBD_CMD_DISC)"));
    std::string all = s.log.all();
    EXPECT_EQ(std::count(all.begin(), all.end(), '\n'), 2) << all;
}

// ---- backpressure -----------------------------------------------------------------------------

TEST(backpressure, requests_in_flight_are_bounded_by_count) {
    socketpair_server s;
    raw_client c = s.connect();
    c.go("disk");
    s.disk->hold();
    const int n = int(limits::MAX_INFLIGHT_REQUESTS) + 44;
    for (int i = 0; i < n; ++i)
        c.request(proto::CMD_READ, 0, i, 0, 512);
    ASSERT_TRUE(s.disk->wait_submitted(limits::MAX_INFLIGHT_REQUESTS));
    s.disk->open_gate();
    for (int i = 0; i < n; ++i)
        EXPECT_EQ(c.read_reply().any_error(), 0u);
    EXPECT_EQ(s.disk->submitted(), std::uint64_t(n));
    EXPECT_EQ(s.disk->max_pending(), limits::MAX_INFLIGHT_REQUESTS);
}

TEST(backpressure, requests_in_flight_are_bounded_by_bytes) {
    socketpair_server s;
    raw_client c = s.connect();
    c.go("disk");
    s.disk->hold();
    const std::uint32_t mib = 1 << 20;
    const int n = 100;
    for (int i = 0; i < n; ++i)
        c.request(proto::CMD_READ, 0, i, (i % 8) * std::uint64_t(mib), mib);
    // 64 MiB of replies with their headers' allowance: 63 reads of 1 MiB fit, the 64th waits.
    const std::uint64_t fit = 63;
    ASSERT_TRUE(s.disk->wait_submitted(fit));
    s.disk->open_gate();
    for (int i = 0; i < n; ++i)
        EXPECT_EQ(c.read_reply(mib).payload.size(), mib + 8);
    EXPECT_EQ(s.disk->max_pending(), fit);
}

// ---- stop -------------------------------------------------------------------------------------

TEST(stopping, stop_closes_idle_connections_in_every_phase) {
    socketpair_server s;
    raw_client a = s.connect(), b = s.connect(), h = s.connect();
    a.go("disk");
    b.go("ro", false, false);
    h.greeting();  // still in the handshake
    ASSERT_EQ(a.read(0, 512), bytes(512, 0));
    EXPECT_EQ(s.srv->connections(), 3u);
    s.srv->stop();
    for (std::size_t i = 0; i < 3; ++i)
        EXPECT_TRUE(s.served_done(i));
    EXPECT_TRUE(a.closed_by_server());
    EXPECT_TRUE(b.closed_by_server());
    EXPECT_TRUE(h.closed_by_server());
    EXPECT_EQ(s.srv->connections(), 0u);
    EXPECT_TRUE(s.log.contains("closed export 'disk': server stopping"));
}

TEST(stopping, stop_lets_requests_in_flight_finish_and_answers_them) {
    socketpair_server s;
    raw_client c = s.connect();
    c.go("disk");
    s.disk->hold();
    for (int i = 0; i < 8; ++i)
        c.request(proto::CMD_WRITE, 0, i, std::uint64_t(i) * 4096, 4096, pattern(4096, std::uint8_t(i)));
    ASSERT_TRUE(s.disk->wait_submitted(8));
    auto stopped = std::async(std::launch::async, [&] { s.srv->stop(); });
    s.disk->open_gate();
    EXPECT_EQ(stopped.wait_for(DEADLINE), std::future_status::ready);
    std::set<std::uint64_t> cookies;
    for (int i = 0; i < 8; ++i) {
        reply r = c.read_reply();
        EXPECT_EQ(r.any_error(), 0u);
        cookies.insert(r.cookie);
    }
    EXPECT_EQ(cookies.size(), 8u);
    EXPECT_TRUE(c.closed_by_server());
    for (int i = 0; i < 8; ++i)
        EXPECT_EQ(s.disk->bytes(std::uint64_t(i) * 4096, 4096), pattern(4096, std::uint8_t(i)));
}

TEST(stopping, stop_returns_when_a_client_stops_reading) {
    drain_timeout_for_test t(std::chrono::milliseconds(300));
    socketpair_server s;
    raw_client c = s.connect();
    c.go("disk");
    s.disk->hold();
    // Far more reply data than the socket holds, and the client never reads it.
    for (int i = 0; i < 100; ++i)
        c.request(proto::CMD_READ, 0, i, 0, 1 << 20);
    ASSERT_TRUE(s.disk->wait_submitted(63));
    s.disk->open_gate();
    ASSERT_TRUE(s.disk->wait_idle());
    auto stopped = std::async(std::launch::async, [&] { s.srv->stop(); });
    EXPECT_EQ(stopped.wait_for(DEADLINE), std::future_status::ready);
    EXPECT_TRUE(s.served_done(0));
    EXPECT_TRUE(s.log.contains("does not read its replies"));
    EXPECT_EQ(s.srv->connections(), 0u);
}

TEST(stopping, destructor_stops_a_listening_server_with_clients) {
    thinpool_test::scratch_dir dir;
    auto provider = std::make_shared<memory_provider>();
    auto disk = std::make_shared<memory_export>(memory_export::options{});
    provider->add("disk", "", disk);
    log_capture log;
    std::vector<raw_client> clients;
    {
        thin::nbd::server srv(provider, {.log = log.sink()});
        srv.listen_unix(dir.file("s"));
        srv.start();
        for (int i = 0; i < 4; ++i) {
            clients.emplace_back(connect_unix(dir.file("s")));
            clients.back().go("disk");
        }
        EXPECT_EQ(clients.back().read(0, 512), bytes(512, 0));
    }
    for (auto& c : clients)
        EXPECT_TRUE(c.closed_by_server());
    EXPECT_EQ(disk.use_count(), 2);
}

} // namespace
