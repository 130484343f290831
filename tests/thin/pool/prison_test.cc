#include "thin/pool/prison.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <random>
#include <thread>

using namespace thin::pool;

namespace {

struct item {
    int id;
};
using prison = bio_prison<item>;

std::vector<int> ids(const std::vector<item*>& v) {
    std::vector<int> r;
    for (auto* i : v) r.push_back(i->id);
    return r;
}

TEST(prison, detain_acquires_then_queues) {
    prison p;
    item a{1}, b{2}, c{3};
    prison::cell* ca;
    ASSERT_TRUE(p.detain(cell_key::virt(0, 7), &a, &ca));
    EXPECT_EQ(ca->holder, &a);
    prison::cell* cb;
    EXPECT_FALSE(p.detain(cell_key::virt(0, 7), &b, &cb));
    EXPECT_FALSE(p.detain(cell_key::virt(0, 7), &c, &cb));
    EXPECT_EQ(p.size(), 1u);
    EXPECT_EQ(ids(p.release(ca)), (std::vector<int>{1, 2, 3}));
    EXPECT_EQ(p.size(), 0u);
    // Free again.
    ASSERT_TRUE(p.detain(cell_key::virt(0, 7), &b, &cb));
    EXPECT_TRUE(p.release(cb).size() == 1);
}

TEST(prison, keys_conflict_only_with_same_kind_device_and_overlap) {
    prison p;
    item a{1}, b{2};
    prison::cell *c1, *c2;
    ASSERT_TRUE(p.detain(cell_key::virt(0, 5), &a, &c1));
    // Another block, another device, or a physical key: no conflict.
    std::vector<prison::cell*> held;
    for (cell_key k : {cell_key::virt(0, 6), cell_key::virt(1, 5), cell_key::phys(0, 5), cell_key::virt(0, 4)}) {
        prison::cell* c;
        ASSERT_TRUE(p.detain(k, &b, &c)) << k.dev << " " << k.begin << " " << k.physical;
        held.push_back(c);
    }
    for (auto* c : held) p.release(c);
    // Ranges: [0,10) overlaps block 5; [6,10) does not; [5,6) does.
    EXPECT_FALSE(p.detain(cell_key{false, 0, 0, 10}, &b, &c2));
    ASSERT_TRUE(p.detain(cell_key{false, 0, 6, 10}, &b, &c2));
    prison::cell* c3;
    EXPECT_FALSE(p.detain(cell_key{false, 0, 9, 12}, &a, &c3));
    EXPECT_EQ(ids(p.release_no_holder(c2)), std::vector<int>{1});
    auto r = p.release(c1);
    EXPECT_EQ(ids(r), (std::vector<int>{1, 2}));
}

TEST(prison, ranges_are_limited_to_1024_aligned_regions) {
    prison p;
    item a{1};
    prison::cell* c;
    EXPECT_THROW(p.detain(cell_key{false, 0, 1000, 1030}, &a, &c), std::invalid_argument);
    EXPECT_THROW(p.detain(cell_key{false, 0, 0, 1025}, &a, &c), std::invalid_argument);
    EXPECT_THROW(p.detain(cell_key{false, 0, 5, 5}, &a, &c), std::invalid_argument);
    ASSERT_TRUE(p.detain(cell_key{false, 0, 1024, 2048}, &a, &c));
    prison::cell* d;
    EXPECT_TRUE(p.detain(cell_key{false, 0, 0, 1024}, &a, &d));  // adjacent regions
    p.release(c);
    p.release(d);
}

TEST(prison, try_acquire_never_queues) {
    prison p;
    item a{1}, b{2};
    prison::cell* c;
    ASSERT_TRUE(p.detain(cell_key{true, 3, 100, 200}, &a, &c));
    EXPECT_EQ(p.try_acquire(cell_key{true, 3, 150, 151}, &b), nullptr);
    EXPECT_TRUE(p.release_no_holder(c).empty());
    prison::cell* t = p.try_acquire(cell_key{true, 3, 150, 151});
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->holder, nullptr);
    item w{9};
    prison::cell* x;
    EXPECT_FALSE(p.detain(cell_key::phys(3, 150), &w, &x));
    EXPECT_EQ(ids(p.release(t)), std::vector<int>{9});
}

TEST(prison, release_visit_sees_every_bio_before_the_cell_goes) {
    prison p;
    item a{1}, b{2}, c{3};
    prison::cell* ca;
    prison::cell* tmp;
    ASSERT_TRUE(p.detain(cell_key::virt(2, 9), &a, &ca));
    ASSERT_FALSE(p.detain(cell_key::virt(2, 9), &b, &tmp));
    ASSERT_FALSE(p.detain(cell_key::virt(2, 9), &c, &tmp));
    std::vector<int> seen;
    p.release_visit(ca, true, [&](item* i) { seen.push_back(i->id); });
    EXPECT_EQ(seen, (std::vector<int>{1, 2, 3}));
    ASSERT_TRUE(p.detain(cell_key::virt(2, 9), &a, &ca));
    ASSERT_FALSE(p.detain(cell_key::virt(2, 9), &b, &tmp));
    seen.clear();
    p.release_visit(ca, false, [&](item* i) { seen.push_back(i->id); });
    EXPECT_EQ(seen, std::vector<int>{2});
    EXPECT_EQ(p.size(), 0u);
}

// Random detains and releases against a brute-force model of held ranges.
TEST(prison, matches_a_model) {
    prison p;
    std::mt19937_64 rng(42);
    struct held {
        cell_key k;
        prison::cell* c;
        std::vector<int> waiters;
    };
    std::vector<held> model;
    std::vector<std::unique_ptr<item>> items;
    for (int step = 0; step < 20000; ++step) {
        if (!model.empty() && rng() % 3 == 0) {
            std::size_t i = rng() % model.size();
            auto got = ids(p.release_no_holder(model[i].c));
            EXPECT_EQ(got, model[i].waiters);
            model.erase(model.begin() + long(i));
            continue;
        }
        cell_key k;
        k.physical = rng() % 2;
        k.dev = rng() % 3;
        std::uint64_t region = rng() % 3;
        std::uint64_t b = region * 1024 + rng() % 1024;
        std::uint64_t lim = (region + 1) * 1024;
        k.begin = b;
        k.end = std::min(lim, b + 1 + rng() % 40);
        items.push_back(std::make_unique<item>(item{step}));
        prison::cell* c;
        bool acquired = p.detain(k, items.back().get(), &c);
        held* conflict = nullptr;
        for (auto& h : model)
            if (h.k.physical == k.physical && h.k.dev == k.dev && h.k.begin < k.end && k.begin < h.k.end) conflict = &h;
        ASSERT_EQ(acquired, conflict == nullptr) << step;
        if (acquired) {
            model.push_back(held{k, c, {}});
        } else {
            // Queued on the overlapping cell it names.
            bool found = false;
            for (auto& h : model)
                if (h.c == c) {
                    EXPECT_TRUE(h.k.physical == k.physical && h.k.dev == k.dev && h.k.begin < k.end && k.begin < h.k.end);
                    h.waiters.push_back(step);
                    found = true;
                }
            ASSERT_TRUE(found) << step;
        }
        ASSERT_EQ(p.size(), model.size());
    }
    for (auto& h : model) p.release(h.c);
}

// Threads contend for a few blocks; a holder is alone in its range while it holds it. Waiters
// handed back on release retry, as the worker would.
TEST(prison, mutual_exclusion_under_contention) {
    prison p;
    constexpr int THREADS = 4, ROUNDS = 20000, BLOCKS = 4;
    std::atomic<int> inside[BLOCKS] = {};
    std::atomic<bool> bad{false};
    std::atomic<long> completed{0};
    std::mutex qm;
    std::vector<item*> queue;  // released waiters, to be retried by anyone
    std::vector<std::thread> ts;
    std::vector<std::vector<std::unique_ptr<item>>> storage(THREADS);
    auto attempt = [&](item* it) {
        int blk = it->id % BLOCKS;
        prison::cell* c;
        if (!p.detain(cell_key::virt(0, blk), it, &c)) return;
        if (inside[blk].fetch_add(1) != 0) bad = true;
        inside[blk].fetch_sub(1);
        auto w = p.release_no_holder(c);
        ++completed;
        std::lock_guard lk(qm);
        queue.insert(queue.end(), w.begin(), w.end());
    };
    for (int t = 0; t < THREADS; ++t)
        ts.emplace_back([&, t] {
            std::mt19937 rng(t);
            for (int i = 0; i < ROUNDS; ++i) {
                storage[t].push_back(std::make_unique<item>(item{int(rng() % 1000)}));
                attempt(storage[t].back().get());
                item* again = nullptr;
                {
                    std::lock_guard lk(qm);
                    if (!queue.empty()) {
                        again = queue.back();
                        queue.pop_back();
                    }
                }
                if (again) attempt(again);
            }
        });
    for (auto& t : ts) t.join();
    // Drain whatever is left.
    for (;;) {
        item* again = nullptr;
        {
            std::lock_guard lk(qm);
            if (queue.empty()) break;
            again = queue.back();
            queue.pop_back();
        }
        attempt(again);
    }
    EXPECT_FALSE(bad.load());
    EXPECT_EQ(completed.load(), long(THREADS) * ROUNDS);
    EXPECT_EQ(p.size(), 0u);
}

} // namespace
