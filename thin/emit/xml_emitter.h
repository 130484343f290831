#pragma once
// The emitter IR written as thin_dump 0.9.0 XML (tools.md §2.2), through the byte-exact
// xml_writer. metadata_snap is never printed.
#include "thin/ir/emitter.h"
#include "thin/xml/xml_writer.h"

#include <cstdio>
#include <iosfwd>

namespace thin::emit {

class xml_emitter : public emitter {
public:
    explicit xml_emitter(std::FILE* out) : w_(out) {}
    explicit xml_emitter(std::ostream& out) : w_(out) {}

    void begin_superblock(const superblock_info& sb) override;
    void end_superblock() override;
    void begin_device(const device_info& dev) override;
    void end_device() override;
    void range_map(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time) override;

    // Writes out what is buffered; throws std::runtime_error on a write error.
    void flush() { w_.flush(); }

private:
    xml_writer w_;
};

} // namespace thin::emit
