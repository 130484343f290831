// Trees that share leaves (persistent-data/btree/builder.cc push_leaf, leaf_sharing.cc): every
// tree holds exactly its input, every node obeys the b-tree rules, metadata counts equal the
// references recounted from the trees, and value counts equal the values of distinct leaves (a
// shared leaf's values are counted once, as the kernel counts them).
#include "persistent-data/btree/builder.h"
#include "persistent-data/btree/leaf_sharing.h"
#include "persistent-data/btree/walk.h"
#include "persistent-data/space-maps/core.h"
#include "tests/support/recount.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <vector>

using namespace pdata;
using namespace pdata::btree;
using thinpool_test::tree_root;

namespace {

constexpr block_address NR_VALUE_BLOCKS = 1 << 20;

using model = std::map<std::uint64_t, std::uint64_t>;  // key -> value block

struct pool {
    std::shared_ptr<memory_engine> engine = std::make_shared<memory_engine>(4096);
    block_manager bm{engine};
    core_space_map sm{4096};
    transaction_manager tm{bm, sm};
    core_space_map values{NR_VALUE_BLOCKS};  // what take_refs / copy_refs were told
    std::vector<block_address> roots;

    builder::copy_refs_fn counter() {
        return [this](const std::uint8_t* v, unsigned n) {
            for (unsigned i = 0; i < n; ++i) values.inc(load_le64(v + 8 * i));
        };
    }

    // Every tree holds one reference to its root, as a superblock slot would.
    void expect_counts() {
        std::vector<tree_root> trs;
        for (auto r : roots) trs.push_back({r, 1, 8});
        auto rc = thinpool_test::recount(bm, sm.nr_blocks(), trs,
                                         [](const std::uint8_t* v) -> std::optional<std::uint64_t> { return load_le64(v); });
        auto md = thinpool_test::compare_counts(rc.metadata, sm);
        EXPECT_TRUE(md.empty()) << "metadata: " << md.front() << " (" << md.size() << " mismatches)";
        auto vd = thinpool_test::compare_counts(rc.values, values);
        EXPECT_TRUE(vd.empty()) << "values: " << vd.front() << " (" << vd.size() << " mismatches)";
    }

    void expect_tree(block_address root, const model& want) {
        std::vector<std::string> problems;
        auto shape = thinpool_test::check_tree(bm, {root, 1, 8}, problems);
        EXPECT_TRUE(problems.empty()) << problems.front() << " (" << problems.size() << " problems)";
        EXPECT_EQ(shape.entries, want.size());
        EXPECT_EQ(contents(root), want);
    }

    model contents(block_address root) {
        struct collect : walk_visitor {
            model m;
            void visit_value(const std::vector<std::uint64_t>&, std::uint64_t k, const std::uint8_t* v) override {
                m[k] = load_le64(v);
            }
            void visit_damage(const std::vector<std::uint64_t>&, key_range, block_address b, const std::string& w) override {
                ADD_FAILURE() << "damage at " << b << ": " << w;
            }
        } c;
        walk(bm, root, walk_options{1, 8}, c);
        return c.m;
    }

    std::vector<block_address> leaves(block_address root) {
        struct collect : walk_visitor {
            std::vector<block_address> leaves;
            bool visit_node(unsigned, const std::vector<std::uint64_t>&, block_address b, node_ref n) override {
                if (n.is_leaf()) leaves.push_back(b);
                return true;
            }
            void visit_value(const std::vector<std::uint64_t>&, std::uint64_t, const std::uint8_t*) override {}
            void visit_damage(const std::vector<std::uint64_t>&, key_range, block_address, const std::string&) override {}
        } c;
        walk(bm, root, walk_options{1, 8}, c);
        return c.leaves;
    }

    // A tree built entry by entry; the caller's references to the values are taken here.
    block_address build(const model& m) {
        builder b(tm, 8);
        for (auto [k, v] : m) push(b, k, v);
        return keep(b.finish());
    }

    void push(builder& b, std::uint64_t k, std::uint64_t v) {
        std::uint8_t buf[8];
        store_le64(buf, v);
        values.inc(v);
        b.push_back(k, buf);
    }

    // Entries first..first+n-1 with values value0..., pushed into b and recorded in m.
    void push_run(builder& b, model& m, std::uint64_t first, std::uint64_t n, std::uint64_t value0) {
        for (std::uint64_t k = first; k < first + n; ++k) {
            push(b, k, value0 + k);
            m[k] = value0 + k;
        }
    }

    // An existing leaf pushed into b by reference, its entries recorded in m.
    void push_shared(builder& b, model& m, block_address leaf) {
        b.push_leaf(leaf);
        auto r = bm.read_lock(leaf, btree_node_validator());
        node_ref n(r.data());
        for (unsigned i = 0; i < n.nr_entries(); ++i) m[n.key(i)] = n.value64(i);
    }

    // A tree built by a sharing_builder over catalog; *shared gets the leaves it took by reference.
    block_address build_sharing(leaf_catalog& catalog, const model& m, std::uint64_t* shared = nullptr) {
        sharing_builder sb(tm, 8, catalog, counter());
        std::uint8_t v[8];
        for (auto [k, val] : m) {
            store_le64(v, val);
            sb.push_back(k, v);
        }
        block_address root = keep(sb.finish());
        if (shared) *shared = sb.shared_leaves();
        return root;
    }

    block_address keep(block_address root) {
        roots.push_back(root);
        return root;
    }
};

model range(std::uint64_t first, std::uint64_t n, std::uint64_t value0) {
    model m;
    for (std::uint64_t i = 0; i < n; ++i) m[first + i] = value0 + i;
    return m;
}

std::uint32_t nr_entries(pool& p, block_address b) {
    auto r = p.bm.read_lock(b, btree_node_validator());
    return node_ref(r.data()).nr_entries();
}

} // namespace

TEST(PushLeaf, SharedLeavesAreReferencedNotCopied) {
    pool p;
    model a = range(0, 252 * 6, 1000);
    block_address ra = p.build(a);
    auto la = p.leaves(ra);
    ASSERT_EQ(la.size(), 6u);

    // b: a's leaves 1, 2 and 4 by reference, its own entries around them.
    model b;
    builder bb(p.tm, 8, p.counter());
    p.push_run(bb, b, 0, 252, 50000);
    for (int i : {1, 2}) p.push_shared(bb, b, la[i]);
    p.push_run(bb, b, 252 * 3, 252, 60000);
    p.push_shared(bb, b, la[4]);
    EXPECT_EQ(bb.size(), b.size());
    block_address rb = p.keep(bb.finish());

    p.expect_tree(rb, b);
    p.expect_tree(ra, a);
    auto lb = p.leaves(rb);
    ASSERT_EQ(lb.size(), 5u);
    EXPECT_EQ(lb[1], la[1]);
    EXPECT_EQ(lb[2], la[2]);
    EXPECT_EQ(lb[4], la[4]);
    for (int i : {1, 2, 4}) EXPECT_EQ(p.sm.get_count(la[i]), 2u);
    p.expect_counts();
}

TEST(PushLeaf, AFirstNodeTooSmallToCloseTakesTheLeafsEntries) {
    pool p;
    block_address ra = p.build(range(100, 252 * 3, 1000));
    auto la = p.leaves(ra);
    builder bb(p.tm, 8, p.counter());
    model b;
    p.push_run(bb, b, 0, 10, 7000);
    p.push_shared(bb, b, la[0]);  // 10 entries cannot be a leaf of their own: the leaf is copied
    p.push_shared(bb, b, la[1]);  // the copy filled a leaf and left 10 + 252 - 252 = 10 again: borrows from it
    block_address rb = p.keep(bb.finish());
    p.expect_tree(rb, b);
    auto lb = p.leaves(rb);
    EXPECT_EQ(std::count(lb.begin(), lb.end(), la[0]), 0);
    EXPECT_EQ(std::count(lb.begin(), lb.end(), la[1]), 1);
    EXPECT_EQ(p.sm.get_count(la[0]), 1u);
    EXPECT_EQ(p.sm.get_count(la[1]), 2u);
    p.expect_counts();
}

TEST(PushLeaf, ASmallNodeAfterASharedLeafUnsharesIt) {
    // A shared leaf of 150 entries and 10 more make one node; one of 252 and 10 more, two of 131.
    for (std::uint64_t leaf_size : {150u, 252u}) {
        for (bool at_finish : {false, true}) {
            SCOPED_TRACE((at_finish ? "small last node, " : "small node before another shared leaf, ") +
                         std::to_string(leaf_size) + "-entry shared leaf");
            pool p;
            block_address ra = p.build(range(0, 2 * leaf_size, 1000));  // two leaves of leaf_size
            block_address rc = p.build(range(100000, 252 * 2, 1000));
            auto la = p.leaves(ra), lc = p.leaves(rc);
            ASSERT_EQ(nr_entries(p, la[0]), leaf_size);
            builder bb(p.tm, 8, p.counter());
            model b;
            p.push_shared(bb, b, la[0]);
            p.push_run(bb, b, leaf_size, 10, 9000);
            if (!at_finish) p.push_shared(bb, b, lc[0]);
            block_address rb = p.keep(bb.finish());
            p.expect_tree(rb, b);
            auto lb = p.leaves(rb);
            EXPECT_EQ(std::count(lb.begin(), lb.end(), la[0]), 0);
            std::size_t own = leaf_size == 150 ? 1 : 2;
            ASSERT_EQ(lb.size(), own + (at_finish ? 0 : 1));
            for (std::size_t i = 0; i < own; ++i) EXPECT_EQ(nr_entries(p, lb[i]), (leaf_size + 10) / own);
            if (!at_finish) {
                EXPECT_EQ(lb.back(), lc[0]);
            }
            EXPECT_EQ(p.sm.get_count(la[0]), 1u);
            EXPECT_EQ(p.sm.get_count(lc[0]), at_finish ? 1u : 2u);
            p.expect_counts();
        }
    }
}

TEST(PushLeaf, ASmallNodeAfterAFullOneBorrowsFromIt) {
    pool p;
    block_address ra = p.build(range(1000, 252 * 2, 1000));
    auto la = p.leaves(ra);
    builder bb(p.tm, 8, p.counter());
    model b;
    p.push_run(bb, b, 0, 252 + 20, 3000);
    p.push_shared(bb, b, la[0]);
    block_address rb = p.keep(bb.finish());
    p.expect_tree(rb, b);
    auto lb = p.leaves(rb);
    ASSERT_EQ(lb.size(), 3u);
    EXPECT_EQ(nr_entries(p, lb[0]), 136u);
    EXPECT_EQ(nr_entries(p, lb[1]), 136u);
    EXPECT_EQ(lb[2], la[0]);
    p.expect_counts();
}

TEST(PushLeaf, ATreeOfOneSharedLeafHasItAsRoot) {
    pool p;
    block_address ra = p.build(range(0, 200, 1000));  // one leaf: a's root
    builder bb(p.tm, 8, p.counter());
    bb.push_leaf(ra);
    block_address rb = p.keep(bb.finish());
    EXPECT_EQ(rb, ra);
    EXPECT_EQ(p.sm.get_count(ra), 2u);
    p.expect_counts();
}

TEST(PushLeaf, RefusesWhatCannotBeShared) {
    pool p;
    block_address big = p.build(range(0, 252 * 3, 1000));  // internal root
    block_address small = p.build(range(5000, 20, 1000));  // a leaf under 1/3 full
    auto la = p.leaves(big);
    builder b16(p.tm, 16);
    EXPECT_THROW(b16.push_leaf(la[0]), std::invalid_argument);  // other value size

    builder bb(p.tm, 8, p.counter());
    EXPECT_THROW(bb.push_leaf(big), std::invalid_argument);    // not a leaf
    EXPECT_THROW(bb.push_leaf(small), std::invalid_argument);  // too few entries
    bb.push_leaf(la[1]);
    EXPECT_THROW(bb.push_leaf(la[0]), std::invalid_argument);  // keys not above the last
    EXPECT_THROW(bb.push_leaf(la[1]), std::invalid_argument);
    std::uint8_t v[8] = {};
    EXPECT_THROW(bb.push_back(252, v), std::invalid_argument);
    bb.push_leaf(la[2]);  // still usable
    block_address rb = p.keep(bb.finish());
    EXPECT_EQ(bb.size(), 504u);
    EXPECT_EQ(p.leaves(rb), (std::vector<block_address>{la[1], la[2]}));
    p.expect_counts();
}

// A snapshot-like series: an origin, then trees that each repeat an earlier one with bursts of
// changed values, new keys and removed keys. sharing_builder must find the leaves it repeats.
TEST(SharingBuilder, RandomSnapshotsHoldTheirEntriesAndShareWhatTheyRepeat) {
    for (unsigned seed : {1u, 2u, 3u}) {
        SCOPED_TRACE("seed " + std::to_string(seed));
        std::mt19937_64 rng(seed);
        pool p;
        leaf_catalog catalog(8);
        std::vector<model> trees;
        std::uint64_t next_value = 1;
        model origin;
        for (std::uint64_t k = 0; k < 30000; ++k)
            if (rng() % 8) origin[k] = next_value++;
        trees.push_back(origin);
        for (int t = 0; t < 6; ++t) {
            model m = trees[rng() % trees.size()];
            int edits = static_cast<int>(rng() % 12);
            for (int e = 0; e < edits; ++e) {
                std::uint64_t at = rng() % 32000, len = 1 + rng() % 300;
                switch (rng() % 3) {
                case 0:  // rewrites (and writes into holes)
                    for (std::uint64_t k = at; k < at + len; ++k) m[k] = next_value++;
                    break;
                case 1:  // discards
                    for (std::uint64_t k = at; k < at + len; ++k) m.erase(k);
                    break;
                default:  // a few scattered new keys
                    for (std::uint64_t k = at; k < at + len; k += 1 + rng() % 50) m[k] = next_value++;
                }
            }
            trees.push_back(m);
        }
        std::uint64_t shared = 0;
        std::vector<block_address> roots;
        for (auto& m : trees) {
            std::uint64_t s = 0;
            roots.push_back(p.build_sharing(catalog, m, &s));
            shared += s;
        }
        for (std::size_t i = 0; i < trees.size(); ++i) p.expect_tree(roots[i], trees[i]);
        p.expect_counts();
        // Each derived tree repeats most of its parent: most of its leaves are shared.
        EXPECT_GT(shared, 6u * p.leaves(roots[0]).size() / 2);
    }
}

TEST(SharingBuilder, IdenticalTreesShareEveryLeafAndDifferentValuesShareNone) {
    pool p;
    leaf_catalog catalog(8);
    model a = range(0, 10000, 1);
    std::uint64_t sa, sb, sc;
    block_address ra = p.build_sharing(catalog, a, &sa);
    block_address rb = p.build_sharing(catalog, a, &sb);
    p.build_sharing(catalog, range(0, 10000, 20000), &sc);  // same keys, other values
    EXPECT_EQ(sa, 0u);
    EXPECT_EQ(sb, p.leaves(ra).size());
    EXPECT_EQ(p.leaves(rb), p.leaves(ra));
    EXPECT_EQ(sc, 0u);
    p.expect_tree(rb, a);
    p.expect_counts();
    EXPECT_EQ(catalog.size(), 2 * p.leaves(ra).size());
}

// Two catalogued leaves start alike and part further on (two snapshots rewrote different parts
// of one origin leaf): a tree repeating the second one must end up sharing it, not a copy, even
// though the comparison starts with the first.
TEST(SharingBuilder, SwitchesToALeafThatStartsAlikeWhenTheFirstDiffers) {
    pool p;
    leaf_catalog catalog(8);
    model a = range(0, 252 * 3, 1);
    model b = a;
    b[200] = 900000;  // b's first leaf differs from a's at entry 200
    model c = b;
    c[300] = 900001;  // c repeats b's first leaf, not a's
    block_address ra = p.build_sharing(catalog, a), rb = p.build_sharing(catalog, b), rc = p.build_sharing(catalog, c);
    auto la = p.leaves(ra), lb = p.leaves(rb), lc = p.leaves(rc);
    ASSERT_EQ(la.size(), 3u);
    EXPECT_NE(lb[0], la[0]);
    EXPECT_EQ(lb[1], la[1]);
    EXPECT_EQ(lc[0], lb[0]);
    EXPECT_NE(lc[1], la[1]);
    EXPECT_EQ(lc[2], la[2]);
    p.expect_tree(rc, c);
    p.expect_counts();
}
