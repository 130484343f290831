#pragma once
// Per-kind block validation (format.md §2): on read, self-location and salted checksum; on write,
// stamp both. Validators are stateless singletons compared by address.
#include "persistent-data/checksum.h"
#include "persistent-data/types.h"

namespace pdata {

class validator {
public:
    virtual ~validator() = default;
    virtual const char* name() const = 0;
    // Throws corrupt_block when data is not a valid block of this kind at location b.
    virtual void check(const std::uint8_t* data, block_address b) const = 0;
    // Stamps blocknr and checksum before data is written to location b.
    virtual void prepare(std::uint8_t* data, block_address b) const = 0;
};

// Checksum at offset 0 (salted), blocknr at offset 8: the layout of every thin metadata block kind.
class checksummed_validator : public validator {
public:
    constexpr checksummed_validator(const char* name, block_salt salt) : name_(name), salt_(salt) {}
    const char* name() const override { return name_; }
    void check(const std::uint8_t* data, block_address b) const override;
    void prepare(std::uint8_t* data, block_address b) const override;
    block_salt salt() const { return salt_; }

private:
    const char* name_;
    block_salt salt_;
};

// Accepts anything and stamps nothing (raw access).
const validator& noop_validator();
const checksummed_validator& bitmap_validator();
const checksummed_validator& index_validator();

} // namespace pdata
