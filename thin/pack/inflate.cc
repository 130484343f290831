// Inflate: RFC 1950 (zlib wrapper) + RFC 1951 (deflate) decoding, written for robustness first:
// every read is bounds-checked, every code table validated, output bounded.
#include "thin/pack/zlib.h"
#include "thin/pack/deflate_tables.h"

#include <array>

namespace thin::pack {

std::uint32_t adler32(std::uint32_t adler, const std::uint8_t* data, std::size_t len) {
    constexpr std::uint32_t MOD = 65521;
    // 5552 is the largest n with 255 n (n + 1) / 2 + (n + 1)(MOD - 1) < 2^32: sums cannot overflow.
    constexpr std::size_t NMAX = 5552;
    std::uint32_t a = adler & 0xFFFF, b = adler >> 16;
    while (len) {
        std::size_t n = len < NMAX ? len : NMAX;
        len -= n;
        while (n--) {
            a += *data++;
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    return (b << 16) | a;
}

namespace {

using namespace deflate_tables;

// LSB-first bit reader. Reading past the end yields zero bits but is detected when they are
// consumed, so a truncated stream is reported where it ends.
class bit_reader {
public:
    explicit bit_reader(std::span<const std::uint8_t> in) : in_(in) {}

    std::size_t byte_offset() const { return pos_ - bitcnt_ / 8; }

    void need(unsigned n) {
        while (bitcnt_ < n) {
            std::uint64_t byte = 0;
            if (pos_ < in_.size())
                byte = in_[pos_];
            else
                ++overrun_;
            ++pos_;
            bitbuf_ |= byte << bitcnt_;
            bitcnt_ += 8;
        }
    }
    std::uint32_t peek(unsigned n) {
        need(n);
        return static_cast<std::uint32_t>(bitbuf_ & ((std::uint64_t(1) << n) - 1));
    }
    void consume(unsigned n) {
        bitbuf_ >>= n;
        bitcnt_ -= n;
        // Zero bytes invented past the end that are now (partly) consumed mean the stream is short.
        if (overrun_ && bitcnt_ < overrun_ * 8) throw zlib_error(in_.size(), "unexpected end of stream");
    }
    std::uint32_t bits(unsigned n) {
        if (n == 0) return 0;
        std::uint32_t v = peek(n);
        consume(n);
        return v;
    }
    void align_to_byte() { consume(bitcnt_ % 8); }
    // Byte-aligned read of a raw byte (after align_to_byte).
    std::uint8_t byte() { return static_cast<std::uint8_t>(bits(8)); }

private:
    std::span<const std::uint8_t> in_;
    std::size_t pos_ = 0;
    std::uint64_t bitbuf_ = 0;
    unsigned bitcnt_ = 0;
    unsigned overrun_ = 0;
};

// Canonical Huffman decoding table: indexed by the next `bits` input bits (LSB-first), an entry
// holds symbol << 4 | code length; 0 marks a bit pattern no code starts with.
class huffman {
public:
    // lens[i] = code length of symbol i (0 = unused). Throws on an over-subscribed set.
    void build(const std::uint8_t* lens, unsigned n, std::size_t where) {
        std::array<unsigned, MAX_BITS + 1> count{};
        for (unsigned i = 0; i < n; ++i) ++count[lens[i]];
        count[0] = 0;
        bits_ = 0;
        for (unsigned l = 1; l <= MAX_BITS; ++l)
            if (count[l]) bits_ = l;
        int left = 1;
        for (unsigned l = 1; l <= MAX_BITS; ++l) {
            left <<= 1;
            left -= static_cast<int>(count[l]);
            if (left < 0) throw zlib_error(where, "over-subscribed Huffman code");
        }
        table_.assign(std::size_t(1) << bits_, 0);
        std::array<unsigned, MAX_BITS + 2> next{};
        unsigned code = 0;
        for (unsigned l = 1; l <= MAX_BITS; ++l) {
            code = (code + count[l - 1]) << 1;
            next[l] = code;
        }
        for (unsigned sym = 0; sym < n; ++sym) {
            unsigned l = lens[sym];
            if (!l) continue;
            unsigned c = next[l]++;
            unsigned rev = 0;
            for (unsigned i = 0; i < l; ++i) rev |= ((c >> i) & 1) << (l - 1 - i);
            for (std::size_t k = rev; k < table_.size(); k += std::size_t(1) << l)
                table_[k] = static_cast<std::uint16_t>(sym << 4 | l);
        }
    }

    unsigned decode(bit_reader& br) const {
        if (bits_ == 0) throw zlib_error(br.byte_offset(), "symbol from an empty Huffman code");
        std::size_t at = br.byte_offset();
        std::uint16_t e = table_[br.peek(bits_)];
        if (e == 0) throw zlib_error(at, "invalid Huffman code");
        br.consume(e & 15);
        return e >> 4;
    }

private:
    std::vector<std::uint16_t> table_;
    unsigned bits_ = 0;
};

class inflater {
public:
    inflater(std::span<const std::uint8_t> in, std::size_t max_out) : br_(in), in_(in), max_out_(max_out) {}

    std::vector<std::uint8_t> run() {
        if (in_.size() < 2) throw zlib_error(0, "too short for a zlib header");
        unsigned cmf = br_.byte(), flg = br_.byte();
        if ((cmf & 15) != 8) throw zlib_error(0, "compression method is not deflate");
        if ((cmf >> 4) > 7) throw zlib_error(0, "window size above 32 KiB");
        if ((cmf * 256 + flg) % 31 != 0) throw zlib_error(1, "bad header check bits");
        if (flg & 0x20) throw zlib_error(1, "preset dictionary not supported");

        bool final = false;
        while (!final) {
            std::size_t at = br_.byte_offset();
            final = br_.bits(1);
            switch (br_.bits(2)) {
            case 0: stored_block(); break;
            case 1: fixed_block(); break;
            case 2: dynamic_block(); break;
            default: throw zlib_error(at, "invalid block type 3");
            }
        }
        br_.align_to_byte();
        std::size_t at = br_.byte_offset();
        std::uint32_t want = 0;
        for (int i = 0; i < 4; ++i) want = (want << 8) | br_.byte();
        std::uint32_t got = adler32(1, out_.data(), out_.size());
        if (want != got) throw zlib_error(at, "Adler-32 mismatch (data corrupted)");
        if (br_.byte_offset() != in_.size())
            throw zlib_error(br_.byte_offset(), std::to_string(in_.size() - br_.byte_offset()) +
                                                    " trailing bytes after the zlib stream");
        return std::move(out_);
    }

private:
    void reserve_out(std::size_t n) {
        if (out_.size() + n > max_out_)
            throw zlib_error(br_.byte_offset(), "decompressed data exceeds " + std::to_string(max_out_) + " bytes");
    }

    void stored_block() {
        br_.align_to_byte();
        std::size_t at = br_.byte_offset();
        unsigned len = br_.byte();
        len |= unsigned(br_.byte()) << 8;
        unsigned nlen = br_.byte();
        nlen |= unsigned(br_.byte()) << 8;
        if ((len ^ 0xFFFF) != nlen) throw zlib_error(at, "stored block length check failed");
        reserve_out(len);
        for (unsigned i = 0; i < len; ++i) out_.push_back(br_.byte());
    }

    void fixed_block() {
        if (!fixed_built_) {
            std::array<std::uint8_t, 288> l{};
            for (unsigned i = 0; i < 288; ++i) l[i] = i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : 8;
            fixed_lit_.build(l.data(), 288, 0);
            std::array<std::uint8_t, 30> d;
            d.fill(5);
            fixed_dist_.build(d.data(), 30, 0);
            fixed_built_ = true;
        }
        codes(fixed_lit_, fixed_dist_);
    }

    void dynamic_block() {
        std::size_t at = br_.byte_offset();
        unsigned hlit = br_.bits(5) + 257, hdist = br_.bits(5) + 1, hclen = br_.bits(4) + 4;
        if (hlit > 286) throw zlib_error(at, "too many literal/length codes");
        if (hdist > 30) throw zlib_error(at, "too many distance codes");
        std::array<std::uint8_t, 19> cl{};
        for (unsigned i = 0; i < hclen; ++i) cl[CODE_LENGTH_ORDER[i]] = static_cast<std::uint8_t>(br_.bits(3));
        huffman clh;
        clh.build(cl.data(), 19, at);

        std::array<std::uint8_t, 286 + 30> lens{};
        unsigned n = 0;
        while (n < hlit + hdist) {
            std::size_t sat = br_.byte_offset();
            unsigned sym = clh.decode(br_);
            if (sym < 16) {
                lens[n++] = static_cast<std::uint8_t>(sym);
                continue;
            }
            unsigned rep;
            std::uint8_t val = 0;
            if (sym == 16) {
                if (n == 0) throw zlib_error(sat, "repeat of a code length with no previous length");
                val = lens[n - 1];
                rep = 3 + br_.bits(2);
            } else if (sym == 17) {
                rep = 3 + br_.bits(3);
            } else {
                rep = 11 + br_.bits(7);
            }
            if (n + rep > hlit + hdist) throw zlib_error(sat, "code lengths overflow the declared count");
            while (rep--) lens[n++] = val;
        }
        if (lens[256] == 0) throw zlib_error(at, "no end-of-block code");
        huffman lit, dist;
        lit.build(lens.data(), hlit, at);
        dist.build(lens.data() + hlit, hdist, at);
        codes(lit, dist);
    }

    void codes(const huffman& lit, const huffman& dist) {
        for (;;) {
            std::size_t at = br_.byte_offset();
            unsigned sym = lit.decode(br_);
            if (sym < 256) {
                reserve_out(1);
                out_.push_back(static_cast<std::uint8_t>(sym));
                continue;
            }
            if (sym == 256) return;
            sym -= 257;
            if (sym >= 29) throw zlib_error(at, "invalid length code");
            unsigned len = LENGTH_BASE[sym] + br_.bits(LENGTH_EXTRA[sym]);
            unsigned dsym = dist.decode(br_);
            if (dsym >= 30) throw zlib_error(at, "invalid distance code");
            std::size_t d = DIST_BASE[dsym] + br_.bits(DIST_EXTRA[dsym]);
            if (d > out_.size()) throw zlib_error(at, "distance " + std::to_string(d) + " too far back");
            reserve_out(len);
            std::size_t from = out_.size() - d;
            for (unsigned i = 0; i < len; ++i) out_.push_back(out_[from + i]);
        }
    }

    bit_reader br_;
    std::span<const std::uint8_t> in_;
    std::size_t max_out_;
    std::vector<std::uint8_t> out_;
    huffman fixed_lit_, fixed_dist_;
    bool fixed_built_ = false;
};

} // namespace

std::vector<std::uint8_t> zlib_decompress(std::span<const std::uint8_t> in, std::size_t max_out) {
    return inflater(in, max_out).run();
}

} // namespace thin::pack
