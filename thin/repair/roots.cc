#include "thin/repair/roots.h"

#include "thin/repair/scan.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/btree/walk.h"

#include <algorithm>
#include <tuple>

namespace thin::repair {

using namespace pdata;

namespace {

constexpr int RANK_LIVE = 0;
constexpr int RANK_SNAPSHOT = 1;    // the copy block 0 names
constexpr int RANK_COPY = 2;        // + position among other copies, newest first
constexpr int RANK_SCANNED = 1000;  // found by the scan only
constexpr std::size_t MAX_CANDIDATES = 32;

// The values of a one-level tree, and how much of it was lost.
class collect_visitor : public btree::walk_visitor {
public:
    std::function<void(std::uint64_t, const std::uint8_t*)> on_value;
    unsigned damage = 0;
    std::string first_problem;

    void visit_value(const std::vector<std::uint64_t>&, std::uint64_t key, const std::uint8_t* v) override {
        on_value(key, v);
    }
    void visit_damage(const std::vector<std::uint64_t>&, btree::key_range r, block_address b,
                      const std::string& what) override {
        if (!damage++)
            first_problem = "keys " + btree::to_string(r) + " lost at block " + std::to_string(b) + ": " + what;
    }
};

struct details_eval {
    block_address root = 0;
    int rank = RANK_SCANNED;
    std::map<dev_id, device_details> devs;
    unsigned damage = 0;
    std::string problem;
    std::uint64_t max_trans = 0;
    std::uint32_t max_snap = 0;
};

struct mapping_eval {
    block_address root = 0;
    int rank = RANK_SCANNED;
    std::map<dev_id, std::optional<block_address>> roots;
    std::vector<dev_id> good;  // devices with a good level-2 root, ascending
    unsigned damage = 0;       // lost ranges of the level-1 tree + bad level-2 roots
    std::string problem;
};

details_eval eval_details(block_manager& bm, block_address root, int rank) {
    details_eval e;
    e.root = root;
    e.rank = rank;
    collect_visitor v;
    v.on_value = [&](std::uint64_t k, const std::uint8_t* p) {
        device_details d = device_details::unpack(p);
        e.devs.emplace(k, d);
        e.max_trans = std::max(e.max_trans, d.transaction_id);
        e.max_snap = std::max(e.max_snap, d.snapshotted_time);
    };
    btree::walk(bm, root, {1, device_details::DISK_SIZE}, v);
    e.damage = v.damage;
    e.problem = v.first_problem;
    return e;
}

// Empty when b is a good level-2 root (a node whose leaves would hold 8-byte values).
std::string check_level2_root(block_manager& bm, block_address b) {
    try {
        read_ref r = bm.read_lock(b, btree::btree_node_validator());
        btree::node_ref n(r.data());
        if (n.value_size() != 8) return "value_size " + std::to_string(n.value_size()) + ", expected 8";
        return {};
    } catch (const corrupt_block& e) {
        return e.problem();
    } catch (const io_error& e) {
        return e.what();
    }
}

mapping_eval eval_mapping(block_manager& bm, block_address root, int rank) {
    mapping_eval e;
    e.root = root;
    e.rank = rank;
    collect_visitor v;
    v.on_value = [&](std::uint64_t k, const std::uint8_t* p) { e.roots.emplace(k, load_le64(p)); };
    btree::walk(bm, root, {1, 8}, v);
    e.damage = v.damage;
    e.problem = v.first_problem;
    for (auto& [dev, r] : e.roots) {
        std::string why = check_level2_root(bm, *r);
        if (why.empty()) {
            e.good.push_back(dev);
            continue;
        }
        if (!e.damage++ || e.problem.empty())
            e.problem = "thin device " + std::to_string(dev) + ": mapping tree root " + std::to_string(*r) + ": " + why;
        r.reset();
    }
    return e;
}

bool consistent(const details_eval& d, const mapping_eval& m) {
    if (d.damage || m.damage || d.devs.size() != m.good.size()) return false;
    auto g = m.good.begin();
    for (auto& [dev, det] : d.devs)
        if (*g++ != dev) return false;
    return true;
}

std::size_t common_devices(const details_eval& d, const mapping_eval& m) {
    std::size_t n = 0;
    auto it = d.devs.begin();
    for (dev_id dev : m.good) {
        while (it != d.devs.end() && it->first < dev) ++it;
        if (it == d.devs.end()) break;
        if (it->first == dev) ++n;
    }
    return n;
}

chosen_trees take(const std::string& source, details_eval& d, mapping_eval& m) {
    chosen_trees t;
    t.source = source;
    t.details_root = d.root;
    t.mapping_root = m.root;
    t.details = std::move(d.devs);
    t.roots = std::move(m.roots);
    return t;
}

std::string describe(const details_eval& d, const mapping_eval& m) {
    std::string s;
    if (d.damage) s += "device details tree (block " + std::to_string(d.root) + "): " + d.problem;
    if (m.damage) s += std::string(s.empty() ? "" : "; ") + "mapping tree (block " + std::to_string(m.root) + "): " + m.problem;
    if (s.empty()) s = "the device details tree and the mapping tree hold different devices";
    return s;
}

} // namespace

chosen_trees choose_trees(block_manager& bm, const superblock* sb0,
                          const std::function<void(const std::string&)>& report) {
    auto say = [&](const std::string& s) {
        if (report) report(s);
    };

    std::vector<details_eval> ds;
    std::vector<mapping_eval> ms;
    auto add_pair = [&](const superblock& sb, int rank) {
        if (std::none_of(ds.begin(), ds.end(), [&](const details_eval& e) { return e.root == sb.device_details_root; }))
            ds.push_back(eval_details(bm, sb.device_details_root, rank));
        if (std::none_of(ms.begin(), ms.end(), [&](const mapping_eval& e) { return e.root == sb.data_mapping_root; }))
            ms.push_back(eval_mapping(bm, sb.data_mapping_root, rank));
    };

    block_address snap_location = 0;
    if (sb0) {
        details_eval d = eval_details(bm, sb0->device_details_root, RANK_LIVE);
        mapping_eval m = eval_mapping(bm, sb0->data_mapping_root, RANK_LIVE);
        if (consistent(d, m)) return take("superblock", d, m);
        say("the superblock's trees are damaged: " + describe(d, m));
        ds.push_back(std::move(d));
        ms.push_back(std::move(m));

        if (sb0->metadata_snap) {
            snap_location = sb0->metadata_snap;
            try {
                read_ref r = bm.read_lock(snap_location, superblock_validator());
                superblock snap = superblock::unpack(r.data());
                r.release();
                details_eval sd = eval_details(bm, snap.device_details_root, RANK_SNAPSHOT);
                mapping_eval sm = eval_mapping(bm, snap.data_mapping_root, RANK_SNAPSHOT);
                std::string source = "metadata snapshot (block " + std::to_string(snap_location) + ")";
                if (consistent(sd, sm)) {
                    say("using the trees of the " + source);
                    return take(source, sd, sm);
                }
                say("the " + source + " is damaged too: " + describe(sd, sm));
                ds.push_back(std::move(sd));
                ms.push_back(std::move(sm));
            } catch (const corrupt_block& e) {
                say("metadata snapshot superblock (block " + std::to_string(snap_location) + "): " + e.problem());
            } catch (const io_error& e) {
                say("metadata snapshot superblock (block " + std::to_string(snap_location) + "): " + e.what());
            }
        }
    }

    scan_result scan = scan_metadata(bm);
    say("scanned " + std::to_string(scan.nr_blocks) + " metadata blocks: " + std::to_string(scan.btree_nodes) +
        " b-tree nodes, " + std::to_string(scan.superblock_copies.size()) + " superblock copies, " +
        std::to_string(scan.details_roots.size()) + " candidate device details roots, " +
        std::to_string(scan.mapping_roots.size()) + " candidate mapping tree roots");

    std::vector<scanned_superblock> copies = scan.superblock_copies;
    std::stable_sort(copies.begin(), copies.end(),
                     [](const scanned_superblock& a, const scanned_superblock& b) { return a.sb.trans_id > b.sb.trans_id; });
    int next_rank = RANK_COPY;
    for (const auto& c : copies)
        if (c.location != snap_location) add_pair(c.sb, next_rank++);
    for (block_address b : scan.details_roots)
        if (std::none_of(ds.begin(), ds.end(), [&](const details_eval& e) { return e.root == b; }))
            ds.push_back(eval_details(bm, b, RANK_SCANNED));
    for (block_address b : scan.mapping_roots)
        if (std::none_of(ms.begin(), ms.end(), [&](const mapping_eval& e) { return e.root == b; }))
            ms.push_back(eval_mapping(bm, b, RANK_SCANNED));

    // Keep the most promising of each kind, then pair them.
    auto d_key = [](const details_eval& e) {
        return std::make_tuple(e.devs.size(), -static_cast<long>(e.damage), -e.rank, e.max_trans, e.max_snap, e.root);
    };
    auto m_key = [](const mapping_eval& e) {
        return std::make_tuple(e.good.size(), -static_cast<long>(e.damage), -e.rank, e.root);
    };
    std::sort(ds.begin(), ds.end(), [&](const auto& a, const auto& b) { return d_key(a) > d_key(b); });
    std::sort(ms.begin(), ms.end(), [&](const auto& a, const auto& b) { return m_key(a) > m_key(b); });
    if (ds.size() > MAX_CANDIDATES) ds.resize(MAX_CANDIDATES);
    if (ms.size() > MAX_CANDIDATES) ms.resize(MAX_CANDIDATES);

    // Between pairs: devices in common, then damage, then roots of block 0's superblock. Past
    // that, superblock copies get no preference over the scan: a copy is a metadata snapshot,
    // older than the live trees the scan also finds (unreferenced roots) when block 0 is gone.
    // Recency decides: details with higher device transaction ids and snapshot times, then
    // higher block numbers (the allocator moves forwards through the device).
    using pair_key = std::tuple<std::size_t, long, int, std::uint64_t, std::uint32_t, block_address, block_address>;
    std::optional<pair_key> best;
    std::size_t bd = 0, bm_i = 0;
    for (std::size_t i = 0; i < ds.size(); ++i) {
        for (std::size_t j = 0; j < ms.size(); ++j) {
            const details_eval& d = ds[i];
            const mapping_eval& m = ms[j];
            int live = (d.rank == RANK_LIVE) + (m.rank == RANK_LIVE);
            pair_key k{common_devices(d, m), -static_cast<long>(d.damage + m.damage), live, d.max_trans, d.max_snap,
                       m.root, d.root};
            if (!best || k > *best) {
                best = k;
                bd = i;
                bm_i = j;
            }
        }
    }
    if (!best || std::get<0>(*best) == 0) {
        say("no device could be recovered: no device details tree and mapping tree with a device in common");
        chosen_trees t;
        t.source = "nothing";
        return t;
    }
    say("using the device details tree at block " + std::to_string(ds[bd].root) + " and the mapping tree at block " +
        std::to_string(ms[bm_i].root) + " (devices in common: " + std::to_string(std::get<0>(*best)) + ")");
    return take("scan", ds[bd], ms[bm_i]);
}

} // namespace thin::repair
