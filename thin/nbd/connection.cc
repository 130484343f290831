#include "thin/nbd/connection.h"

#include "thin/nbd/limits.h"
#include "thin/nbd/protocol.h"
#include "thin/nbd/socket_io.h"

#include <algorithm>
#include <cerrno>
#include <exception>
#include <new>
#include <sys/socket.h>
#include <system_error>
#include <unistd.h>

namespace thin::nbd {

namespace p = proto;
using thin::pool::io_op;
using thin::pool::io_request;

namespace {
constexpr std::uint64_t SECTOR = 512;
constexpr std::size_t SMALL_REPLY_COST = 64;  // a reply without data, with room for an error message

bool is_write_command(std::uint16_t type) {
    return type == p::CMD_WRITE || type == p::CMD_TRIM || type == p::CMD_WRITE_ZEROES;
}

std::string errno_text(int negative_errno) {
    return std::error_code(-negative_errno, std::generic_category()).message();
}
} // namespace

// A request handed to the export, until its completion (owned by the completion callback).
struct connection::in_flight {
    connection* c;
    request req;
    std::size_t cost;
    std::unique_ptr<std::uint8_t[]> buf;
    bool flush_after = false;  // TRIM with FUA: the pool ignores FUA on discards, so flush after
};

connection::connection(int fd, server_context& ctx, std::string who)
    : fd_(fd), ctx_(ctx), who_(std::move(who)),
      max_inflight_bytes_(std::max<std::size_t>(limits::MIN_INFLIGHT_BYTES, 2 * std::size_t(ctx.max_request_bytes))) {}

connection::~connection() {
    if (fd_ >= 0)
        ::close(fd_);
}

void connection::request_stop() {
    { std::lock_guard lk(m_); }  // a waiter between its predicate check and its sleep sees the stop
    cv_.notify_all();
}

void connection::run() {
    handshake_result h = negotiate(fd_, ctx_, who_);
    if (!h.s) {
        ctx_.log(who_ + ": closed during handshake: " + h.end_reason);
        return;
    }
    s_ = std::move(*h.s);
    ctx_.log(who_ + ": opened export '" + s_.export_name + "' (" + (s_.read_only ? "read-only" : "read-write") +
             (s_.structured_replies ? ", structured replies" : ", simple replies") + ")");
    try {
        writer_ = std::thread([this] { writer_loop(); });
    } catch (const std::system_error& e) {
        ctx_.log(who_ + ": closed export '" + s_.export_name + "': no thread for replies: " + e.what());
        return;
    }
    end_reason_ = read_loop();
    drain();
    ctx_.log(who_ + ": closed export '" + s_.export_name + "': " + end_reason_);
    s_.exp.reset();  // the provider may deactivate the volume now
    ::close(fd_);
    fd_ = -1;
}

// ---- reading requests -------------------------------------------------------------------------

std::string connection::read_loop() {
    io_bounds bounds{std::nullopt, ctx_.stop_fd};
    for (;;) {
        // Checked here too: a client that keeps the socket full would never let the poll see it.
        if (ctx_.stopping)
            return "server stopping";
        std::uint8_t raw[p::REQUEST_SIZE];
        if (io_status s = read_exact(fd_, raw, sizeof raw, bounds); s != io_status::ok)
            return s == io_status::closed ? "client disconnected" : to_string(s);
        p::unpacker u(raw, sizeof raw);
        std::uint32_t magic = u.u32();
        request r;
        r.flags = u.u16();
        r.type = u.u16();
        r.cookie = u.u64();
        r.offset = u.u64();
        r.length = u.u32();
        if (magic != p::REQUEST_MAGIC) {
            protocol_error("bad request magic " + p::hex(magic));
            return end_reason_;
        }
        if (r.type == p::CMD_DISC)
            return "client disconnected (NBD_CMD_DISC)";
        if (!handle(r))
            return end_reason_.empty() ? "connection lost" : end_reason_;
    }
}

// False when the connection cannot go on (framing lost, socket gone, server stopping).
bool connection::handle(const request& r) {
    std::uint64_t payload = r.type == p::CMD_WRITE ? r.length : 0;
    if (payload > ctx_.max_request_bytes && payload > limits::MAX_WRITE_DISCARD) {
        protocol_error(p::command_name(r.type) + " with a " + std::to_string(payload) + "-byte payload");
        return false;
    }
    refusal no = check(r);
    std::size_t cost = no.error ? SMALL_REPLY_COST : reply_cost(r);
    if (!admit(cost))
        return false;
    std::unique_ptr<std::uint8_t[]> buf;
    if (!no.error && (r.type == p::CMD_READ || r.type == p::CMD_WRITE) && !(buf = allocate(r.length)))
        no = {p::NBD_ENOMEM, "no memory for the request's buffer"};
    if (no.error)
        return refuse(r, no, payload, cost);
    if (payload && !read_payload(buf.get(), payload, cost))
        return false;
    if (r.type == p::CMD_BLOCK_STATUS)
        block_status(r, cost);
    else
        submit(r, std::move(buf), cost);
    return true;
}

std::unique_ptr<std::uint8_t[]> connection::allocate(std::size_t n) {
    try {
        return std::make_unique_for_overwrite<std::uint8_t[]>(n);
    } catch (const std::bad_alloc&) {
        return nullptr;
    }
}

bool connection::read_payload(std::uint8_t* buf, std::uint64_t n, std::size_t cost) {
    io_status s = buf ? read_exact(fd_, buf, n, {std::nullopt, ctx_.stop_fd})
                      : discard_exact(fd_, n, {std::nullopt, ctx_.stop_fd});
    if (s == io_status::ok)
        return true;
    release(cost);
    end_reason_ = std::string("reading a write payload: ") + to_string(s);
    return false;
}

// Answers a request with an error without doing it; a refused write's payload is consumed to
// stay in step with the client.
bool connection::refuse(const request& r, const refusal& no, std::uint64_t payload, std::size_t cost) {
    if (payload && !read_payload(nullptr, payload, cost))
        return false;
    enqueue(error_reply(r, no.error, no.message), cost);
    return true;
}

// ---- checking requests ------------------------------------------------------------------------

connection::refusal connection::check(const request& r) const {
    if (refusal f = check_flags(r); f.error)
        return f;
    if (s_.read_only && is_write_command(r.type))
        return {p::NBD_EPERM, "the export is read-only"};
    if (r.type == p::CMD_TRIM && !(s_.transmission_flags & p::FLAG_SEND_TRIM))
        return {p::NBD_EINVAL, "trim is not supported by this export"};
    if (r.type == p::CMD_BLOCK_STATUS && !s_.allocation_context)
        return {p::NBD_EINVAL, "no metadata context was selected"};
    if (r.type == p::CMD_FLUSH)
        return r.offset || r.length ? refusal{p::NBD_EINVAL, "flush with a non-zero offset or length"} : refusal{};
    if (refusal f = check_range(r); f.error)
        return f;
    if (r.type == p::CMD_WRITE_ZEROES && (r.flags & p::CMD_FLAG_FAST_ZERO) && !fast_zero(r))
        return {p::NBD_ENOTSUP, "zeroing this range is not faster than writing"};
    return {};
}

// Zeroing is fast only where whole blocks can be unmapped; anywhere else it writes zeroes.
bool connection::fast_zero(const request& r) const {
    std::uint64_t grain = std::max<std::uint64_t>(s_.exp->preferred_block_size(), SECTOR);
    return !(r.flags & p::CMD_FLAG_NO_HOLE) && r.offset % grain == 0 && r.length % grain == 0;
}

connection::refusal connection::check_flags(const request& r) const {
    std::uint16_t allowed = p::CMD_FLAG_FUA;  // the protocol lets FUA come with any command
    switch (r.type) {
    case p::CMD_READ:
        if (s_.structured_replies)
            allowed |= p::CMD_FLAG_DF;
        break;
    case p::CMD_WRITE_ZEROES: allowed |= p::CMD_FLAG_NO_HOLE | p::CMD_FLAG_FAST_ZERO; break;
    case p::CMD_BLOCK_STATUS: allowed |= p::CMD_FLAG_REQ_ONE; break;
    case p::CMD_WRITE:
    case p::CMD_FLUSH:
    case p::CMD_TRIM: break;
    default: return {p::NBD_EINVAL, "unknown command " + std::to_string(r.type)};
    }
    if (r.flags & ~allowed)
        return {p::NBD_EINVAL, "unsupported flags " + p::hex(r.flags) + " for " + p::command_name(r.type)};
    return {};
}

connection::refusal connection::check_range(const request& r) const {
    std::string what = p::command_name(r.type);
    if (r.length == 0)
        return {p::NBD_EINVAL, what + " of zero length"};
    std::uint64_t size = s_.exp->size();
    if (r.offset > size || r.length > size - r.offset) {
        // The protocol recommends ENOSPC for writing past the end.
        bool write = r.type == p::CMD_WRITE || r.type == p::CMD_WRITE_ZEROES;
        return {write ? p::NBD_ENOSPC : p::NBD_EINVAL, what + " beyond the end of the export"};
    }
    // Block status is only a query: any length from an aligned offset is answered.
    bool length_aligned = r.type == p::CMD_BLOCK_STATUS || r.length % SECTOR == 0;
    if (r.offset % SECTOR || !length_aligned)
        return {p::NBD_EINVAL, what + " not aligned to 512 bytes"};
    if ((r.type == p::CMD_READ || r.type == p::CMD_WRITE) && r.length > ctx_.max_request_bytes)
        return {p::NBD_EINVAL, what + " longer than the maximum block size " + std::to_string(ctx_.max_request_bytes)};
    return {};
}

std::size_t connection::reply_cost(const request& r) const {
    switch (r.type) {
    case p::CMD_READ:
    case p::CMD_WRITE: return SMALL_REPLY_COST + r.length;
    case p::CMD_BLOCK_STATUS: return SMALL_REPLY_COST + 8 * limits::MAX_BLOCK_STATUS_EXTENTS;
    default: return SMALL_REPLY_COST;
    }
}

// ---- doing requests ---------------------------------------------------------------------------

void connection::submit(const request& r, std::unique_ptr<std::uint8_t[]> buf, std::size_t cost) {
    auto f = std::make_unique<in_flight>(in_flight{this, r, cost, std::move(buf)});
    bool fua = r.flags & p::CMD_FLAG_FUA;
    io_request io;
    io.sector = r.offset / SECTOR;
    io.nr_sectors = r.length / SECTOR;
    io.buf = f->buf.get();
    switch (r.type) {
    case p::CMD_READ: io.op = io_op::read; break;
    case p::CMD_WRITE: io.op = io_op::write; io.fua = fua; break;
    case p::CMD_FLUSH: io.op = io_op::flush; break;
    case p::CMD_TRIM:
        io.op = io_op::discard;
        f->flush_after = fua;
        break;
    case p::CMD_WRITE_ZEROES:
        io.op = io_op::write_zeroes;
        io.no_hole = r.flags & p::CMD_FLAG_NO_HOLE;
        io.fua = fua;
        break;
    }
    submit_io(f.release(), std::move(io));
}

void connection::submit_io(in_flight* f, io_request io) {
    io.done = [f](int result) { f->c->completed(f, result); };
    try {
        s_.exp->submit(std::move(io));
    } catch (const std::exception& e) {
        // submit does not throw by contract; if it does, `done` was not taken.
        ctx_.log(who_ + ": export submit failed: " + e.what());
        completed(f, -EIO);
    }
}

// Runs on the export's completion thread: builds the reply and queues it, nothing that blocks.
void connection::completed(in_flight* raw, int result) {
    std::unique_ptr<in_flight> f(raw);
    if (result == 0 && f->flush_after) {
        f->flush_after = false;
        io_request flush;
        flush.op = io_op::flush;
        submit_io(f.release(), std::move(flush));
        return;
    }
    const request& r = f->req;
    reply rp = result == 0 ? success_reply(r, std::move(f->buf))
                           : error_reply(r, p::error_from_errno(result), errno_text(result));
    enqueue(std::move(rp), f->cost);
}

void connection::block_status(const request& r, std::size_t cost) {
    std::uint64_t query = (std::uint64_t(r.length) + SECTOR - 1) / SECTOR * SECTOR;
    std::vector<extent> got;
    try {
        got = s_.exp->block_status(r.offset, query);
    } catch (const std::exception& e) {
        enqueue(error_reply(r, p::NBD_EIO, e.what()), cost);
        return;
    }
    // Descriptors: clipped to the request, merged when equal, at most one with REQ_ONE.
    std::size_t max = (r.flags & p::CMD_FLAG_REQ_ONE) ? 1 : limits::MAX_BLOCK_STATUS_EXTENTS;
    std::vector<std::pair<std::uint32_t, std::uint32_t>> out;  // (length, flags)
    std::uint64_t left = r.length;
    for (const extent& e : got) {
        std::uint64_t len = std::min(e.length, left);
        if (len == 0)
            continue;
        std::uint32_t flags = (e.hole ? p::STATE_HOLE : 0) | (e.zero ? p::STATE_ZERO : 0);
        if (!out.empty() && out.back().second == flags)
            out.back().first += static_cast<std::uint32_t>(len);  // the total stays <= r.length
        else if (out.size() < max)
            out.emplace_back(static_cast<std::uint32_t>(len), flags);
        else
            break;
        left -= len;
    }
    if (out.empty()) {
        enqueue(error_reply(r, p::NBD_EIO, "no allocation information"), cost);
        return;
    }
    reply rp = chunk(r, p::REPLY_TYPE_BLOCK_STATUS, static_cast<std::uint32_t>(4 + 8 * out.size()));
    p::packer pk(rp.head);
    pk.u32(*s_.allocation_context);
    for (auto [len, flags] : out)
        pk.u32(len).u32(flags);
    enqueue(std::move(rp), cost);
}

// ---- replies ----------------------------------------------------------------------------------

connection::reply connection::simple(const request& r, std::uint32_t error) const {
    reply rp;
    p::packer(rp.head).u32(p::SIMPLE_REPLY_MAGIC).u32(error).u64(r.cookie);
    return rp;
}

// A final chunk (DONE: every reply here is one chunk) whose fixed fields the caller appends.
connection::reply connection::chunk(const request& r, std::uint16_t type, std::uint32_t payload_len) const {
    reply rp;
    p::packer(rp.head).u32(p::STRUCTURED_REPLY_MAGIC).u16(p::REPLY_FLAG_DONE).u16(type).u64(r.cookie).u32(payload_len);
    return rp;
}

connection::reply connection::success_reply(const request& r, std::unique_ptr<std::uint8_t[]> data) const {
    if (r.type != p::CMD_READ)
        return s_.structured_replies ? chunk(r, p::REPLY_TYPE_NONE, 0) : simple(r, 0);
    reply rp;
    if (s_.structured_replies) {
        rp = chunk(r, p::REPLY_TYPE_OFFSET_DATA, 8 + r.length);
        p::packer(rp.head).u64(r.offset);
    } else {
        rp = simple(r, 0);
    }
    rp.data = std::move(data);
    rp.data_len = r.length;
    return rp;
}

connection::reply connection::error_reply(const request& r, std::uint32_t error, const std::string& message) const {
    if (!s_.structured_replies)
        return simple(r, error);  // no payload, not even for a read
    std::string_view m = std::string_view(message).substr(0, p::MAX_STRING);
    reply rp = chunk(r, p::REPLY_TYPE_ERROR, static_cast<std::uint32_t>(6 + m.size()));
    p::packer(rp.head).u32(error).u16(static_cast<std::uint16_t>(m.size())).bytes(m);
    return rp;
}

// ---- the reply queue and backpressure ---------------------------------------------------------

bool connection::admit(std::size_t cost) {
    std::unique_lock lk(m_);
    cv_.wait(lk, [&] {
        bool room = inflight_requests_ < limits::MAX_INFLIGHT_REQUESTS &&
                    (inflight_bytes_ == 0 || inflight_bytes_ + cost <= max_inflight_bytes_);
        return room || send_failed_ || ctx_.stopping;
    });
    if (send_failed_ || ctx_.stopping) {
        if (end_reason_.empty())
            end_reason_ = ctx_.stopping ? "server stopping" : "sending replies failed";
        return false;
    }
    ++inflight_requests_;
    inflight_bytes_ += cost;
    return true;
}

void connection::release(std::size_t cost) {
    std::lock_guard lk(m_);
    --inflight_requests_;
    inflight_bytes_ -= cost;
    cv_.notify_all();
}

void connection::enqueue(reply r, std::size_t cost) {
    std::lock_guard lk(m_);
    queue_.push_back({std::move(r), cost});
    cv_.notify_all();  // under the lock: once it is released, the connection may be gone
}

void connection::writer_loop() {
    io_bounds unbounded;  // a stuck client is cut off by drain() shutting the socket down
    for (;;) {
        queued q;
        bool failed;
        {
            std::unique_lock lk(m_);
            cv_.wait(lk, [&] { return !queue_.empty() || writer_exit_; });
            if (queue_.empty())
                return;
            q = std::move(queue_.front());
            queue_.pop_front();
            failed = send_failed_;
        }
        if (!failed) {
            iovec iov[2] = {{q.r.head.data(), q.r.head.size()}, {q.r.data.get(), q.r.data_len}};
            if (write_all(fd_, iov, 2, unbounded) != io_status::ok) {
                failed = true;
                ::shutdown(fd_, SHUT_RDWR);  // wakes the reader: nobody is listening any more
            }
        }
        std::lock_guard lk(m_);
        send_failed_ |= failed;
        --inflight_requests_;
        inflight_bytes_ -= q.cost;
        cv_.notify_all();
    }
}

// Waits for every admitted request to be answered (or its reply dropped), then ends the writer.
void connection::drain() {
    std::unique_lock lk(m_);
    auto idle = [&] { return inflight_requests_ == 0; };
    cv_.wait(lk, [&] { return idle() || ctx_.stopping; });
    if (!cv_.wait_for(lk, limits::drain_timeout(), idle)) {
        ctx_.log(who_ + ": client does not read its replies; dropping them at stop");
        ::shutdown(fd_, SHUT_RDWR);  // the writer's send fails; the rest of the queue is dropped
        cv_.wait(lk, idle);          // the export completes what it was given
    }
    writer_exit_ = true;
    cv_.notify_all();
    lk.unlock();
    writer_.join();
}

void connection::protocol_error(const std::string& what) {
    ctx_.log(who_ + ": protocol error: " + what);
    end_reason_ = "protocol error: " + what;
}

} // namespace thin::nbd
