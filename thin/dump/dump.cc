#include "thin/dump/dump.h"

#include "thin/emit/run_merger.h"
#include "thin/metadata/mapping.h"
#include "thin/metadata/superblock.h"

#include "persistent-data/btree/walk.h"

#include <algorithm>
#include <map>

namespace thin::dump {

using namespace pdata;

namespace {

std::string path_text(const std::vector<std::uint64_t>& path) {
    std::string s;
    for (auto k : path) s += (s.empty() ? "" : "/") + std::to_string(k);
    return s;
}

superblock read_superblock(block_manager& bm, block_address b, const char* what) {
    try {
        read_ref r = bm.read_lock(b, superblock_validator());
        return superblock::unpack(r.data());
    } catch (const corrupt_block& e) {
        throw damaged_metadata(std::string(what) + " (block " + std::to_string(b) + "): " + e.problem());
    } catch (const io_error& e) {
        throw damaged_metadata(std::string(what) + " (block " + std::to_string(b) + "): " + e.what());
    }
}

// Collects the values of a small one-level tree (details, level-1 mapping tree); any damage is
// fatal for a dump.
class collect_visitor : public btree::walk_visitor {
public:
    explicit collect_visitor(std::string tree) : tree_(std::move(tree)) {}
    std::vector<std::pair<std::uint64_t, std::vector<std::uint8_t>>> values;
    std::uint32_t value_size = 8;

    void visit_value(const std::vector<std::uint64_t>&, std::uint64_t key, const std::uint8_t* v) override {
        values.emplace_back(key, std::vector<std::uint8_t>(v, v + value_size));
    }
    void visit_damage(const std::vector<std::uint64_t>&, btree::key_range lost, block_address b,
                      const std::string& what) override {
        throw damaged_metadata(tree_ + ": keys " + btree::to_string(lost) + " lost at block " + std::to_string(b) +
                               ": " + what);
    }

private:
    std::string tree_;
};

// Streams one device's level-2 tree to the emitter.
class mapping_visitor : public btree::walk_visitor {
public:
    mapping_visitor(block_manager& bm, emitter& out, std::uint64_t dev) : bm_(bm), out_(out), dev_(dev) {
        children_.reserve(btree::max_entries_for(8));
    }

    bool visit_node(unsigned, const std::vector<std::uint64_t>&, block_address, btree::node_ref n) override {
        if (n.is_internal()) {
            // Read the children (usually leaves) in one sorted batch before the walk asks for
            // them one by one; blocks beyond the device are left for the walk to report.
            children_.clear();
            block_address limit = bm_.nr_blocks();
            for (unsigned i = 0; i < n.nr_entries(); ++i)
                if (n.value64(i) < limit) children_.push_back(n.value64(i));
            bm_.prefetch(children_);
        }
        return true;
    }

    void visit_value(const std::vector<std::uint64_t>&, std::uint64_t key, const std::uint8_t* v) override {
        block_time bt = block_time::unpack(load_le64(v));
        emit::run r;
        if (runs_.add(key, bt.data_block, 1, bt.time, &r)) out_.range_map(r.vbegin, r.dbegin, r.len, r.time);
    }

    void visit_damage(const std::vector<std::uint64_t>& path, btree::key_range lost, block_address b,
                      const std::string& what) override {
        // Print what was read, as thin_dump 0.9.0 does: the run so far and the device's end.
        finish();
        out_.end_device();
        std::string where = path.empty() ? "" : " (subtree " + path_text(path) + ")";
        throw damaged_metadata("thin device " + std::to_string(dev_) + " is missing mappings " +
                               btree::to_string(lost) + where + ": block " + std::to_string(b) + ": " + what);
    }

    void finish() {
        emit::run r;
        if (runs_.take(&r)) out_.range_map(r.vbegin, r.dbegin, r.len, r.time);
    }

private:
    block_manager& bm_;
    emitter& out_;
    std::uint64_t dev_;
    emit::run_merger runs_;
    std::vector<block_address> children_;
};

} // namespace

void dump_metadata(block_manager& bm, const dump_options& opts, emitter& out) {
    superblock sb = read_superblock(bm, SUPERBLOCK_LOCATION, "superblock");
    std::uint64_t nr_data_blocks = sb.data_sm().nr_blocks;
    if (opts.metadata_snap) {
        if (!sb.metadata_snap) throw dump_error("no current metadata snap");
        if (opts.metadata_snap_block && *opts.metadata_snap_block != sb.metadata_snap)
            throw dump_error("metadata snapshot does not match that in superblock (block " +
                             std::to_string(*opts.metadata_snap_block) + " requested, the superblock holds " +
                             std::to_string(sb.metadata_snap) + ")");
        sb = read_superblock(bm, sb.metadata_snap, "metadata snapshot superblock");
        nr_data_blocks = 0;  // the copy's space-map roots are zeroed (format.md §9)
    }

    collect_visitor details("device details tree");
    details.value_size = device_details::DISK_SIZE;
    btree::walk(bm, sb.device_details_root, {1, device_details::DISK_SIZE}, details);
    collect_visitor top("top-level mapping tree");
    btree::walk(bm, sb.data_mapping_root, {1, 8}, top);

    std::map<std::uint64_t, block_address> roots;
    for (auto& [dev, v] : top.values) roots[dev] = load_le64(v.data());
    for (auto& [dev, v] : details.values)
        if (!roots.count(dev))
            throw damaged_metadata("thin device " + std::to_string(dev) +
                                   " is in the details tree but has no mapping tree");
    if (roots.size() != details.values.size()) {
        for (auto& [dev, root] : roots) {
            bool found = std::any_of(details.values.begin(), details.values.end(),
                                     [dev = dev](const auto& d) { return d.first == dev; });
            if (!found)
                throw damaged_metadata("thin device " + std::to_string(dev) +
                                       " has a mapping tree but no entry in the details tree");
        }
    }

    superblock_info info;
    info.time = sb.time;
    info.transaction = opts.transaction_id.value_or(sb.trans_id);
    info.flags = sb.flags;
    info.version = sb.version;
    info.data_block_size = opts.data_block_size.value_or(sb.data_block_size);
    info.nr_data_blocks = opts.nr_data_blocks.value_or(nr_data_blocks);
    out.begin_superblock(info);

    for (auto& [dev, v] : details.values) {
        if (!opts.dev_ids.empty() && std::find(opts.dev_ids.begin(), opts.dev_ids.end(), dev) == opts.dev_ids.end())
            continue;
        device_details d = device_details::unpack(v.data());
        out.begin_device({dev, d.mapped_blocks, d.transaction_id, d.creation_time, d.snapshotted_time});
        if (!opts.skip_mappings) {
            mapping_visitor mv(bm, out, dev);
            btree::walk(bm, roots[dev], {1, 8}, mv);
            mv.finish();
        }
        out.end_device();
    }
    out.end_superblock();
}

} // namespace thin::dump
