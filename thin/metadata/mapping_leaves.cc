#include "thin/metadata/mapping_leaves.h"

#include "persistent-data/btree/walk.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <unordered_map>

namespace thin {

using namespace pdata;
using pdata::btree::node_ref;

namespace {

constexpr std::uint64_t NO_LIMIT = std::numeric_limits<std::uint64_t>::max();
// Deeper than this is a loop or garbage (252^8 > 2^63).
constexpr unsigned MAX_HEIGHT = 32;

std::string range_text(std::uint64_t first, std::uint64_t last) {
    std::string s = "[";
    s += std::to_string(first);
    s += "..";
    s += last == NO_LIMIT ? std::string("-") : std::to_string(last);
    s += "]";
    return s;
}

// A one-level tree read whole; any damage ends the run.
template <typename Fn>
class strict_visitor : public btree::walk_visitor {
public:
    strict_visitor(const char* tree, Fn fn) : tree_(tree), fn_(std::move(fn)) {}
    void visit_value(const std::vector<std::uint64_t>&, std::uint64_t key, const std::uint8_t* v) override {
        fn_(key, v);
    }
    void visit_damage(const std::vector<std::uint64_t>&, btree::key_range lost, block_address b,
                      const std::string& what) override {
        throw corrupt_block(b, std::string(tree_) + ": " + what + " (keys " + btree::to_string(lost) + " lost)");
    }

private:
    const char* tree_;
    Fn fn_;
};

template <typename Fn>
void walk_strict(block_manager& bm, block_address root, std::uint32_t value_size, const char* tree, Fn fn) {
    strict_visitor<Fn> v(tree, std::move(fn));
    btree::walk(bm, root, btree::walk_options{1, value_size}, v);
}

// Sets of devices, interned so that a node reached from many devices costs one index.
class owner_table {
public:
    std::uint32_t intern(std::vector<dev_id> s) {
        auto [it, inserted] = index_.emplace(std::move(s), static_cast<std::uint32_t>(sets_.size()));
        if (inserted) sets_.push_back(it->first);
        return it->second;
    }
    std::uint32_t merge(std::uint32_t a, std::uint32_t b) {
        if (a == b) return a;
        auto key = std::make_pair(std::min(a, b), std::max(a, b));
        auto found = merged_.find(key);
        if (found != merged_.end()) return found->second;
        std::vector<dev_id> u;
        std::set_union(sets_[a].begin(), sets_[a].end(), sets_[b].begin(), sets_[b].end(), std::back_inserter(u));
        std::uint32_t r = intern(std::move(u));
        merged_.emplace(key, r);
        return r;
    }
    const std::vector<dev_id>& get(std::uint32_t i) const { return sets_[i]; }
    std::vector<std::vector<dev_id>> take() { return std::move(sets_); }

private:
    std::map<std::vector<dev_id>, std::uint32_t> index_;
    std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint32_t> merged_;
    std::vector<std::vector<dev_id>> sets_;
};

struct pending_node {
    std::uint64_t first = 0;
    std::uint64_t last = NO_LIMIT;
    std::uint32_t owners = 0;
};
using level_map = std::unordered_map<block_address, pending_node>;

void add_node(level_map& level, owner_table& owners, block_address b, const pending_node& p) {
    auto [it, inserted] = level.emplace(b, p);
    if (inserted) return;
    it->second.first = std::max(it->second.first, p.first);
    it->second.last = std::min(it->second.last, p.last);
    it->second.owners = owners.merge(it->second.owners, p.owners);
}

std::string owners_text(const std::vector<dev_id>& devs) {
    std::string s = devs.size() == 1 ? "device " : "devices ";
    for (std::size_t i = 0; i < devs.size() && i < 8; ++i) s += (i ? "," : "") + std::to_string(devs[i]);
    if (devs.size() > 8) s += ",...";
    return s;
}

// Height of a level-2 tree above its leaves (0: the root is a leaf), down the leftmost path.
unsigned tree_height(block_manager& bm, block_address root, dev_id dev) {
    block_address b = root;
    for (unsigned h = 0; h <= MAX_HEIGHT; ++h) {
        read_ref r = bm.read_lock(b, btree::btree_node_validator());
        node_ref n(r.data());
        if (n.is_leaf()) return h;
        if (!n.nr_entries())
            throw corrupt_block(b, "mapping tree of device " + std::to_string(dev) + ": internal node with no entries");
        b = n.value64(0);
    }
    throw corrupt_block(root, "mapping tree of device " + std::to_string(dev) + " is deeper than " +
                                  std::to_string(MAX_HEIGHT) + " levels (a loop?)");
}

void check_internal(node_ref n, block_address b, const pending_node& p, unsigned height,
                    const std::vector<dev_id>& devs) {
    auto fail = [&](const std::string& what) {
        throw corrupt_block(b, "mapping tree of " + owners_text(devs) + ": " + what);
    };
    if (!n.is_internal())
        fail("a leaf where an internal node of height " + std::to_string(height) + " is expected (leaves at different depths)");
    if (n.value_size() != 8) fail("internal node has value_size " + std::to_string(n.value_size()) + ", expected 8");
    unsigned nr = n.nr_entries();
    if (!nr) fail("internal node with no entries");
    for (unsigned i = 1; i < nr; ++i)
        if (n.key(i) <= n.key(i - 1)) fail("keys out of order at index " + std::to_string(i));
    if (n.key(0) < p.first || n.key(nr - 1) > p.last)
        fail("keys " + range_text(n.key(0), n.key(nr - 1)) + " outside the parent's range " + range_text(p.first, p.last));
}

} // namespace

std::map<dev_id, device_details> read_device_details(block_manager& bm, block_address details_root) {
    std::map<dev_id, device_details> out;
    walk_strict(bm, details_root, device_details::DISK_SIZE, "device details tree",
                [&](std::uint64_t key, const std::uint8_t* v) { out.emplace(key, device_details::unpack(v)); });
    return out;
}

std::map<dev_id, block_address> read_mapping_roots(block_manager& bm, block_address mapping_root) {
    std::map<dev_id, block_address> out;
    walk_strict(bm, mapping_root, 8, "mapping tree (top level)",
                [&](std::uint64_t key, const std::uint8_t* v) { out.emplace(key, load_le64(v)); });
    return out;
}

mapping_leaves collect_mapping_leaves(block_manager& bm, const std::map<dev_id, block_address>& roots) {
    owner_table owners;
    std::vector<level_map> by_height;

    // Devices sharing a root (a snapshot not yet written to) are one tree.
    std::map<block_address, std::vector<dev_id>> root_devs;
    for (const auto& [dev, root] : roots) root_devs[root].push_back(dev);
    for (auto& [root, devs] : root_devs) {
        unsigned h = tree_height(bm, root, devs.front());
        if (by_height.size() <= h) by_height.resize(h + 1);
        add_node(by_height[h], owners, root, pending_node{0, NO_LIMIT, owners.intern(devs)});
    }

    mapping_leaves out;
    constexpr std::size_t CHUNK = 256;
    for (std::size_t h = by_height.size(); h-- > 1;) {
        std::vector<std::pair<block_address, pending_node>> nodes(by_height[h].begin(), by_height[h].end());
        by_height[h].clear();
        std::sort(nodes.begin(), nodes.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        for (std::size_t c = 0; c < nodes.size(); c += CHUNK) {
            std::size_t end = std::min(nodes.size(), c + CHUNK);
            std::vector<block_address> blocks;
            for (std::size_t i = c; i < end; ++i) blocks.push_back(nodes[i].first);
            bm.prefetch(blocks);
            for (std::size_t i = c; i < end; ++i) {
                const auto& [b, p] = nodes[i];
                read_ref r = bm.read_lock(b, btree::btree_node_validator());
                node_ref n(r.data());
                check_internal(n, b, p, static_cast<unsigned>(h), owners.get(p.owners));
                ++out.internal_nodes;
                unsigned nr = n.nr_entries();
                for (unsigned i2 = 0; i2 < nr; ++i2) {
                    std::uint64_t last = i2 + 1 < nr ? n.key(i2 + 1) - 1 : p.last;
                    add_node(by_height[h - 1], owners, n.value64(i2), pending_node{n.key(i2), last, p.owners});
                }
            }
        }
    }
    if (!by_height.empty()) {
        out.leaves.reserve(by_height[0].size());
        for (const auto& [b, p] : by_height[0]) out.leaves.push_back(mapping_leaf{b, p.first, p.last, p.owners});
    }
    std::sort(out.leaves.begin(), out.leaves.end(), [](const auto& a, const auto& b) { return a.block < b.block; });
    out.owner_sets = owners.take();
    return out;
}

void check_mapping_leaf(node_ref n, block_address b, std::uint64_t first, std::uint64_t last) {
    auto fail = [&](const std::string& what) { throw corrupt_block(b, "mapping tree leaf: " + what); };
    if (!n.is_leaf()) fail("an internal node where a leaf is expected (leaves at different depths)");
    if (n.value_size() != 8) fail("leaf has value_size " + std::to_string(n.value_size()) + ", expected 8");
    unsigned nr = n.nr_entries();
    if (!nr) return;
    for (unsigned i = 1; i < nr; ++i)
        if (n.key(i) <= n.key(i - 1)) fail("keys out of order at index " + std::to_string(i));
    if (n.key(0) < first || n.key(nr - 1) > last)
        fail("keys " + range_text(n.key(0), n.key(nr - 1)) + " outside the parent's range " + range_text(first, last));
}

std::optional<std::uint64_t> highest_mapped_block(block_manager& bm, block_address root) {
    block_address b = root;
    for (unsigned h = 0; h <= MAX_HEIGHT; ++h) {
        read_ref r = bm.read_lock(b, btree::btree_node_validator());
        node_ref n(r.data());
        unsigned nr = n.nr_entries();
        if (n.is_leaf()) {
            if (!nr) return std::nullopt;
            return n.key(nr - 1);
        }
        if (!nr) throw corrupt_block(b, "mapping tree: internal node with no entries");
        b = n.value64(nr - 1);
    }
    throw corrupt_block(root, "mapping tree deeper than " + std::to_string(MAX_HEIGHT) + " levels (a loop?)");
}

// ---------------------------------------------------------------------------------------------
// leaf_reader

leaf_reader::leaf_reader(io_engine& engine, std::vector<block_address> order, std::size_t batch)
    : engine_(engine), order_(std::move(order)), batch_(std::max<std::size_t>(1, std::min(batch, order_.size()))) {
    void* p = std::aligned_alloc(MD_BLOCK_SIZE, batch_ * MD_BLOCK_SIZE);
    if (!p) throw std::bad_alloc();
    buf_.reset(static_cast<std::uint8_t*>(p));
}

void leaf_reader::load_batch(std::size_t from) {
    lo_ = from;
    hi_ = std::min(order_.size(), from + batch_);
    std::vector<io_request> reqs;
    reqs.reserve(hi_ - lo_);
    for (std::size_t k = lo_; k < hi_; ++k) reqs.push_back({order_[k], buf_.get() + (k - lo_) * MD_BLOCK_SIZE});
    std::sort(reqs.begin(), reqs.end(), [](const io_request& a, const io_request& b) { return a.block < b.block; });
    engine_.read_many(reqs);
    reads_ += reqs.size();
    validated_.assign(hi_ - lo_, false);
}

const std::uint8_t* leaf_reader::get(std::size_t i) {
    if (i >= order_.size()) throw std::out_of_range("leaf_reader: index beyond the end");
    if (i >= hi_) load_batch(i);
    if (i >= lo_) {
        std::uint8_t* p = buf_.get() + (i - lo_) * MD_BLOCK_SIZE;
        if (!validated_[i - lo_]) {
            btree::btree_node_validator().check(p, order_[i]);
            validated_[i - lo_] = true;
        }
        return p;
    }
    if (!single_) single_ = make_aligned_block(false);
    engine_.read(order_[i], single_.get());
    ++reads_;
    btree::btree_node_validator().check(single_.get(), order_[i]);
    return single_.get();
}

} // namespace thin
