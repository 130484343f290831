#pragma once
// Passes an emitter IR stream on, keeping only the selected devices and, optionally, dropping
// every mapping (thin_dump --dev-id / --skip-mappings over sources that cannot select themselves,
// such as the repair walker).
#include "thin/ir/emitter.h"

#include <algorithm>
#include <vector>

namespace thin::dump {

class filter_emitter : public emitter {
public:
    // dev_ids empty: every device.
    filter_emitter(emitter& out, std::vector<std::uint64_t> dev_ids, bool skip_mappings)
        : out_(out), dev_ids_(std::move(dev_ids)), skip_mappings_(skip_mappings) {}

    void begin_superblock(const superblock_info& sb) override { out_.begin_superblock(sb); }
    void end_superblock() override { out_.end_superblock(); }
    void begin_device(const device_info& dev) override {
        keep_ = dev_ids_.empty() || std::find(dev_ids_.begin(), dev_ids_.end(), dev.dev_id) != dev_ids_.end();
        if (keep_) out_.begin_device(dev);
    }
    void end_device() override {
        if (keep_) out_.end_device();
    }
    void range_map(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len, std::uint32_t time) override {
        if (keep_ && !skip_mappings_) out_.range_map(vbegin, dbegin, len, time);
    }

private:
    emitter& out_;
    std::vector<std::uint64_t> dev_ids_;
    bool skip_mappings_;
    bool keep_ = false;
};

} // namespace thin::dump
