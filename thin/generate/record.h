#pragma once
// The generator's own record of what a pool's metadata must contain (thin/generate/generator.h):
// per device the details and the mappings, kept without any b-tree code, and the superblock fields
// a dump prints. A record writes itself as thin_dump 0.9.0 XML.
#include "thin/metadata/mapping.h"
#include "thin/xml/xml_writer.h"

#include <array>
#include <cstdint>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace thin::generate {

// The expected mappings of one device: fixed-size chunks of packed block_time values, shared
// copy-on-write between a snapshot and its origin (and with a held metadata snapshot's record), so
// a snapshot costs nothing until written. 8 bytes per mapped block when dense.
class device_record {
public:
    static constexpr unsigned CHUNK_SHIFT = 10;
    static constexpr std::uint64_t CHUNK_SIZE = 1ull << CHUNK_SHIFT;

    device_record() = default;
    // Copies share every chunk; the last-chunk cache is never copied (it points into chunks_).
    device_record(const device_record& o) : chunks_(o.chunks_), mapped_(o.mapped_) {}
    device_record(device_record&& o) noexcept : chunks_(std::move(o.chunks_)), mapped_(o.mapped_) { o.forget(); }
    device_record& operator=(const device_record& o) {
        chunks_ = o.chunks_;
        mapped_ = o.mapped_;
        forget();
        return *this;
    }
    device_record& operator=(device_record&& o) noexcept {
        chunks_ = std::move(o.chunks_);
        mapped_ = o.mapped_;
        forget();
        o.forget();
        return *this;
    }

    std::optional<block_time> get(std::uint64_t vblock) const;
    // Returns true if vblock was unmapped before.
    bool set(std::uint64_t vblock, block_time bt);
    bool erase(std::uint64_t vblock);
    std::uint64_t erase_range(std::uint64_t begin, std::uint64_t end);  // [begin, end)
    std::uint64_t size() const { return mapped_; }

    // fn(vblock, block_time) in ascending vblock order.
    template <typename Fn>
    void for_each(Fn&& fn) const {
        for (const auto& [index, c] : chunks_) {
            std::uint64_t base = index << CHUNK_SHIFT;
            for (std::uint64_t i = 0; i < CHUNK_SIZE; ++i)
                if (c->values[i] != EMPTY)
                    fn(base + i, block_time::unpack(c->values[i]));
        }
    }

private:
    static constexpr std::uint64_t EMPTY = ~0ull;
    struct chunk {
        chunk() { values.fill(EMPTY); }
        std::uint32_t count = 0;
        std::array<std::uint64_t, CHUNK_SIZE> values;
    };
    using chunk_map = std::map<std::uint64_t, std::shared_ptr<chunk>>;
    chunk* writable_chunk(std::uint64_t index);
    chunk_map::const_iterator find_chunk(std::uint64_t index) const;
    void forget() { cache_valid_ = false; }

    chunk_map chunks_;
    std::uint64_t mapped_ = 0;
    // Writes come in bursts: remember the chunk used last (map iterators stay valid until erased).
    mutable chunk_map::iterator cache_;
    mutable bool cache_valid_ = false;
};

struct device_expectation {
    device_details details;  // details.mapped_blocks == mappings.size()
    device_record mappings;
};

// What a dump of the pool must show.
struct pool_record {
    std::uint32_t time = 0;
    std::uint64_t transaction = 0;
    std::uint32_t flags = 0;
    std::uint32_t version = 2;
    std::uint32_t data_block_size = 0;
    std::uint64_t nr_data_blocks = 0;  // 0 in a metadata snapshot's record (thin_dump -m prints 0)
    std::map<dev_id, device_expectation> devices;

    void write_xml(xml_writer& out) const;
    void write_xml(std::ostream& out) const;
    std::string to_xml() const;
    std::uint64_t total_mappings() const;
};

} // namespace thin::generate
