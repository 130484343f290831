// The repair source (see repair.h for the rules). Three steps:
//   choose   - decide which details tree and level-1 mapping tree to trust (roots.cc);
//   count    - walk each chosen device's level-2 tree once, counting the mappings that will be
//              emitted and noting damage, the highest data block and the highest time, so the
//              superblock and device events can carry exact values;
//   emit     - walk them again and stream maximal runs to the emitter.
// Both walks read leaves a parent's worth at a time in disk order (block_manager::prefetch) and
// handle whole leaves in visit_node, so the cost per mapping is a few instructions.
#include "thin/repair/repair.h"

#include "thin/repair/data_size.h"
#include "thin/repair/roots.h"
#include "thin/restore/restore_emitter.h"
#include "thin/metadata/mapping.h"
#include "thin/metadata/metadata.h"
#include "thin/metadata/superblock.h"

#include "persistent-data/btree/walk.h"
#include "persistent-data/space-maps/layout.h"

#include <algorithm>

namespace thin::repair {

using namespace pdata;

namespace {

struct planned_device {
    dev_id id;
    device_details details;  // mapped_blocks = the count of the first walk
    block_address root;
};

struct plan {
    superblock_info sb;
    std::vector<planned_device> devices;
    // Mappings at or above are dropped: --nr-data-blocks, or the size the superblock's data space
    // map records when it is sane. nullopt: the size follows the mappings.
    std::optional<std::uint64_t> limit;
    std::string limit_name;  // what the limit is, for the report of dropped mappings
    repair_summary summary;
};

void say(const repair_options& opts, const std::string& line) {
    if (opts.report) opts.report(line);
}

// Level-2 leaves, whole: the first walk counts, the second emits.
class leaf_walker : public btree::walk_visitor {
public:
    leaf_walker(block_manager& bm, std::optional<std::uint64_t> limit) : bm_(bm), limit_(limit) {
        children_.reserve(btree::max_entries_for(8));
    }

    bool visit_node(unsigned, const std::vector<std::uint64_t>&, block_address, btree::node_ref n) override {
        if (n.is_internal()) {
            children_.clear();
            block_address end = bm_.nr_blocks();
            for (unsigned i = 0; i < n.nr_entries(); ++i)
                if (n.value64(i) < end) children_.push_back(n.value64(i));
            bm_.prefetch(children_);
            return true;
        }
        leaf(n);
        return false;
    }
    void visit_value(const std::vector<std::uint64_t>&, std::uint64_t, const std::uint8_t*) override {}

protected:
    virtual void leaf(btree::node_ref n) = 0;
    block_manager& bm_;
    std::optional<std::uint64_t> limit_;

private:
    std::vector<block_address> children_;
};

class count_walker : public leaf_walker {
public:
    count_walker(block_manager& bm, std::optional<std::uint64_t> limit, dev_id dev, const repair_options& opts)
        : leaf_walker(bm, limit), dev_(dev), opts_(opts) {}

    std::uint64_t count = 0;
    std::uint64_t dropped = 0;
    std::uint64_t lost = 0;
    std::optional<std::uint64_t> max_data;
    std::uint64_t max_dropped = 0;
    std::uint32_t max_time = 0;

    void visit_damage(const std::vector<std::uint64_t>&, btree::key_range r, block_address b,
                      const std::string& what) override {
        ++lost;
        say(opts_, "thin device " + std::to_string(dev_) + ": mappings " + btree::to_string(r) +
                       " lost (block " + std::to_string(b) + ": " + what + ")");
    }

protected:
    void leaf(btree::node_ref n) override {
        unsigned nr = n.nr_entries();
        for (unsigned i = 0; i < nr; ++i) {
            std::uint64_t v = n.value64(i);
            std::uint64_t d = v >> 24;
            if (limit_ && d >= *limit_) {
                ++dropped;
                max_dropped = std::max(max_dropped, d);
                continue;
            }
            ++count;
            if (!max_data || d > *max_data) max_data = d;
            max_time = std::max(max_time, static_cast<std::uint32_t>(v & MAX_TIME));
        }
    }

private:
    dev_id dev_;
    const repair_options& opts_;
};

class emit_walker : public leaf_walker {
public:
    // progress(emitted) is called every few dozen leaves when set.
    emit_walker(block_manager& bm, std::optional<std::uint64_t> limit, emitter& out,
                std::function<void(std::uint64_t)> progress)
        : leaf_walker(bm, limit), out_(out), progress_(std::move(progress)) {}

    std::uint64_t emitted = 0;

    void visit_damage(const std::vector<std::uint64_t>&, btree::key_range, block_address, const std::string&) override {}

    void finish() {
        if (len_) out_.range_map(vbegin_, dbegin_, len_, time_);
        len_ = 0;
    }

protected:
    void leaf(btree::node_ref n) override {
        unsigned nr = n.nr_entries();
        for (unsigned i = 0; i < nr; ++i) {
            std::uint64_t v = n.value64(i);
            std::uint64_t d = v >> 24;
            if (limit_ && d >= *limit_) continue;
            std::uint64_t k = n.key(i);
            std::uint32_t t = static_cast<std::uint32_t>(v & MAX_TIME);
            ++emitted;
            if (len_ && k == vbegin_ + len_ && d == dbegin_ + len_ && t == time_) {
                ++len_;
                continue;
            }
            if (len_) out_.range_map(vbegin_, dbegin_, len_, time_);
            vbegin_ = k;
            dbegin_ = d;
            time_ = t;
            len_ = 1;
        }
        if (progress_ && ++leaves_ % 64 == 0) progress_(emitted);
    }

private:
    emitter& out_;
    std::function<void(std::uint64_t)> progress_;
    std::uint64_t leaves_ = 0;
    std::uint64_t vbegin_ = 0, dbegin_ = 0, len_ = 0;
    std::uint32_t time_ = 0;
};

std::optional<superblock> read_superblock(block_manager& bm, block_address b, std::string* problem) {
    try {
        read_ref r = bm.read_lock(b, superblock_validator());
        return superblock::unpack(r.data());
    } catch (const corrupt_block& e) {
        *problem = e.problem();
    } catch (const io_error& e) {
        *problem = e.what();
    }
    return std::nullopt;
}

std::string plural(std::uint64_t n, const char* word) {
    return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

// out_blocks: the output's size when the plan is for new metadata (thin_repair); the data space
// map of the chosen data device size must fit in it. nullopt for thin_dump --repair.
plan make_plan(block_manager& bm, const repair_options& opts, std::optional<block_address> out_blocks) {
    plan p;
    std::string problem;
    std::optional<superblock> sb0 = read_superblock(bm, SUPERBLOCK_LOCATION, &problem);
    p.summary.superblock_ok = sb0.has_value();
    if (!sb0) {
        std::string missing;
        auto need = [&](bool given, const char* field) {
            if (given) return;
            if (!missing.empty()) missing += "\n";
            missing += std::string("The following field needs to be provided on the command line due to corruption "
                                   "in the superblock: ") + field;
        };
        need(opts.transaction_id.has_value(), "transaction id");
        need(opts.data_block_size.has_value(), "data block size");
        need(opts.nr_data_blocks.has_value(), "nr data blocks");
        if (!missing.empty()) throw missing_fields(missing);
        say(opts, "superblock (block 0) is unreadable (" + problem + "); using the values given on the command line");
    }
    if (opts.data_block_size) {
        try {
            validate_data_block_size(*opts.data_block_size);
        } catch (const metadata_error& e) {
            throw repair_error(std::string("--data-block-size: ") + e.what());
        }
    }
    if (opts.nr_data_blocks && *opts.nr_data_blocks > MAX_DATA_BLOCK + 1)
        throw repair_error("--nr-data-blocks: " + std::to_string(*opts.nr_data_blocks) +
                           " is too large (data block numbers have 40 bits)");

    // The data device size, when it is known before the mappings are walked.
    auto output_room = [&](std::uint64_t nr_data_blocks) {
        return "the output (" + std::to_string(std::min<std::uint64_t>(*out_blocks, pdata::sm::MAX_METADATA_BLOCKS)) +
               " metadata blocks) cannot hold a data space map of " + std::to_string(nr_data_blocks) +
               " data blocks (" + std::to_string(data_space_map_blocks(nr_data_blocks)) + " metadata blocks)";
    };
    std::string untrusted;  // why the superblock's data space map root is not believed
    if (opts.nr_data_blocks) {
        p.limit = *opts.nr_data_blocks;
        p.limit_name = "at or above --nr-data-blocks " + std::to_string(*p.limit);
        if (out_blocks && !output_describes(*p.limit, *out_blocks))
            throw repair_error("--nr-data-blocks " + std::to_string(*p.limit) + ": " + output_room(*p.limit) +
                               "; use a bigger output");
    } else if (auto n = recorded_data_size(bm, sb0->data_sm(), &untrusted)) {
        p.limit = *n;
        p.limit_name = "at or beyond the end of the data device (" + plural(*n, "block") +
                       ", recorded in the superblock's data space map)";
        if (out_blocks && !output_describes(*n, *out_blocks))
            throw repair_error(output_room(*n) + ", the data device size recorded in the superblock; use a bigger output");
    }

    chosen_trees t = choose_trees(bm, sb0 ? &*sb0 : nullptr, opts.report);
    p.summary.source = t.source;
    p.summary.details_root = t.details_root;
    p.summary.mapping_root = t.mapping_root;

    // Devices in both trees, with a good level-2 root and an id the kernel accepts.
    auto d = t.details.begin();
    auto m = t.roots.begin();
    auto drop = [&](dev_id id, const std::string& why) {
        ++p.summary.dropped_devices;
        say(opts, "thin device " + std::to_string(id) + " dropped: " + why);
    };
    while (d != t.details.end() || m != t.roots.end()) {
        if (m == t.roots.end() || (d != t.details.end() && d->first < m->first)) {
            drop(d->first, "it is in the device details tree only");
            ++d;
        } else if (d == t.details.end() || m->first < d->first) {
            drop(m->first, m->second ? "it is in the mapping tree only" : "its mapping tree root is unreadable");
            ++m;
        } else {
            if (!m->second)
                drop(d->first, "its mapping tree root is unreadable");
            else if (d->first > MAX_DEV_ID)
                drop(d->first, "the id is above the kernel's limit " + std::to_string(MAX_DEV_ID));
            else
                p.devices.push_back({d->first, d->second, *m->second});
            ++d;
            ++m;
        }
    }

    // First walk: exact counts, highest data block and time.
    std::optional<std::uint64_t> max_data;
    std::uint32_t max_time = 0;
    for (planned_device& dev : p.devices) {
        count_walker w(bm, p.limit, dev.id, opts);
        btree::walk(bm, dev.root, {1, 8}, w);
        dev.details.mapped_blocks = w.count;
        p.summary.mappings += w.count;
        p.summary.lost_ranges += w.lost;
        p.summary.dropped_mappings += w.dropped;
        if (w.dropped)
            say(opts, "thin device " + std::to_string(dev.id) + ": " + plural(w.dropped, "mapping") +
                          " to data blocks " + p.limit_name + " dropped (the highest: data block " +
                          std::to_string(w.max_dropped) + ")");
        if (w.max_data && (!max_data || *w.max_data > *max_data)) max_data = w.max_data;
        max_time = std::max({max_time, w.max_time, dev.details.creation_time, dev.details.snapshotted_time});
    }
    p.summary.devices = p.devices.size();

    superblock_info& info = p.sb;
    info.uuid = "";
    info.flags = 0;
    info.version = SUPERBLOCK_VERSION;
    info.time = std::max(sb0 ? sb0->time : 0u, max_time);
    info.transaction = opts.transaction_id ? *opts.transaction_id : sb0->trans_id;
    info.data_block_size = opts.data_block_size ? *opts.data_block_size : sb0->data_block_size;
    if (p.limit) {
        info.nr_data_blocks = *p.limit;
    } else {
        // The data space map is damaged. Its recorded size is kept when every mapping is below it
        // and the output can describe it (the index blocks may be what broke). Otherwise the
        // smallest size keeping every mapping: safe, since the kernel grows the data space map to
        // the data device's size at activation (pool.md §6), whereas a size above the device's
        // would make activation fail.
        const std::uint64_t recorded = sb0->data_sm().nr_blocks;
        const std::uint64_t needed = max_data ? *max_data + 1 : 0;
        if (recorded >= needed && recorded <= MAX_DATA_BLOCK + 1 &&
            (!out_blocks || output_describes(recorded, *out_blocks))) {
            say(opts, "the superblock's data space map is damaged (" + untrusted +
                          "); keeping the data device size it records, " + plural(recorded, "block") +
                          " (no mapping is beyond it)");
            info.nr_data_blocks = recorded;
        } else {
            if (out_blocks && !output_describes(needed, *out_blocks))
                throw repair_error(
                    "the data device size is unknown (the superblock's data space map is damaged: " + untrusted +
                    ") and the highest mapped data block, " + (max_data ? std::to_string(*max_data) : "none") +
                    ", is beyond what the output can describe: " + output_room(needed) +
                    "; give the data device size with --nr-data-blocks");
            say(opts, "the superblock's data space map is damaged (" + untrusted + "): nr_data_blocks set to " +
                          std::to_string(needed) + ", the highest mapped data block + 1 (it records " +
                          std::to_string(recorded) + ")");
            info.nr_data_blocks = needed;
        }
    }
    return p;
}

void emit_plan(block_manager& bm, const plan& p, const repair_options& opts, emitter& out) {
    out.begin_superblock(p.sb);
    std::uint64_t done = 0;
    for (const planned_device& dev : p.devices) {
        const device_details& d = dev.details;
        out.begin_device({dev.id, d.mapped_blocks, d.transaction_id, d.creation_time, d.snapshotted_time});
        std::function<void(std::uint64_t)> step;
        if (opts.progress) step = [&](std::uint64_t n) { opts.progress(done + n, p.summary.mappings); };
        emit_walker w(bm, p.limit, out, step);
        btree::walk(bm, dev.root, {1, 8}, w);
        w.finish();
        out.end_device();
        done += w.emitted;
        if (opts.progress) opts.progress(done, p.summary.mappings);
    }
    out.end_superblock();
}

} // namespace

repair_summary repair_dump(block_manager& bm, const repair_options& opts, emitter& out) {
    plan p = make_plan(bm, opts, std::nullopt);
    emit_plan(bm, p, opts, out);
    return p.summary;
}

repair_summary repair_metadata(block_manager& input, std::shared_ptr<io_engine> output, const repair_options& opts) {
    plan p = make_plan(input, opts, output->nr_blocks());
    restore::restore_emitter e(output, restore::restore_options{});
    try {
        emit_plan(input, p, opts, e);
        if (!e.committed()) throw repair_error("the repaired metadata was not committed");
    } catch (...) {
        e.abandon();
        try {
            aligned_block zero = make_aligned_block(true);
            output->write(SUPERBLOCK_LOCATION, zero.get());
            output->flush();
        } catch (...) {
            // The original error is the one to report.
        }
        throw;
    }
    return p.summary;
}

} // namespace thin::repair
