// The bottom-up builder: the trees it writes hold exactly the input, every non-root node is at
// least 1/3 full, leaves are full but for the last two, the node count is minimal, and each node
// has metadata count 1.
#include "persistent-data/btree/builder.h"
#include "persistent-data/btree/walk.h"
#include "persistent-data/space-maps/core.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <set>
#include <vector>

using namespace pdata;
using namespace pdata::btree;

namespace {

// A value derived from its key, so a walk can check every byte.
void make_value(std::uint64_t key, std::uint32_t size, std::uint8_t* out) {
    for (std::uint32_t j = 0; j < size; ++j) out[j] = static_cast<std::uint8_t>((key * 131 + j * 7 + (key >> 8)) & 0xff);
}

struct pool {
    std::shared_ptr<memory_engine> engine;
    block_manager bm;
    core_space_map sm;
    transaction_manager tm;
    explicit pool(block_address nr_blocks)
        : engine(std::make_shared<memory_engine>(nr_blocks)), bm(engine), sm(nr_blocks), tm(bm, sm) {}
};

struct node_info {
    block_address b;
    bool leaf;
    std::uint32_t nr_entries;
    std::uint32_t max_entries;
    std::uint32_t value_size;
};

// Records everything and checks the values against make_value as they come.
class checking_visitor : public walk_visitor {
public:
    explicit checking_visitor(std::uint32_t value_size) : vs_(value_size), buf_(value_size) {}

    bool visit_node(unsigned, const std::vector<std::uint64_t>&, block_address b, node_ref n) override {
        nodes.push_back({b, n.is_leaf(), n.nr_entries(), n.max_entries(), n.value_size()});
        return true;
    }
    void visit_value(const std::vector<std::uint64_t>& path, std::uint64_t key, const std::uint8_t* value) override {
        EXPECT_TRUE(path.empty());
        if (count && key <= last) ++order_errors;
        make_value(key, vs_, buf_.data());
        if (std::memcmp(buf_.data(), value, vs_) != 0) ++value_errors;
        last = key;
        keys.push_back(key);
        ++count;
    }
    void visit_damage(const std::vector<std::uint64_t>&, key_range lost, block_address b, const std::string& what) override {
        ADD_FAILURE() << "damage at block " << b << " " << to_string(lost) << ": " << what;
    }
    void visit_warning(const std::vector<std::uint64_t>&, block_address b, const std::string& what) override {
        ADD_FAILURE() << "warning at block " << b << ": " << what;
    }

    std::vector<node_info> nodes;
    std::vector<std::uint64_t> keys;
    std::uint64_t count = 0, last = 0, order_errors = 0, value_errors = 0;

private:
    std::uint32_t vs_;
    std::vector<std::uint8_t> buf_;
};

std::uint64_t ceil_div(std::uint64_t a, std::uint64_t b) { return (a + b - 1) / b; }

// Number of nodes of each level (leaves first) the builder should produce for n entries.
std::vector<std::uint64_t> expected_shape(std::uint64_t n, std::uint32_t value_size) {
    std::vector<std::uint64_t> shape;
    std::uint64_t nodes = std::max<std::uint64_t>(1, ceil_div(n, max_entries_for(value_size)));
    shape.push_back(nodes);
    while (nodes > 1) {
        nodes = ceil_div(nodes, max_entries_for(8));
        shape.push_back(nodes);
    }
    return shape;
}

block_address build(pool& p, std::uint32_t vs, const std::vector<std::uint64_t>& keys) {
    builder bld(p.tm, vs);
    std::vector<std::uint8_t> v(vs);
    for (auto k : keys) {
        make_value(k, vs, v.data());
        bld.push_back(k, v.data());
    }
    EXPECT_EQ(bld.size(), keys.size());
    return bld.finish();
}

// Builds, flushes, rereads through a fresh block manager and checks everything the builder promises.
void check_build(std::uint32_t vs, const std::vector<std::uint64_t>& keys) {
    SCOPED_TRACE("value_size " + std::to_string(vs) + ", " + std::to_string(keys.size()) + " entries");
    std::uint64_t n = keys.size();
    auto shape = expected_shape(n, vs);
    std::uint64_t total_nodes = 0;
    for (auto s : shape) total_nodes += s;

    pool p(total_nodes + 16);
    block_address root = build(p, vs, keys);
    p.tm.pre_commit();

    block_manager bm(p.engine);
    checking_visitor v(vs);
    walk(bm, root, walk_options{1, vs}, v);

    ASSERT_EQ(v.count, n);
    EXPECT_EQ(v.keys, keys);
    EXPECT_EQ(v.order_errors, 0u);
    EXPECT_EQ(v.value_errors, 0u);

    // Exact node count per kind, and metadata counts: 1 per node, nothing else allocated.
    std::uint64_t leaves = 0, internals = 0;
    std::set<block_address> seen;
    for (auto& ni : v.nodes) {
        (ni.leaf ? leaves : internals)++;
        EXPECT_TRUE(seen.insert(ni.b).second) << "node " << ni.b << " visited twice";
        EXPECT_EQ(p.sm.get_count(ni.b), 1u) << "node " << ni.b;
    }
    EXPECT_EQ(leaves, shape[0]);
    EXPECT_EQ(internals, total_nodes - shape[0]);
    EXPECT_EQ(p.sm.nr_allocated(), total_nodes);

    // Root first (pre-order walk); its kind follows from the shape.
    ASSERT_FALSE(v.nodes.empty());
    EXPECT_EQ(v.nodes[0].b, root);
    EXPECT_EQ(v.nodes[0].leaf, shape.size() == 1);

    // Header fields, occupancy: every non-root node >= max/3, leaves full but for the last two.
    std::vector<const node_info*> leaf_order;
    for (std::size_t i = 0; i < v.nodes.size(); ++i) {
        auto& ni = v.nodes[i];
        std::uint32_t want_vs = ni.leaf ? vs : 8;
        EXPECT_EQ(ni.value_size, want_vs);
        EXPECT_EQ(ni.max_entries, max_entries_for(want_vs));
        if (i > 0) {
            EXPECT_GE(ni.nr_entries, ni.max_entries / 3) << "node " << ni.b << " under-full";
        }
        if (ni.leaf) leaf_order.push_back(&ni);
    }
    for (std::size_t i = 0; i + 2 < leaf_order.size(); ++i)
        EXPECT_EQ(leaf_order[i]->nr_entries, leaf_order[i]->max_entries) << "leaf " << i << " not full";
    if (n == 0) {
        EXPECT_EQ(v.nodes[0].nr_entries, 0u);
    }
}

std::vector<std::uint64_t> sequential(std::uint64_t n, std::uint64_t start = 0, std::uint64_t step = 1) {
    std::vector<std::uint64_t> k(n);
    for (std::uint64_t i = 0; i < n; ++i) k[i] = start + i * step;
    return k;
}

} // namespace

class BuilderSizes : public ::testing::TestWithParam<std::uint32_t> {};

TEST_P(BuilderSizes, EdgeSizes) {
    std::uint32_t vs = GetParam();
    std::uint64_t max = max_entries_for(vs);
    std::vector<std::uint64_t> sizes = {0,           1,       2,       max - 1,       max,           max + 1,
                                        max / 3,     max / 3 + 1, 2 * max, 2 * max + 1, 84, 85, 253,
                                        252 * 84,    252 * max,   252 * max + 1, 252 * max + max / 3 - 1};
    for (auto n : sizes) check_build(vs, sequential(n, 1000, 3));
}

TEST_P(BuilderSizes, ThreeLevels) {
    std::uint32_t vs = GetParam();
    std::uint64_t max = max_entries_for(vs);
    check_build(vs, sequential(252 * max + 1));
    check_build(vs, sequential(252 * 252 * 2 + 5));
}

INSTANTIATE_TEST_SUITE_P(ValueSizes, BuilderSizes, ::testing::Values(8u, 16u, 24u, 4u));

TEST(Builder, TreeOf252x252Plus1) { check_build(8, sequential(252 * 252 + 1)); }

TEST(Builder, ThreeHundredThousandSparseKeys) {
    std::vector<std::uint64_t> keys;
    std::uint64_t k = 5;
    for (int i = 0; i < 300000; ++i) {
        keys.push_back(k);
        k += 1 + (std::uint64_t(i) * 2654435761u) % 97;
    }
    check_build(8, keys);
}

TEST(Builder, LargeSequential) {
    // 2M entries: 7937 leaves, 32 internal nodes, a root (ceil(n/252) leaves exactly).
    check_build(8, sequential(2000000));
}

TEST(Builder, ExtremeKeys) {
    check_build(8, {0, 1, UINT64_MAX - 1, UINT64_MAX});
}

TEST(Builder, EmptyTreeIsEmptyLeafWithValueSize) {
    for (std::uint32_t vs : {4u, 8u, 16u, 24u}) {
        pool p(8);
        builder bld(p.tm, vs);
        block_address root = bld.finish();
        auto r = p.bm.read_lock(root, btree_node_validator());
        node_ref n(r.data());
        EXPECT_TRUE(n.is_leaf());
        EXPECT_EQ(n.nr_entries(), 0u);
        EXPECT_EQ(n.value_size(), vs);
        EXPECT_EQ(n.max_entries(), max_entries_for(vs));
        EXPECT_EQ(p.sm.get_count(root), 1u);
        EXPECT_EQ(p.sm.nr_allocated(), 1u);
    }
}

TEST(Builder, RejectsKeysNotStrictlyIncreasing) {
    pool p(16);
    builder bld(p.tm, 8);
    std::uint8_t v[8] = {};
    bld.push_back(10, v);
    try {
        bld.push_back(10, v);
        FAIL() << "duplicate key accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("10"), std::string::npos) << e.what();
    }
    try {
        bld.push_back(7, v);
        FAIL() << "decreasing key accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("7"), std::string::npos) << e.what();
    }
    bld.push_back(11, v);  // the builder is still usable
    EXPECT_EQ(bld.size(), 2u);
    block_address root = bld.finish();
    EXPECT_THROW(bld.finish(), std::logic_error);
    EXPECT_THROW(bld.push_back(12, v), std::logic_error);
    auto r = p.bm.read_lock(root, btree_node_validator());
    EXPECT_EQ(node_ref(r.data()).nr_entries(), 2u);
}

TEST(Builder, InternalKeysAreFirstKeysOfChildren) {
    pool p(64);
    auto keys = sequential(252 * 5 + 17, 100, 2);
    block_address root = build(p, 8, keys);
    auto r = p.bm.read_lock(root, btree_node_validator());
    node_ref n(r.data());
    ASSERT_TRUE(n.is_internal());
    ASSERT_EQ(n.nr_entries(), 6u);
    for (unsigned i = 0; i < n.nr_entries(); ++i) {
        auto c = p.bm.read_lock(n.value64(i), btree_node_validator());
        node_ref cn(c.data());
        EXPECT_EQ(n.key(i), cn.key(0));
        EXPECT_GE(cn.nr_entries(), 84u);
    }
}

TEST(Builder, SmallCacheStillWorks) {
    // The builder must not depend on its nodes staying cached.
    auto engine = std::make_shared<memory_engine>(2000);
    block_manager bm(engine, 16);
    core_space_map sm(2000);
    transaction_manager tm(bm, sm);
    auto keys = sequential(252 * 300 + 7);
    builder bld(tm, 8);
    std::uint8_t v[8];
    for (auto k : keys) {
        make_value(k, 8, v);
        bld.push_back(k, v);
    }
    block_address root = bld.finish();
    tm.pre_commit();
    block_manager bm2(engine);
    checking_visitor cv(8);
    walk(bm2, root, walk_options{1, 8}, cv);
    EXPECT_EQ(cv.keys, keys);
    EXPECT_EQ(cv.value_errors, 0u);
}
