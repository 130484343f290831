#include "thin/check/check.h"

#include "thin/check/counts.h"
#include "thin/check/mapping_check.h"
#include "thin/check/tree_walk.h"

#include "persistent-data/block_manager.h"
#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"
#include "thin/metadata/mapping.h"
#include "thin/metadata/superblock.h"

#include <algorithm>
#include <map>
#include <set>
#include <thread>

namespace thin::check {

using namespace pdata;

namespace {

// Upper nodes only pass through the cache (leaves and bitmaps are read into private buffers),
// so a small cache bounds memory without costing reads.
constexpr std::size_t CACHE_BLOCKS = 256;
// Differing ranges printed per space map; the rest are summarised.
constexpr std::size_t MAX_DIFFERENCE_LINES = 100;

// One superblock whose trees are checked: block 0's, or its metadata snapshot copy.
struct tree_set {
    std::string prefix;  // "" or "metadata snapshot: "
    superblock sb;
    std::map<std::uint64_t, device_details> details;
    std::map<std::uint64_t, block_address> roots;
    bool details_damaged = false;
    bool top_damaged = false;
    std::map<std::uint64_t, unsigned> handles;
};

// Reads block b and checks it as a superblock copy (checksum only, as both reference checkers).
// Empty on success; otherwise what is wrong.
std::string read_superblock(io_engine& engine, block_address b, superblock& out) {
    if (b >= engine.nr_blocks()) return "block " + std::to_string(b) + " is beyond the end of the metadata device";
    auto buf = make_aligned_block(false);
    try {
        engine.read(b, buf.get());
    } catch (const io_error& e) {
        return e.what();
    }
    std::uint32_t want = block_checksum(buf.get(), block_salt::superblock);
    if (load_le32(buf.get()) != want) return "bad checksum in superblock, wanted " + std::to_string(want);
    out = superblock::unpack(buf.get());
    return {};
}

std::string plural(std::uint64_t n, const char* one, const char* many) {
    return std::to_string(n) + " " + (n == 1 ? one : many);
}

void report_differences(const difference_list& diffs, const char* kind, reporter& rep) {
    std::size_t shown = 0;
    std::uint64_t more_ranges = 0, more_blocks = 0;
    severity more_sev = severity::none;
    for (auto& d : diffs.ranges()) {
        severity s = d.leak() ? severity::non_fatal : severity::fatal;
        if (shown == MAX_DIFFERENCE_LINES) {
            ++more_ranges;
            more_blocks += d.end - d.begin;
            more_sev = std::max(more_sev, s);
            continue;
        }
        ++shown;
        std::string what = d.end - d.begin == 1 ? "block " + std::to_string(d.begin)
                                                : "blocks " + format_range(d.begin, d.end);
        rep.problem(s, std::string(kind) + " reference counts differ for " + what + ", expected " +
                           std::to_string(d.expected) + ", but got " + std::to_string(d.actual));
    }
    if (more_ranges)
        rep.problem(more_sev, "... and " + plural(more_ranges, "more range", "more ranges") + " of differing " + kind +
                                  " reference counts (" + plural(more_blocks, "block", "blocks") + ")");
    std::uint64_t leaked = 0;
    for (auto& d : diffs.ranges())
        if (d.leak()) leaked += d.end - d.begin;
    if (leaked) rep.note(plural(leaked, std::string(kind + std::string(" block has")).c_str(),
                                std::string(kind + std::string(" blocks have")).c_str()) + " leaked");
}

class checker {
public:
    checker(std::shared_ptr<io_engine> engine, const check_options& opts, reporter& rep, std::ostream* out)
        : engine_(std::move(engine)), opts_(opts), rep_(rep), out_(out), bm_(engine_, CACHE_BLOCKS) {}

    check_result run() {
        run_stages();
        res_.worst = rep_.worst();
        return std::move(res_);
    }

private:
    void run_stages() {
        if (!check_superblocks()) return;
        if (opts_.super_block_only) return;
        check_details();
        check_top_level();
        if (opts_.skip_mappings) return;
        check_mappings();
        if (opts_.use_metadata_snap) return;
        check_space_maps();
    }

    bool check_superblocks() {
        rep_.section("examining superblock");
        superblock sb;
        std::string problem = read_superblock(*engine_, SUPERBLOCK_LOCATION, sb);
        if (!problem.empty()) {
            rep_.problem(severity::fatal, "superblock is corrupt", {problem});
            return false;
        }
        res_.superblock_ok = true;
        res_.needs_check = sb.needs_check();
        live_ = sb;
        sm_root msm = sb.metadata_sm();
        res_.metadata_free_blocks = msm.nr_blocks > msm.nr_allocated ? msm.nr_blocks - msm.nr_allocated : 0;

        superblock snap;
        bool have_snap = false;
        if (sb.metadata_snap) {
            std::string p = read_superblock(*engine_, sb.metadata_snap, snap);
            if (p.empty()) {
                have_snap = true;
            } else {
                rep_.problem(severity::fatal,
                             "metadata snapshot superblock (block " + std::to_string(sb.metadata_snap) + ") is corrupt",
                             {p});
                if (opts_.use_metadata_snap) return false;
            }
        }

        if (opts_.use_metadata_snap) {
            if (!sb.metadata_snap) {
                rep_.problem(severity::fatal, "no metadata snapshot found (the superblock's metadata_snap is 0)");
                return false;
            }
            sets_.push_back(tree_set{"", snap});
        } else {
            sets_.push_back(tree_set{"", sb});
            if (have_snap) sets_.push_back(tree_set{"metadata snapshot: ", snap});
        }
        res_.transaction_id = sets_[0].sb.trans_id;
        if (out_) {
            *out_ << "TRANSACTION_ID=" << res_.transaction_id << "\n"
                  << "METADATA_FREE_BLOCKS=" << res_.metadata_free_blocks << "\n";
            out_->flush();
        }
        if (opts_.override_mapping_root) sets_[0].sb.data_mapping_root = *opts_.override_mapping_root;
        if (opts_.override_details_root) sets_[0].sb.device_details_root = *opts_.override_details_root;

        block_address dev_blocks = engine_->nr_blocks();
        if (!opts_.use_metadata_snap) {
            if (msm.nr_blocks > dev_blocks)
                rep_.problem(severity::fatal, "metadata space map has " + std::to_string(msm.nr_blocks) +
                                                  " blocks, more than the metadata device's " + std::to_string(dev_blocks));
        }
        // --super-block-only stops after this stage: it needs no per-block arrays.
        if (!opts_.use_metadata_snap && !opts_.super_block_only) {
            md_ = std::make_unique<metadata_refs>(std::min<std::uint64_t>(msm.nr_blocks, dev_blocks));
            md_->inc(SUPERBLOCK_LOCATION);
            if (sb.metadata_snap) md_->inc(sb.metadata_snap);
            for (auto& s : sets_) {
                md_->inc(s.sb.data_mapping_root);
                md_->inc(s.sb.device_details_root);
            }
        }
        return true;
    }

    void check_details() {
        rep_.section("examining devices tree");
        for (auto& s : sets_) {
            tree_walk_callbacks cb;
            cb.value = [&](std::uint64_t k, const std::uint8_t* v) { s.details[k] = device_details::unpack(v); };
            cb.damage = [&](const btree::key_range& lost, block_address b, const std::string& what) {
                s.details_damaged = true;
                rep_.problem(severity::fatal, s.prefix + "missing devices: " + format_range(lost.begin, lost.end),
                             {at_block(what, b)});
            };
            cb.warning = [&](block_address, const std::string& what) { warn(s.prefix + "devices tree: " + what); };
            walk_tree(bm_, s.sb.device_details_root, device_details::DISK_SIZE, md_.get(), false, cb);
        }
    }

    void check_top_level() {
        rep_.section(opts_.skip_mappings ? "examining top level of mapping tree" : "examining mapping tree");
        for (auto& s : sets_) {
            tree_walk_callbacks cb;
            cb.value = [&](std::uint64_t k, const std::uint8_t* v) { s.roots[k] = load_le64(v); };
            cb.damage = [&](const btree::key_range& lost, block_address b, const std::string& what) {
                s.top_damaged = true;
                rep_.problem(severity::fatal,
                             s.prefix + "missing all mappings for devices: " + format_range(lost.begin, lost.end),
                             {at_block(what, b)});
            };
            cb.warning = [&](block_address, const std::string& what) { warn(s.prefix + "mapping tree: " + what); };
            walk_tree(bm_, s.sb.data_mapping_root, 8, md_.get(), true, cb);

            if (s.details_damaged || s.top_damaged) continue;
            std::vector<std::string> only_details, only_mappings;
            for (auto& [d, det] : s.details)
                if (!s.roots.count(d)) only_details.push_back("thin device " + std::to_string(d) + " has details but no mapping tree");
            for (auto& [d, r] : s.roots)
                if (!s.details.count(d)) only_mappings.push_back("thin device " + std::to_string(d) + " has a mapping tree but no details");
            if (!only_details.empty() || !only_mappings.empty()) {
                only_details.insert(only_details.end(), only_mappings.begin(), only_mappings.end());
                rep_.problem(severity::fatal, s.prefix + "Inconsistency between the details tree and the mapping tree",
                             only_details);
            }
        }
        res_.nr_devices = sets_[0].roots.size();
    }

    void check_mappings() {
        unsigned threads = opts_.threads;
        if (!threads) threads = std::clamp(std::thread::hardware_concurrency(), 1u, 2u);
        sm_root dsm = live_.data_sm();
        std::uint64_t nr_data = dsm.nr_blocks;
        if (!opts_.use_metadata_snap) {
            // Mappings hold 40-bit data block numbers (format.md §5.3): a bigger data space map is
            // corrupt, and counting into it would ask for an absurd amount of memory.
            if (nr_data > MAX_DATA_BLOCK + 1)
                rep_.problem(severity::fatal, "data space map has " + std::to_string(nr_data) +
                                                  " blocks, more than a mapping can address (2^40)");
            else
                data_ = std::make_unique<data_counts>(nr_data);
        }
        // With nr_data 0 every mapping is out of range; the range check needs a known size.
        mapping_checker mc(bm_, md_.get(), data_.get(), nr_data ? nr_data : ~std::uint64_t(0) >> 1, threads);
        if (nr_data == 0) empty_data_device_ = true;
        for (auto& s : sets_)
            for (auto& [d, root] : s.roots) s.handles[d] = mc.add_tree(root);
        mc.read_leaves(opts_.progress);
        res_.nr_leaves = mc.nr_leaves();

        for (auto& s : sets_) {
            for (auto& [d, h] : s.handles) {
                tree_summary t = mc.evaluate(h);
                std::string dev = s.prefix + "thin device " + std::to_string(d);
                for (auto& dmg : t.damage)
                    rep_.problem(severity::fatal, dev + " is missing mappings " + format_range(dmg.begin, dmg.end),
                                 {at_block(dmg.what, dmg.block)});
                for (auto& w : t.warnings) warn(dev + ": " + w);
                std::uint64_t oob = empty_data_device_ ? t.mappings : t.out_of_range;
                if (oob)
                    rep_.problem(severity::fatal, dev + " maps " + plural(oob, "block", "blocks") +
                                                      " to data blocks beyond the end of the data device (" +
                                                      plural(nr_data, "block", "blocks") + ")");
                if (&s == &sets_[0]) res_.nr_mappings += t.mappings;
                auto it = s.details.find(d);
                if (t.damage.empty() && it != s.details.end() && it->second.mapped_blocks != t.mappings)
                    rep_.problem(severity::fatal, dev + ": the details say mapped_blocks is " +
                                                      std::to_string(it->second.mapped_blocks) +
                                                      ", but the mapping tree holds " + plural(t.mappings, "mapping", "mappings"));
            }
        }
    }

    void check_space_maps() {
        if (md_ && md_->nr_beyond_end()) {
            std::string eg;
            for (auto b : md_->beyond_end()) eg += (eg.empty() ? "" : ", ") + std::to_string(b);
            rep_.problem(severity::fatal, plural(md_->nr_beyond_end(), "reference", "references") +
                                              " to metadata blocks beyond the end of the metadata space map (" +
                                              plural(md_->nr_blocks(), "block", "blocks") + "): " + eg);
        }
        // Counts cannot be compared meaningfully once trees are lost (the reference stops here too).
        if (rep_.has_fatal()) return;
        rep_.section("checking space map counts");
        sm_root dsm = live_.data_sm();
        sm_root msm = live_.metadata_sm();
        space_map_layout data_layout = walk_data_space_map(bm_, dsm, *md_, rep_);
        space_map_layout md_layout = walk_metadata_space_map(bm_, msm, *md_, rep_);
        if (rep_.has_fatal()) return;
        res_.space_maps_checked = true;
        compare_data_counts(bm_, data_layout, dsm.nr_blocks, *data_, res_.data_differences, rep_);
        compare_metadata_counts(bm_, md_layout, msm.nr_blocks, *md_, res_.metadata_differences, rep_);
        bool other_fatal = rep_.has_fatal();
        report_differences(res_.data_differences, "data", rep_);
        report_differences(res_.metadata_differences, "metadata", rep_);
        bool all_repairable = true;
        for (auto* dl : {&res_.data_differences, &res_.metadata_differences})
            for (auto& d : dl->ranges())
                if (!d.repairable()) all_repairable = false;
        res_.only_repairable_errors = !other_fatal && all_repairable;
    }

    void warn(const std::string& line) {
        if (warned_.insert(line).second) rep_.problem(severity::non_fatal, line);
    }

    std::shared_ptr<io_engine> engine_;
    const check_options& opts_;
    reporter& rep_;
    std::ostream* out_;
    block_manager bm_;
    check_result res_;
    superblock live_;
    std::vector<tree_set> sets_;
    std::unique_ptr<metadata_refs> md_;
    std::unique_ptr<data_counts> data_;
    std::set<std::string> warned_;
    bool empty_data_device_ = false;
};

} // namespace

bool check_result::has_repairable_differences() const {
    for (auto* dl : {&metadata_differences, &data_differences})
        for (auto& d : dl->ranges())
            if (d.repairable()) return true;
    return false;
}

check_result check_metadata(std::shared_ptr<io_engine> engine, const check_options& opts, reporter& rep,
                            std::ostream* out) {
    checker c(std::move(engine), opts, rep, out);
    return c.run();
}

} // namespace thin::check
