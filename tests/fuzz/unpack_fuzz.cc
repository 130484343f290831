// Pack files through thin_metadata_unpack's library path (header, zlib inflate, the block VM,
// record decoding) into a scratch file, plus the pieces on their own: zlib_decompress and
// vm_run_block on the raw input. Every bad pack must be an exception, never a crash or a hang.
#include "thin/pack/pack.h"
#include "thin/pack/vm.h"
#include "thin/pack/zlib.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <unistd.h>

namespace {

// unpack_file works on paths: one scratch directory per process, reused by every input.
const std::string& scratch_dir() {
    static const std::string dir = [] {
        // Under $TMPDIR when set (scripts/fuzz points it at its scratch directory, removed after).
        const char* tmp = std::getenv("TMPDIR");
        std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/unpack_fuzz.XXXXXX";
        if (!mkdtemp(tmpl.data())) std::abort();
        return tmpl;
    }();
    return dir;
}

void write_file(const std::string& path, const std::uint8_t* data, std::size_t size) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) std::abort();
    if (size && std::fwrite(data, 1, size, f) != size) std::abort();
    std::fclose(f);
}

// Caps the image size a pack may ask for, so inputs claiming terabytes are not written out in
// full (holes are cheap, but the fuzzer's disk is not the thing under test).
constexpr std::uint64_t MAX_NR_BLOCKS = 1 << 16;

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::span<const std::uint8_t> in(data, size);
    try {
        thin::pack::zlib_decompress(in, 1 << 20);
    } catch (const std::exception&) {
    }
    try {
        std::uint8_t block[thin::pack::PACK_BLOCK_SIZE];
        std::size_t pos = 0;
        while (pos < in.size()) thin::pack::vm_run_block(in, pos, block);
    } catch (const std::exception&) {
    }
    try {
        if (thin::pack::read_header(in).nr_blocks > MAX_NR_BLOCKS) return 0;
    } catch (const std::exception&) {
        // Still unpacked below: the header error must come from unpack_file too.
    }
    const std::string pack = scratch_dir() + "/in.pack", image = scratch_dir() + "/out.bin";
    write_file(pack, data, size);
    try {
        thin::pack::unpack_options o;
        o.quiet = true;
        thin::pack::unpack_file(pack, image, o);
    } catch (const std::exception&) {
    }
    ::unlink(image.c_str());
    return 0;
}
