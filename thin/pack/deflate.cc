// Deflate compressor. Level 0 writes stored blocks. Levels 1..9 run a greedy LZ77 matcher over
// hash chains of 3-byte prefixes (higher levels search longer chains), then write the tokens as
// one block with whichever coding is smallest: dynamic Huffman codes built for the data, the fixed
// codes, or stored. Simple and deterministic; metadata blocks (mostly zeros and repeated
// structure) compress well with it.
#include "thin/pack/deflate_tables.h"
#include "thin/pack/zlib.h"

#include <algorithm>
#include <array>
#include <limits>
#include <queue>

namespace thin::pack {

namespace {

using namespace deflate_tables;

constexpr std::size_t WINDOW = 32768;
constexpr unsigned MIN_MATCH = 3;
constexpr unsigned MAX_MATCH = 258;
constexpr unsigned HASH_BITS = 15;
constexpr std::uint32_t NONE = std::numeric_limits<std::uint32_t>::max();
constexpr unsigned NR_LITLEN = 286;
constexpr unsigned NR_DIST = 30;
constexpr unsigned NR_CODELEN = 19;

class bit_writer {
public:
    explicit bit_writer(std::vector<std::uint8_t>& out) : out_(out) {}
    void put(std::uint32_t v, unsigned n) {
        buf_ |= std::uint64_t(v) << cnt_;
        cnt_ += n;
        while (cnt_ >= 8) {
            out_.push_back(static_cast<std::uint8_t>(buf_));
            buf_ >>= 8;
            cnt_ -= 8;
        }
    }
    // Huffman codes are defined MSB-first; deflate packs them starting with their first bit.
    void put_code(std::uint32_t code, unsigned len) {
        std::uint32_t rev = 0;
        for (unsigned i = 0; i < len; ++i) rev |= ((code >> i) & 1) << (len - 1 - i);
        put(rev, len);
    }
    void flush_byte() {
        if (cnt_) put(0, 8 - cnt_);
    }

private:
    std::vector<std::uint8_t>& out_;
    std::uint64_t buf_ = 0;
    unsigned cnt_ = 0;
};

// A literal (dist == 0) or a match of `len` bytes `dist` back.
struct token {
    std::uint16_t len_or_lit;
    std::uint16_t dist;
};

unsigned length_code(unsigned len) {
    unsigned lc = 28;
    while (LENGTH_BASE[lc] > len) --lc;
    return lc;
}

unsigned dist_code(unsigned dist) {
    unsigned dc = 29;
    while (DIST_BASE[dc] > dist) --dc;
    return dc;
}

std::vector<token> lz77(std::span<const std::uint8_t> in, unsigned max_chain) {
    const std::size_t n = in.size();
    std::vector<token> tokens;
    tokens.reserve(n / 4 + 16);
    std::vector<std::uint32_t> head(std::size_t(1) << HASH_BITS, NONE);
    std::vector<std::uint32_t> prev(n, NONE);
    auto hash = [&](std::size_t i) {
        std::uint32_t v = std::uint32_t(in[i]) | std::uint32_t(in[i + 1]) << 8 | std::uint32_t(in[i + 2]) << 16;
        return (v * 2654435761u) >> (32 - HASH_BITS);
    };
    auto insert = [&](std::size_t i) {
        if (i + MIN_MATCH > n) return;
        std::uint32_t h = hash(i);
        prev[i] = head[h];
        head[h] = static_cast<std::uint32_t>(i);
    };
    std::size_t i = 0;
    while (i < n) {
        unsigned best_len = 0;
        std::size_t best_dist = 0;
        if (i + MIN_MATCH <= n) {
            unsigned limit = static_cast<unsigned>(std::min<std::size_t>(MAX_MATCH, n - i));
            unsigned chain = max_chain;
            for (std::uint32_t j = head[hash(i)]; j != NONE && chain--; j = prev[j]) {
                std::size_t dist = i - j;
                if (dist > WINDOW) break;
                if (in[j + best_len] != in[i + best_len]) continue;
                unsigned l = 0;
                while (l < limit && in[j + l] == in[i + l]) ++l;
                if (l > best_len) {
                    best_len = l;
                    best_dist = dist;
                    if (l == limit) break;
                }
            }
        }
        if (best_len >= MIN_MATCH) {
            tokens.push_back({static_cast<std::uint16_t>(best_len), static_cast<std::uint16_t>(best_dist)});
            for (unsigned k = 0; k < best_len; ++k) insert(i + k);
            i += best_len;
        } else {
            tokens.push_back({in[i], 0});
            insert(i);
            ++i;
        }
    }
    return tokens;
}

// A prefix code: length and (MSB-first) code of every symbol.
struct code_table {
    std::vector<std::uint8_t> len;
    std::vector<std::uint16_t> code;
};

// Canonical codes for the given lengths (RFC 1951 §3.2.2).
void assign_codes(code_table& t) {
    std::array<unsigned, MAX_BITS + 1> count{};
    for (auto l : t.len) ++count[l];
    count[0] = 0;
    std::array<unsigned, MAX_BITS + 1> next{};
    unsigned c = 0;
    for (unsigned b = 1; b <= MAX_BITS; ++b) {
        c = (c + count[b - 1]) << 1;
        next[b] = c;
    }
    t.code.assign(t.len.size(), 0);
    for (std::size_t s = 0; s < t.len.size(); ++s)
        if (t.len[s]) t.code[s] = static_cast<std::uint16_t>(next[t.len[s]]++);
}

// Huffman code lengths for freq, none longer than limit. At least two symbols get a code (a
// single-symbol code is incomplete, which some decoders refuse). When the optimal code is too
// deep the frequencies are flattened and it is built again; that converges, since equal
// frequencies give a balanced tree.
code_table huffman_code(std::vector<std::uint64_t> freq, unsigned limit) {
    unsigned used = 0;
    for (auto f : freq) used += f != 0;
    for (std::size_t s = 0; used < 2 && s < freq.size(); ++s)
        if (!freq[s]) {
            freq[s] = 1;
            ++used;
        }
    code_table t;
    for (;;) {
        struct node {
            std::uint64_t weight;
            int left, right;  // -1 for leaves
            int symbol;
        };
        std::vector<node> nodes;
        using item = std::pair<std::uint64_t, int>;  // weight, node index (ties: lower index first)
        std::priority_queue<item, std::vector<item>, std::greater<item>> q;
        for (std::size_t s = 0; s < freq.size(); ++s) {
            if (!freq[s]) continue;
            nodes.push_back({freq[s], -1, -1, static_cast<int>(s)});
            q.push({freq[s], static_cast<int>(nodes.size() - 1)});
        }
        while (q.size() > 1) {
            auto a = q.top();
            q.pop();
            auto b = q.top();
            q.pop();
            nodes.push_back({a.first + b.first, a.second, b.second, -1});
            q.push({a.first + b.first, static_cast<int>(nodes.size() - 1)});
        }
        t.len.assign(freq.size(), 0);
        unsigned deepest = 0;
        std::vector<std::pair<int, unsigned>> stack = {{q.top().second, 0}};
        while (!stack.empty()) {
            auto [ni, depth] = stack.back();
            stack.pop_back();
            const node& nd = nodes[static_cast<std::size_t>(ni)];
            if (nd.symbol >= 0) {
                t.len[static_cast<std::size_t>(nd.symbol)] = static_cast<std::uint8_t>(depth);
                deepest = std::max(deepest, depth);
            } else {
                stack.push_back({nd.left, depth + 1});
                stack.push_back({nd.right, depth + 1});
            }
        }
        if (deepest <= limit) break;
        for (auto& f : freq)
            if (f) f = (f + 1) / 2;
    }
    assign_codes(t);
    return t;
}

code_table fixed_litlen() {
    code_table t;
    t.len.resize(288);
    for (unsigned i = 0; i < 288; ++i) t.len[i] = i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : 8;
    assign_codes(t);
    return t;
}

code_table fixed_dist() {
    code_table t;
    t.len.assign(NR_DIST, 5);
    assign_codes(t);
    return t;
}

// Symbol frequencies of the tokens (plus the end-of-block code).
void count(const std::vector<token>& tokens, std::vector<std::uint64_t>& lit, std::vector<std::uint64_t>& dist) {
    lit.assign(NR_LITLEN, 0);
    dist.assign(NR_DIST, 0);
    for (const auto& t : tokens) {
        if (t.dist == 0) {
            ++lit[t.len_or_lit];
        } else {
            ++lit[257 + length_code(t.len_or_lit)];
            ++dist[dist_code(t.dist)];
        }
    }
    ++lit[256];
}

// Bits for the tokens under the given codes (without any block header).
std::uint64_t token_bits(const std::vector<std::uint64_t>& lit, const std::vector<std::uint64_t>& dist,
                         const code_table& lc, const code_table& dc) {
    std::uint64_t bits = 0;
    for (unsigned s = 0; s < NR_LITLEN; ++s)
        if (lit[s]) bits += lit[s] * (lc.len[s] + (s > 256 ? LENGTH_EXTRA[s - 257] : 0));
    for (unsigned s = 0; s < NR_DIST; ++s)
        if (dist[s]) bits += dist[s] * (dc.len[s] + DIST_EXTRA[s]);
    return bits;
}

void put_tokens(bit_writer& bw, const std::vector<token>& tokens, const code_table& lc, const code_table& dc) {
    for (const auto& t : tokens) {
        if (t.dist == 0) {
            bw.put_code(lc.code[t.len_or_lit], lc.len[t.len_or_lit]);
            continue;
        }
        unsigned l = length_code(t.len_or_lit);
        bw.put_code(lc.code[257 + l], lc.len[257 + l]);
        bw.put(t.len_or_lit - LENGTH_BASE[l], LENGTH_EXTRA[l]);
        unsigned d = dist_code(t.dist);
        bw.put_code(dc.code[d], dc.len[d]);
        bw.put(t.dist - DIST_BASE[d], DIST_EXTRA[d]);
    }
    bw.put_code(lc.code[256], lc.len[256]);
}

// The dynamic block header: code lengths run-length coded with symbols 16 (repeat previous),
// 17 and 18 (runs of zeros), themselves Huffman coded.
struct dynamic_header {
    unsigned hlit, hdist, hclen;
    std::vector<std::pair<unsigned, unsigned>> rle;  // symbol, extra bits value
    code_table cl;
    std::uint64_t bits = 0;
};

dynamic_header make_header(const code_table& lc, const code_table& dc) {
    dynamic_header h;
    h.hlit = NR_LITLEN;
    while (h.hlit > 257 && lc.len[h.hlit - 1] == 0) --h.hlit;
    h.hdist = NR_DIST;
    while (h.hdist > 1 && dc.len[h.hdist - 1] == 0) --h.hdist;
    std::vector<unsigned> lens;
    for (unsigned i = 0; i < h.hlit; ++i) lens.push_back(lc.len[i]);
    for (unsigned i = 0; i < h.hdist; ++i) lens.push_back(dc.len[i]);
    for (std::size_t i = 0; i < lens.size();) {
        unsigned v = lens[i];
        std::size_t run = 1;
        while (i + run < lens.size() && lens[i + run] == v) ++run;
        std::size_t left = run;
        if (v == 0) {
            while (left >= 11) {
                std::size_t r = std::min<std::size_t>(left, 138);
                h.rle.push_back({18, static_cast<unsigned>(r - 11)});
                left -= r;
            }
            if (left >= 3) {
                h.rle.push_back({17, static_cast<unsigned>(left - 3)});
                left = 0;
            }
        } else {
            h.rle.push_back({v, 0});
            --left;
            while (left >= 3) {
                std::size_t r = std::min<std::size_t>(left, 6);
                h.rle.push_back({16, static_cast<unsigned>(r - 3)});
                left -= r;
            }
        }
        while (left--) h.rle.push_back({v, 0});
        i += run;
    }
    std::vector<std::uint64_t> freq(NR_CODELEN, 0);
    for (auto [s, x] : h.rle) ++freq[s];
    h.cl = huffman_code(freq, 7);
    h.hclen = NR_CODELEN;
    while (h.hclen > 4 && h.cl.len[CODE_LENGTH_ORDER[h.hclen - 1]] == 0) --h.hclen;
    h.bits = 5 + 5 + 4 + 3 * h.hclen;
    for (auto [s, x] : h.rle) h.bits += h.cl.len[s] + (s == 16 ? 2 : s == 17 ? 3 : s == 18 ? 7 : 0);
    return h;
}

void put_header(bit_writer& bw, const dynamic_header& h) {
    bw.put(h.hlit - 257, 5);
    bw.put(h.hdist - 1, 5);
    bw.put(h.hclen - 4, 4);
    for (unsigned i = 0; i < h.hclen; ++i) bw.put(h.cl.len[CODE_LENGTH_ORDER[i]], 3);
    for (auto [s, x] : h.rle) {
        bw.put_code(h.cl.code[s], h.cl.len[s]);
        if (s == 16) bw.put(x, 2);
        if (s == 17) bw.put(x, 3);
        if (s == 18) bw.put(x, 7);
    }
}

void stored(std::span<const std::uint8_t> in, std::vector<std::uint8_t>& out) {
    std::size_t pos = 0;
    do {
        std::size_t n = std::min<std::size_t>(in.size() - pos, 65535);
        bool final = pos + n == in.size();
        out.push_back(final ? 1 : 0);  // BFINAL, BTYPE 00, then pad to the byte boundary
        out.push_back(static_cast<std::uint8_t>(n));
        out.push_back(static_cast<std::uint8_t>(n >> 8));
        out.push_back(static_cast<std::uint8_t>(~n));
        out.push_back(static_cast<std::uint8_t>(~n >> 8));
        out.insert(out.end(), in.begin() + pos, in.begin() + pos + n);
        pos += n;
    } while (pos < in.size());
}

void compressed(std::span<const std::uint8_t> in, std::vector<std::uint8_t>& out, unsigned max_chain) {
    std::vector<token> tokens = lz77(in, max_chain);
    std::vector<std::uint64_t> lit, dist;
    count(tokens, lit, dist);
    code_table dyn_l = huffman_code(lit, MAX_BITS), dyn_d = huffman_code(dist, MAX_BITS);
    dynamic_header hdr = make_header(dyn_l, dyn_d);
    static const code_table fix_l = fixed_litlen(), fix_d = fixed_dist();
    std::uint64_t dynamic_bits = 3 + hdr.bits + token_bits(lit, dist, dyn_l, dyn_d);
    std::uint64_t fixed_bits = 3 + token_bits(lit, dist, fix_l, fix_d);
    std::uint64_t stored_bits = (in.size() + 5 * (in.size() / 65535 + 1)) * 8;
    if (stored_bits < std::min(dynamic_bits, fixed_bits)) {
        stored(in, out);
        return;
    }
    bit_writer bw(out);
    bw.put(1, 1);  // BFINAL
    if (dynamic_bits < fixed_bits) {
        bw.put(2, 2);
        put_header(bw, hdr);
        put_tokens(bw, tokens, dyn_l, dyn_d);
    } else {
        bw.put(1, 2);
        put_tokens(bw, tokens, fix_l, fix_d);
    }
    bw.flush_byte();
}

} // namespace

std::vector<std::uint8_t> zlib_compress(std::span<const std::uint8_t> in, int level) {
    if (in.size() >= NONE) throw std::length_error("zlib_compress: input too large");
    std::vector<std::uint8_t> out;
    out.reserve(in.size() / 2 + 64);
    // CMF 0x78: deflate, 32 KiB window. FLG: FLEVEL plus check bits making CMF*256+FLG % 31 == 0.
    out.push_back(0x78);
    out.push_back(level == 0 ? 0x01 : level >= 7 ? 0xDA : 0x9C);
    if (level <= 0) {
        stored(in, out);
    } else {
        static constexpr std::array<unsigned, 10> CHAIN = {0, 4, 8, 16, 32, 64, 128, 256, 1024, 4096};
        compressed(in, out, CHAIN[std::min(level, 9)]);
    }
    std::uint32_t a = adler32(1, in.data(), in.size());
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(a >> s));
    return out;
}

} // namespace thin::pack
