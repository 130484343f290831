#include "thin/restore/xml_parser.h"

#include <expat.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <exception>
#include <fcntl.h>
#include <memory>
#include <unistd.h>

namespace thin::restore {

namespace {

constexpr std::size_t CHUNK = 1 << 20;

// A problem found inside a handler; the parser adds the position.
struct problem : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class attributes {
public:
    attributes(const char* element, const XML_Char** atts) : element_(element), atts_(atts) {}

    const char* find(const char* name) const {
        for (const XML_Char** a = atts_; *a; a += 2)
            if (std::strcmp(a[0], name) == 0) return a[1];
        return nullptr;
    }
    const char* require(const char* name) const {
        const char* v = find(name);
        if (!v) throw problem(std::string("<") + element_ + "> has no " + name + " attribute");
        return v;
    }
    std::uint64_t number(const char* name, std::uint64_t max = UINT64_MAX) const {
        return parse(name, require(name), max);
    }
    std::uint64_t number_or(const char* name, std::uint64_t dflt, std::uint64_t max = UINT64_MAX) const {
        const char* v = find(name);
        return v ? parse(name, v, max) : dflt;
    }

private:
    std::uint64_t parse(const char* name, const char* text, std::uint64_t max) const {
        std::size_t n = std::strlen(text);
        std::uint64_t v = 0;
        auto [p, ec] = std::from_chars(text, text + n, v);
        if (n == 0 || ec == std::errc::invalid_argument || (ec == std::errc() && p != text + n))
            throw problem(std::string("<") + element_ + "> " + name + "=\"" + text + "\" is not a non-negative integer");
        if (ec == std::errc::result_out_of_range || v > max)
            throw problem(std::string("<") + element_ + "> " + name + "=\"" + text + "\" is too large (at most " +
                          std::to_string(max) + ")");
        return v;
    }
    const char* element_;
    const XML_Char** atts_;
};

class parser {
public:
    parser(emitter& out, std::string source) : out_(out), source_(std::move(source)) {
        p_ = XML_ParserCreate(nullptr);
        if (!p_) throw std::bad_alloc();
        XML_SetUserData(p_, this);
        XML_SetElementHandler(p_, &parser::on_start, &parser::on_end);
    }
    ~parser() { XML_ParserFree(p_); }
    parser(const parser&) = delete;
    parser& operator=(const parser&) = delete;

    // Feeds len bytes already copied into the buffer from buffer(); final marks the end.
    void* buffer(std::size_t len) {
        void* b = XML_GetBuffer(p_, static_cast<int>(len));
        if (!b) throw std::bad_alloc();
        return b;
    }
    void parse_buffer(std::size_t len, bool final) {
        if (XML_ParseBuffer(p_, static_cast<int>(len), final) != XML_STATUS_OK) fail();
        if (final) finish();
    }
    void parse(const char* data, std::size_t len, bool final) {
        if (XML_Parse(p_, data, static_cast<int>(len), final) != XML_STATUS_OK) fail();
        if (final) finish();
    }

private:
    enum class state { before, in_superblock, in_device, in_mapping, after };

    [[noreturn]] void fail() {
        if (error_) std::rethrow_exception(error_);
        std::string what = XML_ErrorString(XML_GetErrorCode(p_));
        if (XML_GetErrorCode(p_) == XML_ERROR_NO_ELEMENTS) what += " (the XML is empty or truncated)";
        throw xml_error(source_, XML_GetCurrentLineNumber(p_), XML_GetCurrentColumnNumber(p_) + 1, what);
    }

    void finish() {
        if (state_ != state::after)
            throw xml_error(source_, XML_GetCurrentLineNumber(p_), XML_GetCurrentColumnNumber(p_) + 1,
                            "the document ends before </superblock>");
    }

    // Runs a handler body; any exception is kept with the position and the parse is stopped
    // (exceptions must not unwind through Expat's C frames).
    template <typename F>
    void guarded(F&& f) {
        if (error_) return;
        try {
            f();
        } catch (const xml_error&) {
            error_ = std::current_exception();
        } catch (const std::exception& e) {
            error_ = std::make_exception_ptr(xml_error(source_, XML_GetCurrentLineNumber(p_),
                                                       XML_GetCurrentColumnNumber(p_) + 1, e.what()));
        }
        if (error_) XML_StopParser(p_, XML_FALSE);
    }

    static void on_start(void* self, const XML_Char* name, const XML_Char** atts) {
        auto* me = static_cast<parser*>(self);
        me->guarded([&] { me->start(name, atts); });
    }
    static void on_end(void* self, const XML_Char* name) {
        auto* me = static_cast<parser*>(self);
        me->guarded([&] { me->end(name); });
    }

    void start(const char* name, const XML_Char** atts) {
        attributes a(name, atts);
        if (std::strcmp(name, "single_mapping") == 0 || std::strcmp(name, "range_mapping") == 0) {
            if (state_ != state::in_device) throw problem(std::string("<") + name + "> outside a <device>");
            state_ = state::in_mapping;
            if (name[0] == 's') {
                std::uint64_t ob = a.number("origin_block");
                std::uint64_t db = a.number("data_block");
                std::uint32_t t = static_cast<std::uint32_t>(a.number("time", UINT32_MAX));
                out_.range_map(ob, db, 1, t);
            } else {
                std::uint64_t ob = a.number("origin_begin");
                std::uint64_t db = a.number("data_begin");
                std::uint64_t len = a.number("length");
                std::uint32_t t = static_cast<std::uint32_t>(a.number("time", UINT32_MAX));
                if (len == 0) throw problem("<range_mapping> has length 0");
                out_.range_map(ob, db, len, t);
            }
        } else if (std::strcmp(name, "device") == 0) {
            if (state_ != state::in_superblock)
                throw problem(state_ == state::before ? "<device> outside <superblock>"
                                                      : "<device> inside another element");
            state_ = state::in_device;
            device_info d;
            d.dev_id = a.number("dev_id");
            d.mapped_blocks = a.number("mapped_blocks");
            d.transaction = a.number("transaction");
            d.creation_time = static_cast<std::uint32_t>(a.number("creation_time", UINT32_MAX));
            d.snap_time = static_cast<std::uint32_t>(a.number("snap_time", UINT32_MAX));
            out_.begin_device(d);
        } else if (std::strcmp(name, "superblock") == 0) {
            if (state_ != state::before) throw problem("a second <superblock> (there must be exactly one, at the top)");
            state_ = state::in_superblock;
            superblock_info sb;
            sb.uuid = a.require("uuid");
            sb.time = static_cast<std::uint32_t>(a.number("time", UINT32_MAX));
            sb.transaction = a.number("transaction");
            sb.flags = static_cast<std::uint32_t>(a.number_or("flags", 0, UINT32_MAX));
            sb.version = static_cast<std::uint32_t>(a.number_or("version", 2, UINT32_MAX));
            sb.data_block_size = static_cast<std::uint32_t>(a.number("data_block_size", UINT32_MAX));
            sb.nr_data_blocks = a.number("nr_data_blocks");
            if (a.find("metadata_snap")) sb.metadata_snap = a.number("metadata_snap");
            out_.begin_superblock(sb);
        } else if (std::strcmp(name, "def") == 0 || std::strcmp(name, "ref") == 0) {
            throw problem(std::string("<") + name +
                          "> (shared mapping runs written by thin_dump 1.x) is not supported; dump without them");
        } else {
            throw problem(std::string("unknown tag type <") + name + ">");
        }
    }

    void end(const char* name) {
        switch (state_) {
        case state::in_mapping:
            state_ = state::in_device;
            break;
        case state::in_device:
            state_ = state::in_superblock;
            out_.end_device();
            break;
        case state::in_superblock:
            state_ = state::after;
            out_.end_superblock();
            break;
        default:
            throw problem(std::string("unexpected </") + name + ">");
        }
    }

    emitter& out_;
    std::string source_;
    XML_Parser p_;
    state state_ = state::before;
    std::exception_ptr error_;
};

} // namespace

void parse_xml_file(const std::string& path, emitter& out, const progress_fn& progress) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } c{fd};
#ifdef POSIX_FADV_SEQUENTIAL
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    parser p(out, path);
    std::uint64_t done = 0;
    for (;;) {
        void* buf = p.buffer(CHUNK);
        ssize_t n;
        do {
            n = ::read(fd, buf, CHUNK);
        } while (n < 0 && errno == EINTR);
        if (n < 0) throw std::runtime_error(path + ": read failed: " + std::strerror(errno));
        p.parse_buffer(static_cast<std::size_t>(n), n == 0);
        if (n == 0) break;
        done += static_cast<std::uint64_t>(n);
        if (progress) progress(done);
    }
}

void parse_xml(std::string_view text, emitter& out, const std::string& source) {
    parser p(out, source);
    // Expat takes int lengths: feed large documents in pieces.
    while (text.size() > CHUNK) {
        p.parse(text.data(), CHUNK, false);
        text.remove_prefix(CHUNK);
    }
    p.parse(text.data(), text.size(), true);
}

} // namespace thin::restore
