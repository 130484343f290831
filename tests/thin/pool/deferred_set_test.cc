#include "thin/pool/deferred_set.h"

#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <map>
#include <set>
#include <random>
#include <thread>

using thin::pool::deferred_set;

namespace {

void run(std::vector<deferred_set::job> jobs) {
    for (auto& j : jobs) j();
}

TEST(deferred_set, nothing_in_flight_runs_now) {
    deferred_set ds;
    bool ran = false;
    deferred_set::job j = [&] { ran = true; };
    EXPECT_FALSE(ds.add_work(j));
    EXPECT_TRUE(j);  // left to the caller
    EXPECT_FALSE(ran);
    // Also after I/O came and went.
    unsigned g = ds.inc();
    EXPECT_TRUE(ds.dec(g).empty());
    EXPECT_FALSE(ds.add_work(j));
    EXPECT_EQ(ds.in_flight(), 0u);
}

TEST(deferred_set, job_waits_for_earlier_io) {
    deferred_set ds;
    unsigned a = ds.inc(), b = ds.inc();
    int ran = 0;
    deferred_set::job j = [&] { ++ran; };
    ASSERT_TRUE(ds.add_work(j));
    EXPECT_TRUE(ds.dec(a).empty());
    auto ready = ds.dec(b);
    ASSERT_EQ(ready.size(), 1u);
    run(std::move(ready));
    EXPECT_EQ(ran, 1);
}

TEST(deferred_set, a_job_waits_only_for_io_started_before_it) {
    deferred_set ds;
    unsigned before = ds.inc();
    int ran = 0;
    deferred_set::job j = [&] { ++ran; };
    ASSERT_TRUE(ds.add_work(j));
    // I/O started after the job was queued.
    unsigned after1 = ds.inc(), after2 = ds.inc();
    EXPECT_NE(after1, before);
    auto ready = ds.dec(before);
    ASSERT_EQ(ready.size(), 1u) << "the job must not wait for later I/O";
    run(std::move(ready));
    EXPECT_EQ(ran, 1);
    EXPECT_TRUE(ds.dec(after1).empty());
    EXPECT_TRUE(ds.dec(after2).empty());
}

TEST(deferred_set, jobs_run_in_generation_order) {
    deferred_set ds;
    std::vector<int> order;
    unsigned g1 = ds.inc();
    deferred_set::job j1 = [&] { order.push_back(1); };
    ASSERT_TRUE(ds.add_work(j1));
    unsigned g2 = ds.inc();
    deferred_set::job j2 = [&] { order.push_back(2); };
    ASSERT_TRUE(ds.add_work(j2));
    // The later generation drains first: its job still waits for the older I/O.
    EXPECT_TRUE(ds.dec(g2).empty());
    auto ready = ds.dec(g1);
    ASSERT_EQ(ready.size(), 2u);
    run(std::move(ready));
    EXPECT_EQ(order, (std::vector<int>{1, 2}));
}

TEST(deferred_set, two_jobs_behind_the_same_io) {
    deferred_set ds;
    unsigned g = ds.inc();
    int ran = 0;
    deferred_set::job a = [&] { ++ran; }, b = [&] { ++ran; };
    ASSERT_TRUE(ds.add_work(a));
    ASSERT_TRUE(ds.add_work(b));  // nothing new in flight, but the older I/O still is
    auto ready = ds.dec(g);
    EXPECT_EQ(ready.size(), 2u);
    run(std::move(ready));
    EXPECT_EQ(ran, 2);
}

TEST(deferred_set, full_ring_only_delays) {
    deferred_set ds;
    std::vector<unsigned> gens;
    int ran = 0;
    // More generations than the ring holds, each with I/O and a job behind it.
    for (int i = 0; i < 200; ++i) {
        gens.push_back(ds.inc());
        deferred_set::job j = [&] { ++ran; };
        ASSERT_TRUE(ds.add_work(j));
    }
    std::size_t got = 0;
    for (unsigned g : gens) {
        auto r = ds.dec(g);
        got += r.size();
        run(std::move(r));
    }
    EXPECT_EQ(got, 200u);
    EXPECT_EQ(ran, 200);
    EXPECT_EQ(ds.in_flight(), 0u);
}

// Random inc/dec/add_work against a model: a job is ready exactly when every I/O counted before
// it was queued has ended (or later, when the ring was full), never before.
TEST(deferred_set, never_early_model) {
    deferred_set ds;
    std::mt19937_64 rng(7);
    struct io {
        unsigned gen;
        long seq;
    };
    std::vector<io> live;
    long seq = 0;
    struct pending {
        long id;
        std::vector<long> before;  // seqs of I/O in flight when queued
    };
    std::map<long, pending> jobs;
    std::set<long> done_io;
    long next_job = 0;
    std::vector<long> ran;
    for (int step = 0; step < 50000; ++step) {
        int op = int(rng() % 10);
        if (op < 4) {
            live.push_back(io{ds.inc(), seq++});
        } else if (op < 8 && !live.empty()) {
            std::size_t i = rng() % live.size();
            io x = live[i];
            live.erase(live.begin() + long(i));
            done_io.insert(x.seq);
            for (auto& j : ds.dec(x.gen)) j();
        } else {
            long id = next_job++;
            pending p{id, {}};
            for (auto& x : live) p.before.push_back(x.seq);
            jobs[id] = p;
            deferred_set::job j = [&, id] { ran.push_back(id); };
            if (!ds.add_work(j)) {
                ASSERT_TRUE(live.empty());
                j();
            }
        }
        for (long id : ran) {
            auto it = jobs.find(id);
            ASSERT_NE(it, jobs.end());
            for (long s : it->second.before) ASSERT_TRUE(done_io.count(s)) << "job " << id << " ran before I/O " << s;
            jobs.erase(it);
        }
        ran.clear();
    }
    while (!live.empty()) {
        io x = live.back();
        live.pop_back();
        for (auto& j : ds.dec(x.gen)) j();
    }
    for (long id : ran) jobs.erase(id);
    EXPECT_TRUE(jobs.empty()) << jobs.size() << " jobs never ran";
}

TEST(deferred_set, concurrent_inc_dec) {
    deferred_set ds;
    std::atomic<int> ran{0};
    std::atomic<int> queued{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&, t] {
            std::mt19937 rng(t);
            std::deque<unsigned> mine;
            for (int i = 0; i < 20000; ++i) {
                if (rng() % 3 && mine.size() < 8) {
                    mine.push_back(ds.inc());
                } else if (!mine.empty()) {
                    for (auto& j : ds.dec(mine.front())) j();
                    mine.pop_front();
                }
                if (rng() % 50 == 0) {
                    deferred_set::job j = [&] { ++ran; };
                    ++queued;
                    if (!ds.add_work(j)) j();
                }
            }
            for (unsigned g : mine)
                for (auto& j : ds.dec(g)) j();
        });
    for (auto& t : ts) t.join();
    EXPECT_EQ(ran.load(), queued.load());
    EXPECT_EQ(ds.in_flight(), 0u);
}

} // namespace
