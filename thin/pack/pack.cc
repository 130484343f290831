#include "thin/pack/pack.h"

#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"
#include "thin/cli/progress.h"
#include "thin/pack/vm.h"
#include "thin/pack/zlib.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/fs.h>
#include <memory>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace thin::pack {

using pdata::load_le64;
using pdata::store_le64;

namespace {

constexpr std::uint32_t CACHE_SUPERBLOCK_SALT = 9031977;
constexpr std::uint32_t ERA_SUPERBLOCK_SALT = 146538381;
constexpr std::uint32_t ARRAY_SALT = 595846735;

std::string errno_text() { return std::strerror(errno); }

class fd_guard {
public:
    explicit fd_guard(int fd) : fd_(fd) {}
    ~fd_guard() {
        if (fd_ >= 0) ::close(fd_);
    }
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    int get() const { return fd_; }
    // Closes now, reporting failure (a failed close can mean lost writes).
    int close() {
        int r = ::close(fd_);
        fd_ = -1;
        return r;
    }

private:
    int fd_;
};

// Size in bytes of a regular file or block device.
std::uint64_t device_size(int fd, const std::string& path, bool* is_block) {
    struct stat st {};
    if (::fstat(fd, &st) < 0) throw pack_error(path + ": " + errno_text());
    *is_block = S_ISBLK(st.st_mode);
    if (*is_block) {
        std::uint64_t size = 0;
        if (::ioctl(fd, BLKGETSIZE64, &size) < 0) throw pack_error(path + ": cannot get device size: " + errno_text());
        return size;
    }
    if (!S_ISREG(st.st_mode)) throw pack_error(path + ": not a regular file or block device");
    return static_cast<std::uint64_t>(st.st_size);
}

void pread_all(int fd, const std::string& path, void* buf, std::size_t len, std::uint64_t off) {
    auto* p = static_cast<std::uint8_t*>(buf);
    while (len) {
        ssize_t n = ::pread(fd, p, len, static_cast<off_t>(off));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw pack_error(path + ": read at offset " + std::to_string(off) + " failed: " + errno_text());
        if (n == 0) throw pack_error(path + ": unexpected end of file at offset " + std::to_string(off));
        p += n;
        len -= static_cast<std::size_t>(n);
        off += static_cast<std::uint64_t>(n);
    }
}

// Reads up to len bytes; returns how many (short only at end of file).
std::size_t pread_some(int fd, const std::string& path, void* buf, std::size_t len, std::uint64_t off) {
    auto* p = static_cast<std::uint8_t*>(buf);
    std::size_t done = 0;
    while (done < len) {
        ssize_t n = ::pread(fd, p + done, len - done, static_cast<off_t>(off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw pack_error(path + ": read at offset " + std::to_string(off + done) + " failed: " + errno_text());
        if (n == 0) break;
        done += static_cast<std::size_t>(n);
    }
    return done;
}

void pwrite_all(int fd, const std::string& path, const void* buf, std::size_t len, std::uint64_t off) {
    auto* p = static_cast<const std::uint8_t*>(buf);
    while (len) {
        ssize_t n = ::pwrite(fd, p, len, static_cast<off_t>(off));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw pack_error(path + ": write at offset " + std::to_string(off) + " failed: " + errno_text());
        p += n;
        len -= static_cast<std::size_t>(n);
        off += static_cast<std::uint64_t>(n);
    }
}

void refuse_same_file(const std::string& input, const std::string& output) {
    struct stat a {}, b {};
    if (::stat(input.c_str(), &a) == 0 && ::stat(output.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        throw pack_error(output + ": is the input file itself");
}

// Removes a half-written output file unless disarmed.
class remove_on_failure {
public:
    explicit remove_on_failure(std::string path) : path_(std::move(path)) {}
    ~remove_on_failure() {
        if (armed_) ::unlink(path_.c_str());
    }
    void disarm() { armed_ = false; }

private:
    std::string path_;
    bool armed_ = true;
};

} // namespace

block_kind classify_block(const std::uint8_t* block) {
    std::uint32_t stored = pdata::load_le32(block);
    std::uint32_t crc = pdata::crc32c_update(0xFFFFFFFFu, block + 4, PACK_BLOCK_SIZE - 4);
    switch (stored ^ crc) {
    case std::uint32_t(pdata::block_salt::superblock): return block_kind::thin_superblock;
    case std::uint32_t(pdata::block_salt::btree_node): return block_kind::btree_node;
    case std::uint32_t(pdata::block_salt::bitmap): return block_kind::bitmap;
    case std::uint32_t(pdata::block_salt::index): return block_kind::index;
    case CACHE_SUPERBLOCK_SALT: return block_kind::cache_superblock;
    case ERA_SUPERBLOCK_SALT: return block_kind::era_superblock;
    case ARRAY_SALT: return block_kind::array;
    default: return block_kind::unknown;
    }
}

const char* to_string(block_kind k) {
    switch (k) {
    case block_kind::thin_superblock: return "superblock";
    case block_kind::btree_node: return "btree node";
    case block_kind::bitmap: return "space map bitmap";
    case block_kind::index: return "space map index";
    case block_kind::cache_superblock: return "cache superblock";
    case block_kind::era_superblock: return "era superblock";
    case block_kind::array: return "array block";
    case block_kind::unknown: break;
    }
    return "unknown";
}

void write_header(const pack_header& h, std::uint8_t* out) {
    store_le64(out, h.magic);
    store_le64(out + 8, h.version);
    store_le64(out + 16, h.block_size);
    store_le64(out + 24, h.nr_blocks);
}

pack_header read_header(std::span<const std::uint8_t> bytes) {
    if (bytes.size() < PACK_HEADER_SIZE)
        throw pack_error("file offset 0: too short for a pack header (" + std::to_string(bytes.size()) +
                         " bytes, 32 needed)");
    pack_header h;
    h.magic = load_le64(bytes.data());
    h.version = load_le64(bytes.data() + 8);
    h.block_size = load_le64(bytes.data() + 16);
    h.nr_blocks = load_le64(bytes.data() + 24);
    if (h.magic != PACK_MAGIC) throw pack_error("file offset 0: bad magic: not a thin_metadata_pack file");
    if (h.version != PACK_VERSION)
        throw pack_error("file offset 8: unsupported pack version " + std::to_string(h.version) + " (only 3 is known)");
    if (h.block_size != PACK_BLOCK_SIZE)
        throw pack_error("file offset 16: block size " + std::to_string(h.block_size) + " is not 4096");
    if (h.nr_blocks == 0) throw pack_error("file offset 24: nr_blocks is 0");
    if (h.nr_blocks > (std::uint64_t(1) << 50))
        throw pack_error("file offset 24: nr_blocks " + std::to_string(h.nr_blocks) + " is implausibly large");
    return h;
}

// ---------------------------------------------------------------------------------------------
// pack

pack_stats pack_file(const std::string& input, const std::string& output, const pack_options& opts) {
    struct stat st {};
    if (::stat(input.c_str(), &st) < 0) throw pack_error(input + ": " + errno_text());
    int flags = O_RDONLY | O_CLOEXEC;
    if (S_ISBLK(st.st_mode)) flags |= O_EXCL;  // refuse metadata a live pool holds
    fd_guard in(::open(input.c_str(), flags));
    if (in.get() < 0) throw pack_error(input + ": cannot open: " + errno_text());
    bool is_block = false;
    pack_stats stats;
    stats.nr_blocks = device_size(in.get(), input, &is_block) / PACK_BLOCK_SIZE;
    if (stats.nr_blocks == 0) throw pack_error(input + ": smaller than one 4096-byte block");

    refuse_same_file(input, output);
    fd_guard out(::open(output.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (out.get() < 0) throw pack_error(output + ": cannot create: " + errno_text());
    remove_on_failure cleanup(output);

    std::uint8_t hdr[PACK_HEADER_SIZE];
    pack_header h;
    h.nr_blocks = stats.nr_blocks;
    write_header(h, hdr);
    pwrite_all(out.get(), output, hdr, sizeof hdr, 0);
    std::uint64_t out_off = sizeof hdr;

    std::vector<std::uint8_t> chunk;
    std::size_t records = 0;
    auto flush_chunk = [&]() {
        if (!records) return;
        std::vector<std::uint8_t> z = zlib_compress(chunk, opts.level);
        std::uint8_t len[8];
        store_le64(len, z.size());
        pwrite_all(out.get(), output, len, 8, out_off);
        pwrite_all(out.get(), output, z.data(), z.size(), out_off + 8);
        out_off += 8 + z.size();
        ++stats.chunks;
        chunk.clear();
        records = 0;
    };

    cli::progress bar("Packing", opts.quiet);
    constexpr std::size_t BATCH = 256;  // blocks per read
    std::vector<std::uint8_t> buf(BATCH * PACK_BLOCK_SIZE);
    for (std::uint64_t b = 0; b < stats.nr_blocks; b += BATCH) {
        std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(BATCH, stats.nr_blocks - b));
        pread_all(in.get(), input, buf.data(), n * PACK_BLOCK_SIZE, b * PACK_BLOCK_SIZE);
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint8_t* blk = buf.data() + i * PACK_BLOCK_SIZE;
            if (classify_block(blk) == block_kind::unknown) continue;
            std::uint8_t nr[8];
            store_le64(nr, b + i);
            chunk.insert(chunk.end(), nr, nr + 8);
            if (opts.enc == encoding::literal)
                encode_block_literal(blk, chunk);
            else
                encode_block(blk, chunk);
            ++stats.packed_blocks;
            if (++records == RECORDS_PER_CHUNK) flush_chunk();
        }
        bar.update(b + n, stats.nr_blocks);
    }
    flush_chunk();
    bar.finish();
    if (stats.packed_blocks == 0)
        throw pack_error(input + ": no metadata blocks found (no block carries a valid metadata checksum)");
    if (::fsync(out.get()) < 0 && errno != EINVAL) throw pack_error(output + ": fsync failed: " + errno_text());
    if (out.close() < 0) throw pack_error(output + ": close failed: " + errno_text());
    stats.bytes_written = out_off;
    cleanup.disarm();
    return stats;
}

// ---------------------------------------------------------------------------------------------
// unpack

void decode_chunk(std::span<const std::uint8_t> chunk, std::uint64_t chunk_offset, std::uint64_t nr_blocks,
                  const std::function<void(std::uint64_t, const std::uint8_t*)>& on_block) {
    auto where = [&](std::size_t at) {
        return "chunk at file offset " + std::to_string(chunk_offset) + ", decompressed byte " + std::to_string(at) + ": ";
    };
    alignas(8) std::uint8_t block[PACK_BLOCK_SIZE];
    std::size_t pos = 0;
    while (pos < chunk.size()) {
        std::size_t rec = pos;
        if (chunk.size() - pos < 8) throw pack_error(where(pos) + "truncated record (block number cut short)");
        std::uint64_t b = load_le64(chunk.data() + pos);
        pos += 8;
        if (b >= nr_blocks)
            throw pack_error(where(rec) + "block number " + std::to_string(b) + " is beyond the end (" +
                             std::to_string(nr_blocks) + " blocks)");
        try {
            vm_run_block(chunk, pos, block);
        } catch (const vm_error& e) {
            throw pack_error(where(e.offset()) + "block " + std::to_string(b) + ": " + e.what());
        }
        if (classify_block(block) == block_kind::unknown)
            throw pack_error(where(rec) + "block " + std::to_string(b) +
                             " unpacks to a block without a valid metadata checksum");
        on_block(b, block);
    }
}

unpack_stats unpack_file(const std::string& input, const std::string& output, const unpack_options& opts) {
    fd_guard in(::open(input.c_str(), O_RDONLY | O_CLOEXEC));
    if (in.get() < 0) throw pack_error(input + ": cannot open: " + errno_text());
    bool in_block = false;
    const std::uint64_t in_size = device_size(in.get(), input, &in_block);
    std::uint8_t hdr[PACK_HEADER_SIZE];
    std::size_t got = pread_some(in.get(), input, hdr, sizeof hdr, 0);
    pack_header h;
    try {
        h = read_header(std::span<const std::uint8_t>(hdr, got));
    } catch (const pack_error& e) {
        throw pack_error(input + ": " + e.what());
    }
    unpack_stats stats;
    stats.nr_blocks = h.nr_blocks;
    const std::uint64_t image_bytes = h.nr_blocks * PACK_BLOCK_SIZE;

    refuse_same_file(input, output);
    struct stat st {};
    bool out_exists = ::stat(output.c_str(), &st) == 0;
    const bool out_block = out_exists && S_ISBLK(st.st_mode);
    int flags = O_WRONLY | O_CLOEXEC;
    flags |= out_block ? O_EXCL : (O_CREAT | O_TRUNC);
    fd_guard out(::open(output.c_str(), flags, 0644));
    if (out.get() < 0) throw pack_error(output + ": cannot open for writing: " + errno_text());
    std::unique_ptr<remove_on_failure> cleanup;
    if (!out_block) cleanup = std::make_unique<remove_on_failure>(output);

    std::vector<bool> written;
    if (out_block) {
        bool dummy = false;
        std::uint64_t size = device_size(out.get(), output, &dummy);
        if (size < image_bytes)
            throw pack_error(output + ": device too small (" + std::to_string(size) + " bytes, the pack holds " +
                             std::to_string(image_bytes) + ")");
        written.assign(h.nr_blocks, false);
    } else if (::ftruncate(out.get(), static_cast<off_t>(image_bytes)) < 0) {
        throw pack_error(output + ": cannot size to " + std::to_string(image_bytes) + " bytes: " + errno_text());
    }

    cli::progress bar("Unpacking", opts.quiet);
    std::uint64_t off = PACK_HEADER_SIZE;
    std::vector<std::uint8_t> compressed;
    while (off < in_size) {
        const std::uint64_t chunk_off = off;
        std::uint8_t len_bytes[8];
        std::size_t n = pread_some(in.get(), input, len_bytes, 8, off);
        if (n < 8)
            throw pack_error(input + ": file offset " + std::to_string(off) + ": truncated chunk header (" +
                             std::to_string(n) + " of 8 bytes)");
        std::uint64_t len = load_le64(len_bytes);
        off += 8;
        if (len > in_size - off)
            throw pack_error(input + ": file offset " + std::to_string(chunk_off) + ": truncated chunk (" +
                             std::to_string(len) + " bytes announced, " + std::to_string(in_size - off) +
                             " left in the file)");
        if (len == 0) throw pack_error(input + ": file offset " + std::to_string(chunk_off) + ": empty chunk");
        compressed.resize(static_cast<std::size_t>(len));
        pread_all(in.get(), input, compressed.data(), compressed.size(), off);
        std::vector<std::uint8_t> plain;
        try {
            plain = zlib_decompress(compressed, MAX_CHUNK_BYTES);
        } catch (const zlib_error& e) {
            throw pack_error(input + ": chunk at file offset " + std::to_string(chunk_off) + ": " + e.what() +
                             " (file offset " + std::to_string(off + e.offset()) + ")");
        }
        try {
            decode_chunk(plain, chunk_off, h.nr_blocks, [&](std::uint64_t b, const std::uint8_t* data) {
                pwrite_all(out.get(), output, data, PACK_BLOCK_SIZE, b * PACK_BLOCK_SIZE);
                if (out_block) written[b] = true;
                ++stats.unpacked_blocks;
            });
        } catch (const pack_error& e) {
            throw pack_error(input + ": " + e.what());
        }
        off += len;
        ++stats.chunks;
        bar.update(off, in_size);
    }
    if (out_block) {
        // A device keeps old contents: zero every block the pack does not describe.
        std::vector<std::uint8_t> zeros(256 * PACK_BLOCK_SIZE, 0);
        std::uint64_t b = 0;
        while (b < h.nr_blocks) {
            if (written[b]) {
                ++b;
                continue;
            }
            std::uint64_t e = b;
            while (e < h.nr_blocks && !written[e] && e - b < 256) ++e;
            pwrite_all(out.get(), output, zeros.data(), (e - b) * PACK_BLOCK_SIZE, b * PACK_BLOCK_SIZE);
            b = e;
        }
    }
    bar.finish();
    if (::fsync(out.get()) < 0 && errno != EINVAL) throw pack_error(output + ": fsync failed: " + errno_text());
    if (out.close() < 0) throw pack_error(output + ": close failed: " + errno_text());
    if (cleanup) cleanup->disarm();
    return stats;
}

} // namespace thin::pack
