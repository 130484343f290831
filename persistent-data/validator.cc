#include "persistent-data/validator.h"
#include "persistent-data/endian.h"

namespace pdata {

namespace {
class noop : public validator {
public:
    const char* name() const override { return "raw"; }
    void check(const std::uint8_t*, block_address) const override {}
    void prepare(std::uint8_t*, block_address) const override {}
};
} // namespace

void checksummed_validator::check(const std::uint8_t* data, block_address b) const {
    std::uint64_t loc = load_le64(data + 8);
    if (loc != b)
        throw corrupt_block(b, std::string(name_) + ": blocknr field is " + std::to_string(loc) +
                                   ", wanted " + std::to_string(b));
    std::uint32_t stored = load_le32(data);
    std::uint32_t want = block_checksum(data, salt_);
    if (stored != want)
        throw corrupt_block(b, std::string("bad checksum in ") + name_ + " (stored " +
                                   std::to_string(stored) + ", wanted " + std::to_string(want) + ")");
}

void checksummed_validator::prepare(std::uint8_t* data, block_address b) const {
    store_le64(data + 8, b);
    store_le32(data, block_checksum(data, salt_));
}

const validator& noop_validator() {
    static const noop v;
    return v;
}

const checksummed_validator& bitmap_validator() {
    static const checksummed_validator v("space map bitmap", block_salt::bitmap);
    return v;
}

const checksummed_validator& index_validator() {
    static const checksummed_validator v("metadata space map index", block_salt::index);
    return v;
}

} // namespace pdata
