#include "thin/metadata/superblock.h"
#include "persistent-data/endian.h"

#include <algorithm>
#include <cstring>

namespace thin {

using namespace pdata;

namespace {

class sb_validator : public checksummed_validator {
public:
    sb_validator() : checksummed_validator("superblock", block_salt::superblock) {}
    void check(const std::uint8_t* data, block_address b) const override {
        checksummed_validator::check(data, b);
        std::uint64_t magic = load_le64(data + 32);
        if (magic != SUPERBLOCK_MAGIC)
            throw corrupt_block(b, "superblock has bad magic " + std::to_string(magic) + " (wanted " +
                                       std::to_string(SUPERBLOCK_MAGIC) + ")");
    }
};

} // namespace

void superblock::set_data_sm(const sm_root& r) {
    data_sm_root.fill(0);
    r.pack(data_sm_root.data());
}

void superblock::set_metadata_sm(const sm_root& r) {
    metadata_sm_root.fill(0);
    r.pack(metadata_sm_root.data());
}

superblock superblock::unpack(const std::uint8_t* d) {
    superblock sb;
    sb.flags = load_le32(d + 4);
    sb.blocknr = load_le64(d + 8);
    std::memcpy(sb.uuid.data(), d + 16, 16);
    sb.magic = load_le64(d + 32);
    sb.version = load_le32(d + 40);
    sb.time = load_le32(d + 44);
    sb.trans_id = load_le64(d + 48);
    sb.metadata_snap = load_le64(d + 56);
    std::memcpy(sb.data_sm_root.data(), d + 64, SM_ROOT_AREA);
    std::memcpy(sb.metadata_sm_root.data(), d + 192, SM_ROOT_AREA);
    sb.data_mapping_root = load_le64(d + 320);
    sb.device_details_root = load_le64(d + 328);
    sb.data_block_size = load_le32(d + 336);
    sb.metadata_block_size = load_le32(d + 340);
    sb.metadata_nr_blocks = load_le64(d + 344);
    sb.compat_flags = load_le32(d + 352);
    sb.compat_ro_flags = load_le32(d + 356);
    sb.incompat_flags = load_le32(d + 360);
    return sb;
}

void superblock::pack(std::uint8_t* d) const {
    std::memset(d, 0, MD_BLOCK_SIZE);
    store_le32(d + 4, flags);
    store_le64(d + 8, blocknr);
    std::memcpy(d + 16, uuid.data(), 16);
    store_le64(d + 32, magic);
    store_le32(d + 40, version);
    store_le32(d + 44, time);
    store_le64(d + 48, trans_id);
    store_le64(d + 56, metadata_snap);
    std::memcpy(d + 64, data_sm_root.data(), SM_ROOT_AREA);
    std::memcpy(d + 192, metadata_sm_root.data(), SM_ROOT_AREA);
    store_le64(d + 320, data_mapping_root);
    store_le64(d + 328, device_details_root);
    store_le32(d + 336, data_block_size);
    store_le32(d + 340, metadata_block_size);
    store_le64(d + 344, metadata_nr_blocks);
    store_le32(d + 352, compat_flags);
    store_le32(d + 356, compat_ro_flags);
    store_le32(d + 360, incompat_flags);
}

const validator& superblock_validator() {
    static const sb_validator v;
    return v;
}

bool block_is_all_zero(const std::uint8_t* block) {
    return std::all_of(block, block + MD_BLOCK_SIZE, [](std::uint8_t c) { return c == 0; });
}

} // namespace thin
