// thin/pack: the zlib codec (inflate against known streams, including python's zlib at levels 0,
// 1 and 9; our deflate read back by python's zlib), the block VM instruction by instruction, pack
// -> unpack round trips of generated metadata and of every kernel fixture, the real .pack fixtures,
// and corrupted packs failing with one clean error.
#include "thin/pack/pack.h"
#include "thin/pack/vm.h"
#include "thin/pack/zlib.h"

#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"
#include "persistent-data/io_engine.h"
#include "tests/support/fixtures.h"
#include "tests/support/reference_tools.h"
#include "thin/generate/generator.h"
#include "thin/metadata/metadata.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

using namespace thin::pack;
using bytes = std::vector<std::uint8_t>;

namespace {

bytes from_hex(const std::string& h) {
    bytes b;
    for (std::size_t i = 0; i + 1 < h.size(); i += 2) b.push_back(static_cast<std::uint8_t>(std::stoi(h.substr(i, 2), nullptr, 16)));
    return b;
}

std::string to_hex(const bytes& b) {
    static const char* d = "0123456789abcdef";
    std::string s;
    for (auto c : b) {
        s += d[c >> 4];
        s += d[c & 15];
    }
    return s;
}

bytes str_bytes(const std::string& s) { return bytes(s.begin(), s.end()); }

bytes read_all(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    bytes b(std::filesystem::file_size(path));
    f.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(b.size()));
    return b;
}

void write_all(const std::string& path, const bytes& b) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

bool python_available() { return thinpool_test::run_command("python3 -c 'import zlib' 2>/dev/null") == 0; }

// Inputs with different shapes: empty, tiny, runs, text, random, metadata-like words.
std::vector<bytes> sample_inputs() {
    std::vector<bytes> v;
    v.push_back({});
    v.push_back({42});
    v.push_back(str_bytes("hello hello hello hello"));
    v.push_back(bytes(100000, 0));
    std::mt19937 rng(7);
    bytes rnd(70000);
    for (auto& c : rnd) c = static_cast<std::uint8_t>(rng());
    v.push_back(rnd);
    std::string text;
    for (int i = 0; i < 2000; ++i) text += "thin pool metadata block " + std::to_string(i * 7919 % 1000) + "\n";
    v.push_back(str_bytes(text));
    bytes words(4096 * 20);
    for (std::size_t i = 0; i < words.size() / 8; ++i) pdata::store_le64(&words[8 * i], (i * 3 + 1000) << 24 | (i % 7));
    v.push_back(words);
    bytes big(300000);  // more than 65535: several stored blocks
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::uint8_t>((i / 1000) ^ (i % 13));
    v.push_back(big);
    return v;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// zlib

TEST(zlib, adler32_known_values) {
    const std::string w = "Wikipedia";
    EXPECT_EQ(adler32(1, reinterpret_cast<const std::uint8_t*>(w.data()), w.size()), 0x11E60398u);
    EXPECT_EQ(adler32(1, nullptr, 0), 1u);
    bytes big(1000000, 0xFF);  // long enough for the modulo reduction to matter
    std::uint32_t a = 1, b = 0;
    for (auto c : big) {
        a = (a + c) % 65521;
        b = (b + a) % 65521;
    }
    EXPECT_EQ(adler32(1, big.data(), big.size()), (b << 16) | a);
}

TEST(zlib, inflates_known_streams_of_every_block_type) {
    struct {
        const char* hex;
        std::string plain;
    } cases[] = {
        // python3 zlib.compress(b"", 1): one empty fixed block
        {"7801030000000001", ""},
        // zlib.compress(b"hello hello hello hello", 0): stored
        {"7801011700e8ff68656c6c6f2068656c6c6f2068656c6c6f2068656c6c6f680308b1", "hello hello hello hello"},
        // zlib.compress(b"hello hello hello hello", 9): fixed Huffman with a back-reference
        {"78dacb48cdc9c957c8402701680308b1", ""},
        // zlib.compress(((b"thin provisioning metadata " * 4) + b"space map bitmap index btree node superblock ") * 3, 9):
        // a dynamic Huffman block
        {"78dadd8ec10d80300cc456b9d5d2f604113489da80181fb1435fbcfcf0c3ce5d0d31fcd6a96e6a1b3a539aa42057ab1952892e81a2f94"
         "1adf141c941c2bc11f30a8e727a3dd6d77f3ff602b6cbafd8",
         ""},
    };
    cases[2].plain = "hello hello hello hello";
    std::string t;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 4; ++j) t += "thin provisioning metadata ";
        t += "space map bitmap index btree node superblock ";
    }
    cases[3].plain = t;
    for (const auto& c : cases) {
        bytes z = from_hex(c.hex);
        bytes out = zlib_decompress(z, 1 << 20);
        EXPECT_EQ(std::string(out.begin(), out.end()), c.plain) << c.hex;
    }
}

TEST(zlib, our_deflate_round_trips_at_every_level) {
    for (const auto& in : sample_inputs()) {
        for (int level : {0, 1, 6, 9}) {
            bytes z = zlib_compress(in, level);
            ASSERT_GE(z.size(), 6u);
            EXPECT_EQ((z[0] * 256 + z[1]) % 31, 0);
            bytes out = zlib_decompress(z, in.size() + 1);
            EXPECT_EQ(out, in) << "level " << level << " size " << in.size();
        }
    }
    // Compression actually compresses what should compress, with the block type that suits the
    // data: dynamic Huffman for text, stored for random bytes.
    EXPECT_LT(zlib_compress(bytes(100000, 0), 6).size(), 1000u);
    auto block_type = [](const bytes& z) { return (z[2] >> 1) & 3; };
    EXPECT_EQ(block_type(zlib_compress(sample_inputs()[5], 6)), 2);
    EXPECT_EQ(block_type(zlib_compress(sample_inputs()[4], 6)), 0);
    EXPECT_EQ(block_type(zlib_compress(str_bytes("hello hello"), 6)), 1);
}

TEST(zlib, inflates_python_zlib_streams_at_levels_0_1_9) {
    if (!python_available()) GTEST_SKIP() << "python3 with zlib not available";
    thinpool_test::temp_dir dir;
    const auto inputs = sample_inputs();
    for (std::size_t n = 0; n < inputs.size(); ++n) write_all(dir.file("in" + std::to_string(n)), inputs[n]);
    // One python run compresses every input at levels 0, 1 and 9 (stored, fast, best).
    std::string cmd = "python3 -c 'import sys,zlib\n"
                      "for n in range(int(sys.argv[2])):\n"
                      "  d=open(\"%s/in%d\" % (sys.argv[1], n),\"rb\").read()\n"
                      "  for l in (0,1,9): open(\"%s/z%d_%d\" % (sys.argv[1], n, l),\"wb\").write(zlib.compress(d,l))\n' '" +
                      dir.path() + "' " + std::to_string(inputs.size());
    ASSERT_EQ(thinpool_test::run_command(cmd), 0) << cmd;
    for (std::size_t n = 0; n < inputs.size(); ++n) {
        for (int level : {0, 1, 9}) {
            bytes z = read_all(dir.file("z" + std::to_string(n) + "_" + std::to_string(level)));
            EXPECT_EQ(zlib_decompress(z, inputs[n].size()), inputs[n]) << "level " << level << " size " << inputs[n].size();
        }
    }
}

TEST(zlib, python_zlib_reads_our_deflate) {
    if (!python_available()) GTEST_SKIP() << "python3 with zlib not available";
    thinpool_test::temp_dir dir;
    const auto inputs = sample_inputs();
    for (std::size_t n = 0; n < inputs.size(); ++n) {
        write_all(dir.file("in" + std::to_string(n)), inputs[n]);
        for (int level : {0, 1, 9})
            write_all(dir.file("ours" + std::to_string(n) + "_" + std::to_string(level)), zlib_compress(inputs[n], level));
    }
    std::string cmd = "python3 -c 'import sys,zlib\n"
                      "bad=0\n"
                      "for n in range(int(sys.argv[2])):\n"
                      "  d=open(\"%s/in%d\" % (sys.argv[1], n),\"rb\").read()\n"
                      "  for l in (0,1,9):\n"
                      "    if zlib.decompress(open(\"%s/ours%d_%d\" % (sys.argv[1], n, l),\"rb\").read()) != d: print(n, l); bad+=1\n"
                      "sys.exit(3 if bad else 0)' '" +
                      dir.path() + "' " + std::to_string(inputs.size()) + " 2>&1";
    std::string out;
    EXPECT_EQ(thinpool_test::run_command(cmd, &out), 0) << out;
}

TEST(zlib, rejects_malformed_streams_with_an_offset) {
    bytes good = zlib_compress(str_bytes("hello hello hello hello, metadata!"), 6);
    auto fails = [](const bytes& z, const std::string& what) {
        try {
            zlib_decompress(z, 1 << 20);
            ADD_FAILURE() << "accepted: " << what << " " << to_hex(z);
        } catch (const zlib_error& e) {
            EXPECT_NE(std::string(e.what()).find("zlib stream byte"), std::string::npos) << e.what();
        }
    };
    fails({}, "empty");
    fails({0x78}, "one byte");
    bytes b = good;
    b[0] = 0x77;  // CM 7
    fails(b, "compression method");
    b = good;
    b[1] ^= 1;  // FCHECK
    fails(b, "check bits");
    fails({0x78, 0xBB, 0x00, 0x00, 0x00, 0x01}, "preset dictionary");  // 0x78BB % 31 == 0 with FDICT
    b = good;
    b.back() ^= 1;
    fails(b, "adler");
    b = good;
    b.push_back(0);
    fails(b, "trailing byte");
    for (std::size_t n = 0; n < good.size(); ++n) fails(bytes(good.begin(), good.begin() + n), "prefix " + std::to_string(n));
    fails({0x78, 0x9C, 0x07}, "block type 3");
    // Stored block whose NLEN is not the complement of LEN.
    fails({0x78, 0x01, 0x01, 0x05, 0x00, 0xFA, 0xFE, 'a', 'b', 'c', 'd', 'e'}, "stored length");
    // Fixed block starting with a match (distance 1 with no output yet): bits 1,01, then length
    // code 257 (0000001), distance code 0 (00000).
    fails({0x78, 0x9C, 0x03, 0x02, 0x00}, "distance too far");
    // Output bound.
    bytes zeros = zlib_compress(bytes(10000, 0), 6);
    EXPECT_THROW(zlib_decompress(zeros, 9999), zlib_error);
    EXPECT_EQ(zlib_decompress(zeros, 10000).size(), 10000u);
}

TEST(zlib, garbage_and_bit_flips_never_crash) {
    std::mt19937 rng(1234);
    bytes good = zlib_compress(sample_inputs()[5], 6);
    bytes dyn = from_hex(
        "78dadd8ec10d80300cc456b9d5d2f604113489da80181fb1435fbcfcf0c3ce5d0d31fcd6a96e6a1b3a539aa42057ab1952892e81a2f94"
        "1adf141c941c2bc11f30a8e727a3dd6d77f3ff602b6cbafd8");
    int accepted = 0;
    for (int i = 0; i < 3000; ++i) {
        bytes z;
        if (i % 3 == 0) {
            z.resize(rng() % 200);
            for (auto& c : z) c = static_cast<std::uint8_t>(rng());
            if (z.size() >= 2) {
                z[0] = 0x78;
                z[1] = 0x9C;
            }
        } else {
            z = (i % 3 == 1) ? good : dyn;
            int flips = 1 + rng() % 4;
            for (int f = 0; f < flips; ++f) z[rng() % z.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
        }
        try {
            zlib_decompress(z, 1 << 20);
            ++accepted;  // possible (a flip in an Adler-32 byte cannot be, but garbage may decode)
        } catch (const zlib_error&) {
        }
    }
    EXPECT_LT(accepted, 100);
}

// ---------------------------------------------------------------------------------------------
// VM

namespace {

// Runs a program that must produce one block; returns it as 512 words.
std::vector<std::uint64_t> run_words(const bytes& prog, std::size_t* end = nullptr) {
    std::uint8_t block[PACK_BLOCK_SIZE];
    std::size_t pos = 0;
    vm_run_block(prog, pos, block);
    if (end) *end = pos;
    std::vector<std::uint64_t> w(512);
    for (std::size_t i = 0; i < 512; ++i) w[i] = pdata::load_le64(block + 8 * i);
    return w;
}

// Appends "Const8 n" emitting the current base n more times.
void fill(bytes& p, unsigned n) {
    p.push_back(static_cast<std::uint8_t>(0x60 | (n >> 8)));
    p.push_back(static_cast<std::uint8_t>(n & 0xFF));
}

std::string vm_failure(const bytes& prog) {
    std::uint8_t block[PACK_BLOCK_SIZE];
    std::size_t pos = 0;
    try {
        vm_run_block(prog, pos, block);
    } catch (const vm_error& e) {
        return e.what();
    }
    return "";
}

} // namespace

TEST(vm, set_with_every_width_and_counts) {
    // Set1 0x12; Set2 0x3456; Set4; Count 3 Set8; then Const8 fills with the last value.
    bytes p = {0x01, 0x12, 0x02, 0x56, 0x34, 0x04, 0x78, 0x56, 0x34, 0x12, 0x73, 0x08, 1, 2, 3, 4, 5, 6, 7, 8};
    fill(p, 512 - 6);
    auto w = run_words(p);
    EXPECT_EQ(w[0], 0x12u);
    EXPECT_EQ(w[1], 0x3456u);
    EXPECT_EQ(w[2], 0x12345678u);
    EXPECT_EQ(w[3], 0x0807060504030201ull);
    EXPECT_EQ(w[4], 0x0807060504030201ull);
    EXPECT_EQ(w[5], 0x0807060504030201ull);
    EXPECT_EQ(w[511], 0x0807060504030201ull);
}

TEST(vm, pos_neg_and_wide_deltas_wrap) {
    bytes p = {
        0x15,              // Pos 5: 5
        0x7A, 0x12,        // Count 10, Pos 2: 7, 9, ..., 25
        0x22, 0x00, 0x01,  // PosW2 256: 281
        0x81, 0x00, 0x33,  // Count8 256, Neg 3: 278 down to 281 - 768 = -487 (wraps)
        0x44, 0x01, 0x00, 0x00, 0x00,  // NegW4 1
        0x82, 0x01, 0x48, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80  // Count8 257, NegW8 2^63
    };
    // 1 + 10 + 1 + 256 + 1 + 257 = 526 > 512: trim the last count so exactly 512 are emitted.
    p[14] = 0x80;
    p[15] = 243;  // Count8 243: 1 + 10 + 1 + 256 + 1 + 243 = 512
    auto w = run_words(p);
    EXPECT_EQ(w[0], 5u);
    EXPECT_EQ(w[1], 7u);
    EXPECT_EQ(w[10], 25u);
    EXPECT_EQ(w[11], 281u);
    EXPECT_EQ(w[12], 278u);
    EXPECT_EQ(w[267], std::uint64_t(281) - 768);  // wrapped below zero
    EXPECT_EQ(w[268], std::uint64_t(281) - 769);
    EXPECT_EQ(w[269], std::uint64_t(281) - 769 - (std::uint64_t(1) << 63));
    EXPECT_EQ(w[270], std::uint64_t(281) - 769);  // two subtractions of 2^63 wrap around
}

TEST(vm, const_const8_lit_litw) {
    bytes p = {0x01, 0x07, 0x53};  // Set 7; Const 3: four 7s
    p.push_back(0x98);             // Lit 8: one word
    for (int i = 0; i < 8; ++i) p.push_back(static_cast<std::uint8_t>(0xA0 + i));
    p.push_back(0xA1);  // LitW1 16 bytes
    p.push_back(16);
    for (int i = 0; i < 16; ++i) p.push_back(static_cast<std::uint8_t>(i));
    p.push_back(0x93);  // Lit 3 + Lit 5: an unaligned word
    p.insert(p.end(), {1, 2, 3});
    p.push_back(0x95);
    p.insert(p.end(), {4, 5, 6, 7, 8});
    fill(p, 512 - 8);  // base is still 7
    auto w = run_words(p);
    EXPECT_EQ(w[0], 7u);
    EXPECT_EQ(w[3], 7u);
    EXPECT_EQ(w[4], 0xA7A6A5A4A3A2A1A0ull);
    EXPECT_EQ(w[5], 0x0706050403020100ull);
    EXPECT_EQ(w[6], 0x0F0E0D0C0B0A0908ull);
    EXPECT_EQ(w[7], 0x0807060504030201ull);
    EXPECT_EQ(w[8], 7u);
    EXPECT_EQ(w[511], 7u);
}

TEST(vm, litw_of_a_whole_block) {
    std::uint8_t block[PACK_BLOCK_SIZE];
    for (std::size_t i = 0; i < sizeof block; ++i) block[i] = static_cast<std::uint8_t>(i * 31);
    bytes p;
    encode_block_literal(block, p);
    ASSERT_EQ(p.size(), 4099u);
    EXPECT_EQ(p[0], 0xA2);
    EXPECT_EQ(p[1], 0x00);
    EXPECT_EQ(p[2], 0x10);
    std::uint8_t out[PACK_BLOCK_SIZE];
    std::size_t pos = 0;
    vm_run_block(p, pos, out);
    EXPECT_EQ(pos, p.size());
    EXPECT_EQ(std::memcmp(block, out, sizeof block), 0);
}

TEST(vm, shifted_run_combines_high_and_low_halves) {
    // ShiftedRun of 512 values: high = 100, 101, ... (Set 100, Count8 511 Pos 1);
    // low = 5 repeated (Set 5, Const8 511).
    bytes p = {0xB2, 0x00, 0x01, 100, 0x81, 0xFF, 0x11, 0x01, 5, 0x61, 0xFF};
    std::size_t end = 0;
    auto w = run_words(p, &end);
    EXPECT_EQ(end, p.size());
    for (std::uint64_t i = 0; i < 512; ++i) EXPECT_EQ(w[i], (100 + i) << 24 | 5) << i;

    // Low values are masked to 24 bits; the run may be followed by other instructions.
    bytes q = {0xB0, 0x02, 0x01, 0x01, 0x11, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x51};
    q.push_back(0x50);  // Const 0 (a no-op)
    fill(q, 510);
    w = run_words(q);
    EXPECT_EQ(w[0], (1ull << 24) | 0xFFFFFF);
    EXPECT_EQ(w[1], (2ull << 24) | 0xFFFFFF);
    EXPECT_EQ(w[2], ~0ull);  // base continues from the last low value
}

TEST(vm, encoder_round_trips_word_patterns) {
    std::mt19937_64 rng(99);
    for (int t = 0; t < 300; ++t) {
        std::uint8_t block[PACK_BLOCK_SIZE];
        std::uint64_t v = rng();
        for (std::size_t i = 0; i < 512; ++i) {
            switch ((t + i / 37) % 6) {
            case 0: break;                      // runs of equal values
            case 1: v += 1 + t % 5; break;      // small steps
            case 2: v -= 3; break;              // negative steps
            case 3: v = rng(); break;           // random
            case 4: v += 1000003; break;        // wide steps
            case 5: v = rng() % 300; break;     // small values
            }
            pdata::store_le64(block + 8 * i, v);
        }
        if (t % 10 == 0) std::memset(block, 0, sizeof block);
        bytes p;
        encode_block(block, p);
        std::uint8_t out[PACK_BLOCK_SIZE];
        std::size_t pos = 0;
        vm_run_block(p, pos, out);
        ASSERT_EQ(pos, p.size());
        ASSERT_EQ(std::memcmp(block, out, sizeof block), 0) << "pattern " << t;
    }
    // A zero block is a couple of instructions.
    std::uint8_t zero[PACK_BLOCK_SIZE] = {};
    bytes p;
    encode_block(zero, p);
    EXPECT_LE(p.size(), 4u);
}

TEST(vm, shifted_run_encoder_round_trips) {
    std::vector<std::uint64_t> words(512);
    for (std::size_t i = 0; i < 512; ++i) words[i] = (5000 + i * 2) << 24 | (i % 3);
    bytes p;
    std::uint64_t base = 0;
    encode_shifted_run(words, base, p);
    auto w = run_words(p);
    EXPECT_EQ(w, words);
}

TEST(vm, malformed_programs_fail_cleanly) {
    EXPECT_NE(vm_failure({}).find("ends inside"), std::string::npos);
    EXPECT_NE(vm_failure({0x01}).find("ends inside an operand"), std::string::npos);
    EXPECT_NE(vm_failure({0x03, 1, 2, 3}).find("bad operand width 3"), std::string::npos);
    for (std::uint8_t tag : {0xC0, 0xD1, 0xE2, 0xFF}) EXPECT_NE(vm_failure({tag}).find("unknown instruction tag"), std::string::npos);
    // Too much output: 513 words.
    bytes p = {0x01, 1};
    fill(p, 512);
    EXPECT_NE(vm_failure(p).find("only 4088 are left"), std::string::npos) << vm_failure(p);
    // Too little: the program stops after 511 words.
    p = {0x01, 1};
    fill(p, 510);
    EXPECT_NE(vm_failure(p).find("ends inside"), std::string::npos);
    // A literal longer than the block, or than the program.
    EXPECT_NE(vm_failure({0xA2, 0x01, 0x10}).find("only 4096 are left"), std::string::npos);
    EXPECT_NE(vm_failure({0xA2, 0x00, 0x10, 1, 2}).find("ends inside a literal"), std::string::npos);
    EXPECT_NE(vm_failure({0xA8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}).find("left"), std::string::npos);
    // Counts where they do not belong.
    EXPECT_NE(vm_failure({0x72, 0x51}).find("Const cannot take a repeat count"), std::string::npos);
    EXPECT_NE(vm_failure({0x72, 0x91, 0}).find("Lit cannot take"), std::string::npos);
    // ShiftedRun too long for the block, and nested too deeply.
    EXPECT_NE(vm_failure({0xB2, 0x01}).find("left"), std::string::npos);
    bytes nest;
    for (int i = 0; i < 10; ++i) nest.insert(nest.end(), {0xB0, 0x01});
    EXPECT_NE(vm_failure(nest).find("nested too deeply"), std::string::npos);
    // Offsets name where the bad instruction starts.
    bytes late = {0x01, 1, 0x55, 0xC0};
    EXPECT_NE(vm_failure(late).find("program byte 3"), std::string::npos) << vm_failure(late);
}

TEST(vm, random_programs_never_crash) {
    std::mt19937 rng(5);
    int ok = 0;
    for (int i = 0; i < 20000; ++i) {
        bytes p(rng() % 64);
        for (auto& c : p) c = static_cast<std::uint8_t>(rng());
        if (vm_failure(p).empty()) ++ok;
    }
    EXPECT_LT(ok, 20000);
}

// ---------------------------------------------------------------------------------------------
// pack / unpack

namespace {

// For every block: metadata blocks (valid checksum) are identical, every other block unpacked
// as zeros.
void expect_unpacked_matches(const std::string& original, const std::string& unpacked) {
    bytes a = read_all(original), b = read_all(unpacked);
    ASSERT_EQ(b.size(), a.size() / PACK_BLOCK_SIZE * PACK_BLOCK_SIZE);
    static const std::uint8_t zero[PACK_BLOCK_SIZE] = {};
    std::size_t packed = 0;
    for (std::size_t off = 0; off < b.size(); off += PACK_BLOCK_SIZE) {
        if (classify_block(&a[off]) != block_kind::unknown) {
            ++packed;
            ASSERT_EQ(std::memcmp(&a[off], &b[off], PACK_BLOCK_SIZE), 0) << "block " << off / PACK_BLOCK_SIZE;
        } else {
            ASSERT_EQ(std::memcmp(zero, &b[off], PACK_BLOCK_SIZE), 0) << "block " << off / PACK_BLOCK_SIZE;
        }
    }
    EXPECT_GT(packed, 0u);
}

void generate(const std::string& path, const std::string& shape) {
    auto s = thin::generate::named_shape(shape);
    ASSERT_TRUE(s.has_value()) << shape;
    thin::generate::generate_file(path, *s);
}

std::string fixture_dir_or_skip() { return thinpool_test::kernel_fixture_dir(); }

const std::vector<std::string> FIXTURES = {"tmeta",
                                           "tmeta_with_metadata_snap",
                                           "tmeta_with_shared_internal_root",
                                           "tmeta_device_id_reuse",
                                           "tmeta_with_deleted_snapshot",
                                           "corrupted_tmeta_with_metadata_snap"};

#define FIXTURES_OR_SKIP()                                                                          \
    do {                                                                                          \
        if (thinpool_test::kernel_fixture_dir().empty()) {                                          \
            if (thinpool_test::fixtures_required()) FAIL() << "kernel fixtures missing";            \
            GTEST_SKIP() << "kernel fixtures not found";                                            \
        }                                                                                         \
    } while (0)

// A pack file from a header and raw (uncompressed) chunk payloads.
bytes make_pack(std::uint64_t nr_blocks, const std::vector<bytes>& chunks) {
    bytes out(PACK_HEADER_SIZE);
    pack_header h;
    h.nr_blocks = nr_blocks;
    write_header(h, out.data());
    for (const auto& c : chunks) {
        bytes z = zlib_compress(c, 6);
        std::uint8_t len[8];
        pdata::store_le64(len, z.size());
        out.insert(out.end(), len, len + 8);
        out.insert(out.end(), z.begin(), z.end());
    }
    return out;
}

// A record: block number + LitW of a block with a valid btree-node checksum.
bytes record(std::uint64_t b, std::uint8_t fillc = 0x11) {
    std::uint8_t block[PACK_BLOCK_SIZE];
    std::memset(block, fillc, sizeof block);
    pdata::store_le64(block + 8, b);
    pdata::store_le32(block, pdata::block_checksum(block, pdata::block_salt::btree_node));
    bytes r(8);
    pdata::store_le64(r.data(), b);
    encode_block(block, r);
    return r;
}

std::string unpack_error(const bytes& pack, const std::string& dir) {
    std::string in = dir + "/bad.pack", out = dir + "/bad.out";
    write_all(in, pack);
    try {
        unpack_file(in, out, {true});
    } catch (const pack_error& e) {
        EXPECT_FALSE(std::filesystem::exists(out)) << "half-written output left behind";
        return e.what();
    }
    return "";
}

} // namespace

TEST(pack, classifies_blocks_by_salted_checksum) {
    std::uint8_t block[PACK_BLOCK_SIZE] = {};
    EXPECT_EQ(classify_block(block), block_kind::unknown);
    std::pair<pdata::block_salt, block_kind> kinds[] = {
        {pdata::block_salt::superblock, block_kind::thin_superblock},
        {pdata::block_salt::btree_node, block_kind::btree_node},
        {pdata::block_salt::bitmap, block_kind::bitmap},
        {pdata::block_salt::index, block_kind::index},
    };
    for (auto [salt, kind] : kinds) {
        block[100] = 7;
        pdata::store_le32(block, pdata::block_checksum(block, salt));
        EXPECT_EQ(classify_block(block), kind);
        block[100] = 8;  // content changed: checksum no longer matches
        EXPECT_EQ(classify_block(block), block_kind::unknown);
    }
    // The other members of the salt family (cache, era, array) count too.
    std::uint32_t crc = pdata::crc32c_update(0xFFFFFFFFu, block + 4, PACK_BLOCK_SIZE - 4);
    for (std::uint32_t salt : {9031977u, 146538381u, 595846735u}) {
        pdata::store_le32(block, crc ^ salt);
        EXPECT_NE(classify_block(block), block_kind::unknown) << salt;
    }
}

TEST(pack, round_trips_generated_metadata) {
    thinpool_test::temp_dir dir;
    for (const char* shape : {"tiny", "deletes"}) {
        std::string md = dir.file(std::string(shape) + ".md"), pk = md + ".pack", un = md + ".unpacked";
        generate(md, shape);
        pack_stats ps = pack_file(md, pk, {});
        EXPECT_GT(ps.packed_blocks, 5u);
        EXPECT_EQ(ps.nr_blocks, std::filesystem::file_size(md) / PACK_BLOCK_SIZE);
        unpack_stats us = unpack_file(pk, un, {});
        EXPECT_EQ(us.unpacked_blocks, ps.packed_blocks);
        EXPECT_EQ(us.chunks, ps.chunks);
        expect_unpacked_matches(md, un);
        // The literal encoding unpacks the same.
        pack_options lit;
        lit.enc = encoding::literal;
        lit.level = 1;
        pack_file(md, pk + "2", lit);
        unpack_file(pk + "2", un + "2", {});
        EXPECT_TRUE(thinpool_test::files_equal(un, un + "2"));
    }
}

TEST(pack, many_chunks_and_a_partial_last_block) {
    thinpool_test::temp_dir dir;
    // 2500 metadata blocks -> 3 chunks; the file ends with half a block, which is ignored.
    std::string md = dir.file("many.md"), pk = md + ".pack", un = md + ".un";
    {
        std::ofstream f(md, std::ios::binary);
        for (std::uint64_t b = 0; b < 2600; ++b) {
            std::uint8_t block[PACK_BLOCK_SIZE] = {};
            if (b % 50 != 7) {
                for (std::size_t i = 16; i < PACK_BLOCK_SIZE; i += 8) pdata::store_le64(block + i, b * 1000 + i);
                pdata::store_le64(block + 8, b);
                pdata::store_le32(block, pdata::block_checksum(block, b % 2 ? pdata::block_salt::bitmap : pdata::block_salt::btree_node));
            } else {
                std::memset(block, 0xEE, sizeof block);  // not metadata: unpacks as zeros
            }
            f.write(reinterpret_cast<const char*>(block), sizeof block);
        }
        f.write("partial", 7);
    }
    pack_stats ps = pack_file(md, pk, {});
    EXPECT_EQ(ps.nr_blocks, 2600u);
    EXPECT_EQ(ps.packed_blocks, 2600u - 52u);
    EXPECT_EQ(ps.chunks, 3u);
    unpack_file(pk, un, {});
    expect_unpacked_matches(md, un);
}

TEST(pack, unpacks_every_kernel_pack_fixture_to_its_image) {
    FIXTURES_OR_SKIP();
    thinpool_test::temp_dir dir;
    const std::string fx = fixture_dir_or_skip();
    for (const auto& name : FIXTURES) {
        std::string bin = dir.file(name + ".bin"), un = dir.file(name + ".unpacked");
        ASSERT_TRUE(thinpool_test::unpack_kernel_fixture(name, bin)) << name;
        unpack_stats us = unpack_file(fx + "/" + name + ".pack", un, {});
        EXPECT_GT(us.unpacked_blocks, 0u);
        expect_unpacked_matches(bin, un);
        // The images hold nothing but packed blocks and zeros, so they are identical.
        EXPECT_TRUE(thinpool_test::files_equal(bin, un)) << name;
    }
}

TEST(pack, round_trips_every_kernel_fixture) {
    FIXTURES_OR_SKIP();
    thinpool_test::temp_dir dir;
    for (const auto& name : FIXTURES) {
        std::string bin = dir.file(name + ".bin"), pk = dir.file(name + ".pack"), un = dir.file(name + ".un");
        ASSERT_TRUE(thinpool_test::unpack_kernel_fixture(name, bin)) << name;
        pack_file(bin, pk, {});
        unpack_file(pk, un, {});
        expect_unpacked_matches(bin, un);
        // Our chunks are plain zlib streams: python's zlib reads them too.
        if (python_available()) {
            std::string cmd = "python3 -c 'import sys,zlib,struct\n"
                              "d=open(sys.argv[1],\"rb\").read(); o=32\n"
                              "while o<len(d):\n"
                              "  n,=struct.unpack(\"<Q\",d[o:o+8]); zlib.decompress(d[o+8:o+8+n]); o+=8+n\n' '" +
                              pk + "'";
            EXPECT_EQ(thinpool_test::run_command(cmd), 0) << name;
        }
    }
}

TEST(pack, corrupted_packs_fail_with_one_clean_error) {
    thinpool_test::temp_dir dir;
    const std::string d = dir.path();
    bytes good = make_pack(10, {record(3), record(9)});
    ASSERT_EQ(unpack_error(good, d), "");
    {
        std::string un = d + "/bad.out";
        bytes img = read_all(un);
        ASSERT_EQ(img.size(), 10 * PACK_BLOCK_SIZE);
        EXPECT_EQ(classify_block(&img[3 * PACK_BLOCK_SIZE]), block_kind::btree_node);
        std::filesystem::remove(un);
    }
    auto expect_error = [&](const bytes& pack, const std::string& words) {
        std::string e = unpack_error(pack, d);
        EXPECT_NE(e.find(words), std::string::npos) << "got: '" << e << "' wanted: " << words;
        EXPECT_NE(e.find("offset"), std::string::npos) << e;
        EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    };
    bytes b = good;
    b[0] ^= 1;
    expect_error(b, "bad magic");
    b = good;
    b[8] = 2;
    expect_error(b, "unsupported pack version 2");
    b = good;
    b[17] = 0x20;
    expect_error(b, "block size 8192");
    expect_error(bytes(good.begin(), good.begin() + 20), "too short for a pack header");
    b = good;
    pdata::store_le64(&b[24], 0);
    expect_error(b, "nr_blocks is 0");
    // Truncated chunk header and truncated chunk data.
    expect_error(bytes(good.begin(), good.begin() + 36), "truncated chunk header");
    expect_error(bytes(good.begin(), good.end() - 5), "truncated chunk");
    // Bad zlib stream: damage inside the compressed data.
    b = good;
    b[45] ^= 0xFF;
    b[46] ^= 0x55;
    expect_error(b, "chunk at file offset 32");
    b = good;
    b[40] = 0x77;  // zlib header byte
    expect_error(b, "compression method");
    // Block number beyond the image.
    expect_error(make_pack(10, {record(3), record(10)}), "block number 10 is beyond the end (10 blocks)");
    // Programs that emit too little or too much.
    bytes short_rec(8);
    short_rec.insert(short_rec.end(), {0x01, 1, 0x55});
    expect_error(make_pack(10, {record(1), short_rec}), "program ends inside");
    bytes long_rec(8);
    long_rec.insert(long_rec.end(), {0x01, 1, 0x62, 0x00});
    expect_error(make_pack(10, {long_rec}), "only");
    // A record cut short, and a block without a valid checksum.
    expect_error(make_pack(10, {record(1), bytes{1, 0, 0}}), "truncated record");
    bytes zero_rec(8);
    zero_rec.insert(zero_rec.end(), {0x50 | 0, 0x62, 0x00});  // Const 0, Const8 512: a zero block
    expect_error(make_pack(10, {zero_rec}), "without a valid metadata checksum");
    // An empty chunk.
    b = good;
    bytes zero_len(8, 0);
    b.insert(b.end(), zero_len.begin(), zero_len.end());
    expect_error(b, "empty chunk");
}

TEST(pack, random_damage_never_crashes_or_hangs) {
    thinpool_test::temp_dir dir;
    std::string md = dir.file("m.md"), pk = dir.file("m.pack");
    generate(md, "tiny");
    pack_file(md, pk, {});
    bytes good = read_all(pk);
    std::mt19937 rng(77);
    for (int i = 0; i < 300; ++i) {
        bytes b = good;
        int flips = 1 + rng() % 3;
        for (int f = 0; f < flips; ++f) b[PACK_HEADER_SIZE + rng() % (b.size() - PACK_HEADER_SIZE)] ^= static_cast<std::uint8_t>(rng());
        if (i % 5 == 0) b.resize(PACK_HEADER_SIZE + rng() % (b.size() - PACK_HEADER_SIZE));
        // Either a clean error or (rarely, when the damage hits nothing that matters) success.
        std::string e = unpack_error(b, dir.path());
        if (!e.empty()) {
            EXPECT_EQ(e.find('\n'), std::string::npos);
        }
        std::filesystem::remove(dir.file("bad.out"));
    }
}
