// The damage-tolerant walker: good trees are visited in key order; each kind of corruption costs
// exactly the key range of the bad node (with the path of upper-level keys) and nothing else;
// under-full nodes and odd max_entries are warnings, not damage.
#include "persistent-data/btree/builder.h"
#include "persistent-data/btree/walk.h"
#include "persistent-data/space-maps/core.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <vector>

using namespace pdata;
using namespace pdata::btree;

namespace {

using path_t = std::vector<std::uint64_t>;

void make_value(std::uint64_t key, std::uint32_t size, std::uint8_t* out) {
    for (std::uint32_t j = 0; j < size; ++j) out[j] = static_cast<std::uint8_t>((key * 37 + j * 11) & 0xff);
}

key_range range(std::uint64_t b, std::uint64_t e) { return key_range{b, e}; }
key_range range_to_end(std::uint64_t b) { return key_range{b, std::nullopt}; }

struct damage {
    path_t path;
    key_range lost;
    block_address b;
    std::string what;
};

struct warning {
    path_t path;
    block_address b;
    std::string what;
};

class recorder : public walk_visitor {
public:
    explicit recorder(std::uint32_t value_size = 8, bool check_values = true)
        : vs_(value_size), check_values_(check_values), buf_(value_size) {}

    bool visit_node(unsigned level, const path_t& path, block_address b, node_ref n) override {
        nodes.push_back({level, path, b, n.is_leaf()});
        return skip_leaves ? !n.is_leaf() : true;
    }
    void visit_value(const path_t& path, std::uint64_t key, const std::uint8_t* value) override {
        values.emplace_back(path, key);
        if (check_values_) {
            make_value(key, vs_, buf_.data());
            if (std::memcmp(buf_.data(), value, vs_) != 0) ++bad_values;
        }
    }
    void visit_damage(const path_t& path, key_range lost, block_address b, const std::string& what) override {
        damages.push_back({path, lost, b, what});
    }
    void visit_warning(const path_t& path, block_address b, const std::string& what) override {
        warnings.push_back({path, b, what});
    }

    struct node_seen {
        unsigned level;
        path_t path;
        block_address b;
        bool leaf;
    };
    std::vector<node_seen> nodes;
    std::vector<std::pair<path_t, std::uint64_t>> values;
    std::vector<damage> damages;
    std::vector<warning> warnings;
    unsigned bad_values = 0;
    bool skip_leaves = false;

    std::vector<std::uint64_t> keys() const {
        std::vector<std::uint64_t> k;
        for (auto& [p, key] : values) k.push_back(key);
        return k;
    }

private:
    std::uint32_t vs_;
    bool check_values_;
    std::vector<std::uint8_t> buf_;
};

bool in_range(std::uint64_t k, const key_range& r) { return k >= r.begin && (!r.end || k < *r.end); }

std::vector<std::uint64_t> without(const std::vector<std::uint64_t>& keys, const std::vector<key_range>& lost) {
    std::vector<std::uint64_t> out;
    for (auto k : keys)
        if (std::none_of(lost.begin(), lost.end(), [&](auto& r) { return in_range(k, r); })) out.push_back(k);
    return out;
}

// A memory device with one tree written by the builder and flushed; corruptions edit the raw blocks
// and a fresh block manager reads them (so no stale cache hides the damage).
class tree_fixture {
public:
    explicit tree_fixture(block_address nr_blocks = 4096)
        : engine_(std::make_shared<memory_engine>(nr_blocks)), bm_(engine_), sm_(nr_blocks), tm_(bm_, sm_) {}

    // Single-level tree of keys start, start + step, ...
    block_address build(std::uint64_t n, std::uint64_t start, std::uint64_t step, std::uint32_t vs = 8) {
        std::vector<std::uint64_t> k;
        for (std::uint64_t i = 0; i < n; ++i) k.push_back(start + i * step);
        return build_keys(k, vs);
    }
    block_address build_keys(const std::vector<std::uint64_t>& k, std::uint32_t vs = 8) {
        builder bld(tm_, vs);
        std::vector<std::uint8_t> v(vs);
        for (auto key : k) {
            make_value(key, vs, v.data());
            bld.push_back(key, v.data());
        }
        keys = k;
        block_address root = bld.finish();
        tm_.pre_commit();
        return root;
    }
    // A tree whose values are the given u64s (level-1 trees holding subtree roots).
    block_address build_u64(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& kv) {
        builder bld(tm_, 8);
        for (auto& [k, v] : kv) {
            std::uint8_t buf[8];
            store_le64(buf, v);
            bld.push_back(k, buf);
        }
        block_address root = bld.finish();
        tm_.pre_commit();
        return root;
    }

    node_mut raw(block_address b) { return node_mut(engine_->raw(b)); }
    // Recomputes the checksum after an edit so only the semantic checks can fail.
    void reseal(block_address b) { btree_node_validator().prepare(engine_->raw(b), b); }
    block_address child(block_address b, unsigned i) { return raw(b).value64(i); }

    recorder walk_tree(block_address root, walk_options opts = {}, recorder r = recorder()) {
        block_manager fresh(engine_);
        walk(fresh, root, opts, r);
        return r;
    }

    std::shared_ptr<memory_engine> engine() { return engine_; }
    std::vector<std::uint64_t> keys;

private:
    std::shared_ptr<memory_engine> engine_;
    block_manager bm_;
    core_space_map sm_;
    transaction_manager tm_;
};

// 7 leaves under one root: 6 full leaves and one of 100 entries; keys 10, 13, 16, ...
constexpr std::uint64_t N2 = 252 * 6 + 100;

void expect_lost(const recorder& r, const std::vector<std::uint64_t>& keys, const std::vector<key_range>& lost,
                 const path_t& path = {}) {
    ASSERT_EQ(r.damages.size(), lost.size());
    for (std::size_t i = 0; i < lost.size(); ++i) {
        EXPECT_EQ(r.damages[i].lost, lost[i]) << to_string(r.damages[i].lost) << " vs " << to_string(lost[i])
                                              << ": " << r.damages[i].what;
        EXPECT_EQ(r.damages[i].path, path);
    }
    EXPECT_EQ(r.keys(), without(keys, lost));
    EXPECT_EQ(r.bad_values, 0u);
}

} // namespace

TEST(KeyRange, ToString) {
    EXPECT_EQ(to_string(range(0, 100)), "[0..100)");
    EXPECT_EQ(to_string(range_to_end(5)), "[5..-]");
    EXPECT_EQ(to_string(range_to_end(0)), "[0..-]");
}

TEST(Walk, IntactTreeVisitsEverythingInOrder) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto r = f.walk_tree(root);
    EXPECT_TRUE(r.damages.empty());
    EXPECT_TRUE(r.warnings.empty());
    EXPECT_EQ(r.keys(), f.keys);
    EXPECT_EQ(r.bad_values, 0u);
    ASSERT_EQ(r.nodes.size(), 8u);
    EXPECT_EQ(r.nodes[0].b, root);
    EXPECT_FALSE(r.nodes[0].leaf);
    for (auto& n : r.nodes) {
        EXPECT_EQ(n.level, 0u);
        EXPECT_TRUE(n.path.empty());
    }
}

TEST(Walk, EmptyTreeAndSingleLeaf) {
    tree_fixture f;
    block_address empty = f.build(0, 0, 1);
    auto r = f.walk_tree(empty);
    EXPECT_TRUE(r.damages.empty());
    EXPECT_TRUE(r.warnings.empty());  // the root may be under-full
    EXPECT_TRUE(r.values.empty());
    EXPECT_EQ(r.nodes.size(), 1u);

    block_address one = f.build(3, 7, 1, 24);
    auto r2 = f.walk_tree(one, walk_options{1, 24}, recorder(24));
    EXPECT_TRUE(r2.damages.empty());
    EXPECT_EQ(r2.keys(), f.keys);
}

TEST(Walk, VisitNodeFalseSkipsEntries) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    recorder rec;
    rec.skip_leaves = true;
    auto r = f.walk_tree(root, {}, rec);
    EXPECT_TRUE(r.values.empty());
    EXPECT_EQ(r.nodes.size(), 8u);
}

TEST(Walk, BadRootLosesEverything) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    f.raw(root).raw()[200] ^= 0x40;
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range_to_end(0)});
    EXPECT_EQ(r.damages[0].b, root);
    EXPECT_NE(r.damages[0].what.find("checksum"), std::string::npos) << r.damages[0].what;
    EXPECT_TRUE(r.nodes.empty());
}

TEST(Walk, BadChecksumInLeafLosesItsRange) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    block_address leaf = f.child(root, 2);
    f.raw(leaf).raw()[3000] ^= 1;
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(2), rn.key(3))});
    EXPECT_EQ(r.damages[0].b, leaf);
    EXPECT_NE(r.damages[0].what.find("checksum"), std::string::npos) << r.damages[0].what;
}

TEST(Walk, BadFirstAndLastChildren) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    f.raw(f.child(root, 0)).raw()[40] ^= 1;
    f.raw(f.child(root, 6)).raw()[40] ^= 1;
    auto r = f.walk_tree(root);
    // The last child inherits the root's open end.
    expect_lost(r, f.keys, {range(rn.key(0), rn.key(1)), range_to_end(rn.key(6))});
}

TEST(Walk, WrongBlocknr) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    block_address leaf = f.child(root, 3);
    // A valid node for another location, found here.
    btree_node_validator().prepare(f.engine()->raw(leaf), leaf + 1000);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(3), rn.key(4))});
    EXPECT_EQ(r.damages[0].b, leaf);
}

TEST(Walk, ChildBeyondTheDevice) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    f.raw(root).set_value64(1, 1u << 30);
    f.reseal(root);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(1), rn.key(2))});
    EXPECT_EQ(r.damages[0].b, 1u << 30);
}

TEST(Walk, KeysOutOfOrder) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    block_address leaf = f.child(root, 1);
    node_mut ln = f.raw(leaf);
    std::uint64_t k5 = ln.key(5), k6 = ln.key(6);
    ln.set_key(5, k6);
    ln.set_key(6, k5);
    f.reseal(leaf);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(1), rn.key(2))});
    EXPECT_NE(r.damages[0].what.find("order"), std::string::npos) << r.damages[0].what;
}

TEST(Walk, DuplicateKeys) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    block_address leaf = f.child(root, 4);
    node_mut ln = f.raw(leaf);
    ln.set_key(9, ln.key(8));
    f.reseal(leaf);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(4), rn.key(5))});
}

TEST(Walk, ChildFirstKeyBelowParentKey) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    block_address leaf = f.child(root, 4);
    node_mut ln = f.raw(leaf);
    ASSERT_EQ(ln.key(0), rn.key(4));
    ln.set_key(0, rn.key(4) - 1);  // still above the previous leaf's last key
    f.reseal(leaf);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(4), rn.key(5))});
    EXPECT_NE(r.damages[0].what.find("below the parent key"), std::string::npos) << r.damages[0].what;
}

TEST(Walk, ParentKeyBelowChildFirstKeyIsFine) {
    // The kernel lowers keys[0] of internal nodes; parent key <= first key is all that is required.
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    f.raw(root).set_key(0, 0);
    f.reseal(root);
    auto r = f.walk_tree(root);
    EXPECT_TRUE(r.damages.empty());
    EXPECT_EQ(r.keys(), f.keys);
}

TEST(Walk, ChildLastKeyAtNextParentKey) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    block_address leaf = f.child(root, 4);
    node_mut ln = f.raw(leaf);
    ln.set_key(ln.nr_entries() - 1, rn.key(5));
    f.reseal(leaf);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(4), rn.key(5))});
    EXPECT_NE(r.damages[0].what.find("next parent key"), std::string::npos) << r.damages[0].what;
}

TEST(Walk, WrongLeafValueSize) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    block_address leaf = f.child(root, 5);
    // Still a well-formed header (168 entries of 16 bytes fit), just not this tree's value size.
    node_mut ln = f.raw(leaf);
    store_le32(ln.raw() + 24, 16);
    store_le32(ln.raw() + 20, 168);
    ln.set_nr_entries(100);
    f.reseal(leaf);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(5), rn.key(6))});
    EXPECT_NE(r.damages[0].what.find("value_size"), std::string::npos) << r.damages[0].what;
}

TEST(Walk, WrongInternalValueSize) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    node_mut rn = f.raw(root);
    store_le32(rn.raw() + 24, 4);
    f.reseal(root);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range_to_end(0)});
}

TEST(Walk, BottomValueSizeComesFromOptions) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3, 8);
    auto r = f.walk_tree(root, walk_options{1, 16}, recorder(16, false));
    // Every leaf is damaged, the root itself (internal, value_size 8) is fine.
    EXPECT_EQ(r.damages.size(), 7u);
    EXPECT_TRUE(r.values.empty());
}

TEST(Walk, HeaderDamageFromTheValidator) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    block_address l1 = f.child(root, 1), l2 = f.child(root, 2);
    f.raw(l1).set_nr_entries(253);  // more than max_entries
    f.reseal(l1);
    f.raw(l2).set_flags(3);
    f.reseal(l2);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(1), rn.key(2)), range(rn.key(2), rn.key(3))});
}

TEST(Walk, UnderFullNonRootIsAWarning) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    block_address leaf = f.child(root, 3);
    node_mut ln = f.raw(leaf);
    std::vector<std::uint64_t> dropped;
    for (unsigned i = 50; i < ln.nr_entries(); ++i) dropped.push_back(ln.key(i));
    ln.set_nr_entries(50);
    f.reseal(leaf);
    auto r = f.walk_tree(root);
    EXPECT_TRUE(r.damages.empty());
    ASSERT_EQ(r.warnings.size(), 1u);
    EXPECT_EQ(r.warnings[0].b, leaf);
    EXPECT_NE(r.warnings[0].what.find("under-full"), std::string::npos) << r.warnings[0].what;
    std::vector<std::uint64_t> expect;
    std::set_difference(f.keys.begin(), f.keys.end(), dropped.begin(), dropped.end(), std::back_inserter(expect));
    EXPECT_EQ(r.keys(), expect);
    EXPECT_EQ(r.bad_values, 0u);
}

TEST(Walk, MaxEntriesNotMultipleOfThreeIsAWarning) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    block_address leaf = f.child(root, 6);
    store_le32(f.raw(leaf).raw() + 20, 251);
    f.reseal(leaf);
    recorder rec(8, false);  // the values array moved, so the values read are garbage
    auto r = f.walk_tree(root, {}, rec);
    EXPECT_TRUE(r.damages.empty());
    ASSERT_EQ(r.warnings.size(), 1u);
    EXPECT_EQ(r.warnings[0].b, leaf);
    EXPECT_NE(r.warnings[0].what.find("multiple of 3"), std::string::npos) << r.warnings[0].what;
    EXPECT_EQ(r.keys(), f.keys);
}

TEST(Walk, SmallerMaxEntriesMultipleOfThreeIsAccepted) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    block_address leaf = f.child(root, 6);
    store_le32(f.raw(leaf).raw() + 20, 249);
    f.reseal(leaf);
    auto r = f.walk_tree(root, {}, recorder(8, false));
    EXPECT_TRUE(r.damages.empty());
    EXPECT_TRUE(r.warnings.empty());
}

TEST(Walk, CycleIsDamage) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    f.raw(root).set_value64(3, root);
    f.reseal(root);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(3), rn.key(4))});
    EXPECT_NE(r.damages[0].what.find("cycle"), std::string::npos) << r.damages[0].what;
}

namespace {
// Height 3: root -> 3 internal nodes (252, 252, 100 children) -> 604 leaves.
constexpr std::uint64_t N3 = 252 * 252 * 2 + 252 * 100;
}

TEST(Walk, LeafWhereInternalExpected) {
    tree_fixture f(1024);
    block_address root = f.build(N3, 0, 2);
    auto rn = f.raw(root);
    ASSERT_EQ(rn.nr_entries(), 3u);
    block_address mid = f.child(root, 1);
    f.raw(mid).set_flags(LEAF_NODE);
    f.reseal(mid);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(rn.key(1), rn.key(2))});
    EXPECT_EQ(r.damages[0].b, mid);
    EXPECT_NE(r.damages[0].what.find("leaf at depth 1"), std::string::npos) << r.damages[0].what;
}

TEST(Walk, InternalWhereLeafExpected) {
    tree_fixture f(1024);
    block_address root = f.build(N3, 0, 2);
    block_address mid = f.child(root, 2);
    auto mn = f.raw(mid);
    block_address leaf = f.child(mid, 5);
    f.raw(leaf).set_flags(INTERNAL_NODE);
    f.reseal(leaf);
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(mn.key(5), mn.key(6))});
    EXPECT_EQ(r.damages[0].b, leaf);
    EXPECT_NE(r.damages[0].what.find("internal node at depth 2"), std::string::npos) << r.damages[0].what;
}

TEST(Walk, BadInternalNodeLosesItsWholeSubtree) {
    tree_fixture f(1024);
    block_address root = f.build(N3, 0, 2);
    auto rn = f.raw(root);
    f.raw(f.child(root, 2)).raw()[17] ^= 0xff;
    // And a leaf under the first internal node.
    block_address first = f.child(root, 0);
    auto fn = f.raw(first);
    f.raw(f.child(first, 251)).raw()[4000] ^= 1;
    auto r = f.walk_tree(root);
    expect_lost(r, f.keys, {range(fn.key(251), rn.key(1)), range_to_end(rn.key(2))});
}

namespace {
// A read error on chosen blocks.
class failing_engine : public io_engine {
public:
    failing_engine(std::shared_ptr<memory_engine> base, std::set<block_address> bad) : base_(std::move(base)), bad_(std::move(bad)) {}
    block_address nr_blocks() override { return base_->nr_blocks(); }
    void read(block_address b, void* buf) override {
        if (bad_.count(b)) throw io_error("injected read error at block " + std::to_string(b));
        base_->read(b, buf);
    }
    void write(block_address b, const void* buf) override { base_->write(b, buf); }
    void flush() override {}
    std::string name() const override { return "failing"; }

private:
    std::shared_ptr<memory_engine> base_;
    std::set<block_address> bad_;
};
} // namespace

TEST(Walk, ReadErrorIsDamage) {
    tree_fixture f;
    block_address root = f.build(N2, 10, 3);
    auto rn = f.raw(root);
    block_address leaf = f.child(root, 2);
    block_manager bm(std::make_shared<failing_engine>(f.engine(), std::set<block_address>{leaf}));
    recorder r;
    walk(bm, root, {}, r);
    expect_lost(r, f.keys, {range(rn.key(2), rn.key(3))});
    EXPECT_NE(r.damages[0].what.find("injected"), std::string::npos);
}

// ---- two-level trees (the thin mapping tree's shape) ----

namespace {
struct two_level {
    tree_fixture f{4096};
    block_address root = 0;
    std::map<std::uint64_t, block_address> subroots;
    std::map<std::uint64_t, std::vector<std::uint64_t>> keys;  // per top-level key
    std::vector<std::pair<path_t, std::uint64_t>> all;         // (path, key) in walk order

    // Top-level keys devs; dev d gets sizes(d) bottom entries of value size vs.
    template <typename F>
    two_level(const std::vector<std::uint64_t>& devs, F sizes, std::uint32_t vs = 8) {
        std::vector<std::pair<std::uint64_t, std::uint64_t>> top;
        for (auto d : devs) {
            std::vector<std::uint64_t> k;
            for (std::uint64_t i = 0, n = sizes(d); i < n; ++i) k.push_back(d * 1000000 + i * 5);
            subroots[d] = f.build_keys(k, vs);
            keys[d] = k;
            top.emplace_back(d, subroots[d]);
            for (auto key : k) all.push_back({{d}, key});
        }
        root = f.build_u64(top);
    }
};
} // namespace

TEST(Walk, TwoLevelPaths) {
    two_level t({1, 5, 9, 12}, [](std::uint64_t d) -> std::uint64_t { return d == 12 ? 0 : d * 200 + 3; }, 16);
    auto r = t.f.walk_tree(t.root, walk_options{2, 16}, recorder(16));
    EXPECT_TRUE(r.damages.empty());
    EXPECT_TRUE(r.warnings.empty());  // an empty subtree root is a root, so never under-full
    EXPECT_EQ(r.values, t.all);
    EXPECT_EQ(r.bad_values, 0u);
    // visit_node: level 0 with an empty path, level 1 with the device key.
    ASSERT_FALSE(r.nodes.empty());
    EXPECT_EQ(r.nodes[0].level, 0u);
    EXPECT_TRUE(r.nodes[0].path.empty());
    std::set<std::uint64_t> seen_devs;
    for (auto& n : r.nodes) {
        if (n.level == 1) {
            ASSERT_EQ(n.path.size(), 1u);
            seen_devs.insert(n.path[0]);
        } else {
            EXPECT_EQ(n.level, 0u);
            EXPECT_TRUE(n.path.empty());
        }
    }
    EXPECT_EQ(seen_devs, (std::set<std::uint64_t>{1, 5, 9, 12}));
}

TEST(Walk, TwoLevelDamageCarriesThePath) {
    two_level t({1, 5, 9}, [](std::uint64_t d) { return d * 200 + 3; });
    // Dev 5: root internal with 4 leaves (1003 entries); break leaf 1. Dev 9: break its root.
    block_address r5 = t.subroots[5];
    auto n5 = t.f.raw(r5);
    ASSERT_TRUE(n5.is_internal());
    t.f.raw(t.f.child(r5, 1)).raw()[100] ^= 1;
    t.f.raw(t.subroots[9]).raw()[100] ^= 1;
    auto r = t.f.walk_tree(t.root, walk_options{2, 8});
    ASSERT_EQ(r.damages.size(), 2u);
    EXPECT_EQ(r.damages[0].path, path_t{5});
    EXPECT_EQ(r.damages[0].lost, range(n5.key(1), n5.key(2)));
    EXPECT_EQ(r.damages[1].path, path_t{9});
    EXPECT_EQ(r.damages[1].lost, range_to_end(0));
    EXPECT_EQ(r.damages[1].b, t.subroots[9]);

    std::vector<std::pair<path_t, std::uint64_t>> expect;
    for (auto& [p, k] : t.all) {
        if (p[0] == 9) continue;
        if (p[0] == 5 && in_range(k, r.damages[0].lost)) continue;
        expect.push_back({p, k});
    }
    EXPECT_EQ(r.values, expect);
    EXPECT_EQ(r.bad_values, 0u);
}

TEST(Walk, TwoLevelTopLeafDamage) {
    // 300 devices: the top level has two leaves (252 + 48, rebalanced to 150 + 150).
    std::vector<std::uint64_t> devs;
    for (std::uint64_t d = 0; d < 300; ++d) devs.push_back(d * 2);
    two_level t(devs, [](std::uint64_t d) { return d % 3 + 1; });
    auto top = t.f.raw(t.root);
    ASSERT_TRUE(top.is_internal());
    ASSERT_EQ(top.nr_entries(), 2u);
    t.f.raw(t.f.child(t.root, 1)).raw()[50] ^= 1;
    auto r = t.f.walk_tree(t.root, walk_options{2, 8});
    ASSERT_EQ(r.damages.size(), 1u);
    EXPECT_TRUE(r.damages[0].path.empty());
    EXPECT_EQ(r.damages[0].lost, range_to_end(top.key(1)));
    std::vector<std::pair<path_t, std::uint64_t>> expect;
    for (auto& [p, k] : t.all)
        if (p[0] < top.key(1)) expect.push_back({p, k});
    EXPECT_EQ(r.values, expect);
}

TEST(Walk, UpperLeafWithWrongValueSize) {
    // A top-level leaf must hold 8-byte roots whatever the bottom value size is.
    two_level t({1, 2}, [](std::uint64_t) -> std::uint64_t { return 10; }, 16);
    node_mut top = t.f.raw(t.root);
    ASSERT_TRUE(top.is_leaf());
    store_le32(top.raw() + 24, 16);
    store_le32(top.raw() + 20, 168);
    t.f.reseal(t.root);
    auto r = t.f.walk_tree(t.root, walk_options{2, 16}, recorder(16));
    ASSERT_EQ(r.damages.size(), 1u);
    EXPECT_EQ(r.damages[0].lost, range_to_end(0));
    EXPECT_TRUE(r.values.empty());
}

TEST(Walk, SharedSubtreeIsVisitedThroughEachPath) {
    tree_fixture f;
    block_address sub = f.build(300, 0, 1);
    block_address root = f.build_u64({{3, sub}, {4, sub}});
    auto r = f.walk_tree(root, walk_options{2, 8});
    EXPECT_TRUE(r.damages.empty());  // sharing is not a cycle
    ASSERT_EQ(r.values.size(), 600u);
    EXPECT_EQ(r.values.front().first, path_t{3});
    EXPECT_EQ(r.values.back().first, path_t{4});
}

TEST(Walk, SubtreeRootPointingBackUpIsACycle) {
    tree_fixture f;
    block_address sub = f.build(10, 0, 1);
    block_address root = f.build_u64({{3, sub}, {4, sub}});
    f.raw(root).set_value64(1, root);
    f.reseal(root);
    auto r = f.walk_tree(root, walk_options{2, 8});
    ASSERT_EQ(r.damages.size(), 1u);
    EXPECT_EQ(r.damages[0].path, path_t{4});
    EXPECT_EQ(r.damages[0].lost, range_to_end(0));
    EXPECT_EQ(r.values.size(), 10u);
}

TEST(Walk, RejectsBadLevels) {
    tree_fixture f;
    block_address root = f.build(1, 0, 1);
    block_manager bm(f.engine());
    recorder r;
    EXPECT_THROW(walk(bm, root, walk_options{0, 8}, r), std::invalid_argument);
}
