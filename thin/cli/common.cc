#include "thin/cli/common.h"

#include "persistent-data/endian.h"
#include "thin/metadata/superblock.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <sys/stat.h>
#include <unistd.h>

namespace thin::cli {

using namespace pdata;

std::string version() {
#ifdef THINPOOL_VERSION
    return THINPOOL_VERSION;
#else
    return "unknown";
#endif
}

namespace {

constexpr std::uint64_t MIN_OUTPUT_BYTES = 32 * 1024;

std::uint64_t size_of(const std::string& path, bool* is_block) {
    struct stat st {};
    if (::stat(path.c_str(), &st) < 0) throw tool_error(path + ": " + std::strerror(errno));
    *is_block = S_ISBLK(st.st_mode);
    if (!*is_block && !S_ISREG(st.st_mode)) throw tool_error(path + ": not a regular file or block device");
    if (!*is_block) return static_cast<std::uint64_t>(st.st_size);
    auto e = open_sync_engine(path, {open_mode::read_only, false});
    return e->nr_blocks() * MD_BLOCK_SIZE;
}

bool looks_like_xml(const unsigned char* p, std::size_t n) {
    std::size_t i = 0;
    if (n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) i = 3;  // UTF-8 BOM
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) ++i;
    // "<superblock", "<?xml", "<!--": a lone '<' is also the first byte of 1 in 256 checksums.
    if (i + 1 >= n || p[i] != '<') return false;
    unsigned char c = p[i + 1];
    return c == '?' || c == '!' || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

} // namespace

input_kind classify_input(const std::string& path) {
    bool is_block = false;
    std::uint64_t size = size_of(path, &is_block);
    if (size == 0) return input_kind::empty;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw tool_error(path + ": cannot open: " + std::strerror(errno));
    unsigned char buf[MD_BLOCK_SIZE] = {};
    ssize_t n = ::pread(fd, buf, sizeof buf, 0);
    int err = errno;
    ::close(fd);
    if (n < 0) throw tool_error(path + ": cannot read: " + std::strerror(err));
    // A superblock's magic wins over XML sniffing: its checksum may well start with '<'.
    if (size >= MD_BLOCK_SIZE && n >= 40 && load_le64(buf + 32) == SUPERBLOCK_MAGIC) return input_kind::metadata;
    if (looks_like_xml(buf, static_cast<std::size_t>(n))) return input_kind::xml;
    if (size < MD_BLOCK_SIZE) return input_kind::too_small;
    if (block_is_all_zero(buf)) return input_kind::all_zeros;
    if (load_le64(buf + 32) != SUPERBLOCK_MAGIC) return input_kind::unknown;
    return input_kind::metadata;
}

void require_binary_metadata(const std::string& tool, const std::string& path, bool allow_bad_superblock) {
    switch (classify_input(path)) {
    case input_kind::metadata:
        return;
    case input_kind::xml:
        throw tool_error(path + ": this looks like XML; " + tool + " works on binary metadata only");
    case input_kind::empty:
        throw tool_error(path + ": the file is empty; it does not hold dm-thin metadata");
    case input_kind::too_small:
        throw tool_error(path + ": too small to hold dm-thin metadata (less than one 4096-byte block)");
    case input_kind::all_zeros:
        if (allow_bad_superblock) return;
        throw tool_error(path + ": superblock (block 0) is all zeros: the metadata is not formatted");
    case input_kind::unknown:
        if (allow_bad_superblock) return;
        throw tool_error(path + ": not dm-thin metadata (bad superblock magic at block 0, offset 32)");
    }
}

std::shared_ptr<io_engine> open_input(const std::string& path, bool shared, bool writable) {
    open_options o;
    o.mode = writable ? open_mode::read_write : open_mode::read_only;
    o.exclusive = !shared;
    try {
        return std::shared_ptr<io_engine>(open_sync_engine(path, o));
    } catch (const io_error& e) {
        throw tool_error(e.what());
    }
}

void require_output(const std::string& path) {
    const char* explain =
        "The output file should either be a block device, or an existing file.  The file needs to be "
        "large enough to hold the metadata.";
    struct stat st {};
    if (::stat(path.c_str(), &st) < 0) {
        if (errno == ENOENT) throw tool_error(path + ": output file does not exist. " + explain);
        throw tool_error(path + ": " + std::strerror(errno));
    }
    bool is_block = false;
    std::uint64_t size = size_of(path, &is_block);
    if (!is_block && size < MIN_OUTPUT_BYTES)
        throw tool_error(path + ": output file too small (" + std::to_string(size) + " bytes, at least 32768 needed). " +
                         explain);
}

std::shared_ptr<io_engine> open_output(const std::string& path) {
    require_output(path);
    return open_input(path, false, true);
}

int run(const std::string& tool, bool quiet, const std::function<int()>& body) {
    try {
        return body();
    } catch (const tool_error& e) {
        if (!quiet) std::cerr << tool << ": " << e.what() << "\n";
    } catch (const std::bad_alloc&) {
        if (!quiet) std::cerr << tool << ": out of memory\n";
    } catch (const std::exception& e) {
        if (!quiet) std::cerr << tool << ": " << e.what() << "\n";
    }
    return EXIT_FAIL;
}

} // namespace thin::cli
