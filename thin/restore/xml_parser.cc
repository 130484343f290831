#include "thin/restore/xml_parser.h"

#include "thin/restore/event_pipe.h"
#include "thin/restore/read_ahead.h"

#include <expat.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <exception>
#include <fcntl.h>
#include <memory>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace thin::restore {

namespace {

constexpr std::size_t CHUNK = 1 << 20;

// A problem found inside a handler; the parser adds the position.
struct problem : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Thrown inside a handler when the emitter stage has stopped after an error of its own: the parse
// ends and that error is the one reported.
struct emitter_stopped : std::runtime_error {
    emitter_stopped() : std::runtime_error("the restore stopped") {}
};

// Any attribute value the fast path below does not take: long (leading zeros), too large or not
// a number.
__attribute__((noinline, cold)) std::uint64_t slow_number(const char* element, const char* name, const char* text,
                                                          std::uint64_t max) {
    const char* end = text + std::strlen(text);
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(text, end, v);
    if (text == end || ec == std::errc::invalid_argument || (ec == std::errc() && p != end))
        throw problem(std::string("<") + element + "> " + name + "=\"" + text + "\" is not a non-negative integer");
    if (ec == std::errc::result_out_of_range || v > max)
        throw problem(std::string("<") + element + "> " + name + "=\"" + text + "\" is too large (at most " +
                      std::to_string(max) + ")");
    return v;
}

// A decimal attribute value: digits only (no sign, no spaces), as std::from_chars reads them.
// Up to 19 digits cannot overflow 64 bits: those are read here, anything else by slow_number.
inline std::uint64_t parse_number(const char* element, const char* name, const char* text, std::uint64_t max) {
    std::uint64_t v = 0;
    std::size_t n = 0;
    for (; n < 19 && unsigned(text[n] - '0') < 10; ++n) v = v * 10 + unsigned(text[n] - '0');
    if (n > 0 && !text[n] && v <= max) [[likely]]
        return v;
    return slow_number(element, name, text, max);
}

// strcmp(a, b) == 0, inline: the names compared here are short, and this runs several times for
// every element.
inline bool equals(const char* a, const char* b) {
    for (; *b; ++a, ++b)
        if (*a != *b) return false;
    return !*a;
}

// The same against a literal, in a fixed number of steps the compiler unrolls (the terminating
// zero included, so a shorter `a` differs at its own end and nothing past it is read).
template <std::size_t N>
inline bool equals_literal(const char* a, const char (&literal)[N]) {
    for (std::size_t i = 0; i < N; ++i)
        if (a[i] != literal[i]) return false;
    return true;
}

// The values of the attributes named in `names` (nullptr where absent), in one pass over Expat's
// list; other attributes are ignored.
template <std::size_t N>
void collect(const XML_Char** atts, const char* const (&names)[N], const char* (&values)[N]) {
    for (const XML_Char** a = atts; *a; a += 2)
        for (std::size_t i = 0; i < N; ++i)
            if (!values[i] && equals(a[0], names[i])) {
                values[i] = a[1];
                break;
            }
}

// The attributes of a mapping element as thin_dump writes them: exactly these names, in this
// order. Anything else (another order, unknown attributes, missing ones) goes through collect().
template <std::size_t N1, std::size_t N2, std::size_t N3>
inline bool in_dump_order(const XML_Char** a, const char (&n1)[N1], const char (&n2)[N2], const char (&n3)[N3]) {
    return a[0] && equals_literal(a[0], n1) && a[2] && equals_literal(a[2], n2) && a[4] && equals_literal(a[4], n3);
}

inline std::uint64_t required(const char* element, const char* name, const char* value, std::uint64_t max = UINT64_MAX) {
    if (!value) throw problem(std::string("<") + element + "> has no " + name + " attribute");
    return parse_number(element, name, value, max);
}

class parser {
public:
    // Events go into *batch; full batches are exchanged through pipe for empty ones.
    parser(event_pipe& pipe, event_batch*& batch, std::string source)
        : pipe_(pipe), batch_(batch), source_(std::move(source)) {
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
        } catch (const emitter_stopped&) {
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

    // The next event, at the position of the element being handled.
    xml_event& push(event_kind kind) {
        if (batch_->full()) {
            batch_ = pipe_.exchange(batch_);
            if (!batch_) throw emitter_stopped();
        }
        xml_event& e = batch_->events[batch_->size++];
        e.kind = kind;
        e.line = XML_GetCurrentLineNumber(p_);
        e.column = static_cast<std::uint32_t>(XML_GetCurrentColumnNumber(p_) + 1);
        return e;
    }

    void start(const char* name, const XML_Char** atts) {
        switch (name[0]) {
        case 's':
            if (equals_literal(name, "single_mapping")) return single_mapping(atts);
            if (equals_literal(name, "superblock")) return superblock(atts);
            break;
        case 'r':
            if (equals_literal(name, "range_mapping")) return range_mapping(atts);
            if (equals_literal(name, "ref")) unsupported(name);
            break;
        case 'd':
            if (equals_literal(name, "device")) return device(atts);
            if (equals_literal(name, "def")) unsupported(name);
            break;
        }
        throw problem(std::string("unknown tag type <") + name + ">");
    }

    [[noreturn]] static void unsupported(const char* name) {
        throw problem(std::string("<") + name +
                      "> (shared mapping runs written by thin_dump 1.x) is not supported; dump without them");
    }

    void enter_mapping(const char* name) {
        if (state_ != state::in_device) throw problem(std::string("<") + name + "> outside a <device>");
        state_ = state::in_mapping;
    }

    void single_mapping(const XML_Char** atts) {
        static constexpr char EL[] = "single_mapping", OB[] = "origin_block", DB[] = "data_block", T[] = "time";
        enter_mapping(EL);
        const char* v[3] = {};
        if (in_dump_order(atts, OB, DB, T) && !atts[6]) {
            v[0] = atts[1];
            v[1] = atts[3];
            v[2] = atts[5];
        } else {
            static constexpr const char* NAMES[] = {OB, DB, T};
            collect(atts, NAMES, v);
        }
        std::uint64_t ob = required(EL, OB, v[0]);
        std::uint64_t db = required(EL, DB, v[1]);
        std::uint64_t t = required(EL, T, v[2], UINT32_MAX);
        xml_event& e = push(event_kind::range_map);
        e.a = ob;
        e.b = db;
        e.c = 1;
        e.t0 = static_cast<std::uint32_t>(t);
    }

    void range_mapping(const XML_Char** atts) {
        static constexpr char EL[] = "range_mapping", OB[] = "origin_begin", DB[] = "data_begin", LEN[] = "length",
                              T[] = "time";
        enter_mapping(EL);
        const char* v[4] = {};
        if (in_dump_order(atts, OB, DB, LEN) && atts[6] && equals_literal(atts[6], T) && !atts[8]) {
            v[0] = atts[1];
            v[1] = atts[3];
            v[2] = atts[5];
            v[3] = atts[7];
        } else {
            static constexpr const char* NAMES[] = {OB, DB, LEN, T};
            collect(atts, NAMES, v);
        }
        std::uint64_t ob = required(EL, OB, v[0]);
        std::uint64_t db = required(EL, DB, v[1]);
        std::uint64_t len = required(EL, LEN, v[2]);
        std::uint64_t t = required(EL, T, v[3], UINT32_MAX);
        if (len == 0) throw problem("<range_mapping> has length 0");
        xml_event& e = push(event_kind::range_map);
        e.a = ob;
        e.b = db;
        e.c = len;
        e.t0 = static_cast<std::uint32_t>(t);
    }

    void device(const XML_Char** atts) {
        static constexpr const char* EL = "device";
        if (state_ != state::in_superblock)
            throw problem(state_ == state::before ? "<device> outside <superblock>" : "<device> inside another element");
        state_ = state::in_device;
        static constexpr const char* NAMES[] = {"dev_id", "mapped_blocks", "transaction", "creation_time", "snap_time"};
        const char* v[5] = {};
        collect(atts, NAMES, v);
        std::uint64_t id = required(EL, NAMES[0], v[0]);
        std::uint64_t mapped = required(EL, NAMES[1], v[1]);
        std::uint64_t trans = required(EL, NAMES[2], v[2]);
        std::uint64_t ctime = required(EL, NAMES[3], v[3], UINT32_MAX);
        std::uint64_t stime = required(EL, NAMES[4], v[4], UINT32_MAX);
        xml_event& e = push(event_kind::begin_device);
        e.a = id;
        e.b = mapped;
        e.c = trans;
        e.t0 = static_cast<std::uint32_t>(ctime);
        e.t1 = static_cast<std::uint32_t>(stime);
    }

    void superblock(const XML_Char** atts) {
        static constexpr const char* EL = "superblock";
        if (state_ != state::before) throw problem("a second <superblock> (there must be exactly one, at the top)");
        state_ = state::in_superblock;
        static constexpr const char* NAMES[] = {"uuid",    "time",           "transaction",    "flags",
                                                "version", "data_block_size", "nr_data_blocks", "metadata_snap"};
        const char* v[8] = {};
        collect(atts, NAMES, v);
        superblock_info sb;
        if (!v[0]) throw problem(std::string("<") + EL + "> has no uuid attribute");
        sb.uuid = v[0];
        sb.time = static_cast<std::uint32_t>(required(EL, NAMES[1], v[1], UINT32_MAX));
        sb.transaction = required(EL, NAMES[2], v[2]);
        sb.flags = v[3] ? static_cast<std::uint32_t>(parse_number(EL, NAMES[3], v[3], UINT32_MAX)) : 0;
        sb.version = v[4] ? static_cast<std::uint32_t>(parse_number(EL, NAMES[4], v[4], UINT32_MAX)) : 2;
        sb.data_block_size = static_cast<std::uint32_t>(required(EL, NAMES[5], v[5], UINT32_MAX));
        sb.nr_data_blocks = required(EL, NAMES[6], v[6]);
        if (v[7]) sb.metadata_snap = parse_number(EL, NAMES[7], v[7], UINT64_MAX);
        push(event_kind::begin_superblock);
        batch_->superblock = std::move(sb);
    }

    void end(const char* name) {
        switch (state_) {
        case state::in_mapping:
            state_ = state::in_device;
            break;
        case state::in_device:
            state_ = state::in_superblock;
            push(event_kind::end_device);
            break;
        case state::in_superblock:
            state_ = state::after;
            push(event_kind::end_superblock);
            break;
        default:
            throw problem(std::string("unexpected </") + name + ">");
        }
    }

    event_pipe& pipe_;
    event_batch*& batch_;
    std::string source_;
    XML_Parser p_;
    state state_ = state::before;
    std::exception_ptr error_;
};

// Runs produce(parser&) on this thread and the emitter on a second one, joined before returning
// on every path. The emitter stage's error comes first in document order: it is about an event
// the parser handed over before it met any error of its own.
template <typename Produce>
void run_stages(emitter& out, const std::string& source, const parse_options& po, Produce&& produce) {
    event_pipe pipe(po.batches, po.events_per_batch);
    std::exception_ptr emitter_error;
    std::thread emitter_stage([&] {
        try {
            while (event_batch* b = pipe.take()) {
                apply_events(*b, out, source);
                pipe.give_back(b);
            }
        } catch (...) {
            emitter_error = std::current_exception();
            pipe.stop();
        }
    });
    std::exception_ptr parser_error;
    event_batch* batch = nullptr;
    try {
        batch = pipe.first();
        if (batch) {
            parser p(pipe, batch, source);
            produce(p);
        }
    } catch (...) {
        parser_error = std::current_exception();
    }
    pipe.close(batch);  // the events before a parser error are still applied
    emitter_stage.join();
    if (emitter_error) std::rethrow_exception(emitter_error);
    if (parser_error) std::rethrow_exception(parser_error);
}

} // namespace

void parse_xml_file(const std::string& path, emitter& out, const progress_fn& progress, const parse_options& po) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } c{fd};
#ifdef POSIX_FADV_SEQUENTIAL
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    struct stat st {};
    const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    run_stages(out, path, po, [&](parser& p) {
        std::uint64_t done = 0;
        if (regular && po.read_ahead) {
            read_ahead input(fd, path, CHUNK, 2);
            for (;;) {
                std::string_view piece = input.next();
                p.parse(piece.data(), piece.size(), piece.empty());
                if (piece.empty()) break;
                done += piece.size();
                if (progress) progress(done);
            }
            return;
        }
        // Pipes and devices: read on this thread, straight into Expat's buffer.
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
    });
}

void parse_xml(std::string_view text, emitter& out, const std::string& source, const parse_options& po) {
    run_stages(out, source, po, [&](parser& p) {
        // Expat takes int lengths: feed large documents in pieces.
        while (text.size() > CHUNK) {
            p.parse(text.data(), CHUNK, false);
            text.remove_prefix(CHUNK);
        }
        p.parse(text.data(), text.size(), true);
    });
}

} // namespace thin::restore
