#include "thin/pack/vm.h"

#include "persistent-data/endian.h"

#include <cstring>

namespace thin::pack {

namespace {

// Nesting of ShiftedRun inside ShiftedRun. Real packers never nest; the bound keeps garbage from
// recursing deeply.
constexpr unsigned MAX_SHIFTED_DEPTH = 4;

struct sink {
    std::uint8_t* p;
    std::size_t cap;
    std::size_t len = 0;
};

class machine {
public:
    machine(std::span<const std::uint8_t> prog, std::size_t& pos) : prog_(prog), pos_(pos) {}

    void fill(sink& s, unsigned depth) {
        while (s.len < s.cap) step(s, depth);
    }

private:
    std::uint8_t fetch(const char* what) {
        if (pos_ >= prog_.size()) throw vm_error(pos_, std::string("program ends inside ") + what);
        return prog_[pos_++];
    }

    std::uint64_t operand(unsigned width, std::size_t at) {
        if (width != 1 && width != 2 && width != 4 && width != 8)
            throw vm_error(at, "bad operand width " + std::to_string(width));
        if (prog_.size() - pos_ < width) throw vm_error(pos_, "program ends inside an operand");
        std::uint64_t v = 0;
        for (unsigned i = 0; i < width; ++i) v |= std::uint64_t(prog_[pos_ + i]) << (8 * i);
        pos_ += width;
        return v;
    }

    void room(const sink& s, std::uint64_t bytes, std::size_t at) {
        if (bytes > s.cap - s.len)
            throw vm_error(at, "instruction emits " + std::to_string(bytes) + " bytes but only " +
                                   std::to_string(s.cap - s.len) + " are left (a block is 4096 bytes)");
    }

    void emit_n(sink& s, std::uint64_t times, std::size_t at) {
        room(s, times * 8, at);
        for (std::uint64_t i = 0; i < times; ++i) {
            pdata::store_le64(s.p + s.len, base_);
            s.len += 8;
        }
    }

    void step_n(sink& s, std::uint64_t times, std::uint64_t delta, bool negative, std::size_t at) {
        room(s, times * 8, at);
        for (std::uint64_t i = 0; i < times; ++i) {
            base_ = negative ? base_ - delta : base_ + delta;
            pdata::store_le64(s.p + s.len, base_);
            s.len += 8;
        }
    }

    void copy(sink& s, std::uint64_t n, std::size_t at) {
        room(s, n, at);
        if (prog_.size() - pos_ < n) throw vm_error(pos_, "program ends inside a literal");
        std::memcpy(s.p + s.len, prog_.data() + pos_, n);
        pos_ += n;
        s.len += n;
    }

    void step(sink& s, unsigned depth) {
        std::size_t at = pos_;
        std::uint8_t b = fetch("an instruction");
        std::uint64_t c = 1;
        // Count prefixes; a later one replaces an earlier one.
        while ((b >> 4) == unsigned(vm_tag::count) || (b >> 4) == unsigned(vm_tag::count8)) {
            c = b & 15;
            if ((b >> 4) == unsigned(vm_tag::count8)) c = c << 8 | fetch("a Count8 instruction");
            at = pos_;
            b = fetch("an instruction");
        }
        unsigned n = b & 15;
        auto single = [&](const char* name) {
            if (c != 1) throw vm_error(at, std::string(name) + " cannot take a repeat count");
        };
        switch (static_cast<vm_tag>(b >> 4)) {
        case vm_tag::set:
            base_ = operand(n, at);
            emit_n(s, c, at);
            break;
        case vm_tag::pos:
            step_n(s, c, n, false, at);
            break;
        case vm_tag::pos_w:
            step_n(s, c, operand(n, at), false, at);
            break;
        case vm_tag::neg:
            step_n(s, c, n, true, at);
            break;
        case vm_tag::neg_w:
            step_n(s, c, operand(n, at), true, at);
            break;
        case vm_tag::const_:
            single("Const");
            emit_n(s, n, at);
            break;
        case vm_tag::const8:
            single("Const8");
            emit_n(s, std::uint64_t(n) << 8 | fetch("a Const8 instruction"), at);
            break;
        case vm_tag::lit:
            single("Lit");
            copy(s, n, at);
            break;
        case vm_tag::lit_w: {
            single("LitW");
            std::uint64_t len = operand(n, at);
            copy(s, len, at);
            break;
        }
        case vm_tag::shifted_run: {
            std::uint64_t len = std::uint64_t(n) << 8 | fetch("a ShiftedRun instruction");
            room(s, len * 8, at);
            if (depth >= MAX_SHIFTED_DEPTH) throw vm_error(at, "ShiftedRun nested too deeply");
            std::vector<std::uint8_t> high(len * 8), low(len * 8);
            sink hs{high.data(), high.size()}, ls{low.data(), low.size()};
            fill(hs, depth + 1);
            fill(ls, depth + 1);
            for (std::uint64_t i = 0; i < len; ++i) {
                std::uint64_t v = pdata::load_le64(&high[8 * i]) << 24 | (pdata::load_le64(&low[8 * i]) & 0xFFFFFF);
                pdata::store_le64(s.p + s.len, v);
                s.len += 8;
            }
            break;
        }
        default:
            throw vm_error(at, "unknown instruction tag " + std::to_string(b >> 4));
        }
    }

    std::span<const std::uint8_t> prog_;
    std::size_t& pos_;
    std::uint64_t base_ = 0;
};

unsigned width_of(std::uint64_t v) {
    if (v <= 0xFF) return 1;
    if (v <= 0xFFFF) return 2;
    if (v <= 0xFFFFFFFF) return 4;
    return 8;
}

void put_with_operand(std::vector<std::uint8_t>& out, vm_tag tag, std::uint64_t v) {
    unsigned w = width_of(v);
    out.push_back(static_cast<std::uint8_t>(unsigned(tag) << 4 | w));
    for (unsigned i = 0; i < w; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

// Count / Count8 / Const / Const8 carry counts below 4096.
constexpr std::size_t MAX_RUN = 4095;

void put_count(std::vector<std::uint8_t>& out, std::size_t c) {
    if (c == 1) return;
    if (c < 16) {
        out.push_back(static_cast<std::uint8_t>(unsigned(vm_tag::count) << 4 | c));
    } else {
        out.push_back(static_cast<std::uint8_t>(unsigned(vm_tag::count8) << 4 | (c >> 8)));
        out.push_back(static_cast<std::uint8_t>(c & 0xFF));
    }
}

} // namespace

void vm_run_block(std::span<const std::uint8_t> prog, std::size_t& pos, std::uint8_t* block) {
    machine m(prog, pos);
    sink s{block, PACK_BLOCK_SIZE};
    m.fill(s, 0);
}

void encode_words(std::span<const std::uint64_t> words, std::uint64_t& base, std::vector<std::uint8_t>& out) {
    std::size_t i = 0;
    const std::size_t n = words.size();
    while (i < n) {
        std::uint64_t w = words[i];
        if (w == base) {
            std::size_t r = 1;
            while (i + r < n && r < MAX_RUN && words[i + r] == base) ++r;
            if (r < 16) {
                out.push_back(static_cast<std::uint8_t>(unsigned(vm_tag::const_) << 4 | r));
            } else {
                out.push_back(static_cast<std::uint8_t>(unsigned(vm_tag::const8) << 4 | (r >> 8)));
                out.push_back(static_cast<std::uint8_t>(r & 0xFF));
            }
            i += r;
            continue;
        }
        // A run of words each `d` above the previous one (wrapping), starting from base.
        std::uint64_t d = w - base;
        std::size_t r = 1;
        while (i + r < n && r < MAX_RUN && words[i + r] - words[i + r - 1] == d) ++r;
        bool negative = (0 - d) < d;
        std::uint64_t mag = negative ? 0 - d : d;
        if (r == 1 && width_of(w) <= width_of(mag) && mag >= 16) {
            put_with_operand(out, vm_tag::set, w);
        } else {
            put_count(out, r);
            if (mag < 16)
                out.push_back(static_cast<std::uint8_t>(unsigned(negative ? vm_tag::neg : vm_tag::pos) << 4 | mag));
            else
                put_with_operand(out, negative ? vm_tag::neg_w : vm_tag::pos_w, mag);
        }
        base = words[i + r - 1];
        i += r;
    }
}

void encode_literal(std::span<const std::uint8_t> bytes, std::vector<std::uint8_t>& out) {
    if (bytes.size() < 16)
        out.push_back(static_cast<std::uint8_t>(unsigned(vm_tag::lit) << 4 | bytes.size()));
    else
        put_with_operand(out, vm_tag::lit_w, bytes.size());
    out.insert(out.end(), bytes.begin(), bytes.end());
}

void encode_shifted_run(std::span<const std::uint64_t> words, std::uint64_t& base, std::vector<std::uint8_t>& out) {
    if (words.size() > MAX_RUN) throw std::invalid_argument("encode_shifted_run: more than 4095 words");
    out.push_back(static_cast<std::uint8_t>(unsigned(vm_tag::shifted_run) << 4 | (words.size() >> 8)));
    out.push_back(static_cast<std::uint8_t>(words.size() & 0xFF));
    std::vector<std::uint64_t> high(words.size()), low(words.size());
    for (std::size_t i = 0; i < words.size(); ++i) {
        high[i] = words[i] >> 24;
        low[i] = words[i] & 0xFFFFFF;
    }
    encode_words(high, base, out);
    encode_words(low, base, out);
}

void encode_block(const std::uint8_t* block, std::vector<std::uint8_t>& out) {
    std::uint64_t words[PACK_BLOCK_SIZE / 8];
    for (std::size_t i = 0; i < PACK_BLOCK_SIZE / 8; ++i) words[i] = pdata::load_le64(block + 8 * i);
    std::uint64_t base = 0;
    encode_words(words, base, out);
}

void encode_block_literal(const std::uint8_t* block, std::vector<std::uint8_t>& out) {
    out.push_back(0xA2);
    out.push_back(0x00);
    out.push_back(0x10);
    out.insert(out.end(), block, block + PACK_BLOCK_SIZE);
}

} // namespace thin::pack
