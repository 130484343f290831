#include "thin/nbd/handshake.h"

#include "thin/nbd/limits.h"
#include "thin/nbd/protocol.h"
#include "thin/nbd/socket_io.h"

#include <algorithm>
#include <bit>
#include <exception>
#include <vector>

namespace thin::nbd {

namespace p = proto;

block_sizes advertised_block_sizes(const export_handle& e, std::uint32_t max_request_bytes) {
    block_sizes b;
    b.maximum = max_request_bytes;
    // The protocol wants a power of two >= 512 and no larger than the maximum; a pool's block
    // size need not be a power of two (any multiple of 64 KiB), so round down.
    std::uint32_t want = std::clamp<std::uint32_t>(e.preferred_block_size(), 512, max_request_bytes);
    b.preferred = std::bit_floor(want);
    return b;
}

namespace {

// The id a selected base:allocation gets (any value would do; LIST replies use 0 as asked).
constexpr std::uint32_t ALLOCATION_CONTEXT_ID = 1;

std::uint16_t transmission_flags(const export_handle& e, bool read_only, bool structured) {
    std::uint16_t f = p::FLAG_HAS_FLAGS | p::FLAG_SEND_FLUSH | p::FLAG_SEND_FUA | p::FLAG_CAN_MULTI_CONN;
    if (structured)
        f |= p::FLAG_SEND_DF;  // reads are always one chunk; only meaningful with structured replies
    if (read_only)
        return f | p::FLAG_READ_ONLY;
    f |= p::FLAG_SEND_WRITE_ZEROES | p::FLAG_SEND_FAST_ZERO;
    if (e.can_trim())
        f |= p::FLAG_SEND_TRIM;
    return f;
}

class negotiator {
public:
    negotiator(int fd, server_context& ctx, const std::string& who) : fd_(fd), ctx_(ctx), who_(who) {
        bounds_.deadline = std::chrono::steady_clock::now() + limits::handshake_timeout();
        bounds_.stop_fd = ctx.stop_fd;
    }

    handshake_result run() {
        if (greet())
            while (!result_.s && end_reason_.empty())
                next_option();
        if (!result_.s && end_reason_.empty())
            end_reason_ = "handshake failed";
        // The last refusal usually says why a client gave up (an unknown export, say).
        if (!result_.s && !last_refusal_.empty())
            end_reason_ += " (last refused: " + last_refusal_ + ")";
        result_.end_reason = end_reason_;
        return std::move(result_);
    }

private:
    using bytes = std::vector<std::uint8_t>;

    // ---- framing ------------------------------------------------------------------------------

    bool greet() {
        bytes g;
        p::packer(g).u64(p::NBDMAGIC).u64(p::IHAVEOPT).u16(p::FLAG_FIXED_NEWSTYLE | p::FLAG_NO_ZEROES);
        if (!send(g))
            return false;
        std::uint8_t raw[4];
        if (!receive(raw, sizeof raw))
            return false;
        std::uint32_t flags = p::unpacker(raw, 4).u32();
        if (flags & ~(p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES))
            return fail("unknown client flags " + p::hex(flags));
        fixed_ = flags & p::FLAG_C_FIXED_NEWSTYLE;
        no_zeroes_ = flags & p::FLAG_C_NO_ZEROES;
        return true;
    }

    void next_option() {
        std::uint8_t raw[p::OPTION_HEADER_SIZE];
        if (!receive(raw, sizeof raw))
            return;
        p::unpacker u(raw, sizeof raw);
        std::uint64_t magic = u.u64();
        std::uint32_t opt = u.u32(), len = u.u32();
        if (magic != p::IHAVEOPT) {
            fail("bad option magic " + p::hex(magic));
            return;
        }
        if (len > limits::MAX_OPTION_BYTES) {
            oversized_option(opt, len);
            return;
        }
        bytes data(len);
        if (!receive(data.data(), len))
            return;
        if (!fixed_ && opt != p::OPT_EXPORT_NAME) {
            fail(p::option_name(opt) + " from a client without fixed newstyle");
            return;
        }
        dispatch(opt, data);
    }

    // Too long to parse: consume it when that is cheap, else give up on the framing.
    void oversized_option(std::uint32_t opt, std::uint32_t len) {
        std::string what = p::option_name(opt) + " with " + std::to_string(len) + " bytes of data";
        if (opt == p::OPT_EXPORT_NAME || len > limits::MAX_OPTION_DISCARD) {
            if (opt != p::OPT_EXPORT_NAME)
                reply_error(opt, p::REP_ERR_TOO_BIG, "option data too large");
            fail(what + ": too large");
            return;
        }
        log_error(what + ": refused as too large");
        if (io_status s = discard_exact(fd_, len, bounds_); s != io_status::ok) {
            io_failed(s);
            return;
        }
        reply_error(opt, p::REP_ERR_TOO_BIG, "option data too large");
    }

    void dispatch(std::uint32_t opt, const bytes& data) {
        switch (opt) {
        case p::OPT_EXPORT_NAME: return export_name(data);
        case p::OPT_ABORT: return abort();
        case p::OPT_LIST: return list(data);
        case p::OPT_STARTTLS: return (void)reply_error(opt, p::REP_ERR_POLICY, "TLS is not supported");
        case p::OPT_INFO:
        case p::OPT_GO: return info_or_go(opt, data);
        case p::OPT_STRUCTURED_REPLY: return structured_reply(data);
        case p::OPT_LIST_META_CONTEXT:
        case p::OPT_SET_META_CONTEXT: return meta_context(opt, data);
        default: return (void)reply_error(opt, p::REP_ERR_UNSUP, p::option_name(opt) + " is not supported");
        }
    }

    // ---- options ------------------------------------------------------------------------------

    void export_name(const bytes& data) {
        std::string name(data.begin(), data.end());
        std::string error;
        auto exp = open_export(name, error);
        if (!exp) {
            // NBD_OPT_EXPORT_NAME has no error reply: the protocol says to hang up.
            fail(error + " (NBD_OPT_EXPORT_NAME)");
            return;
        }
        session s = make_session(std::move(exp), name);
        bytes r;
        p::packer(r).u64(s.exp->size()).u16(s.transmission_flags).zeroes(no_zeroes_ ? 0 : p::EXPORT_NAME_ZEROES);
        if (send(r))
            result_.s = std::move(s);
    }

    void abort() {
        reply(p::OPT_ABORT, p::REP_ACK, {});  // the client may already be gone: no matter
        end_reason_ = "client aborted the handshake";
    }

    void list(const bytes& data) {
        if (!data.empty())
            return (void)reply_error(p::OPT_LIST, p::REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
        std::vector<export_provider::entry> entries;
        try {
            entries = ctx_.provider->list();
        } catch (const std::exception& e) {
            return (void)reply_error(p::OPT_LIST, p::REP_ERR_PLATFORM, e.what());
        }
        for (const auto& e : entries) {
            bytes r;
            p::packer(r).u32(static_cast<std::uint32_t>(e.name.size())).bytes(e.name).bytes(
                std::string_view(e.description).substr(0, p::MAX_STRING));
            if (!reply(p::OPT_LIST, p::REP_SERVER, r))
                return;
        }
        reply(p::OPT_LIST, p::REP_ACK, {});
    }

    struct info_request {
        std::string name;
        std::vector<std::uint16_t> wanted;
    };

    static std::optional<info_request> parse_info(const bytes& data) {
        p::unpacker u(data.data(), data.size());
        info_request r;
        std::uint32_t name_len = u.u32();
        r.name = u.bytes(name_len);
        std::uint16_t n = u.u16();
        for (std::uint16_t i = 0; i < n && u.ok(); ++i)
            r.wanted.push_back(u.u16());
        if (!u.ok() || u.remaining() != 0)
            return std::nullopt;
        return r;
    }

    void info_or_go(std::uint32_t opt, const bytes& data) {
        auto req = parse_info(data);
        if (!req)
            return (void)reply_error(opt, p::REP_ERR_INVALID, "malformed " + p::option_name(opt));
        if (req->name.size() > p::MAX_STRING)
            return (void)reply_error(opt, p::REP_ERR_TOO_BIG, "export name too long");
        std::string error;
        auto exp = open_export(req->name, error);
        if (!exp)
            return (void)reply_error(opt, p::REP_ERR_UNKNOWN, error);
        session s = make_session(std::move(exp), req->name);
        if (!send_infos(opt, s, req->wanted) || !reply(opt, p::REP_ACK, {}))
            return;
        if (opt == p::OPT_GO)
            result_.s = std::move(s);
    }

    bool send_infos(std::uint32_t opt, const session& s, const std::vector<std::uint16_t>& wanted) {
        auto asked = [&](std::uint16_t t) { return std::find(wanted.begin(), wanted.end(), t) != wanted.end(); };
        bytes r;
        p::packer(r).u16(p::INFO_EXPORT).u64(s.exp->size()).u16(s.transmission_flags);
        if (!reply(opt, p::REP_INFO, r))
            return false;
        if (asked(p::INFO_NAME)) {
            r.clear();
            p::packer(r).u16(p::INFO_NAME).bytes(s.export_name);
            if (!reply(opt, p::REP_INFO, r))
                return false;
        }
        if (asked(p::INFO_DESCRIPTION)) {
            if (std::string d = description_of(s.export_name); !d.empty()) {
                r.clear();
                p::packer(r).u16(p::INFO_DESCRIPTION).bytes(d);
                if (!reply(opt, p::REP_INFO, r))
                    return false;
            }
        }
        // Sent whether asked or not: clients that honour it do, the others are checked anyway.
        block_sizes b = advertised_block_sizes(*s.exp, ctx_.max_request_bytes);
        r.clear();
        p::packer(r).u16(p::INFO_BLOCK_SIZE).u32(b.minimum).u32(b.preferred).u32(b.maximum);
        return reply(opt, p::REP_INFO, r);
    }

    void structured_reply(const bytes& data) {
        if (!data.empty())
            return (void)reply_error(p::OPT_STRUCTURED_REPLY, p::REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
        structured_ = true;
        reply(p::OPT_STRUCTURED_REPLY, p::REP_ACK, {});
    }

    struct meta_request {
        std::string export_name;
        std::vector<std::string> queries;
        bool too_long = false;
    };

    static std::optional<meta_request> parse_meta(const bytes& data) {
        p::unpacker u(data.data(), data.size());
        meta_request r;
        r.export_name = u.bytes(u.u32());
        std::uint32_t n = u.u32();
        // Each query takes at least 4 bytes, so a count beyond that is malformed (and not looped on).
        if (n > u.remaining() / 4)
            return std::nullopt;
        for (std::uint32_t i = 0; i < n && u.ok(); ++i) {
            r.queries.push_back(u.bytes(u.u32()));
            r.too_long |= r.queries.back().size() > p::MAX_STRING;
        }
        if (!u.ok() || u.remaining() != 0)
            return std::nullopt;
        r.too_long |= r.export_name.size() > p::MAX_STRING;
        return r;
    }

    void meta_context(std::uint32_t opt, const bytes& data) {
        bool set = opt == p::OPT_SET_META_CONTEXT;
        if (set)
            meta_ = {};  // a SET replaces the selection, even when it fails
        if (set && !structured_)
            return (void)reply_error(opt, p::REP_ERR_INVALID, "structured replies not negotiated");
        auto req = parse_meta(data);
        if (!req)
            return (void)reply_error(opt, p::REP_ERR_INVALID, "malformed " + p::option_name(opt));
        if (req->too_long)
            return (void)reply_error(opt, p::REP_ERR_TOO_BIG, "string too long");
        bool allocation = set ? selects_allocation(req->queries) : lists_allocation(req->queries);
        if (allocation) {
            bytes r;
            p::packer(r).u32(set ? ALLOCATION_CONTEXT_ID : 0).bytes(p::BASE_ALLOCATION);
            if (!reply(opt, p::REP_META_CONTEXT, r))
                return;
        }
        if (set)
            meta_ = {req->export_name, allocation};
        reply(opt, p::REP_ACK, {});
    }

    static bool selects_allocation(const std::vector<std::string>& queries) {
        return std::find(queries.begin(), queries.end(), p::BASE_ALLOCATION) != queries.end();
    }

    // LIST: no query lists everything, "base:" is the namespace's wildcard.
    static bool lists_allocation(const std::vector<std::string>& queries) {
        return queries.empty() || selects_allocation(queries) ||
               std::find(queries.begin(), queries.end(), "base:") != queries.end();
    }

    // ---- exports ------------------------------------------------------------------------------

    std::shared_ptr<export_handle> open_export(const std::string& name, std::string& error) {
        try {
            auto e = ctx_.provider->open(name);
            if (!e)
                error = "unknown export '" + name + "'";
            return e;
        } catch (const std::exception& ex) {
            error = "export '" + name + "': " + ex.what();
            return nullptr;
        }
    }

    session make_session(std::shared_ptr<export_handle> exp, const std::string& name) {
        session s;
        s.read_only = ctx_.read_only || exp->read_only();
        s.structured_replies = structured_;
        s.transmission_flags = transmission_flags(*exp, s.read_only, structured_);
        // Block status needs SET_META_CONTEXT for this same export (the protocol's rule).
        if (meta_.allocation && meta_.export_name == name)
            s.allocation_context = ALLOCATION_CONTEXT_ID;
        s.exp = std::move(exp);
        s.export_name = name;
        return s;
    }

    std::string description_of(const std::string& name) {
        try {
            for (const auto& e : ctx_.provider->list())
                if (e.name == name)
                    return e.description.substr(0, p::MAX_STRING);
        } catch (const std::exception&) {
            // The description is optional; the export itself opened fine.
        }
        return {};
    }

    // ---- replies and I/O ----------------------------------------------------------------------

    bool reply(std::uint32_t opt, std::uint32_t type, const bytes& payload) {
        bytes r;
        r.reserve(p::OPTION_REPLY_HEADER_SIZE + payload.size());
        p::packer(r).u64(p::OPTION_REPLY_MAGIC).u32(opt).u32(type).u32(static_cast<std::uint32_t>(payload.size()));
        r.insert(r.end(), payload.begin(), payload.end());
        return send(r);
    }

    bool reply_error(std::uint32_t opt, std::uint32_t type, const std::string& message) {
        last_refusal_ = p::option_name(opt) + ": " + message;
        bytes m;
        p::packer(m).bytes(std::string_view(message).substr(0, p::MAX_STRING));
        return reply(opt, type, m);
    }

    bool send(const bytes& b) {
        io_status s = write_all(fd_, b.data(), b.size(), bounds_);
        return s == io_status::ok || io_failed(s);
    }

    bool receive(void* buf, std::size_t n) {
        io_status s = read_exact(fd_, buf, n, bounds_);
        return s == io_status::ok || io_failed(s);
    }

    // Records why the handshake cannot go on; always false.
    bool io_failed(io_status s) {
        if (end_reason_.empty()) {
            if (s == io_status::timeout)
                log_error("handshake not finished within " + std::to_string(limits::handshake_timeout().count()) + " ms");
            end_reason_ = std::string("handshake ") + to_string(s);
        }
        return false;
    }

    bool fail(const std::string& what) {
        log_error(what);
        if (end_reason_.empty())
            end_reason_ = "protocol error: " + what;
        return false;
    }

    void log_error(const std::string& what) { ctx_.log(who_ + ": protocol error: " + what); }

    int fd_;
    server_context& ctx_;
    const std::string& who_;
    io_bounds bounds_;
    bool fixed_ = false, no_zeroes_ = false, structured_ = false;
    struct {
        std::string export_name;
        bool allocation = false;
    } meta_;
    handshake_result result_;
    std::string end_reason_;
    std::string last_refusal_;
};

} // namespace

handshake_result negotiate(int fd, server_context& ctx, const std::string& who) {
    return negotiator(fd, ctx, who).run();
}

} // namespace thin::nbd
