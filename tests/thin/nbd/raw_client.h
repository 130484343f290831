#pragma once
// A byte-level NBD client for the server tests: it says exactly what a test tells it to (including
// wrong things) and reads replies with a deadline, so a server that hangs fails the test instead
// of blocking it. Also: a server on a socketpair, served on a thread.
#include "tests/thin/nbd/memory_export.h"
#include "thin/nbd/protocol.h"
#include "thin/nbd/server.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <future>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace nbd_test {

namespace proto = thin::nbd::proto;
using bytes = std::vector<std::uint8_t>;

inline bytes pattern(std::size_t n, std::uint8_t seed) {
    bytes b(n);
    for (std::size_t i = 0; i < n; ++i)
        b[i] = static_cast<std::uint8_t>(seed + i * 7 + (i >> 9));
    return b;
}

struct option_reply {
    std::uint32_t opt = 0, type = 0;
    bytes data;
    std::string text() const { return std::string(data.begin(), data.end()); }
};

// One reply of the transmission phase, simple or a structured chunk.
struct reply {
    bool structured = false;
    std::uint32_t error = 0;  // simple replies
    std::uint16_t flags = 0, type = 0;  // chunks
    std::uint64_t cookie = 0;
    bytes payload;  // chunk payload, or a simple read reply's data

    // For ERROR chunks: the error value and message.
    std::uint32_t chunk_error() const { return proto::unpacker(payload.data(), payload.size()).u32(); }
    std::string chunk_message() const {
        proto::unpacker u(payload.data(), payload.size());
        u.u32();
        return u.bytes(u.u16());
    }
    std::uint32_t any_error() const { return structured ? (type & 0x8000 ? chunk_error() : 0) : error; }
};

class raw_client {
public:
    explicit raw_client(int fd) : fd_(fd) {}
    ~raw_client() { close(); }
    raw_client(raw_client&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }

    void close() {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = -1;
    }
    void shutdown_write() { ::shutdown(fd_, SHUT_WR); }
    int fd() const { return fd_; }

    // False when the server has hung up.
    bool send_quiet(const bytes& b) {
        std::size_t done = 0;
        while (done < b.size()) {
            ssize_t r = ::send(fd_, b.data() + done, b.size() - done, MSG_NOSIGNAL);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return false;
            done += static_cast<std::size_t>(r);
        }
        return true;
    }
    void send(const bytes& b) { EXPECT_TRUE(send_quiet(b)) << "send: " << std::strerror(errno); }

    // False at EOF or reset; a deadline overrun fails the test.
    bool recv(void* buf, std::size_t n) {
        auto* p = static_cast<char*>(buf);
        while (n > 0) {
            pollfd pf{fd_, POLLIN, 0};
            int pr = ::poll(&pf, 1, static_cast<int>(std::chrono::milliseconds(DEADLINE).count()));
            if (pr == 0) {
                ADD_FAILURE() << "no data from the server within the deadline";
                return false;
            }
            ssize_t r = ::recv(fd_, p, n, 0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return false;
            p += r;
            n -= static_cast<std::size_t>(r);
        }
        return true;
    }
    bytes recv_bytes(std::size_t n) {
        bytes b(n);
        if (!recv(b.data(), n))
            b.clear();
        return b;
    }
    // True when the server has closed the connection (after any bytes still in flight).
    bool closed_by_server() {
        char c[4096];
        for (;;) {
            pollfd pf{fd_, POLLIN, 0};
            if (::poll(&pf, 1, static_cast<int>(std::chrono::milliseconds(DEADLINE).count())) == 0)
                return false;
            ssize_t r = ::recv(fd_, c, sizeof c, 0);
            if (r <= 0)
                return r == 0 || errno == ECONNRESET;
        }
    }

    // ---- handshake ----

    std::uint16_t greeting() {
        bytes g = recv_bytes(proto::GREETING_SIZE);
        if (g.size() != proto::GREETING_SIZE) {
            ADD_FAILURE() << "no greeting";
            return 0;
        }
        proto::unpacker u(g.data(), g.size());
        EXPECT_EQ(u.u64(), proto::NBDMAGIC);
        EXPECT_EQ(u.u64(), proto::IHAVEOPT);
        return u.u16();
    }
    void client_flags(std::uint32_t f) {
        bytes b;
        proto::packer(b).u32(f);
        send(b);
    }
    void start(std::uint32_t flags = proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES) {
        greeting();
        client_flags(flags);
    }
    void option(std::uint32_t opt, const bytes& data = {}) {
        bytes b;
        proto::packer(b).u64(proto::IHAVEOPT).u32(opt).u32(static_cast<std::uint32_t>(data.size()));
        b.insert(b.end(), data.begin(), data.end());
        send(b);
    }
    // False when the server hung up instead.
    bool try_read_option_reply(option_reply& r) {
        bytes h = recv_bytes(proto::OPTION_REPLY_HEADER_SIZE);
        if (h.empty())
            return false;
        proto::unpacker u(h.data(), h.size());
        EXPECT_EQ(u.u64(), proto::OPTION_REPLY_MAGIC);
        r.opt = u.u32();
        r.type = u.u32();
        r.data = recv_bytes(u.u32());
        return true;
    }
    option_reply read_option_reply() {
        option_reply r;
        if (!try_read_option_reply(r))
            ADD_FAILURE() << "connection closed instead of an option reply";
        return r;
    }
    // Sends an option and returns every reply up to the final one (ACK or an error).
    std::vector<option_reply> ask(std::uint32_t opt, const bytes& data = {}) {
        option(opt, data);
        std::vector<option_reply> out;
        for (;;) {
            out.push_back(read_option_reply());
            std::uint32_t t = out.back().type;
            if (t == 0 || t == proto::REP_ACK || (t & proto::REP_FLAG_ERROR))
                return out;
        }
    }

    static bytes info_request(const std::string& name, const std::vector<std::uint16_t>& infos = {}) {
        bytes b;
        proto::packer pk(b);
        pk.u32(static_cast<std::uint32_t>(name.size())).bytes(name).u16(static_cast<std::uint16_t>(infos.size()));
        for (auto i : infos)
            pk.u16(i);
        return b;
    }
    static bytes meta_request(const std::string& name, const std::vector<std::string>& queries) {
        bytes b;
        proto::packer pk(b);
        pk.u32(static_cast<std::uint32_t>(name.size())).bytes(name).u32(static_cast<std::uint32_t>(queries.size()));
        for (const auto& q : queries)
            pk.u32(static_cast<std::uint32_t>(q.size())).bytes(q);
        return b;
    }

    struct export_info {
        std::uint64_t size = 0;
        std::uint16_t flags = 0;
        std::uint32_t min_block = 0, pref_block = 0, max_block = 0;
        bool ok = false;
    };
    static export_info parse_infos(const std::vector<option_reply>& replies) {
        export_info e;
        for (const auto& r : replies) {
            if (r.type == proto::REP_ACK)
                e.ok = true;
            if (r.type != proto::REP_INFO)
                continue;
            proto::unpacker u(r.data.data(), r.data.size());
            std::uint16_t t = u.u16();
            if (t == proto::INFO_EXPORT) {
                e.size = u.u64();
                e.flags = u.u16();
            } else if (t == proto::INFO_BLOCK_SIZE) {
                e.min_block = u.u32();
                e.pref_block = u.u32();
                e.max_block = u.u32();
            }
        }
        return e;
    }

    // The usual way in: fixed newstyle, optionally structured replies and base:allocation, GO.
    export_info go(const std::string& name, bool structured = true, bool allocation = true) {
        start();
        if (structured) {
            EXPECT_EQ(ask(proto::OPT_STRUCTURED_REPLY).back().type, proto::REP_ACK);
        }
        if (structured && allocation) {
            EXPECT_EQ(ask(proto::OPT_SET_META_CONTEXT, meta_request(name, {"base:allocation"})).back().type,
                      proto::REP_ACK);
        }
        export_info e = parse_infos(ask(proto::OPT_GO, info_request(name, {proto::INFO_BLOCK_SIZE})));
        EXPECT_TRUE(e.ok) << "GO " << name << " failed";
        structured_ = structured;
        return e;
    }

    // ---- transmission ----

    void request(std::uint16_t type, std::uint16_t flags, std::uint64_t cookie, std::uint64_t offset,
                 std::uint32_t length, const bytes& payload = {}) {
        bytes b;
        proto::packer(b).u32(proto::REQUEST_MAGIC).u16(flags).u16(type).u64(cookie).u64(offset).u32(length);
        b.insert(b.end(), payload.begin(), payload.end());
        send(b);
    }

    // Reads one reply; `read_len` is the data length a successful simple read reply carries.
    reply read_reply(std::size_t read_len = 0) {
        reply r;
        bytes m = recv_bytes(4);
        if (m.empty()) {
            ADD_FAILURE() << "connection closed instead of a reply";
            r.error = ~0u;
            return r;
        }
        std::uint32_t magic = proto::unpacker(m.data(), 4).u32();
        r.structured = magic == proto::STRUCTURED_REPLY_MAGIC;
        if (!r.structured) {
            EXPECT_EQ(magic, proto::SIMPLE_REPLY_MAGIC);
            bytes h = recv_bytes(12);
            proto::unpacker u(h.data(), h.size());
            r.error = u.u32();
            r.cookie = u.u64();
            if (r.error == 0 && read_len)
                r.payload = recv_bytes(read_len);
            return r;
        }
        bytes h = recv_bytes(16);
        proto::unpacker u(h.data(), h.size());
        r.flags = u.u16();
        r.type = u.u16();
        r.cookie = u.u64();
        r.payload = recv_bytes(u.u32());
        return r;
    }

    // A read, answered whole: the data (empty on error, with *error set).
    bytes read(std::uint64_t off, std::uint32_t len, std::uint32_t* error = nullptr, std::uint16_t flags = 0) {
        std::uint64_t cookie = next_cookie_++;
        request(proto::CMD_READ, flags, cookie, off, len);
        reply r = read_reply(len);
        EXPECT_EQ(r.cookie, cookie);
        if (error)
            *error = r.any_error();
        if (r.any_error())
            return {};
        if (!r.structured)
            return r.payload;
        EXPECT_EQ(r.type, proto::REPLY_TYPE_OFFSET_DATA);
        EXPECT_EQ(r.flags, proto::REPLY_FLAG_DONE);
        proto::unpacker u(r.payload.data(), r.payload.size());
        EXPECT_EQ(u.u64(), off);
        return bytes(r.payload.begin() + 8, r.payload.end());
    }

    // A command without reply data; returns the NBD error (0 on success).
    std::uint32_t command(std::uint16_t type, std::uint16_t flags, std::uint64_t off, std::uint32_t len,
                          const bytes& payload = {}, std::string* message = nullptr) {
        std::uint64_t cookie = next_cookie_++;
        request(type, flags, cookie, off, len, payload);
        reply r = read_reply();
        EXPECT_EQ(r.cookie, cookie);
        if (r.structured && r.type == proto::REPLY_TYPE_NONE) {
            EXPECT_EQ(r.flags, proto::REPLY_FLAG_DONE);
        }
        if (message && r.structured && (r.type & 0x8000))
            *message = r.chunk_message();
        return r.any_error();
    }
    std::uint32_t write(std::uint64_t off, const bytes& data, std::uint16_t flags = 0) {
        return command(proto::CMD_WRITE, flags, off, static_cast<std::uint32_t>(data.size()), data);
    }

    // Block status descriptors (length, flags) of base:allocation, or the error.
    std::vector<std::pair<std::uint32_t, std::uint32_t>> block_status(std::uint64_t off, std::uint32_t len,
                                                                      std::uint16_t flags = 0,
                                                                      std::uint32_t* error = nullptr) {
        std::uint64_t cookie = next_cookie_++;
        request(proto::CMD_BLOCK_STATUS, flags, cookie, off, len);
        reply r = read_reply();
        EXPECT_EQ(r.cookie, cookie);
        if (error)
            *error = r.any_error();
        std::vector<std::pair<std::uint32_t, std::uint32_t>> out;
        if (r.any_error())
            return out;
        EXPECT_EQ(r.type, proto::REPLY_TYPE_BLOCK_STATUS);
        EXPECT_EQ(r.flags, proto::REPLY_FLAG_DONE);
        proto::unpacker u(r.payload.data(), r.payload.size());
        EXPECT_NE(u.u32(), 0u) << "context id";  // the server numbers base:allocation 1
        while (u.remaining() >= 8) {
            std::uint32_t l = u.u32();
            out.emplace_back(l, u.u32());
        }
        return out;
    }

    void disconnect() { request(proto::CMD_DISC, 0, next_cookie_++, 0, 0); }

private:
    int fd_;
    bool structured_ = false;
    std::uint64_t next_cookie_ = 1000;
};

// A server whose connections come from socketpairs, each served on its own thread.
class socketpair_server {
public:
    explicit socketpair_server(thin::nbd::server_options o = {}) {
        provider = std::make_shared<memory_provider>();
        disk = std::make_shared<memory_export>(memory_export::options{});
        ro = std::make_shared<memory_export>(memory_export::options{.size = 1 << 20, .read_only = true});
        provider->add("disk", "the test disk", disk);
        provider->add("ro", "", ro);
        provider->add_broken("broken", "volume is in fail mode");
        o.log = log.sink();
        srv = std::make_unique<thin::nbd::server>(provider, o);
    }
    ~socketpair_server() {
        srv->stop();
        for (auto& f : served)
            f.wait();
    }

    raw_client connect() {
        int sv[2];
        EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        served.push_back(std::async(std::launch::async, [this, fd = sv[1]] { srv->serve(fd); }));
        return raw_client(sv[0]);
    }
    // Waits for the serve() of connection i (in connect order) to return.
    bool served_done(std::size_t i) {
        return served.at(i).wait_for(DEADLINE) == std::future_status::ready;
    }

    log_capture log;
    std::shared_ptr<memory_provider> provider;
    std::shared_ptr<memory_export> disk, ro;
    std::unique_ptr<thin::nbd::server> srv;
    std::vector<std::future<void>> served;
};

} // namespace nbd_test
