// btree::remove / btree::remove_range against a std::map model, with a structural check of every
// node (format.md §6.3) and exact recounts of metadata and value references (format.md §7.1).
#include "persistent-data/block_manager.h"
#include "persistent-data/btree/btree.h"
#include "persistent-data/io_engine.h"
#include "persistent-data/space-maps/core.h"
#include "persistent-data/transaction_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

using namespace pdata;
namespace bt = pdata::btree;

namespace {

constexpr block_address MD_BLOCKS = 24000;
constexpr std::uint64_t DATA_BLOCKS = 1u << 21;

using key_pair = std::pair<std::uint64_t, std::uint64_t>;  // (upper key or 0, bottom key)
using contents_map = std::map<key_pair, std::uint64_t>;

// A metadata device, its core space map, a data space map the values are counted in, and a tree
// description whose bottom values are u64 data blocks.
struct harness {
    std::shared_ptr<memory_engine> engine = std::make_shared<memory_engine>(MD_BLOCKS);
    block_manager bm{engine};
    core_space_map msm{MD_BLOCKS};
    core_space_map dsm{DATA_BLOCKS};
    std::unique_ptr<transaction_manager> tm = std::make_unique<transaction_manager>(bm, msm);
    bt::info inf;

    explicit harness(unsigned levels) {
        inf.tm = tm.get();
        inf.levels = levels;
        inf.vt.size = 8;
        inf.vt.inc = [this](const std::uint8_t* v, unsigned n) {
            for (unsigned i = 0; i < n; ++i) dsm.inc(load_le64(v + 8 * i));
        };
        inf.vt.dec = [this](const std::uint8_t* v, unsigned n) {
            for (unsigned i = 0; i < n; ++i) dsm.dec(load_le64(v + 8 * i));
        };
    }

    // Ends the transaction: what is now reachable becomes the committed state.
    void commit() {
        msm.commit();
        dsm.commit();
        bm.flush();
        tm = std::make_unique<transaction_manager>(bm, msm);
        inf.tm = tm.get();
    }

    // Inserts keys -> data block d; the tree takes over the reference the caller gives it.
    block_address insert(block_address root, const std::uint64_t* keys, std::uint64_t d) {
        dsm.inc(d);
        std::uint8_t v[8];
        store_le64(v, d);
        return bt::insert(inf, root, keys, v);
    }
};

// ---- structure and contents ----

struct walker {
    block_manager& bm;
    unsigned levels;
    std::vector<std::string> problems;
    contents_map contents;

    void problem(block_address b, const std::string& what) {
        if (problems.size() < 20) problems.push_back("block " + std::to_string(b) + ": " + what);
    }

    // Returns the depth of the leaves under b (relative to b).
    unsigned walk(block_address b, unsigned level, bool is_root, std::optional<std::uint64_t> lo,
                  std::optional<std::uint64_t> hi, std::uint64_t upper_key) {
        read_ref r = bm.read_lock(b, bt::btree_node_validator());
        bt::node_ref n(r.data());
        unsigned nr = n.nr_entries();
        if (n.value_size() != 8 || n.max_entries() != 252) problem(b, "bad value_size/max_entries");
        if (!is_root && nr < n.max_entries() / 3) problem(b, "under-full: " + std::to_string(nr));
        if (is_root && n.is_internal() && nr < 2) problem(b, "internal root with " + std::to_string(nr) + " entries");
        for (unsigned i = 1; i < nr; ++i)
            if (n.key(i) <= n.key(i - 1)) problem(b, "keys not strictly increasing at " + std::to_string(i));
        if (nr && lo && n.key(0) < *lo) problem(b, "first key below parent key");
        if (nr && hi && n.key(nr - 1) >= *hi) problem(b, "last key not below next parent key");
        if (n.is_internal()) {
            std::optional<unsigned> depth;
            for (unsigned i = 0; i < nr; ++i) {
                std::optional<std::uint64_t> next_hi = i + 1 < nr ? std::optional(n.key(i + 1)) : hi;
                unsigned d = walk(n.value64(i), level, false, n.key(i), next_hi, upper_key);
                if (depth && *depth != d) problem(b, "leaves at different depths");
                depth = d;
            }
            return depth.value_or(0) + 1;
        }
        if (!n.is_leaf()) problem(b, "neither leaf nor internal");
        for (unsigned i = 0; i < nr; ++i) {
            if (level + 1 < levels)
                walk(n.value64(i), level + 1, true, std::nullopt, std::nullopt, n.key(i));
            else
                contents[{upper_key, n.key(i)}] = n.value64(i);
        }
        return 0;
    }
};

contents_map read_contents(harness& h, block_address root, std::vector<std::string>& problems) {
    walker w{h.bm, h.inf.levels, {}, {}};
    w.walk(root, 0, true, std::nullopt, std::nullopt, 0);
    problems.insert(problems.end(), w.problems.begin(), w.problems.end());
    return std::move(w.contents);
}

// ---- recount (format.md §7.1): one reference per slot of every distinct node ----

struct recounter {
    block_manager& bm;
    unsigned levels;
    std::vector<std::uint32_t> md = std::vector<std::uint32_t>(MD_BLOCKS, 0);
    std::vector<std::uint32_t> data = std::vector<std::uint32_t>(DATA_BLOCKS, 0);
    std::unordered_set<block_address> seen;

    void reference(block_address b, unsigned level) {
        ++md.at(b);
        if (!seen.insert(b).second) return;
        read_ref r = bm.read_lock(b, bt::btree_node_validator());
        bt::node_ref n(r.data());
        for (unsigned i = 0; i < n.nr_entries(); ++i) {
            if (n.is_internal())
                reference(n.value64(i), level);
            else if (level + 1 < levels)
                reference(n.value64(i), level + 1);
            else
                ++data.at(n.value64(i));
        }
    }
};

void expect_counts(harness& h, const std::vector<block_address>& roots) {
    recounter rc{h.bm, h.inf.levels};
    for (auto r : roots) rc.reference(r, 0);
    unsigned bad = 0;
    for (block_address b = 0; b < MD_BLOCKS; ++b) {
        if (rc.md[b] != h.msm.get_count(b) && bad++ < 10)
            ADD_FAILURE() << "metadata block " << b << ": recount " << rc.md[b] << ", space map " << h.msm.get_count(b);
    }
    for (std::uint64_t d = 0; d < DATA_BLOCKS; ++d) {
        if (rc.data[d] != h.dsm.get_count(d) && bad++ < 20)
            ADD_FAILURE() << "data block " << d << ": recount " << rc.data[d] << ", space map " << h.dsm.get_count(d);
    }
}

void expect_tree(harness& h, block_address root, const contents_map& model) {
    std::vector<std::string> problems;
    contents_map got = read_contents(h, root, problems);
    for (auto& p : problems) ADD_FAILURE() << p;
    EXPECT_EQ(got.size(), model.size());
    if (got != model) {
        unsigned shown = 0;
        for (auto& [k, v] : model) {
            auto it = got.find(k);
            if ((it == got.end() || it->second != v) && shown++ < 5)
                ADD_FAILURE() << "key (" << k.first << "," << k.second << ") missing or wrong";
        }
        for (auto& [k, v] : got)
            if (!model.count(k) && shown++ < 10) ADD_FAILURE() << "extra key (" << k.first << "," << k.second << ")";
    }
}

unsigned tree_depth(harness& h, block_address root) {
    unsigned d = 1;
    for (;;) {
        read_ref r = h.bm.read_lock(root, bt::btree_node_validator());
        bt::node_ref n(r.data());
        if (n.is_leaf()) return d;
        root = n.value64(0);
        ++d;
    }
}

// Model operations for single-level trees (upper key 0).
std::uint64_t model_remove_range(contents_map& m, std::uint64_t upper, std::uint64_t begin, std::uint64_t end) {
    if (begin >= end) return 0;
    auto a = m.lower_bound({upper, begin});
    auto b = m.lower_bound({upper, end});
    std::uint64_t n = std::distance(a, b);
    m.erase(a, b);
    return n;
}

// ---- tests ----

TEST(BtreeRemove, SmallTreeMergesAndCollapsesToLeaf) {
    harness h(1);
    block_address root = bt::empty_tree(h.inf);
    contents_map model;
    // Enough for a two-level tree (more than one leaf) but not much more.
    for (std::uint64_t k = 0; k < 600; ++k) {
        root = h.insert(root, &k, 1000 + k);
        model[{0, k}] = 1000 + k;
    }
    ASSERT_EQ(tree_depth(h, root), 2u);
    for (std::uint64_t k = 0; k < 600; k += 2) {
        bool removed = false;
        root = bt::remove(h.inf, root, &k, &removed);
        EXPECT_TRUE(removed);
        model.erase({0, k});
        if (k % 50 == 0) {
            expect_tree(h, root, model);
            expect_counts(h, {root});
        }
    }
    expect_tree(h, root, model);
    expect_counts(h, {root});
    // 300 keys fit in one leaf after merges: the root collapses to a leaf once few enough remain.
    for (std::uint64_t k = 1; k < 600; k += 2) {
        if (k > 500) break;
        root = bt::remove(h.inf, root, &k);
        model.erase({0, k});
    }
    expect_tree(h, root, model);
    expect_counts(h, {root});
    EXPECT_EQ(tree_depth(h, root), 1u);
    EXPECT_EQ(h.dsm.get_count(1000), 0u);
    EXPECT_EQ(h.dsm.get_count(1001), 0u);
    EXPECT_EQ(h.dsm.get_count(1599), 1u);
}

TEST(BtreeRemove, RandomOperationsAgainstModel) {
    harness h(1);
    std::mt19937_64 rng(42);
    block_address root = bt::empty_tree(h.inf);
    contents_map model;
    const std::uint64_t KEY_SPACE = 400000;
    auto random_insert = [&](unsigned count) {
        for (unsigned i = 0; i < count; ++i) {
            std::uint64_t k = rng() % KEY_SPACE, d = rng() % DATA_BLOCKS;
            auto it = model.find({0, k});
            if (it != model.end() && it->second == d) continue;
            root = h.insert(root, &k, d);
            model[{0, k}] = d;
        }
    };
    random_insert(130000);
    ASSERT_EQ(tree_depth(h, root), 3u);
    expect_tree(h, root, model);
    expect_counts(h, {root});

    for (int batch = 0; batch < 24; ++batch) {
        int kind = batch % 4;
        if (kind == 0) {
            // Single removes, present and absent keys.
            for (int i = 0; i < 3000; ++i) {
                std::uint64_t k = rng() % KEY_SPACE;
                bool removed = false;
                root = bt::remove(h.inf, root, &k, &removed);
                EXPECT_EQ(removed, model.erase({0, k}) == 1) << k;
            }
        } else if (kind == 1) {
            // Small ranges (within a leaf or across one boundary).
            for (int i = 0; i < 300; ++i) {
                std::uint64_t b = rng() % KEY_SPACE, e = b + rng() % 1500;
                std::uint64_t n = 12345;
                root = bt::remove_range(h.inf, root, nullptr, b, e, &n);
                ASSERT_EQ(n, model_remove_range(model, 0, b, e));
            }
        } else if (kind == 2) {
            // A few large ranges (across internal nodes).
            for (int i = 0; i < 3; ++i) {
                std::uint64_t b = rng() % KEY_SPACE, e = b + rng() % 40000;
                std::uint64_t n = 0;
                root = bt::remove_range(h.inf, root, nullptr, b, e, &n);
                ASSERT_EQ(n, model_remove_range(model, 0, b, e));
            }
        } else {
            random_insert(20000);
        }
        expect_tree(h, root, model);
        expect_counts(h, {root});
        if (batch % 6 == 5) h.commit();
    }
}

TEST(BtreeRemove, NoOpRemovalWritesNothing) {
    harness h(1);
    block_address root = bt::empty_tree(h.inf);
    for (std::uint64_t k = 0; k < 20000; k += 2) root = h.insert(root, &k, k);
    h.commit();
    auto free_before = h.msm.nr_free();
    auto writes = h.engine->writes();
    std::uint64_t k = 1001;
    bool removed = true;
    EXPECT_EQ(bt::remove(h.inf, root, &k, &removed), root);
    EXPECT_FALSE(removed);
    k = 50000;
    EXPECT_EQ(bt::remove(h.inf, root, &k), root);
    std::uint64_t n = 99;
    EXPECT_EQ(bt::remove_range(h.inf, root, nullptr, 1001, 1002, &n), root);
    EXPECT_EQ(n, 0u);
    EXPECT_EQ(bt::remove_range(h.inf, root, nullptr, 30000, 90000, &n), root);
    EXPECT_EQ(bt::remove_range(h.inf, root, nullptr, 500, 500, &n), root);
    EXPECT_EQ(bt::remove_range(h.inf, root, nullptr, 600, 100, &n), root);
    EXPECT_EQ(n, 0u);
    EXPECT_EQ(h.msm.nr_free(), free_before);
    EXPECT_FALSE(h.tm->is_shadow(root));
    h.bm.flush();
    EXPECT_EQ(h.engine->writes(), writes);

    // Multi-level: a missing upper key is a no-op too.
    harness h2(2);
    block_address r2 = bt::empty_tree(h2.inf);
    std::uint64_t keys[2] = {3, 10};
    r2 = h2.insert(r2, keys, 7);
    h2.commit();
    free_before = h2.msm.nr_free();
    keys[0] = 4;
    EXPECT_EQ(bt::remove(h2.inf, r2, keys, &removed), r2);
    EXPECT_FALSE(removed);
    EXPECT_EQ(bt::remove_range(h2.inf, r2, keys, 0, 100, &n), r2);
    EXPECT_EQ(n, 0u);
    keys[0] = 3;
    keys[1] = 11;
    EXPECT_EQ(bt::remove(h2.inf, r2, keys, &removed), r2);
    EXPECT_EQ(bt::remove_range(h2.inf, r2, keys, 11, 100, &n), r2);
    EXPECT_EQ(h2.msm.nr_free(), free_before);
}

TEST(BtreeRemove, RemovingEverythingLeavesAnEmptyLeafRoot) {
    for (int how = 0; how < 3; ++how) {
        harness h(1);
        block_address root = bt::empty_tree(h.inf);
        std::vector<std::uint64_t> keys;
        for (std::uint64_t k = 0; k < 70000; ++k) keys.push_back(k * 3);
        std::mt19937_64 rng(how);
        std::shuffle(keys.begin(), keys.end(), rng);
        for (auto k : keys) root = h.insert(root, &k, k % 5000);
        if (how == 2) h.commit();  // removal from committed nodes: everything gets shadowed
        ASSERT_EQ(tree_depth(h, root), 3u);
        if (how == 0) {
            for (auto k : keys) {
                bool removed = false;
                root = bt::remove(h.inf, root, &k, &removed);
                ASSERT_TRUE(removed);
            }
        } else {
            std::uint64_t n = 0;
            root = bt::remove_range(h.inf, root, nullptr, 0, UINT64_MAX, &n);
            EXPECT_EQ(n, keys.size());
        }
        {
            read_ref r = h.bm.read_lock(root, bt::btree_node_validator());
            bt::node_ref n(r.data());
            EXPECT_TRUE(n.is_leaf());
            EXPECT_EQ(n.nr_entries(), 0u);
        }
        expect_tree(h, root, {});
        expect_counts(h, {root});
        EXPECT_EQ(h.msm.nr_allocated(), 1u);
        EXPECT_EQ(h.dsm.nr_allocated(), 0u);
    }
}

TEST(BtreeRemove, RangesAtLeafAndInternalBoundaries) {
    harness h(1);
    block_address root = bt::empty_tree(h.inf);
    contents_map model;
    const std::uint64_t N = 100000;
    for (std::uint64_t k = 0; k < N; ++k) {
        root = h.insert(root, &k, k);
        model[{0, k}] = k;
    }
    ASSERT_EQ(tree_depth(h, root), 3u);

    // First keys of every leaf and of every child of the root.
    auto boundaries = [&](std::vector<std::uint64_t>& leaves, std::vector<std::uint64_t>& internals) {
        leaves.clear();
        internals.clear();
        std::vector<std::pair<block_address, unsigned>> stack{{root, 0}};
        while (!stack.empty()) {
            auto [b, d] = stack.back();
            stack.pop_back();
            read_ref r = h.bm.read_lock(b, bt::btree_node_validator());
            bt::node_ref n(r.data());
            if (n.is_leaf()) {
                if (n.nr_entries()) leaves.push_back(n.key(0));
                continue;
            }
            for (unsigned i = 0; i < n.nr_entries(); ++i) {
                if (d == 0) internals.push_back(n.key(i));
                stack.push_back({n.value64(i), d + 1});
            }
        }
        std::sort(leaves.begin(), leaves.end());
        std::sort(internals.begin(), internals.end());
    };

    std::vector<std::uint64_t> leaves, internals;
    std::mt19937_64 rng(7);
    for (int round = 0; round < 16; ++round) {
        boundaries(leaves, internals);
        ASSERT_GE(leaves.size(), 3u);
        std::uint64_t b, e;
        switch (round % 4) {
        case 0: {  // exactly one whole leaf
            std::size_t i = rng() % (leaves.size() - 1);
            b = leaves[i];
            e = leaves[i + 1];
            break;
        }
        case 1: {  // the tail of one leaf and the head of the next
            std::size_t i = 1 + rng() % (leaves.size() - 2);
            b = leaves[i] - 3;
            e = leaves[i] + 3;
            break;
        }
        case 2: {  // from inside one internal child to inside another
            if (internals.size() < 2) { b = leaves[0]; e = leaves[1] + 1; break; }
            std::size_t i = rng() % (internals.size() - 1);
            b = internals[i] + 17;
            e = internals[i + 1] + 29;
            break;
        }
        default: {  // a whole internal child, boundary to boundary
            if (internals.size() < 2) { b = 0; e = leaves[1]; break; }
            std::size_t i = rng() % (internals.size() - 1);
            b = internals[i];
            e = internals[i + 1];
            break;
        }
        }
        std::uint64_t n = 0;
        root = bt::remove_range(h.inf, root, nullptr, b, e, &n);
        ASSERT_EQ(n, model_remove_range(model, 0, b, e)) << "round " << round;
        expect_tree(h, root, model);
        expect_counts(h, {root});
        if (round == 7) h.commit();
    }
}

TEST(BtreeRemove, SharedTreeIsUnchangedAndCountsExact) {
    harness h(1);
    block_address root = bt::empty_tree(h.inf);
    contents_map model;
    std::mt19937_64 rng(3);
    for (int i = 0; i < 90000; ++i) {
        std::uint64_t k = rng() % 300000, d = rng() % DATA_BLOCKS;
        if (model.count({0, k}) && model[{0, k}] == d) continue;
        root = h.insert(root, &k, d);
        model[{0, k}] = d;
    }
    ASSERT_EQ(tree_depth(h, root), 3u);
    h.commit();
    // A second owner of the same tree (a snapshot).
    block_address other = root;
    h.msm.inc(other);
    const contents_map other_model = model;
    expect_counts(h, {root, other});

    for (int batch = 0; batch < 8; ++batch) {
        for (int i = 0; i < 500; ++i) {
            std::uint64_t k = rng() % 300000;
            bool removed = false;
            root = bt::remove(h.inf, root, &k, &removed);
            EXPECT_EQ(removed, model.erase({0, k}) == 1);
        }
        for (int i = 0; i < 20; ++i) {
            std::uint64_t b = rng() % 300000, e = b + rng() % (batch % 2 ? 30000 : 2000);
            std::uint64_t n = 0;
            root = bt::remove_range(h.inf, root, nullptr, b, e, &n);
            ASSERT_EQ(n, model_remove_range(model, 0, b, e));
        }
        expect_tree(h, root, model);
        expect_tree(h, other, other_model);
        expect_counts(h, {root, other});
        if (batch == 3) h.commit();
    }
    // Emptying the copy leaves the other intact.
    std::uint64_t n = 0;
    root = bt::remove_range(h.inf, root, nullptr, 0, UINT64_MAX, &n);
    EXPECT_EQ(n, model.size());
    expect_tree(h, root, {});
    expect_tree(h, other, other_model);
    expect_counts(h, {root, other});
}

TEST(BtreeRemove, TwoLevelTrees) {
    harness h(2);
    block_address root = bt::empty_tree(h.inf);
    contents_map model;
    std::mt19937_64 rng(11);
    const unsigned DEVS = 6;
    for (unsigned dev = 0; dev < DEVS; ++dev) {
        unsigned count = dev == 0 ? 70000 : 6000 + 3000 * dev;
        for (unsigned i = 0; i < count; ++i) {
            std::uint64_t keys[2] = {dev * 1000, rng() % 200000};
            std::uint64_t d = rng() % DATA_BLOCKS;
            if (model.count({keys[0], keys[1]}) && model[{keys[0], keys[1]}] == d) continue;
            root = h.insert(root, keys, d);
            model[{keys[0], keys[1]}] = d;
        }
    }
    expect_tree(h, root, model);
    expect_counts(h, {root});
    h.commit();

    // Share device 0's subtree with a new device 9000 (what a snapshot does).
    block_address dev0_root;
    {
        std::uint8_t v[8];
        bt::info upper = h.inf;
        upper.levels = 1;
        upper.vt = bt::value_type{};  // the subtree reference is handed over explicitly below
        std::uint64_t k = 0;
        ASSERT_TRUE(bt::lookup(upper, root, &k, v));
        dev0_root = load_le64(v);
        h.tm->inc(dev0_root);
        k = 9000;
        root = bt::insert(upper, root, &k, v);
    }
    for (auto [k, v] : contents_map(model))
        if (k.first == 0) model[{9000, k.second}] = v;
    expect_tree(h, root, model);
    expect_counts(h, {root});

    for (int batch = 0; batch < 10; ++batch) {
        std::uint64_t dev = (batch % 3 == 0) ? 0 : 1000 * (rng() % DEVS);
        for (int i = 0; i < 400; ++i) {
            std::uint64_t keys[2] = {dev, rng() % 200000};
            bool removed = false;
            root = bt::remove(h.inf, root, keys, &removed);
            EXPECT_EQ(removed, model.erase({keys[0], keys[1]}) == 1);
        }
        for (int i = 0; i < 10; ++i) {
            std::uint64_t b = rng() % 200000, e = b + rng() % 20000;
            std::uint64_t n = 0;
            root = bt::remove_range(h.inf, root, &dev, b, e, &n);
            ASSERT_EQ(n, model_remove_range(model, dev, b, e));
        }
        expect_tree(h, root, model);
        expect_counts(h, {root});
        if (batch == 4) h.commit();
    }
    // Empty device 9000 entirely; device 0 is unaffected and the subtree stays (as an empty leaf).
    std::uint64_t dev = 9000, n = 0;
    root = bt::remove_range(h.inf, root, &dev, 0, UINT64_MAX, &n);
    EXPECT_EQ(n, model_remove_range(model, 9000, 0, UINT64_MAX));
    expect_tree(h, root, model);
    expect_counts(h, {root});
    std::uint64_t keys[2] = {9000, 0};
    std::uint64_t next;
    EXPECT_FALSE(bt::lookup_next(h.inf, root, keys, &next, nullptr));
}

TEST(BtreeRemove, RangeOverAMillionMappingsIsFast) {
    harness h(1);
    block_address root = bt::empty_tree(h.inf);
    const std::uint64_t N = 1000000;
    for (std::uint64_t k = 0; k < N; ++k) root = h.insert(root, &k, k);
    h.commit();
    auto t0 = std::chrono::steady_clock::now();
    std::uint64_t n = 0;
    root = bt::remove_range(h.inf, root, nullptr, 1000, N - 1000, &n);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(n, N - 2000);
    std::printf("remove_range of %llu mappings: %.3f s\n", (unsigned long long)n, secs);
    EXPECT_LT(secs, 30.0);  // generous for sanitizer builds; a release build takes a fraction of a second
    contents_map model;
    for (std::uint64_t k = 0; k < 1000; ++k) model[{0, k}] = k;
    for (std::uint64_t k = N - 1000; k < N; ++k) model[{0, k}] = k;
    expect_tree(h, root, model);
    expect_counts(h, {root});
}

} // namespace
