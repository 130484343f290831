#pragma once
// Streaming emitter of the thin metadata XML format, byte-exact with thin_dump 0.9.0
// (tools.md §2.2): attribute order as in the grammar, two spaces of indentation per level, every
// line ending in '\n', consecutive mappings merged into runs while the virtual block and the data
// block both advance by one and the time stays the same.
//
// Numbers are formatted with std::to_chars into an internal buffer, so writing tens of millions of
// mappings costs little more than the bytes themselves.
#include <cstdint>
#include <cstdio>
#include <iosfwd>
#include <string>
#include <string_view>

namespace thin {

struct xml_superblock_info {
    std::string uuid;  // thin_dump always writes ""
    std::uint32_t time = 0;
    std::uint64_t transaction = 0;
    std::uint32_t flags = 0;
    std::uint32_t version = 2;
    std::uint32_t data_block_size = 0;
    std::uint64_t nr_data_blocks = 0;
    bool operator==(const xml_superblock_info&) const = default;
};

struct xml_device_info {
    std::uint64_t dev_id = 0;
    std::uint64_t mapped_blocks = 0;
    std::uint64_t transaction = 0;
    std::uint32_t creation_time = 0;
    std::uint32_t snap_time = 0;
    bool operator==(const xml_device_info&) const = default;
};

class xml_writer {
public:
    explicit xml_writer(std::ostream& out);
    explicit xml_writer(std::FILE* out);
    // Flushes what is buffered (errors are not reported here: call flush() to see them).
    ~xml_writer();
    xml_writer(const xml_writer&) = delete;
    xml_writer& operator=(const xml_writer&) = delete;

    void begin_superblock(const xml_superblock_info& sb);
    void end_superblock();

    void begin_device(const xml_device_info& dev);
    void end_device();

    // One mapping; calls must come in ascending vblock order within a device.
    void map(std::uint64_t vblock, std::uint64_t data_block, std::uint32_t time);
    // `len` consecutive mappings (merged with neighbours like single ones).
    void map_range(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time);

    // Writes the buffer out; throws std::runtime_error if the stream or FILE reports an error.
    void flush();

private:
    void flush_run();
    void put(std::string_view s);
    void put_uint(std::uint64_t v);
    void attr(std::string_view name, std::uint64_t v);  // ` name="v"`
    void reserve(std::size_t n);

    std::ostream* os_ = nullptr;
    std::FILE* file_ = nullptr;
    static constexpr std::size_t BUFFER_SIZE = 1 << 16;
    char buf_[BUFFER_SIZE];
    std::size_t used_ = 0;
    bool failed_ = false;

    bool in_run_ = false;
    std::uint64_t run_vbegin_ = 0;
    std::uint64_t run_dbegin_ = 0;
    std::uint64_t run_len_ = 0;
    std::uint32_t run_time_ = 0;
};

} // namespace thin
