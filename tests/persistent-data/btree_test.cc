// Property tests of the b-tree (persistent-data/btree/{lookup,insert,del}.cc) against std::map,
// with exact recounts of metadata and value references (format.md §6, §7).
#include "persistent-data/btree/btree.h"
#include "persistent-data/io_engine.h"
#include "persistent-data/space-maps/core.h"
#include "tests/support/recount.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <vector>

using namespace pdata;
namespace bt = pdata::btree;
using thinpool_test::check_tree;
using thinpool_test::compare_counts;
using thinpool_test::recount;
using thinpool_test::tree_root;
using thinpool_test::tree_shape;

namespace {

// Counted values look like the mapping tree's block_time: the low 40 bits name a data block, the
// rest is a tag that equality ignores.
constexpr std::uint64_t BLOCK_MASK = (1ull << 40) - 1;
std::uint64_t mk(std::uint64_t block, std::uint64_t tag) { return block | (tag << 40); }
std::uint64_t block_of(std::uint64_t v) { return v & BLOCK_MASK; }

bt::value_type counting_vt(core_space_map& data_sm) {
    bt::value_type vt;
    vt.size = 8;
    vt.inc = [&data_sm](const std::uint8_t* v, unsigned n) {
        for (unsigned i = 0; i < n; ++i) data_sm.inc(block_of(load_le64(v + 8 * i)));
    };
    vt.dec = [&data_sm](const std::uint8_t* v, unsigned n) {
        for (unsigned i = 0; i < n; ++i) data_sm.dec(block_of(load_le64(v + 8 * i)));
    };
    vt.equal = [](const std::uint8_t* a, const std::uint8_t* b) {
        return block_of(load_le64(a)) == block_of(load_le64(b));
    };
    return vt;
}

std::optional<std::uint64_t> value_block(const std::uint8_t* v) { return block_of(load_le64(v)); }

struct env {
    block_address nr_blocks;
    std::shared_ptr<memory_engine> engine;
    block_manager bm;
    core_space_map sm;
    core_space_map data_sm;
    std::unique_ptr<transaction_manager> tm;
    bt::info inf;

    // A small cache, so nodes are written back and read again (and validated) during the tests.
    env(block_address nr, unsigned levels, std::uint32_t value_size, bool counting, block_address nr_data = 1 << 16,
        std::size_t cache = 1024)
        : nr_blocks(nr), engine(std::make_shared<memory_engine>(nr)), bm(engine, cache), sm(nr), data_sm(nr_data),
          tm(std::make_unique<transaction_manager>(bm, sm)) {
        inf.tm = tm.get();
        inf.levels = levels;
        if (counting) {
            inf.vt = counting_vt(data_sm);
        } else {
            inf.vt.size = value_size;
        }
    }

    // Ends the transaction: every block now reachable is committed, so the next change must shadow.
    void commit() {
        sm.commit();
        data_sm.commit();
        tm->pre_commit();
        bm.invalidate_clean();
        tm = std::make_unique<transaction_manager>(bm, sm);
        inf.tm = tm.get();
    }

    std::vector<std::uint32_t> counts() const {
        std::vector<std::uint32_t> c(sm.nr_blocks());
        for (block_address b = 0; b < c.size(); ++b) c[b] = sm.get_count(b);
        return c;
    }
    std::vector<std::uint32_t> data_counts() const {
        std::vector<std::uint32_t> c(data_sm.nr_blocks());
        for (block_address b = 0; b < c.size(); ++b) c[b] = data_sm.get_count(b);
        return c;
    }

    // Every live root must explain the space maps exactly.
    void expect_counts(const std::vector<block_address>& roots, bool counting) {
        std::vector<tree_root> trs;
        for (auto r : roots) trs.push_back({r, inf.levels, inf.vt.size});
        auto rc = recount(bm, nr_blocks, trs, counting ? thinpool_test::value_block_fn(value_block)
                                                       : thinpool_test::value_block_fn());
        auto md = compare_counts(rc.metadata, sm);
        EXPECT_TRUE(md.empty()) << "metadata: " << md.front() << " (" << md.size() << " mismatches)";
        if (counting) {
            auto dd = compare_counts(rc.values, data_sm);
            EXPECT_TRUE(dd.empty()) << "values: " << dd.front() << " (" << dd.size() << " mismatches)";
        }
    }

    tree_shape expect_valid(block_address root) {
        std::vector<std::string> problems;
        auto shape = check_tree(bm, {root, inf.levels, inf.vt.size}, problems);
        EXPECT_TRUE(problems.empty()) << problems.front() << " (" << problems.size() << " problems)";
        return shape;
    }

    bool all_free() const {
        for (block_address b = 0; b < sm.nr_blocks(); ++b)
            if (sm.get_count(b)) return false;
        for (block_address b = 0; b < data_sm.nr_blocks(); ++b)
            if (data_sm.get_count(b)) return false;
        return true;
    }
};

// Deterministic value bytes for a seed, for any value size.
std::vector<std::uint8_t> bytes_for(std::uint64_t seed, std::uint32_t size) {
    std::vector<std::uint8_t> v(size);
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (std::uint32_t i = 0; i < size; ++i) {
        v[i] = std::uint8_t(x >> (8 * (i % 8)));
        if (i % 8 == 7) x = x * 6364136223846793005ull + 1442695040888963407ull;
    }
    return v;
}

std::vector<std::uint8_t> u64_bytes(std::uint64_t v) {
    std::vector<std::uint8_t> b(8);
    store_le64(b.data(), v);
    return b;
}

using model = std::map<std::uint64_t, std::vector<std::uint8_t>>;

void expect_same(env& e, block_address root, const std::uint64_t* upper_keys, const model& m) {
    auto it = m.begin();
    std::size_t n = 0;
    bool ok = true;
    bt::iterate(e.inf, root, upper_keys, [&](std::uint64_t k, const std::uint8_t* v) {
        if (it == m.end() || it->first != k || std::memcmp(it->second.data(), v, it->second.size()) != 0) {
            ok = false;
            return false;
        }
        ++it;
        ++n;
        return true;
    });
    EXPECT_TRUE(ok) << "iterate differs from the model after " << n << " entries";
    EXPECT_EQ(n, m.size());
}

// Checks lookup, lookup_next and lookup_last of the single-level tree at root for key k.
void probe(env& e, block_address root, const model& m, std::uint64_t k) {
    std::uint32_t vs = e.inf.vt.size;
    std::vector<std::uint8_t> out(vs);
    bool found = bt::lookup(e.inf, root, &k, out.data());
    auto it = m.find(k);
    ASSERT_EQ(found, it != m.end()) << "key " << k;
    if (found) {
        ASSERT_EQ(out, it->second) << "key " << k;
    }

    std::uint64_t nk = 0;
    bool nfound = bt::lookup_next(e.inf, root, &k, &nk, out.data());
    auto lb = m.lower_bound(k);
    ASSERT_EQ(nfound, lb != m.end()) << "next of " << k;
    if (nfound) {
        ASSERT_EQ(nk, lb->first) << "next of " << k;
        ASSERT_EQ(out, lb->second) << "next of " << k;
    }
}

void probe_last(env& e, block_address root, const std::uint64_t* upper, const model& m) {
    std::vector<std::uint8_t> out(e.inf.vt.size);
    std::uint64_t lk = 0;
    bool found = bt::lookup_last(e.inf, root, upper, &lk, out.data());
    ASSERT_EQ(found, !m.empty());
    if (found) {
        EXPECT_EQ(lk, m.rbegin()->first);
        EXPECT_EQ(out, m.rbegin()->second);
    }
}

} // namespace

TEST(btree, empty_tree) {
    env e(64, 1, 8, true);
    block_address root = bt::empty_tree(e.inf);
    model m;
    expect_same(e, root, nullptr, m);
    probe(e, root, m, 0);
    probe(e, root, m, ~0ull);
    probe_last(e, root, nullptr, m);
    e.expect_valid(root);
    e.expect_counts({root}, true);
    bt::del(e.inf, root);
    EXPECT_TRUE(e.all_free());
}

TEST(btree, single_insert_and_overwrite_semantics) {
    env e(64, 1, 8, true);
    block_address root = bt::empty_tree(e.inf);
    std::uint64_t k = 42;
    bool inserted = false;

    e.data_sm.inc(5);  // the caller's reference, handed to the tree
    auto v = u64_bytes(mk(5, 1));
    root = bt::insert(e.inf, root, &k, v.data(), &inserted);
    EXPECT_TRUE(inserted);
    EXPECT_EQ(e.data_sm.get_count(5), 1u);

    // Equal value (same block, other tag): replaced, not dec'd.
    v = u64_bytes(mk(5, 2));
    root = bt::insert(e.inf, root, &k, v.data(), &inserted);
    EXPECT_FALSE(inserted);
    EXPECT_EQ(e.data_sm.get_count(5), 1u);
    std::uint8_t out[8];
    ASSERT_TRUE(bt::lookup(e.inf, root, &k, out));
    EXPECT_EQ(load_le64(out), mk(5, 2));

    // Different block: the old one is dec'd.
    e.data_sm.inc(6);
    v = u64_bytes(mk(6, 3));
    root = bt::insert(e.inf, root, &k, v.data(), &inserted);
    EXPECT_FALSE(inserted);
    EXPECT_EQ(e.data_sm.get_count(5), 0u);
    EXPECT_EQ(e.data_sm.get_count(6), 1u);
    e.expect_counts({root}, true);

    bt::del(e.inf, root);
    EXPECT_TRUE(e.all_free());
}

// Random inserts / overwrites / lookups for every leaf value size of the thin format.
class btree_value_size : public ::testing::TestWithParam<std::uint32_t> {};

TEST_P(btree_value_size, random_operations_match_std_map) {
    std::uint32_t vs = GetParam();
    env e(4096, 1, vs, false);
    std::mt19937_64 rng(1000 + vs);
    block_address root = bt::empty_tree(e.inf);
    model m;
    const std::uint64_t key_space = 60000;
    for (unsigned op = 0; op < 40000; ++op) {
        unsigned what = rng() % 100;
        std::uint64_t k = rng() % key_space;
        if (what < 65) {
            auto v = bytes_for(rng(), vs);
            bool inserted = false;
            root = bt::insert(e.inf, root, &k, v.data(), &inserted);
            ASSERT_EQ(inserted, m.find(k) == m.end());
            m[k] = v;
        } else if (what < 98) {
            ASSERT_NO_FATAL_FAILURE(probe(e, root, m, k));
        } else {
            ASSERT_NO_FATAL_FAILURE(probe_last(e, root, nullptr, m));
        }
        if (op % 5000 == 4999) {
            expect_same(e, root, nullptr, m);
            e.expect_valid(root);
            e.expect_counts({root}, false);
            if (op % 10000 == 9999) e.commit();
        }
    }
    expect_same(e, root, nullptr, m);
    auto shape = e.expect_valid(root);
    EXPECT_EQ(shape.entries, m.size());
    EXPECT_GE(shape.depth, 2u);
    bt::del(e.inf, root);
    EXPECT_TRUE(e.all_free());
}

INSTANTIATE_TEST_SUITE_P(value_sizes, btree_value_size, ::testing::Values(4u, 8u, 16u, 24u));

TEST(btree, sequential_ascending_and_descending) {
    for (bool ascending : {true, false}) {
        env e(4096, 1, 8, true);
        block_address root = bt::empty_tree(e.inf);
        model m;
        const std::uint64_t n = 70000;
        for (std::uint64_t i = 0; i < n; ++i) {
            std::uint64_t k = ascending ? i * 3 : (n - i) * 3;
            std::uint64_t d = i % 60000;
            e.data_sm.inc(d);
            auto v = u64_bytes(mk(d, i));
            root = bt::insert(e.inf, root, &k, v.data());
            m[k] = v;
            if (i % 20000 == 0) e.commit();
        }
        expect_same(e, root, nullptr, m);
        auto shape = e.expect_valid(root);
        EXPECT_EQ(shape.entries, n);
        EXPECT_EQ(shape.depth, 3u);
        e.expect_counts({root}, true);
        std::mt19937_64 rng(7);
        for (int i = 0; i < 3000; ++i) ASSERT_NO_FATAL_FAILURE(probe(e, root, m, rng() % (3 * n + 10)));
        probe_last(e, root, nullptr, m);
        // Filling in order keeps leaves dense (entries move into the left sibling before a split).
        EXPECT_GT(double(shape.entries) / double(shape.leaves), 0.85 * 252) << (ascending ? "ascending" : "descending");
        bt::del(e.inf, root);
        EXPECT_TRUE(e.all_free());
    }
}

TEST(btree, three_level_tree_random_keys) {
    env e(8192, 1, 8, true, 1 << 17);
    std::mt19937_64 rng(99);
    block_address root = bt::empty_tree(e.inf);
    model m;
    const unsigned n = 150000;
    for (unsigned i = 0; i < n; ++i) {
        std::uint64_t k = rng();
        if (i % 3 == 0) k >>= 40;  // some small keys, so some inserts go below every key
        std::uint64_t d = rng() % (1 << 17);
        auto old = m.find(k);
        if (old == m.end() || block_of(load_le64(old->second.data())) != d) e.data_sm.inc(d);
        auto v = u64_bytes(mk(d, i & 0xffff));
        root = bt::insert(e.inf, root, &k, v.data());
        m[k] = v;
        if (i % 40000 == 39999) e.commit();
    }
    auto shape = e.expect_valid(root);
    EXPECT_GE(shape.depth, 3u);
    EXPECT_EQ(shape.entries, m.size());
    expect_same(e, root, nullptr, m);
    e.expect_counts({root}, true);
    std::vector<std::uint64_t> present;
    for (auto& kv : m) present.push_back(kv.first);
    for (int i = 0; i < 5000; ++i) {
        std::uint64_t k = rng();
        if (i % 2) k = present[rng() % present.size()] + (rng() % 3) - 1;
        ASSERT_NO_FATAL_FAILURE(probe(e, root, m, k));
    }
    probe_last(e, root, nullptr, m);

    // Early stop of iterate.
    unsigned seen = 0;
    bt::iterate(e.inf, root, nullptr, [&](std::uint64_t, const std::uint8_t*) { return ++seen < 1000; });
    EXPECT_EQ(seen, 1000u);

    e.commit();
    bt::del(e.inf, root);
    EXPECT_TRUE(e.all_free());
}

TEST(btree, snapshot_of_single_level_tree) {
    env e(8192, 1, 8, true);
    std::mt19937_64 rng(5);
    block_address a = bt::empty_tree(e.inf);
    model ma;
    auto put = [&](block_address& root, model& m, std::uint64_t k, std::uint64_t d, std::uint64_t tag) {
        auto old = m.find(k);
        if (old == m.end() || block_of(load_le64(old->second.data())) != d) e.data_sm.inc(d);
        auto v = u64_bytes(mk(d, tag));
        root = bt::insert(e.inf, root, &k, v.data());
        m[k] = v;
    };
    for (unsigned i = 0; i < 30000; ++i) put(a, ma, rng() % 100000, rng() % 50000, 1);
    e.commit();
    auto counts0 = e.counts();
    auto data0 = e.data_counts();

    // Snapshot: the copy is one more reference to the same root.
    e.tm->inc(a);
    block_address b = a;
    model mb = ma;
    for (unsigned i = 0; i < 3000; ++i) put(b, mb, rng() % 120000, rng() % 50000, 2);
    EXPECT_NE(a, b);
    expect_same(e, a, nullptr, ma);
    expect_same(e, b, nullptr, mb);
    e.expect_valid(a);
    e.expect_valid(b);
    e.expect_counts({a, b}, true);

    // Dropping the modified copy restores every count exactly.
    bt::del(e.inf, b);
    EXPECT_EQ(e.counts(), counts0);
    EXPECT_EQ(e.data_counts(), data0);
    expect_same(e, a, nullptr, ma);

    // Again, and then modify both sides across commits.
    e.tm->inc(a);
    b = a;
    mb = ma;
    for (unsigned round = 0; round < 4; ++round) {
        for (unsigned i = 0; i < 2000; ++i) put(b, mb, rng() % 120000, rng() % 50000, 3);
        for (unsigned i = 0; i < 2000; ++i) put(a, ma, rng() % 120000, rng() % 50000, 4);
        expect_same(e, a, nullptr, ma);
        expect_same(e, b, nullptr, mb);
        e.expect_counts({a, b}, true);
        e.commit();
    }
    e.expect_valid(a);
    e.expect_valid(b);
    for (int i = 0; i < 2000; ++i) {
        std::uint64_t k = rng() % 121000;
        ASSERT_NO_FATAL_FAILURE(probe(e, a, ma, k));
        ASSERT_NO_FATAL_FAILURE(probe(e, b, mb, k));
    }

    // A snapshot of an unmodified tree, dropped at once.
    e.tm->inc(b);
    bt::del(e.inf, b);
    e.expect_counts({a, b}, true);

    bt::del(e.inf, b);
    e.expect_counts({a}, true);
    expect_same(e, a, nullptr, ma);
    bt::del(e.inf, a);
    EXPECT_TRUE(e.all_free());
}

namespace {
using model2 = std::map<std::uint64_t, model>;  // dev -> (block -> value)

void expect_same2(env& e, block_address root, const model2& m) {
    for (auto& [dev, sub] : m) {
        std::uint64_t keys[2] = {dev, 0};
        expect_same(e, root, keys, sub);
        probe_last(e, root, keys, sub);
    }
}

void probe2(env& e, block_address root, const model2& m, std::uint64_t dev, std::uint64_t k) {
    std::uint64_t keys[2] = {dev, k};
    std::uint8_t out[8];
    auto d = m.find(dev);
    bool found = bt::lookup(e.inf, root, keys, out);
    bool expect = d != m.end() && d->second.count(k);
    ASSERT_EQ(found, expect) << dev << ":" << k;
    if (found) {
        ASSERT_EQ(std::memcmp(out, d->second.at(k).data(), 8), 0);
    }
    std::uint64_t nk;
    bool nfound = bt::lookup_next(e.inf, root, keys, &nk, out);
    bool nexpect = d != m.end() && d->second.lower_bound(k) != d->second.end();
    ASSERT_EQ(nfound, nexpect) << dev << ":" << k;
    if (nfound) {
        auto it = d->second.lower_bound(k);
        ASSERT_EQ(nk, it->first);
        ASSERT_EQ(std::memcmp(out, it->second.data(), 8), 0);
    }
}
} // namespace

TEST(btree, two_level_tree_matches_model) {
    env e(8192, 2, 8, true);
    std::mt19937_64 rng(11);
    block_address root = bt::empty_tree(e.inf);
    model2 m;
    for (unsigned op = 0; op < 60000; ++op) {
        std::uint64_t dev = rng() % 16;
        std::uint64_t k = (dev % 4 == 0) ? op : rng() % 30000;  // some devices fill sequentially
        if (rng() % 4) {
            std::uint64_t d = rng() % 60000;
            auto& sub = m[dev];
            auto old = sub.find(k);
            if (old == sub.end() || block_of(load_le64(old->second.data())) != d) e.data_sm.inc(d);
            auto v = u64_bytes(mk(d, op));
            std::uint64_t keys[2] = {dev, k};
            bool inserted;
            root = bt::insert(e.inf, root, keys, v.data(), &inserted);
            ASSERT_EQ(inserted, old == sub.end());
            sub[k] = v;
        } else {
            ASSERT_NO_FATAL_FAILURE(probe2(e, root, m, rng() % 18, k));
        }
        if (op % 15000 == 14999) {
            expect_same2(e, root, m);
            e.expect_valid(root);
            e.expect_counts({root}, true);
            e.commit();
        }
    }
    // Missing devices.
    std::uint64_t keys[2] = {99, 0};
    std::uint8_t out[8];
    std::uint64_t k;
    EXPECT_FALSE(bt::lookup(e.inf, root, keys, out));
    EXPECT_FALSE(bt::lookup_next(e.inf, root, keys, &k, out));
    EXPECT_FALSE(bt::lookup_last(e.inf, root, keys, &k, out));
    unsigned calls = 0;
    bt::iterate(e.inf, root, keys, [&](std::uint64_t, const std::uint8_t*) { return ++calls, true; });
    EXPECT_EQ(calls, 0u);

    expect_same2(e, root, m);
    bt::del(e.inf, root);
    EXPECT_TRUE(e.all_free());
}

// The thin snapshot pattern: a new top-level key takes one more reference to an existing
// level-2 root; writes to either device then copy only what they touch.
TEST(btree, two_level_shared_subtree) {
    env e(8192, 2, 8, true);
    std::mt19937_64 rng(21);
    block_address root = bt::empty_tree(e.inf);
    model2 m;
    auto put = [&](std::uint64_t dev, std::uint64_t k, std::uint64_t d, std::uint64_t tag) {
        auto& sub = m[dev];
        auto old = sub.find(k);
        if (old == sub.end() || block_of(load_le64(old->second.data())) != d) e.data_sm.inc(d);
        auto v = u64_bytes(mk(d, tag));
        std::uint64_t keys[2] = {dev, k};
        root = bt::insert(e.inf, root, keys, v.data());
        sub[k] = v;
    };
    for (unsigned i = 0; i < 20000; ++i) put(0, rng() % 40000, rng() % 60000, 1);
    for (unsigned i = 0; i < 500; ++i) put(7, rng() % 1000, rng() % 60000, 1);
    e.commit();

    // The top level viewed alone: values are subtree roots with the upper-level value type.
    // (Rebuilt after every commit: it captures the transaction manager.)
    auto top_view = [&] {
        bt::info top = e.inf;
        top.levels = 1;
        top.vt = bt::detail::level_value_type(e.inf, 0);
        return top;
    };
    auto snap = [&](std::uint64_t from, std::uint64_t to) {
        bt::info top = top_view();
        std::uint8_t v[8];
        ASSERT_TRUE(bt::lookup(top, root, &from, v));
        e.tm->inc(load_le64(v));
        root = bt::insert(top, root, &to, v);
        m[to] = m[from];
    };
    snap(0, 1);
    expect_same2(e, root, m);
    e.expect_counts({root}, true);

    for (unsigned round = 0; round < 3; ++round) {
        for (unsigned i = 0; i < 1500; ++i) put(1, rng() % 45000, rng() % 60000, 2);
        for (unsigned i = 0; i < 1500; ++i) put(0, rng() % 45000, rng() % 60000, 3);
        expect_same2(e, root, m);
        e.expect_valid(root);
        e.expect_counts({root}, true);
        if (round == 1) snap(1, 2);  // a snapshot of a snapshot
        e.commit();
    }
    for (int i = 0; i < 3000; ++i) ASSERT_NO_FATAL_FAILURE(probe2(e, root, m, rng() % 3, rng() % 46000));

    // Replacing a device's subtree deletes the old one through the upper-level value type.
    {
        bt::info top = top_view();
        bt::info sub = e.inf;
        sub.levels = 1;
        block_address fresh = bt::empty_tree(sub);
        std::uint8_t v[8];
        store_le64(v, fresh);
        std::uint64_t dev = 1;
        root = bt::insert(top, root, &dev, v);
        m[1].clear();
        expect_same2(e, root, m);
        e.expect_counts({root}, true);
    }

    // The whole tree shared (a metadata snapshot), modified, then dropped.
    e.commit();
    auto counts0 = e.counts();
    auto data0 = e.data_counts();
    model2 m0 = m;
    e.tm->inc(root);
    block_address copy = root;
    for (unsigned i = 0; i < 1000; ++i) put(rng() % 4, rng() % 45000, rng() % 60000, 4);
    std::swap(m, m0);
    expect_same2(e, copy, m);
    std::swap(m, m0);
    expect_same2(e, root, m);
    e.expect_counts({root, copy}, true);
    bt::del(e.inf, root);
    EXPECT_EQ(e.counts(), counts0);
    EXPECT_EQ(e.data_counts(), data0);

    bt::del(e.inf, copy);
    EXPECT_TRUE(e.all_free());
}

TEST(btree, corrupt_node_is_reported) {
    env e(256, 1, 8, false);
    block_address root = bt::empty_tree(e.inf);
    for (std::uint64_t k = 0; k < 1000; ++k) {
        auto v = u64_bytes(k);
        root = bt::insert(e.inf, root, &k, v.data());
    }
    e.commit();
    std::uint8_t out[8];
    std::uint64_t k = 500;
    ASSERT_TRUE(bt::lookup(e.inf, root, &k, out));
    e.engine->raw(root)[100] ^= 1;
    e.bm.invalidate_clean();
    EXPECT_THROW(bt::lookup(e.inf, root, &k, out), corrupt_block);
    auto v = u64_bytes(1);
    EXPECT_THROW(bt::insert(e.inf, root, &k, v.data()), corrupt_block);
}

// A header whose (8 + value_size) * max_entries wraps 64 bits must not pass as fitting in the block
// (block_fuzz found it: value_size 0xfffffff9, max_entries 0xffffffff: 32 + (2^32 + 1) * (2^32 - 1) wraps to 31).
TEST(btree, node_validator_refuses_sizes_whose_product_wraps) {
    alignas(8) std::uint8_t b[MD_BLOCK_SIZE] = {};
    store_le32(b + 4, bt::LEAF_NODE);
    store_le32(b + 16, 1);
    store_le32(b + 20, 0xffffffffu);
    store_le32(b + 24, 0xfffffff9u);
    bt::btree_node_validator().prepare(b, 7);
    EXPECT_THROW(bt::btree_node_validator().check(b, 7), corrupt_block);
    // Each factor alone too big for a block is refused too, whatever the other.
    store_le32(b + 20, 1);
    store_le32(b + 24, 0xffffffffu);
    bt::btree_node_validator().prepare(b, 7);
    EXPECT_THROW(bt::btree_node_validator().check(b, 7), corrupt_block);
}

// Not a benchmark, but keeps an eye on the hot path: sequential mapping inserts.
TEST(btree, sequential_insert_speed) {
    env e(1 << 13, 2, 8, false, 1, 16384);
    block_address root = bt::empty_tree(e.inf);
    const std::uint64_t n = 1000000;
    auto t0 = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < n; ++i) {
        std::uint64_t keys[2] = {1, i};
        std::uint8_t v[8];
        store_le64(v, i);
        root = bt::insert(e.inf, root, keys, v);
    }
    auto t1 = std::chrono::steady_clock::now();
    double secs = std::chrono::duration<double>(t1 - t0).count();
    std::printf("[ info     ] %llu sequential 2-level inserts: %.2f s (%.0f ns each)\n", (unsigned long long)n, secs,
                secs * 1e9 / double(n));
    auto shape = e.expect_valid(root);
    EXPECT_EQ(shape.entries, n);
    e.expect_counts({root}, false);
}
