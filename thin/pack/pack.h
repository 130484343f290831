#pragma once
// thin_metadata_pack / thin_metadata_unpack (tools.md §12): the pack file format, version 3.
//
// Header (32 bytes, little-endian):
//   off  size  field
//     0     8  magic 0xA537A0AA6309EF77
//     8     8  pack version (3)
//    16     8  block size (4096)
//    24     8  nr_blocks: size of the original metadata in 4 KiB blocks
// Then chunks until end of file: u64 compressed length, then that many bytes of one zlib stream.
// A decompressed chunk is a sequence of records: u64 block number, then a VM program (vm.h) that
// emits exactly that block's 4096 bytes. Only blocks whose checksum identifies a metadata block
// kind are packed; every other block unpacks as zeros.
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace thin::pack {

constexpr std::uint64_t PACK_MAGIC = 0xA537A0AA6309EF77ull;
constexpr std::uint64_t PACK_VERSION = 3;
constexpr std::size_t PACK_HEADER_SIZE = 32;
// Records per chunk written by the packer (what the reference packer does too).
constexpr std::size_t RECORDS_PER_CHUNK = 1024;
// Largest decompressed chunk the unpacker accepts. 1024 blocks take about 4 MiB even as LitW;
// anything near this bound is not a pack file.
constexpr std::size_t MAX_CHUNK_BYTES = std::size_t(256) << 20;

// A bad pack file (or a bad input to pack). The message names the file offset.
class pack_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The salted checksum kinds a packer recognises (format.md §2): stored csum XOR crc == salt.
enum class block_kind { unknown, thin_superblock, btree_node, bitmap, index, cache_superblock, era_superblock, array };
block_kind classify_block(const std::uint8_t* block);
const char* to_string(block_kind k);

struct pack_header {
    std::uint64_t magic = PACK_MAGIC;
    std::uint64_t version = PACK_VERSION;
    std::uint64_t block_size = 4096;
    std::uint64_t nr_blocks = 0;
};
void write_header(const pack_header& h, std::uint8_t* out);  // 32 bytes
// Throws pack_error on wrong magic, version or block size, or when n < 32.
pack_header read_header(std::span<const std::uint8_t> bytes);

enum class encoding { vm, literal };

struct pack_options {
    int level = 6;                // zlib_compress level
    encoding enc = encoding::vm;  // how blocks become programs
    bool quiet = false;           // no progress bar
};

struct pack_stats {
    std::uint64_t nr_blocks = 0;
    std::uint64_t packed_blocks = 0;
    std::uint64_t chunks = 0;
    std::uint64_t bytes_written = 0;
};

// Packs the metadata device/file at input (read with O_EXCL when it is a block device) into
// output (a regular file, created or truncated).
pack_stats pack_file(const std::string& input, const std::string& output, const pack_options& opts);

// Decodes every record of one decompressed chunk; chunk_offset (file offset of the chunk) is used
// in messages. Calls on_block(block number, 4096 bytes) for each record; a block number >= nr_blocks,
// a malformed program or a block that is not metadata is a pack_error.
void decode_chunk(std::span<const std::uint8_t> chunk, std::uint64_t chunk_offset, std::uint64_t nr_blocks,
                  const std::function<void(std::uint64_t, const std::uint8_t*)>& on_block);

struct unpack_options {
    bool quiet = false;
};

struct unpack_stats {
    std::uint64_t nr_blocks = 0;
    std::uint64_t unpacked_blocks = 0;
    std::uint64_t chunks = 0;
};

// Reads a pack file and writes the metadata image: a regular file is created or truncated to
// nr_blocks * 4096 bytes (blocks not in the pack are holes); a block device must be at least that
// big and has its unpacked blocks written and every other block zeroed. On error a regular output
// file is removed.
unpack_stats unpack_file(const std::string& input, const std::string& output, const unpack_options& opts);

} // namespace thin::pack
