// Space maps (format.md §4, §7, §8): the shared in-memory representation, the self-hosting
// metadata map and the data ("disk") map, held against a std::vector model and against a recount
// of the blocks the structures reference.
#include "persistent-data/block_manager.h"
#include "persistent-data/btree/node.h"
#include "persistent-data/endian.h"
#include "persistent-data/io_engine.h"
#include "persistent-data/space-maps/disk.h"
#include "persistent-data/space-maps/layout.h"
#include "persistent-data/space-maps/metadata.h"
#include "persistent-data/space-maps/ref_counts.h"
#include "persistent-data/space-maps/tree_io.h"
#include "persistent-data/transaction_manager.h"


#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

using namespace pdata;
using pdata::sm::ENTRIES_PER_WORD;

namespace {

constexpr block_address E = ENTRIES_PER_BITMAP;

// ---------------------------------------------------------------- helpers

struct sm_structure {
    block_address index = 0;                // metadata: index block; data: index tree root
    std::vector<block_address> bitmaps;     // bitmap locations
    std::vector<block_address> index_nodes; // data: index tree nodes
    std::vector<block_address> overflow_nodes;
    std::vector<std::pair<std::uint64_t, std::uint32_t>> overflow;
    std::vector<sm::index_entry> entries;
};

block_address nr_bitmaps_for(block_address n) { return (n + E - 1) / E; }

// Reads a metadata space map's own structures from the device, independently of the map.
sm_structure read_metadata_structure(block_manager& bm, const sm_root& root) {
    sm_structure s;
    s.index = root.bitmap_root;
    {
        read_ref r = bm.read_lock(root.bitmap_root, index_validator());
        for (block_address i = 0; i < nr_bitmaps_for(root.nr_blocks); ++i) {
            auto e = sm::index_entry::unpack(r.data() + 16 + 16 * i);
            s.entries.push_back(e);
            s.bitmaps.push_back(e.blocknr);
        }
        for (block_address i = nr_bitmaps_for(root.nr_blocks); i < 255; ++i) {
            for (unsigned k = 0; k < 16; ++k) EXPECT_EQ(r.data()[16 + 16 * i + k], 0) << "index slot " << i;
        }
    }
    sm::read_tree(bm, root.ref_count_root, 4, [&](std::uint64_t k, const std::uint8_t* v) {
        s.overflow.emplace_back(k, load_le32(v));
    }, &s.overflow_nodes);
    return s;
}

sm_structure read_data_structure(block_manager& bm, const sm_root& root) {
    sm_structure s;
    s.index = root.bitmap_root;
    sm::read_tree(bm, root.bitmap_root, 16, [&](std::uint64_t k, const std::uint8_t* v) {
        EXPECT_EQ(k, s.bitmaps.size());
        auto e = sm::index_entry::unpack(v);
        s.entries.push_back(e);
        s.bitmaps.push_back(e.blocknr);
    }, &s.index_nodes);
    EXPECT_EQ(s.bitmaps.size(), nr_bitmaps_for(root.nr_blocks));
    sm::read_tree(bm, root.ref_count_root, 4, [&](std::uint64_t k, const std::uint8_t* v) {
        s.overflow.emplace_back(k, load_le32(v));
    }, &s.overflow_nodes);
    return s;
}

// Decodes every count of a map from its on-disk bitmaps and overflow tree.
std::vector<std::uint32_t> decode_counts(block_manager& bm, const sm_structure& s, block_address nr_blocks) {
    std::vector<std::uint32_t> c(nr_blocks, 0);
    std::map<std::uint64_t, std::uint32_t> ov(s.overflow.begin(), s.overflow.end());
    for (std::size_t i = 0; i < s.bitmaps.size(); ++i) {
        read_ref r = bm.read_lock(s.bitmaps[i], bitmap_validator());
        EXPECT_EQ(load_le32(r.data() + 4), 0u);
        for (block_address j = 0; j < E; ++j) {
            block_address b = i * E + j;
            std::uint64_t w = load_le64(r.data() + 16 + 8 * (j / 32));
            unsigned v = sm::entry_get(w, unsigned(j % 32));
            if (b >= nr_blocks) {
                EXPECT_EQ(v, 0u) << "entry beyond the end " << b;
                continue;
            }
            if (v == 3) {
                EXPECT_TRUE(ov.count(b)) << "block " << b;
                c[b] = ov[b];
            } else {
                EXPECT_FALSE(ov.count(b)) << "stray overflow entry for block " << b;
                c[b] = v;
            }
        }
        // Index entry: nr_free over the whole bitmap (kernel convention).
        std::uint32_t zeros = 0, first_zero = std::uint32_t(E);
        for (block_address j = 0; j < E; ++j) {
            std::uint64_t w = load_le64(r.data() + 16 + 8 * (j / 32));
            if (sm::entry_get(w, unsigned(j % 32)) == 0) {
                ++zeros;
                first_zero = std::min<std::uint32_t>(first_zero, std::uint32_t(j));
            }
        }
        EXPECT_EQ(s.entries[i].nr_free, zeros) << "bitmap " << i;
        EXPECT_LE(s.entries[i].none_free_before, first_zero) << "bitmap " << i;
    }
    return c;
}

void add_structure_refs(std::vector<std::uint32_t>& expected, const sm_structure& s, bool data_map) {
    if (!data_map) ++expected.at(s.index);
    for (auto b : s.bitmaps) ++expected.at(b);
    for (auto b : s.index_nodes) ++expected.at(b);
    for (auto b : s.overflow_nodes) ++expected.at(b);
}

std::vector<std::string> compare(const std::vector<std::uint32_t>& expected, const space_map& sm) {
    std::vector<std::string> bad;
    EXPECT_EQ(expected.size(), sm.nr_blocks());
    block_address nonzero = 0;
    for (block_address b = 0; b < expected.size(); ++b) {
        if (expected[b]) ++nonzero;
        if (sm.get_count(b) != expected[b] && bad.size() < 20)
            bad.push_back("block " + std::to_string(b) + ": expected " + std::to_string(expected[b]) +
                          ", space map " + std::to_string(sm.get_count(b)));
    }
    EXPECT_EQ(sm.nr_allocated(), nonzero);
    EXPECT_EQ(sm.nr_free(), expected.size() - nonzero);
    return bad;
}

#define EXPECT_COUNTS(expected, sm)                                   \
    do {                                                              \
        auto bad_ = compare((expected), (sm));                        \
        EXPECT_TRUE(bad_.empty()) << bad_.size() << " mismatches, first: " << bad_[0]; \
    } while (0)

// ---------------------------------------------------------------- ref_counts

TEST(RefCounts, BitOrder) {
    sm::ref_counts c(100);
    for (block_address b = 0; b < 4; ++b) c.set(b, 1);
    for (block_address b = 4; b < 8; ++b) c.set(b, 2);
    for (block_address b = 8; b < 12; ++b) c.set(b, 3 + unsigned(b));
    std::uint64_t w = c.words(0)[0];
    EXPECT_EQ(w & 0xFF, 0xAAu);
    EXPECT_EQ((w >> 8) & 0xFF, 0x55u);
    EXPECT_EQ((w >> 16) & 0xFF, 0xFFu);
    EXPECT_EQ(w >> 24, 0u);
    EXPECT_EQ(c.get(9), 12u);
    EXPECT_EQ(c.nr_overflow(), 4u);
    c.set(9, 2);
    EXPECT_EQ(c.nr_overflow(), 3u);
    EXPECT_EQ((c.words(0)[0] >> 18) & 3, 1u);  // weight-2 bit (2k) set, weight-1 bit clear
}

TEST(RefCounts, CountTableGrowsShrinksAndErases) {
    sm::count_table t;
    std::map<block_address, std::uint32_t> model;
    std::mt19937_64 rng(7);
    for (int round = 0; round < 6; ++round) {
        bool emptying = round == 4;
        for (int i = 0; i < 20000; ++i) {
            block_address b = rng() % 30000;
            std::uint32_t c = (!emptying && rng() % 3) ? 3 + std::uint32_t(rng() % 100) : 0;
            t.set(b, c);
            if (c) model[b] = c; else model.erase(b);
        }
        t.shrink();
        EXPECT_EQ(t.size(), model.size());
        for (block_address b = 0; b < 30000; ++b) {
            auto it = model.find(b);
            ASSERT_EQ(t.get(b), it == model.end() ? 0u : it->second) << b;
        }
        std::size_t n = 0;
        t.for_each([&](block_address b, std::uint32_t c) { ++n; EXPECT_EQ(model.at(b), c); });
        EXPECT_EQ(n, model.size());
    }
}

TEST(RefCounts, AllocationRespectsCommittedState) {
    sm::ref_counts c(100);
    for (int i = 0; i < 50; ++i) EXPECT_EQ(c.allocate(), block_address(i));
    c.commit();
    c.dec(10, 1);
    EXPECT_EQ(c.nr_allocated(), 49u);
    std::set<block_address> got;
    while (auto b = c.allocate()) got.insert(*b);
    EXPECT_EQ(got.size(), 50u);
    EXPECT_FALSE(got.count(10));
    EXPECT_EQ(c.nr_allocated(), 99u);
    c.commit();
    EXPECT_EQ(c.allocate(), block_address(10));
    EXPECT_FALSE(c.allocate());
    EXPECT_EQ(c.nr_allocated(), 100u);
}

TEST(RefCounts, NoneFreeBeforeAndNrFree) {
    sm::ref_counts c(E + 10);
    EXPECT_EQ(c.bitmap(1).nr_free, E);  // kernel convention: the whole bitmap
    c.set(0, 1);
    EXPECT_EQ(c.bitmap(0).none_free_before, 1u);
    c.set(5, 1);
    EXPECT_EQ(c.bitmap(0).none_free_before, 1u);
    c.set(1, 2);
    EXPECT_EQ(c.bitmap(0).none_free_before, 2u);
    c.set(0, 0);
    EXPECT_EQ(c.bitmap(0).none_free_before, 0u);
    EXPECT_EQ(c.bitmap(0).nr_free, E - 2);
    c.set(E + 3, 7);
    EXPECT_EQ(c.bitmap(1).nr_free, E - 1);
    EXPECT_EQ(c.nr_allocated(), 3u);
}

TEST(RefCounts, ManyAllocationsAndIncsAreQuick) {
    const block_address n = 4'000'000;
    sm::ref_counts c(n);
    auto t0 = std::chrono::steady_clock::now();
    for (block_address i = 0; i < n; ++i) {
        auto b = c.allocate();
        ASSERT_TRUE(b);
        c.inc(*b, 1);
    }
    EXPECT_FALSE(c.allocate());
    c.commit();
    for (block_address i = 0; i < n; i += 2) c.dec(i, 2);
    EXPECT_FALSE(c.allocate());  // the freed blocks are not reusable before the commit
    c.commit();
    for (block_address i = 0; i < n / 2; ++i) ASSERT_TRUE(c.allocate());
    EXPECT_FALSE(c.allocate());
    auto dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("4M allocations + incs + 2M decs + scans: %.2f s\n", dt);
}

// Counts >= 3 in a bitmap crowded with them (dense byte array, counts >= 255 in the table) and in
// a sparse one, across commits that turn the dense bitmap back to sparse; the change list and the
// committed-tree membership agree with a model.
TEST(RefCounts, DenseAndSparseOverflowAgainstModel) {
    const block_address n = 2 * E + 100;
    sm::ref_counts c(n);
    std::vector<std::uint32_t> model(n, 0), committed(n, 0);
    std::mt19937_64 rng(11);
    auto check_all = [&] {
        block_address three = 0;
        for (block_address b = 0; b < n; ++b) {
            ASSERT_EQ(c.get(b), model[b]) << "block " << b;
            three += model[b] >= 3;
        }
        EXPECT_EQ(c.nr_overflow(), three);
        std::vector<std::pair<block_address, std::uint32_t>> got, want;
        c.for_each_overflow([&](block_address b, std::uint32_t v) { got.emplace_back(b, v); });
        for (block_address b = 0; b < n; ++b)
            if (model[b] >= 3) want.emplace_back(b, model[b]);
        EXPECT_EQ(got, want);
    };
    for (int round = 0; round < 8; ++round) {
        // Bitmap 0 gets crowded (dense) in rounds 0-2, emptied in round 3 (back to sparse at the
        // commit), crowded again later; bitmap 1 stays sparse.
        bool crowd = round != 3;
        int ops = round == 5 ? 200 : 30000;  // round 5: few changes, listed
        for (int op = 0; op < ops; ++op) {
            block_address b = (rng() % 150) ? rng() % 3000 : E + rng() % (E + 100);
            unsigned r = unsigned(rng() % 10);
            if (!crowd && b < E) {
                c.set(b, std::uint32_t(rng() % 3));
                model[b] = c.get(b);
                continue;
            }
            if (r < 4) {
                std::uint32_t k = (rng() % 8 == 0) ? 1 + std::uint32_t(rng() % 300) : 1;
                if (model[b] > UINT32_MAX - k) {
                    EXPECT_THROW(c.inc(b, k), std::logic_error);
                    continue;
                }
                c.inc(b, k);
                model[b] += k;
            } else if (r < 6) {
                if (!model[b]) continue;
                std::uint32_t k = std::min<std::uint32_t>(model[b], (rng() % 8 == 0) ? 1 + std::uint32_t(rng() % 300) : 1);
                c.dec(b, k);
                model[b] -= k;
            } else if (r < 9) {
                std::uint32_t v = 3 + std::uint32_t(rng() % 6);
                if (rng() % 10 == 0) v = 250 + std::uint32_t(rng() % 10);
                if (rng() % 50 == 0) v = UINT32_MAX - std::uint32_t(rng() % 3);
                c.set(b, v);
                model[b] = v;
            } else {
                c.set(b, 0);
                model[b] = 0;
            }
        }
        check_all();
        if (round == 2) {
            EXPECT_TRUE(c.bitmap(0).dense);
            EXPECT_LT(c.bitmap(1).nr_three, sm::ref_counts::DENSE_THRESHOLD);
            EXPECT_FALSE(c.bitmap(1).dense);
        }
        if (round == 5) {
            EXPECT_FALSE(c.overflow_untracked());
        }
        if (!c.overflow_untracked()) {
            const auto& changes = c.overflow_changes();
            EXPECT_TRUE(std::is_sorted(changes.begin(), changes.end()));
            std::set<block_address> listed(changes.begin(), changes.end());
            EXPECT_EQ(listed.size(), changes.size());
            for (block_address b = 0; b < n; ++b) {
                if ((model[b] >= 3 || committed[b] >= 3) && model[b] != committed[b]) {
                    EXPECT_TRUE(listed.count(b)) << "change of block " << b << " not listed";
                }
            }
        }
        for (block_address b = 0; b < n; ++b)
            ASSERT_EQ(c.in_committed_overflow(b), committed[b] >= 3) << "block " << b;
        c.commit();
        committed = model;
        EXPECT_FALSE(c.overflow_changed());
        EXPECT_EQ(c.committed_nr_overflow(), c.nr_overflow());
        if (round == 3) {
            EXPECT_FALSE(c.bitmap(0).dense);
        }
        check_all();
    }
}

// inc_range/dec_range give exactly what the same single inc/dec calls give, hints included.
TEST(RefCounts, RangeOpsMatchSingleOps) {
    const block_address n = 2 * E + 77;
    sm::ref_counts a(n), b(n);
    std::mt19937_64 rng(3);
    auto same = [&] {
        ASSERT_EQ(a.nr_allocated(), b.nr_allocated());
        ASSERT_EQ(a.nr_overflow(), b.nr_overflow());
        for (unsigned i = 0; i < a.nr_bitmaps(); ++i) {
            ASSERT_EQ(a.bitmap(i).nr_free, b.bitmap(i).nr_free) << i;
            ASSERT_EQ(a.bitmap(i).none_free_before, b.bitmap(i).none_free_before) << i;
            ASSERT_TRUE(std::equal(a.words(i), a.words(i) + sm::WORDS_PER_BITMAP, b.words(i))) << i;
        }
        for (block_address x = 0; x < n; x += 7) ASSERT_EQ(a.get(x), b.get(x));
    };
    for (int op = 0; op < 3000; ++op) {
        block_address begin = rng() % n;
        block_address len = (rng() % 4 == 0) ? rng() % 3000 : rng() % 70;
        block_address end = std::min(n, begin + len);
        if (rng() % 3) {
            a.inc_range(begin, end);
            for (block_address x = begin; x < end; ++x) b.inc(x, 1);
        } else {
            bool fails = false;
            for (block_address x = begin; x < end; ++x) fails |= b.get(x) == 0;
            if (fails) {
                EXPECT_THROW(a.dec_range(begin, end), std::logic_error);
                for (block_address x = begin; x < end && b.get(x); ++x) b.dec(x, 1);
            } else {
                a.dec_range(begin, end);
                for (block_address x = begin; x < end; ++x) b.dec(x, 1);
            }
        }
        if (op % 500 == 499) {
            a.commit();
            b.commit();
        }
        if (op % 100 == 0) same();
    }
    same();
    EXPECT_THROW(a.inc_range(n - 1, n + 1), std::out_of_range);
}

// ---------------------------------------------------------------- tree_io

TEST(TreeIo, WriteAndReadBackLargeTree) {
    for (std::size_t n : {std::size_t(0), std::size_t(1), std::size_t(336), std::size_t(337),
                          std::size_t(5000), std::size_t(100000)}) {
        auto engine = std::make_shared<memory_engine>(1000);
        block_manager bm(engine);
        std::vector<std::uint64_t> keys(n);
        std::vector<std::uint8_t> values(4 * n);
        for (std::size_t i = 0; i < n; ++i) {
            keys[i] = 3 * i + 7;
            store_le32(&values[4 * i], std::uint32_t(i + 3));
        }
        std::size_t nodes = sm::tree_node_count(n, 4);
        std::vector<block_address> blocks;
        for (std::size_t i = 0; i < nodes; ++i) blocks.push_back(10 + 2 * i);
        block_address root = sm::write_tree(bm, keys, values.data(), 4, blocks);
        bm.flush();
        block_manager bm2(engine);
        std::size_t i = 0;
        std::vector<block_address> seen;
        sm::read_tree(bm2, root, 4, [&](std::uint64_t k, const std::uint8_t* v) {
            ASSERT_LT(i, n);
            EXPECT_EQ(k, keys[i]);
            EXPECT_EQ(load_le32(v), i + 3);
            ++i;
        }, &seen);
        EXPECT_EQ(i, n);
        EXPECT_EQ(seen.size(), nodes);
        for (auto b : seen) {
            read_ref r = bm2.read_lock(b, btree::btree_node_validator());
            btree::node_ref nd(r.data());
            if (b != root) {
                EXPECT_GE(nd.nr_entries(), nd.max_entries() / 3) << "n=" << n;
            }
        }
    }
}

// ---------------------------------------------------------------- metadata space map

struct md_env {
    std::shared_ptr<memory_engine> engine;
    std::unique_ptr<block_manager> bm;
    std::unique_ptr<space_map> sm;

    explicit md_env(block_address dev_blocks, block_address sm_blocks = 0)
        : engine(std::make_shared<memory_engine>(dev_blocks)),
          bm(std::make_unique<block_manager>(engine)),
          sm(create_metadata_space_map(*bm, sm_blocks ? sm_blocks : dev_blocks)) {
        sm->inc(0);  // superblock
    }
    sm_root commit() {
        sm->commit();
        bm->flush();
        return sm->root();
    }
    // A fresh block manager over the same device and the map reopened from root.
    void reopen(const sm_root& root) {
        sm.reset();
        bm = std::make_unique<block_manager>(engine);
        sm = open_metadata_space_map(*bm, root);
    }
};

// held: the counts the test holds on blocks it allocated (block 0 included).
std::vector<std::uint32_t> md_expected(block_manager& bm, const sm_root& root,
                                       const std::vector<std::uint32_t>& held) {
    sm_structure s = read_metadata_structure(bm, root);
    std::vector<std::uint32_t> exp = held;
    exp.resize(root.nr_blocks, 0);
    add_structure_refs(exp, s, false);
    // The map's own blocks are counted exactly once (format.md §4.6).
    for (auto b : s.bitmaps) EXPECT_EQ(exp[b], 1u) << "bitmap " << b;
    for (auto b : s.overflow_nodes) EXPECT_EQ(exp[b], 1u) << "overflow node " << b;
    EXPECT_EQ(exp[s.index], 1u);
    // And what is on disk decodes to the same counts.
    auto disk = decode_counts(bm, s, root.nr_blocks);
    for (block_address b = 0; b < root.nr_blocks; ++b)
        if (disk[b] != exp[b]) {
            ADD_FAILURE() << "on-disk count of block " << b << " is " << disk[b] << ", expected " << exp[b];
            break;
        }
    block_address nonzero = std::count_if(exp.begin(), exp.end(), [](auto c) { return c != 0; });
    EXPECT_EQ(root.nr_allocated, nonzero);
    return exp;
}

TEST(MetadataSpaceMap, BitOrderOnDisk) {
    md_env env(1000);
    for (block_address b = 0; b < 12; ++b) ASSERT_TRUE(env.sm->new_block());  // 1..12 (0 is held)
    for (block_address b = 100; b < 104; ++b) env.sm->set_count(b, 1);
    for (block_address b = 104; b < 108; ++b) env.sm->set_count(b, 2);
    for (block_address b = 108; b < 112; ++b) env.sm->set_count(b, 3 + unsigned(b));
    sm_root root = env.commit();
    sm_structure s = read_metadata_structure(*env.bm, root);
    read_ref r = env.bm->read_lock(s.bitmaps[0], bitmap_validator());
    // Entries 100..103 are entries 4..7 of word 3: byte 1 of that word.
    EXPECT_EQ(r.data()[16 + 3 * 8 + 1], 0xAA);
    EXPECT_EQ(r.data()[16 + 3 * 8 + 2], 0x55);
    EXPECT_EQ(r.data()[16 + 3 * 8 + 3], 0xFF);
    ASSERT_EQ(s.overflow.size(), 4u);
    EXPECT_EQ(s.overflow[0], std::make_pair(std::uint64_t(108), std::uint32_t(111)));
}

TEST(MetadataSpaceMap, CreateTooSmallThrows) {
    auto engine = std::make_shared<memory_engine>(16);
    block_manager bm(engine);
    EXPECT_THROW(create_metadata_space_map(bm, 3), no_space);
    EXPECT_NO_THROW(create_metadata_space_map(bm, 4));
    EXPECT_THROW(create_metadata_space_map(bm, 17), std::invalid_argument);
}

TEST(MetadataSpaceMap, FreshCommitCountsItsOwnBlocks) {
    md_env env(40000);  // 3 bitmaps
    std::vector<std::uint32_t> held(40000, 0);
    held[0] = 1;
    sm_root root = env.commit();
    EXPECT_EQ(root.nr_blocks, 40000u);
    auto exp = md_expected(*env.bm, root, held);
    EXPECT_EQ(root.nr_allocated, 1u + 1 + 3 + 1);  // superblock, index, bitmaps, overflow leaf
    EXPECT_COUNTS(exp, *env.sm);
    // Nothing changed: commit is a no-op.
    EXPECT_EQ(env.commit(), root);
    env.reopen(root);
    EXPECT_COUNTS(exp, *env.sm);
}

TEST(MetadataSpaceMap, FreshLayoutMatchesKernel) {
    md_env env(40000);
    sm_root root = env.commit();
    EXPECT_EQ(root.bitmap_root, 1u);
    EXPECT_EQ(root.ref_count_root, 2u);
    EXPECT_EQ(read_metadata_structure(*env.bm, root).bitmaps, (std::vector<block_address>{3, 4, 5}));
}

// Re-stamps a block after a test edited it in place on the device.
void restamp(memory_engine& eng, block_address b, block_salt salt) {
    store_le32(eng.raw(b), block_checksum(eng.raw(b), salt));
}

// tools 0.9.0 writes nr_free over nr_blocks only, none_free_before above the first free entry and
// nr_allocated off by one (format.md §12.10): readers recompute.
TEST(MetadataSpaceMap, ToleratesInconsistentIndexEntries) {
    md_env env(1000);
    std::vector<std::uint32_t> held(1000, 0);
    held[0] = 1;
    for (int i = 0; i < 20; ++i) held[*env.sm->new_block()] = 1;
    sm_root root = env.commit();
    auto exp = md_expected(*env.bm, root, held);
    std::uint8_t* idx = env.engine->raw(root.bitmap_root);
    store_le32(idx + 16 + 8, 7);     // nr_free
    store_le32(idx + 16 + 12, 900);  // none_free_before
    restamp(*env.engine, root.bitmap_root, block_salt::index);
    root.nr_allocated += 1;
    env.reopen(root);
    EXPECT_COUNTS(exp, *env.sm);
    auto b = env.sm->new_block();
    ASSERT_TRUE(b);
    EXPECT_LT(*b, 100u);  // not hidden by the bad hint
    held[*b] = 1;
    root = env.commit();
    md_expected(*env.bm, root, held);  // checks the rewritten index entries too
}

TEST(MetadataSpaceMap, CapsAtMaximum) {
    // A sparse file larger than the maximum usable metadata size.
    char tmpl[] = "/tmp/sm_big_XXXXXX";
    int fd = mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, off_t(sm::MAX_METADATA_BLOCKS + 100) * 4096), 0);
    close(fd);
    {
        std::shared_ptr<io_engine> eng = open_sync_engine(tmpl, open_options{open_mode::read_write, false});
        block_manager bm(eng);
        auto sm = create_metadata_space_map(bm, sm::MAX_METADATA_BLOCKS + 100);
        EXPECT_EQ(sm->nr_blocks(), sm::MAX_METADATA_BLOCKS);
        sm->inc(0);
        sm->commit();
        bm.flush();
        sm_root root = sm->root();
        EXPECT_EQ(root.nr_blocks, sm::MAX_METADATA_BLOCKS);
        EXPECT_EQ(root.nr_allocated, 1u + 1 + 255 + 1);
        sm->extend(1000);  // already at the maximum
        EXPECT_EQ(sm->nr_blocks(), sm::MAX_METADATA_BLOCKS);
        block_manager bm2(eng);
        auto sm2 = open_metadata_space_map(bm2, root);
        EXPECT_EQ(sm2->nr_allocated(), root.nr_allocated);
        EXPECT_EQ(sm2->get_count(root.bitmap_root), 1u);
    }
    std::remove(tmpl);
}

// Random inc/dec/set_count/new_block on blocks the test holds, with commits and reopens.
TEST(MetadataSpaceMap, RandomOpsAgainstModel) {
    const block_address n = 40000;
    md_env env(n);
    std::vector<std::uint32_t> held(n, 0);
    held[0] = 1;
    std::vector<block_address> live;  // blocks with held count > 0 (may contain stale entries)
    std::mt19937_64 rng(42);
    sm_root root;
    for (int round = 0; round < 8; ++round) {
        for (int op = 0; op < 6000; ++op) {
            unsigned r = unsigned(rng() % 100);
            if (r < 25 || live.empty()) {
                auto b = env.sm->new_block();
                ASSERT_TRUE(b);
                ASSERT_EQ(held[*b], 0u) << "allocated a held block " << *b;
                held[*b] = 1;
                live.push_back(*b);
                continue;
            }
            block_address b = live[rng() % live.size()];
            if (!held[b]) continue;
            if (r < 55) {
                std::uint32_t k = (rng() % 4 == 0) ? 1 + std::uint32_t(rng() % 50) : 1;
                if (held[b] + k > 1000) continue;
                env.sm->inc(b, k);
                held[b] += k;
            } else if (r < 80) {
                std::uint32_t k = std::min<std::uint32_t>(held[b], (rng() % 4 == 0) ? 1 + std::uint32_t(rng() % 50) : 1);
                env.sm->dec(b, k);
                held[b] -= k;
            } else if (r < 90) {
                std::uint32_t v = std::uint32_t(rng() % 5);
                if (rng() % 3 == 0) v = std::uint32_t(rng() % 1001);
                env.sm->set_count(b, v);
                held[b] = v;
            } else {
                ASSERT_EQ(env.sm->get_count(b), held[b]);
            }
        }
        root = env.commit();
        auto exp = md_expected(*env.bm, root, held);
        EXPECT_COUNTS(exp, *env.sm);
        if (round % 2) {
            env.reopen(root);
            EXPECT_COUNTS(exp, *env.sm);
        }
        live.erase(std::remove_if(live.begin(), live.end(), [&](block_address b) { return held[b] == 0; }),
                   live.end());
        std::sort(live.begin(), live.end());
        live.erase(std::unique(live.begin(), live.end()), live.end());
    }
    EXPECT_GT(read_metadata_structure(*env.bm, root).overflow.size(), 336u);  // multi-node tree
}

TEST(MetadataSpaceMap, FreedBlocksAreNotReusedBeforeCommit) {
    md_env env(200);
    std::vector<std::uint32_t> held(200, 0);
    held[0] = 1;
    for (int i = 0; i < 50; ++i) held[*env.sm->new_block()] = 1;
    sm_root root = env.commit();
    // Free a test block, then allocate until full.
    block_address freed = 0;
    for (block_address b = 1; b < 200; ++b)
        if (held[b]) { freed = b; break; }
    env.sm->dec(freed);
    held[freed] = 0;
    sm_structure s = read_metadata_structure(*env.bm, root);
    block_address own_before = 1 + s.bitmaps.size() + s.overflow_nodes.size();
    block_address got = 0;
    while (auto b = env.sm->new_block()) {
        EXPECT_NE(*b, freed);
        EXPECT_EQ(held[*b], 0u);
        held[*b] = 1;
        ++got;
    }
    EXPECT_EQ(env.sm->nr_free(), 1u);  // the freed block counts as free already
    EXPECT_EQ(got, 200u - 50 - own_before - 1);
    // Commit needs blocks it does not have.
    EXPECT_THROW(env.sm->commit(), no_space);
}

TEST(MetadataSpaceMap, FreedBlockReusableAfterCommit) {
    md_env env(300);
    std::vector<std::uint32_t> held(300, 0);
    held[0] = 1;
    std::vector<block_address> mine;
    for (int i = 0; i < 100; ++i) { auto b = *env.sm->new_block(); held[b] = 1; mine.push_back(b); }
    env.commit();
    block_address freed = mine[37];
    env.sm->dec(freed);
    held[freed] = 0;
    std::set<block_address> got;
    for (int i = 0; i < 50; ++i) got.insert(*env.sm->new_block());
    EXPECT_FALSE(got.count(freed));
    for (auto b : got) held[b] = 1;
    sm_root root = env.commit();
    // Allocate everything left: the freed block (or a block the commit released) comes back.
    std::set<block_address> rest;
    while (auto b = env.sm->new_block()) rest.insert(*b);
    EXPECT_TRUE(rest.count(freed));
    EXPECT_EQ(env.sm->nr_free(), 0u);
    (void)root;
}

TEST(MetadataSpaceMap, NewBlockInRange) {
    md_env env(1000);
    auto b = env.sm->new_block_in(500, 510);
    ASSERT_TRUE(b);
    EXPECT_EQ(*b, 500u);
    for (int i = 0; i < 9; ++i) ASSERT_TRUE(env.sm->new_block_in(500, 510));
    EXPECT_FALSE(env.sm->new_block_in(500, 510));
    EXPECT_FALSE(env.sm->new_block_in(999, 2000) == std::nullopt);
}

TEST(MetadataSpaceMap, CrashSafetyOlderRootIntact) {
    md_env env(5000);
    std::vector<std::uint32_t> held(5000, 0);
    held[0] = 1;
    std::mt19937_64 rng(3);
    for (int i = 0; i < 300; ++i) {
        auto b = *env.sm->new_block();
        held[b] = 1 + std::uint32_t(rng() % 6);
        env.sm->set_count(b, held[b]);
    }
    sm_root root1 = env.commit();
    auto exp1 = md_expected(*env.bm, root1, held);
    auto held1 = held;

    // Second transaction: change counts (some to >= 3, some freed), allocate more.
    for (block_address b = 1; b < 5000; ++b) {
        if (!held[b] || exp1[b] != held[b]) continue;  // only the test's blocks
        if (rng() % 3 == 0) { env.sm->set_count(b, 0); held[b] = 0; }
        else if (rng() % 2) { env.sm->inc(b, 5); held[b] += 5; }
    }
    for (int i = 0; i < 400; ++i) held[*env.sm->new_block()] = 1;
    sm_root root2 = env.commit();
    EXPECT_NE(root1.bitmap_root, root2.bitmap_root);
    auto exp2 = md_expected(*env.bm, root2, held);

    // The older root still describes exactly the first state.
    auto bm1 = std::make_unique<block_manager>(env.engine);
    auto sm1 = open_metadata_space_map(*bm1, root1);
    EXPECT_COUNTS(exp1, *sm1);
    EXPECT_EQ(md_expected(*bm1, root1, held1), exp1);
    env.reopen(root2);
    EXPECT_COUNTS(exp2, *env.sm);
}

TEST(MetadataSpaceMap, ExtendAcrossBitmapBoundary) {
    md_env env(40000, 16000);
    std::vector<std::uint32_t> held(40000, 0);
    held[0] = 1;
    sm_root root = env.commit();
    while (auto b = env.sm->new_block()) held[*b] = 1;
    EXPECT_EQ(env.sm->nr_free(), 0u);
    env.sm->extend(1000);  // 17000: a second bitmap
    EXPECT_EQ(env.sm->nr_blocks(), 17000u);
    EXPECT_EQ(env.sm->nr_free(), 1000u);
    for (int i = 0; i < 500; ++i) {
        auto b = env.sm->new_block();
        ASSERT_TRUE(b);
        EXPECT_GE(*b, 16000u);
        held[*b] = 1;
    }
    root = env.commit();
    EXPECT_EQ(root.nr_blocks, 17000u);
    held.resize(17000);
    auto exp = md_expected(*env.bm, root, held);
    EXPECT_COUNTS(exp, *env.sm);
    env.sm->extend(20000);  // 37000: three bitmaps
    root = env.commit();
    held.resize(37000);
    exp = md_expected(*env.bm, root, held);
    EXPECT_EQ(read_metadata_structure(*env.bm, root).bitmaps.size(), 3u);
    env.reopen(root);
    EXPECT_COUNTS(exp, *env.sm);
}

TEST(MetadataSpaceMap, FullMapReturnsNullopt) {
    md_env env(64);
    block_address n = 0;
    while (env.sm->new_block()) ++n;
    EXPECT_EQ(n, 63u);
    EXPECT_EQ(env.sm->nr_free(), 0u);
    EXPECT_EQ(env.sm->nr_allocated(), 64u);
    EXPECT_FALSE(env.sm->new_block());
}

TEST(MetadataSpaceMap, CountErrors) {
    md_env env(100);
    EXPECT_THROW(env.sm->dec(5), std::logic_error);
    EXPECT_THROW(env.sm->get_count(100), std::out_of_range);
    env.sm->set_count(5, UINT32_MAX);
    EXPECT_THROW(env.sm->inc(5), std::logic_error);
    EXPECT_EQ(env.sm->get_count(5), UINT32_MAX);
}

// ---------------------------------------------------------------- kernel fixture

std::string unpack_fixture(const std::string& name) {
    char tmpl[] = "/tmp/sm_fixture_XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0) return {};
    close(fd);
    std::string cmd = "zcat /work/shared/fixtures/kernel/" + name + " > " + tmpl;
    if (std::system(cmd.c_str()) != 0) return {};
    return tmpl;
}

struct fixture_roots {
    sm_root data, metadata;
};

fixture_roots read_roots(block_manager& bm) {
    read_ref sb = bm.read_lock(0, noop_validator());
    return {sm_root::unpack(sb.data() + 64), sm_root::unpack(sb.data() + 192)};
}

TEST(KernelFixture, SpaceMapsOpen) {
    for (const char* name : {"tmeta.bin.gz", "tmeta_with_metadata_snap.bin.gz", "tmeta_with_shared_internal_root.bin.gz",
                             "tmeta_device_id_reuse.bin.gz", "tmeta_with_deleted_snapshot.bin.gz"}) {
        SCOPED_TRACE(name);
        std::string path = unpack_fixture(name);
        ASSERT_FALSE(path.empty());
        {
            std::shared_ptr<io_engine> eng = open_sync_engine(path, open_options{open_mode::read_only, false});
            block_manager bm(eng);
            auto roots = read_roots(bm);
            auto msm = open_metadata_space_map(bm, roots.metadata);
            EXPECT_EQ(msm->nr_blocks(), roots.metadata.nr_blocks);
            block_address nonzero = 0, over = 0;
            for (block_address b = 0; b < msm->nr_blocks(); ++b) {
                auto c = msm->get_count(b);
                nonzero += c != 0;
                over += c >= 3;
            }
            EXPECT_EQ(msm->nr_allocated(), nonzero);
            EXPECT_EQ(roots.metadata.nr_allocated, nonzero);  // the kernel keeps it exact
            EXPECT_EQ(msm->get_count(roots.metadata.bitmap_root), 1u);
            sm_structure s = read_metadata_structure(bm, roots.metadata);
            for (auto b : s.bitmaps) EXPECT_EQ(msm->get_count(b), 1u);
            for (auto b : s.overflow_nodes) EXPECT_EQ(msm->get_count(b), 1u);
            auto disk = decode_counts(bm, s, roots.metadata.nr_blocks);
            for (block_address b = 0; b < msm->nr_blocks(); ++b) ASSERT_EQ(disk[b], msm->get_count(b));

            transaction_manager tm(bm, *msm);
            auto dsm = open_disk_space_map(tm, roots.data);
            EXPECT_EQ(dsm->nr_blocks(), roots.data.nr_blocks);
            block_address dnonzero = 0, dover = 0;
            for (block_address b = 0; b < dsm->nr_blocks(); ++b) {
                auto c = dsm->get_count(b);
                dnonzero += c != 0;
                dover += c >= 3;
            }
            EXPECT_EQ(dsm->nr_allocated(), dnonzero);
            EXPECT_EQ(roots.data.nr_allocated, dnonzero);
            // The data map's own blocks are counted in the metadata map.
            sm_structure d = read_data_structure(bm, roots.data);
            for (auto b : d.bitmaps) EXPECT_EQ(msm->get_count(b), 1u);
            for (auto b : d.index_nodes) EXPECT_EQ(msm->get_count(b), 1u);
            for (auto b : d.overflow_nodes) EXPECT_EQ(msm->get_count(b), 1u);
            std::printf("%s: metadata %llu blocks, %llu allocated, %llu >= 3; data %llu blocks, %llu allocated, %llu >= 3\n",
                        name, (unsigned long long)msm->nr_blocks(), (unsigned long long)nonzero,
                        (unsigned long long)over, (unsigned long long)dsm->nr_blocks(),
                        (unsigned long long)dnonzero, (unsigned long long)dover);
        }
        std::remove(path.c_str());
    }
}

TEST(KernelFixture, MetadataSpaceMapCommitsOnACopy) {
    std::string path = unpack_fixture("tmeta.bin.gz");
    ASSERT_FALSE(path.empty());
    auto mem = std::make_shared<memory_engine>(16384);
    {
        auto eng = open_sync_engine(path, open_options{open_mode::read_only, false});
        for (block_address b = 0; b < 16384; ++b) {
            eng->read(b, mem->raw(b));
        }
    }
    std::remove(path.c_str());
    auto bm = std::make_unique<block_manager>(mem);
    auto roots = read_roots(*bm);
    auto msm = open_metadata_space_map(*bm, roots.metadata);
    std::vector<std::uint32_t> before(msm->nr_blocks());
    for (block_address b = 0; b < before.size(); ++b) before[b] = msm->get_count(b);
    sm_structure old_s = read_metadata_structure(*bm, roots.metadata);
    // Take some blocks, bump a shared one, commit; everything but the map's own blocks is as before.
    std::vector<block_address> mine;
    for (int i = 0; i < 100; ++i) mine.push_back(*msm->new_block());
    block_address shared = 0;
    for (block_address b = 1; b < before.size(); ++b)
        if (before[b] >= 2) { shared = b; break; }
    ASSERT_NE(shared, 0u);
    msm->inc(shared, 3);
    msm->commit();
    bm->flush();
    sm_root root = msm->root();
    std::vector<std::uint32_t> held = before;
    for (auto b : old_s.bitmaps) --held[b];
    --held[old_s.index];
    for (auto b : old_s.overflow_nodes) --held[b];
    for (auto b : mine) held[b] = 1;
    held[shared] += 3;
    auto exp = md_expected(*bm, root, held);
    EXPECT_COUNTS(exp, *msm);
    bm = std::make_unique<block_manager>(mem);
    msm = open_metadata_space_map(*bm, root);
    EXPECT_COUNTS(exp, *msm);
}

// ---------------------------------------------------------------- data space map

struct pool_env {
    std::shared_ptr<memory_engine> engine;
    std::unique_ptr<block_manager> bm;
    std::unique_ptr<space_map> msm;
    std::unique_ptr<transaction_manager> tm;
    std::unique_ptr<space_map> dsm;

    pool_env(block_address md_blocks, block_address data_blocks)
        : engine(std::make_shared<memory_engine>(md_blocks)), bm(std::make_unique<block_manager>(engine)) {
        msm = create_metadata_space_map(*bm, md_blocks);
        msm->inc(0);
        tm = std::make_unique<transaction_manager>(*bm, *msm);
        dsm = create_disk_space_map(*tm, data_blocks);
    }
    // The commit sequence of format.md §8.1, with the roots stored in block 0.
    std::pair<sm_root, sm_root> commit() {
        dsm->commit();
        msm->commit();
        tm->pre_commit();
        write_ref sb = bm->write_lock_zero(0, noop_validator());
        dsm->root().pack(sb.data() + 64);
        msm->root().pack(sb.data() + 192);
        tm->commit(std::move(sb));
        return {msm->root(), dsm->root()};
    }
    void reopen(const sm_root& mroot, const sm_root& droot) {
        dsm.reset();
        tm.reset();
        msm.reset();
        bm = std::make_unique<block_manager>(engine);
        msm = open_metadata_space_map(*bm, mroot);
        tm = std::make_unique<transaction_manager>(*bm, *msm);
        dsm = open_disk_space_map(*tm, droot);
    }
};

// Metadata recount for a pool holding only the two space maps.
std::vector<std::uint32_t> pool_md_expected(block_manager& bm, const sm_root& mroot, const sm_root& droot) {
    std::vector<std::uint32_t> held(mroot.nr_blocks, 0);
    held[0] = 1;
    sm_structure d = read_data_structure(bm, droot);
    add_structure_refs(held, d, true);
    for (auto b : d.index_nodes) EXPECT_EQ(held[b], 1u);
    return md_expected(bm, mroot, held);
}

std::vector<std::uint32_t> data_on_disk(block_manager& bm, const sm_root& droot) {
    sm_structure d = read_data_structure(bm, droot);
    auto c = decode_counts(bm, d, droot.nr_blocks);
    block_address nonzero = std::count_if(c.begin(), c.end(), [](auto x) { return x != 0; });
    EXPECT_EQ(droot.nr_allocated, nonzero);
    return c;
}

TEST(DiskSpaceMap, CreateEmptyAndSized) {
    pool_env env(1000, 0);
    EXPECT_EQ(env.dsm->nr_blocks(), 0u);
    EXPECT_FALSE(env.dsm->new_block());
    env.dsm->extend(100);
    auto [mroot, droot] = env.commit();
    EXPECT_EQ(droot.nr_blocks, 100u);
    EXPECT_EQ(droot.nr_allocated, 0u);
    auto mexp = pool_md_expected(*env.bm, mroot, droot);
    EXPECT_COUNTS(mexp, *env.msm);
    pool_env env2(1000, 3 * E + 5);
    auto [m2, d2] = env2.commit();
    EXPECT_EQ(read_data_structure(*env2.bm, d2).bitmaps.size(), 4u);
    mexp = pool_md_expected(*env2.bm, m2, d2);
    EXPECT_COUNTS(mexp, *env2.msm);
}

TEST(DiskSpaceMap, BitOrderOnDisk) {
    pool_env env(1000, 64);
    for (block_address b = 0; b < 4; ++b) env.dsm->set_count(b, 1);
    for (block_address b = 4; b < 8; ++b) env.dsm->set_count(b, 2);
    for (block_address b = 8; b < 12; ++b) env.dsm->set_count(b, 3);
    auto [mroot, droot] = env.commit();
    sm_structure d = read_data_structure(*env.bm, droot);
    read_ref r = env.bm->read_lock(d.bitmaps[0], bitmap_validator());
    EXPECT_EQ(r.data()[16], 0xAA);
    EXPECT_EQ(r.data()[17], 0x55);
    EXPECT_EQ(r.data()[18], 0xFF);
    EXPECT_EQ(d.overflow.size(), 4u);
}

TEST(DiskSpaceMap, RandomOpsAgainstModel) {
    const block_address n = 3 * E + 1234;
    pool_env env(4000, n);
    std::vector<std::uint32_t> model(n, 0), committed(n, 0);
    block_address nonzero = 0;
    std::mt19937_64 rng(1234);
    std::vector<block_address> hot(3000);
    for (auto& b : hot) b = rng() % n;
    auto pick = [&] { return (rng() % 2) ? hot[rng() % hot.size()] : rng() % n; };
    auto setm = [&](block_address b, std::uint32_t v) {
        nonzero += (model[b] == 0 && v != 0);
        nonzero -= (model[b] != 0 && v == 0);
        model[b] = v;
    };
    for (int round = 0; round < 10; ++round) {
        for (int op = 0; op < 20000; ++op) {
            unsigned r = unsigned(rng() % 100);
            block_address b = pick();
            if (r < 30) {
                std::uint32_t k = (rng() % 4 == 0) ? 1 + std::uint32_t(rng() % 60) : 1;
                if (model[b] + k > 1000) continue;
                env.dsm->inc(b, k);
                setm(b, model[b] + k);
            } else if (r < 50) {
                if (!model[b]) {
                    EXPECT_THROW(env.dsm->dec(b), std::logic_error);
                    continue;
                }
                std::uint32_t k = std::min<std::uint32_t>(model[b], (rng() % 4 == 0) ? 1 + std::uint32_t(rng() % 60) : 1);
                env.dsm->dec(b, k);
                setm(b, model[b] - k);
            } else if (r < 62) {
                std::uint32_t v = std::uint32_t(rng() % 5);
                if (rng() % 3 == 0) v = std::uint32_t(rng() % 1001);
                env.dsm->set_count(b, v);
                setm(b, v);
            } else if (r < 80) {
                auto nb = env.dsm->new_block();
                ASSERT_TRUE(nb);
                ASSERT_EQ(model[*nb], 0u);
                ASSERT_EQ(committed[*nb], 0u) << "allocated a block in use at the last commit";
                setm(*nb, 1);
            } else {
                ASSERT_EQ(env.dsm->get_count(b), model[b]) << "block " << b;
            }
        }
        ASSERT_EQ(env.dsm->nr_allocated(), nonzero);
        auto [mroot, droot] = env.commit();
        committed = model;
        EXPECT_EQ(droot.nr_allocated, nonzero);
        EXPECT_EQ(data_on_disk(*env.bm, droot), model);
        auto mexp = pool_md_expected(*env.bm, mroot, droot);
        EXPECT_COUNTS(mexp, *env.msm);
        if (round % 3 == 2) {
            env.reopen(mroot, droot);
            EXPECT_COUNTS(model, *env.dsm);
            EXPECT_COUNTS(mexp, *env.msm);
        }
    }
    auto d = read_data_structure(*env.bm, env.dsm->root());
    EXPECT_GT(d.overflow.size(), 336u);
}

TEST(DiskSpaceMap, AllocationRuleAndFull) {
    pool_env env(1000, 100);
    for (block_address i = 0; i < 50; ++i) EXPECT_EQ(env.dsm->new_block(), i);
    env.commit();
    env.dsm->dec(10);
    EXPECT_EQ(env.dsm->nr_free(), 51u);
    std::set<block_address> got;
    while (auto b = env.dsm->new_block()) got.insert(*b);
    EXPECT_EQ(got.size(), 50u);
    EXPECT_FALSE(got.count(10));
    EXPECT_EQ(env.dsm->nr_free(), 1u);
    EXPECT_EQ(env.dsm->nr_allocated(), 99u);
    env.commit();
    EXPECT_EQ(env.dsm->new_block(), block_address(10));
    EXPECT_FALSE(env.dsm->new_block());
    EXPECT_EQ(env.dsm->nr_free(), 0u);
}

TEST(DiskSpaceMap, ExtendAcrossBitmapBoundary) {
    pool_env env(1000, 16000);
    std::vector<std::uint32_t> model(16000, 1);
    for (block_address i = 0; i < 16000; ++i) ASSERT_TRUE(env.dsm->new_block());
    EXPECT_FALSE(env.dsm->new_block());
    env.dsm->extend(1000);
    model.resize(17000, 0);
    for (block_address i = 0; i < 1000; ++i) {
        auto b = env.dsm->new_block();
        ASSERT_TRUE(b);
        EXPECT_EQ(*b, 16000 + i);
        model[*b] = 1;
    }
    EXPECT_FALSE(env.dsm->new_block());
    auto [mroot, droot] = env.commit();
    EXPECT_EQ(droot.nr_blocks, 17000u);
    EXPECT_EQ(droot.nr_allocated, 17000u);
    auto d = read_data_structure(*env.bm, droot);
    ASSERT_EQ(d.entries.size(), 2u);
    EXPECT_EQ(d.entries[0].nr_free, 0u);
    EXPECT_EQ(d.entries[1].nr_free, E - 680);  // whole-bitmap convention
    EXPECT_EQ(data_on_disk(*env.bm, droot), model);
    env.reopen(mroot, droot);
    EXPECT_COUNTS(model, *env.dsm);
    EXPECT_COUNTS(pool_md_expected(*env.bm, mroot, droot), *env.msm);
}

TEST(DiskSpaceMap, CrashSafetyOlderRootIntact) {
    pool_env env(3000, 2 * E);
    std::vector<std::uint32_t> model(2 * E, 0);
    std::mt19937_64 rng(9);
    for (int i = 0; i < 5000; ++i) {
        block_address b = rng() % model.size();
        std::uint32_t v = std::uint32_t(rng() % 8);
        env.dsm->set_count(b, v);
        model[b] = v;
    }
    auto [m1, d1] = env.commit();
    auto model1 = model;
    auto mexp1 = pool_md_expected(*env.bm, m1, d1);
    for (int i = 0; i < 5000; ++i) {
        block_address b = rng() % model.size();
        std::uint32_t v = std::uint32_t(rng() % 8);
        env.dsm->set_count(b, v);
        model[b] = v;
    }
    auto [m2, d2] = env.commit();
    EXPECT_NE(d1.bitmap_root, d2.bitmap_root);
    // Open the first state through a fresh block manager.
    auto bm1 = std::make_unique<block_manager>(env.engine);
    auto msm1 = open_metadata_space_map(*bm1, m1);
    transaction_manager tm1(*bm1, *msm1);
    auto dsm1 = open_disk_space_map(tm1, d1);
    EXPECT_COUNTS(model1, *dsm1);
    EXPECT_COUNTS(mexp1, *msm1);
    env.reopen(m2, d2);
    EXPECT_COUNTS(model, *env.dsm);
}

TEST(DiskSpaceMap, ToleratesInconsistentIndexEntries) {
    pool_env env(1000, E + 100);
    std::vector<std::uint32_t> model(E + 100, 0);
    for (int i = 0; i < 30; ++i) model[*env.dsm->new_block()] = 1;
    auto [mroot, droot] = env.commit();
    sm_structure d = read_data_structure(*env.bm, droot);
    ASSERT_EQ(d.index_nodes.size(), 1u);
    std::uint8_t* leaf = env.engine->raw(d.index_nodes[0]);
    std::uint8_t* v0 = leaf + 32 + 8 * 168;
    store_le32(v0 + 8, 3);        // nr_free
    store_le32(v0 + 12, 16000);   // none_free_before
    store_le32(v0 + 16 + 8, 100); // bitmap 1: nr_free counted over nr_blocks only
    restamp(*env.engine, d.index_nodes[0], block_salt::btree_node);
    droot.nr_allocated -= 1;
    env.reopen(mroot, droot);
    EXPECT_COUNTS(model, *env.dsm);
    auto b = env.dsm->new_block();
    ASSERT_TRUE(b);
    EXPECT_EQ(*b, 30u);
    model[*b] = 1;
    env.dsm->inc(E + 50);
    model[E + 50] = 1;
    auto [m2, d2] = env.commit();
    EXPECT_EQ(data_on_disk(*env.bm, d2), model);  // checks the rewritten index entries too
    EXPECT_COUNTS(pool_md_expected(*env.bm, m2, d2), *env.msm);
}

TEST(DiskSpaceMap, ManyAllocationsAreQuick) {
    const block_address n = 2'000'000;
    pool_env env(4000, n);
    auto t0 = std::chrono::steady_clock::now();
    for (block_address i = 0; i < n; ++i) {
        auto b = env.dsm->new_block();
        ASSERT_TRUE(b);
        env.dsm->inc(*b);
    }
    auto [mroot, droot] = env.commit();
    auto dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("2M data allocations + incs + commit: %.2f s\n", dt);
    EXPECT_EQ(droot.nr_allocated, n);
    env.reopen(mroot, droot);
    EXPECT_EQ(env.dsm->nr_allocated(), n);
    EXPECT_EQ(env.dsm->get_count(12345), 2u);
}

// A restore of devices that map the same data blocks: most counts are >= 3, so the overflow
// tree is rebuilt at the first commit; later small changes go key by key, a large one rebuilds
// again, and every state reads back exactly with the replaced tree's nodes released.
TEST(DiskSpaceMap, SharedBlocksRebuildThenPerKeyCommits) {
    const block_address n = 3 * E + 500;
    pool_env env(4000, n);
    std::vector<std::uint32_t> model(n, 0);
    auto verify = [&](const std::pair<sm_root, sm_root>& roots) {
        auto [mroot, droot] = roots;
        EXPECT_EQ(data_on_disk(*env.bm, droot), model);
        auto mexp = pool_md_expected(*env.bm, mroot, droot);
        EXPECT_COUNTS(mexp, *env.msm);
        return read_data_structure(*env.bm, droot);
    };
    for (int dev = 0; dev < 6; ++dev) {
        env.dsm->inc_range(100, n - 100);
        for (block_address b = 100; b < n - 100; ++b) ++model[b];
    }
    EXPECT_EQ(env.dsm->get_count(5000), 6u);
    auto s1 = verify(env.commit());
    EXPECT_EQ(s1.overflow.size(), n - 200);
    // Packed leaves: the builder fills them.
    EXPECT_LE(s1.overflow_nodes.size(), (n - 200) / 300 + 3);

    std::mt19937_64 rng(21);
    for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 300; ++i) {
            block_address b = rng() % n;
            switch (rng() % 3) {
            case 0: env.dsm->inc(b); ++model[b]; break;
            case 1: if (model[b]) { env.dsm->dec(b); --model[b]; } break;
            default: { std::uint32_t v = std::uint32_t(rng() % 400); env.dsm->set_count(b, v); model[b] = v; }
            }
        }
        auto roots = env.commit();
        verify(roots);
        if (round == 1) {
            env.reopen(roots.first, roots.second);
            EXPECT_COUNTS(model, *env.dsm);
        }
    }
    // Most blocks drop back to the bitmaps: a large change, rebuilt.
    for (block_address b = 0; b < n; ++b) {
        if (model[b] >= 3 && b % 10 != 0) {
            env.dsm->set_count(b, 2);
            model[b] = 2;
        }
    }
    auto s2 = verify(env.commit());
    EXPECT_EQ(s2.overflow.size(), std::size_t(std::count_if(model.begin(), model.end(), [](auto c) { return c >= 3; })));
    // A range decrement over counts of 1, 2 and more.
    for (block_address b = 100; b < n - 100; ++b) {
        if (!model[b]) {
            env.dsm->inc(b);
            model[b] = 1;
        }
    }
    env.dsm->dec_range(100, n - 100);
    for (block_address b = 100; b < n - 100; ++b) --model[b];
    auto roots = env.commit();
    verify(roots);
    env.reopen(roots.first, roots.second);
    EXPECT_COUNTS(model, *env.dsm);
}

// Overflow-tree entries whose bitmap entry is not 3 (inconsistent metadata) are dropped at the
// next commit, also when the commit updates the tree key by key.
TEST(DiskSpaceMap, StrayOverflowEntriesAreRemoved) {
    const block_address n = 2 * E;
    pool_env env(2000, n);
    std::vector<std::uint32_t> model(n, 0);
    for (block_address b = 0; b < 4000; ++b) {
        env.dsm->set_count(b * 7, 5);
        model[b * 7] = 5;
    }
    auto [mroot, droot] = env.commit();
    sm_structure d = read_data_structure(*env.bm, droot);
    ASSERT_EQ(d.overflow.size(), 4000u);
    // Block 700 (bitmap 0, word 21, entry 28): 3 -> 1 on disk, its tree entry left behind.
    std::uint8_t* bm0 = env.engine->raw(d.bitmaps[0]);
    std::uint64_t w = load_le64(bm0 + 16 + 8 * (700 / 32));
    store_le64(bm0 + 16 + 8 * (700 / 32), sm::entry_set(w, 700 % 32, 1));
    restamp(*env.engine, d.bitmaps[0], block_salt::bitmap);
    model[700] = 1;
    env.reopen(mroot, droot);
    EXPECT_COUNTS(model, *env.dsm);
    EXPECT_EQ(env.dsm->get_count(700), 1u);
    env.dsm->inc(14);
    model[14] = 6;
    auto [m2, d2] = env.commit();
    sm_structure d2s = read_data_structure(*env.bm, d2);
    EXPECT_EQ(d2s.overflow.size(), 3999u);
    EXPECT_EQ(data_on_disk(*env.bm, d2), model);  // no stray entries
    EXPECT_COUNTS(pool_md_expected(*env.bm, m2, d2), *env.msm);
}


TEST(KernelFixture, DataSpaceMapCommitsOnACopy) {
    std::string path = unpack_fixture("tmeta.bin.gz");
    ASSERT_FALSE(path.empty());
    auto mem = std::make_shared<memory_engine>(16384);
    {
        auto eng = open_sync_engine(path, open_options{open_mode::read_only, false});
        for (block_address b = 0; b < 16384; ++b) eng->read(b, mem->raw(b));
    }
    std::remove(path.c_str());
    auto bm = std::make_unique<block_manager>(mem);
    auto roots = read_roots(*bm);
    auto msm = open_metadata_space_map(*bm, roots.metadata);
    auto tm = std::make_unique<transaction_manager>(*bm, *msm);
    auto dsm = open_disk_space_map(*tm, roots.data);
    std::vector<std::uint32_t> md(msm->nr_blocks()), model(dsm->nr_blocks());
    for (block_address b = 0; b < md.size(); ++b) md[b] = msm->get_count(b);
    for (block_address b = 0; b < model.size(); ++b) model[b] = dsm->get_count(b);
    EXPECT_EQ(data_on_disk(*bm, roots.data), model);
    sm_structure old_m = read_metadata_structure(*bm, roots.metadata);
    sm_structure old_d = read_data_structure(*bm, roots.data);

    std::mt19937_64 rng(5);
    for (int i = 0; i < 20000; ++i) {
        block_address b = rng() % model.size();
        switch (rng() % 4) {
        case 0: dsm->inc(b); ++model[b]; break;
        case 1: if (model[b]) { dsm->dec(b); --model[b]; } break;
        case 2: { std::uint32_t v = std::uint32_t(rng() % 6); dsm->set_count(b, v); model[b] = v; break; }
        default: { auto nb = dsm->new_block(); ASSERT_TRUE(nb); ASSERT_EQ(model[*nb], 0u); model[*nb] = 1; }
        }
    }
    dsm->commit();
    msm->commit();
    bm->flush();
    sm_root mroot = msm->root(), droot = dsm->root();
    EXPECT_EQ(data_on_disk(*bm, droot), model);
    // Metadata: the thin trees are untouched; the space maps' structures were replaced.
    for (auto b : old_m.bitmaps) --md[b];
    --md[old_m.index];
    for (auto b : old_m.overflow_nodes) --md[b];
    for (auto b : old_d.bitmaps) --md[b];
    for (auto b : old_d.index_nodes) --md[b];
    for (auto b : old_d.overflow_nodes) --md[b];
    add_structure_refs(md, read_data_structure(*bm, droot), true);
    auto exp = md_expected(*bm, mroot, md);
    EXPECT_COUNTS(exp, *msm);
    dsm.reset();
    tm.reset();
    msm.reset();
    bm = std::make_unique<block_manager>(mem);
    msm = open_metadata_space_map(*bm, mroot);
    tm = std::make_unique<transaction_manager>(*bm, *msm);
    dsm = open_disk_space_map(*tm, droot);
    EXPECT_COUNTS(model, *dsm);
    EXPECT_COUNTS(exp, *msm);
}


} // namespace
