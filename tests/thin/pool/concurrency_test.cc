// Concurrency tests of the pool runtime (pool.md §7): each hammers one of the races the kernel's
// rules exist for, from several threads, and verifies data by self-identifying patterns
// (tests/support/pool_support.h) during and after the run. Every run is watched by a deadline:
// a lost request or a deadlock fails the test instead of hanging it. Run them under tsan and asan
// too (build/h-ptest-tsan, build/h-ptest-asan).
#include "tests/support/pool_support.h"

#include "thin/metadata/metadata.h"
#include "thin/pool/data_device.h"
#include "thin/pool/pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace thinpool_test;
using namespace std::chrono_literals;
using thin::pool::io_op;
using thin::pool::pool_error;
using thin::pool::pool_mode;
using thin::pool::thin_device;

constexpr std::uint32_t BS = 128;

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr unsigned SCALE_DIV = 4;  // sanitizers are 5-20x slower
#else
constexpr unsigned SCALE_DIV = 1;
#endif
constexpr auto RUN_DEADLINE = 60s;

// Tags say which thin and which virtual block a write was for: (thin+1)<<48 | (block+1)<<32 | n.
std::uint64_t make_tag(std::uint64_t thin, std::uint64_t block, std::uint64_t n) {
    return ((thin + 1) << 48) | ((block + 1) << 32) | (n & 0xffffffffu);
}
bool tag_is_for(std::uint64_t tag, std::uint64_t thin, std::uint64_t block) {
    return (tag >> 48) == thin + 1 && ((tag >> 32) & 0xffff) == block + 1 && (tag & 0xffffffffu) != 0;
}

// Collected failures from worker threads (gtest assertions are reported from the main thread).
class failures {
public:
    void add(const std::string& s) {
        std::lock_guard l(mu_);
        if (list_.size() < 20) list_.push_back(s);
        ++count_;
    }
    std::size_t count() const {
        std::lock_guard l(mu_);
        return count_;
    }
    std::string text() const {
        std::lock_guard l(mu_);
        std::ostringstream os;
        os << count_ << " failure(s):\n";
        for (auto& s : list_) os << "  " << s << "\n";
        return os.str();
    }

private:
    mutable std::mutex mu_;
    std::vector<std::string> list_;
    std::size_t count_ = 0;
};

// ================================================================================================
// 1. Discards and writes to the same blocks at once (the seed's deadlock; rules 1-4).
// ================================================================================================

struct op_record {
    enum kind_t { write, discard } kind;
    std::uint64_t first, last;  // blocks [first, last]
    std::uint64_t tag;          // writes
    std::uint64_t submit_seq, complete_seq;
    int rc;
};

TEST(PoolConcurrency, DiscardsAndWritesHammerTheSameBlocks) {
    constexpr std::uint64_t NBLOCKS = 16;
    const unsigned threads = 4, ops_per_thread = 1200 / SCALE_DIV, depth = 4;
    for (bool passdown : {true, false}) {
        SCOPED_TRACE(passdown ? "passdown" : "no passdown");
        memory_pool mp(2048, 48);
        mp.opts.features.no_discard_passdown = !passdown;
        mp.opts.commit_period = 20ms;
        auto p = mp.open();
        p->message("create_thin 0");
        auto t = p->activate(0, NBLOCKS * BS);

        std::atomic<std::uint64_t> seq{1};
        failures fails;
        std::mutex rec_mu;
        std::vector<op_record> records;

        auto worker = [&](unsigned id) {
            std::mt19937_64 rng(1000 + id);
            struct inflight {
                pending_io io;
                op_record rec;
                bool is_read = false;
                std::uint64_t block = 0;
            };
            std::vector<inflight> q;
            std::uint64_t n = 0;
            auto reap = [&](inflight& f) {
                int rc = f.io.wait();
                if (f.is_read) {
                    if (rc != 0) {
                        fails.add("read of block " + std::to_string(f.block) + " failed: " + std::to_string(rc));
                        return;
                    }
                    auto tag = uniform_tag(f.io.data().data(), f.block * BS, BS);
                    if (!tag || (*tag != 0 && !tag_is_for(*tag, 0, f.block)))
                        fails.add("read of block " + std::to_string(f.block) +
                                  " returned: " + describe_sectors(f.io.data().data(), f.block * BS, BS));
                    return;
                }
                f.rec.complete_seq = seq++;
                f.rec.rc = rc;
                if (rc != 0)
                    fails.add(std::string(f.rec.kind == op_record::write ? "write" : "discard") + " of blocks " +
                              std::to_string(f.rec.first) + "-" + std::to_string(f.rec.last) + " failed: " +
                              std::to_string(rc));
                std::lock_guard l(rec_mu);
                records.push_back(f.rec);
            };
            for (unsigned i = 0; i < ops_per_thread; ++i) {
                if (q.size() >= depth) {
                    reap(q.front());
                    q.erase(q.begin());
                }
                inflight f;
                unsigned r = rng() % 100;
                std::uint64_t b = rng() % NBLOCKS;
                if (r < 45) {
                    f.rec = {op_record::write, b, b, make_tag(0, b, (id << 24) | ++n), seq++, 0, 0};
                    auto data = make_pattern(f.rec.tag, b * BS, BS);
                    f.io = pending_io::submit(*t, io_op::write, b * BS, BS, data.data());
                } else if (r < 80) {
                    std::uint64_t len = 1 + rng() % 3;
                    std::uint64_t last = std::min(NBLOCKS - 1, b + len - 1);
                    f.rec = {op_record::discard, b, last, 0, seq++, 0, 0};
                    f.io = pending_io::submit(*t, io_op::discard, b * BS, (last - b + 1) * BS);
                } else if (r < 95) {
                    f.is_read = true;
                    f.block = b;
                    f.io = pending_io::submit(*t, io_op::read, b * BS, BS);
                } else {
                    int rc = flush_sync(*t);
                    if (rc != 0) fails.add("flush failed: " + std::to_string(rc));
                    continue;
                }
                q.push_back(std::move(f));
            }
            for (auto& f : q) reap(f);
        };

        run_threads_or_fail(threads, worker, RUN_DEADLINE,
                            "requests did not complete within the deadline (deadlock or lost completion)");
        EXPECT_EQ(0u, fails.count()) << fails.text();

        // Quiescent: each block holds the result of an operation nothing provably followed.
        for (std::uint64_t b = 0; b < NBLOCKS; ++b) {
            std::string detail;
            int rc = 0;
            auto tag = read_block_tag(*t, BS, b, &rc, &detail);
            ASSERT_EQ(0, rc);
            ASSERT_TRUE(tag) << "block " << b << " is torn or garbage: " << detail;
            std::uint64_t last_write_submit = 0;
            for (auto& r : records)
                if (r.kind == op_record::write && r.first == b) last_write_submit = std::max(last_write_submit, r.submit_seq);
            // Zeros: no write at all, or a discard of the block that no write followed (a discard
            // may be skipped when contended, so it is allowed, not required). A tag: a write to
            // this block that no other write followed (submitted after it completed).
            bool ok = false;
            if (*tag == 0) {
                ok = last_write_submit == 0;
                for (auto& r : records)
                    if (r.kind == op_record::discard && r.first <= b && b <= r.last &&
                        r.complete_seq > last_write_submit)
                        ok = true;
            } else {
                for (auto& r : records)
                    if (r.kind == op_record::write && r.tag == *tag)
                        ok = r.first == b && last_write_submit < r.complete_seq;
            }
            EXPECT_TRUE(ok) << "block " << b << " holds tag " << *tag
                            << ", which a later acknowledged operation should have replaced";
        }
        // The pool's accounting agrees with what is mapped.
        auto ts = t->status_info();
        std::uint64_t mapped = 0;
        for (std::uint64_t b = 0; b < NBLOCKS; ++b) {
            auto tag = read_block_tag(*t, BS, b);
            if (tag && *tag) ++mapped;
        }
        EXPECT_GE(ts.mapped_sectors / BS, mapped);
        EXPECT_EQ(ts.mapped_sectors / BS, p->status_info().used_data_blocks) << "one thin, no sharing";
        t->close();
        p->close();
        expect_image_checks_pass(*mp.md);
    }
}

// ================================================================================================
// 2. Reads of shared blocks while their sharing is broken, the other sharer deleted and the old
//    blocks reallocated (rules 7 and the shared-read deferred set).
// ================================================================================================

TEST(PoolConcurrency, ReadsOfSharedBlocksWhileSharingBreaks) {
    constexpr std::uint64_t NBLOCKS = 32;
    const unsigned rounds = 24 / SCALE_DIV + 2;
    memory_pool mp(4096, 5 * NBLOCKS);
    mp.opts.commit_period = 10ms;
    auto p = mp.open();
    p->message("create_thin 0");
    p->message("create_thin 1");
    auto origin = p->activate(0, NBLOCKS * BS);
    auto other = p->activate(1, NBLOCKS * BS);
    // gen[b]: the generation of thin 0's block b (full-block writes on even blocks, first-half
    // writes on odd ones: an odd block holds (first half gen g, second half gen 1)).
    std::vector<std::uint64_t> gen(NBLOCKS, 1);
    for (std::uint64_t b = 0; b < NBLOCKS; ++b) ASSERT_EQ(0, write_block(*origin, BS, b, make_tag(0, b, 1)));

    failures fails;
    auto check_origin_block = [&](const std::vector<std::uint8_t>& buf, std::uint64_t b, const char* who) {
        const std::uint8_t* d = buf.data();
        auto first = uniform_tag(d, b * BS, BS / 2);
        auto second = uniform_tag(d + BS / 2 * SECTOR, b * BS + BS / 2, BS / 2);
        bool ok = first && second && *first && *second && tag_is_for(*first, 0, b) && tag_is_for(*second, 0, b);
        if (ok && b % 2 == 0) ok = *first == *second;  // even blocks are only ever written whole
        if (ok && b % 2 == 1) ok = *second == make_tag(0, b, 1);
        if (!ok)
            fails.add(std::string(who) + ": block " + std::to_string(b) + " read " +
                      describe_sectors(d, b * BS, BS));
    };

    std::atomic<bool> stop{false};
    bool finished = finishes_within(
        [&] {
            std::vector<std::thread> readers;
            for (unsigned r = 0; r < 3; ++r)
                readers.emplace_back([&, r] {
                    std::mt19937_64 rng(77 + r);
                    while (!stop) {
                        // Several reads in flight, so some are outstanding when sharing breaks.
                        std::vector<std::pair<std::uint64_t, pending_io>> q;
                        for (int i = 0; i < 4; ++i) {
                            std::uint64_t b = rng() % NBLOCKS;
                            q.emplace_back(b, pending_io::submit(*origin, io_op::read, b * BS, BS));
                        }
                        for (auto& [b, io] : q) {
                            int rc = io.wait();
                            if (rc != 0) fails.add("origin read failed: " + std::to_string(rc));
                            else check_origin_block(io.data(), b, "concurrent read");
                        }
                    }
                });
            for (unsigned round = 0; round < rounds && fails.count() == 0; ++round) {
                const std::string snap = std::to_string(100 + round);
                p->message("create_snap " + snap + " 0");
                // Break the sharing of every block while reads run, and reallocate freed blocks
                // through thin 1 at the same time.
                std::thread allocator([&] {
                    std::mt19937_64 rng(round);
                    for (int i = 0; i < 24; ++i) {
                        std::uint64_t b = rng() % NBLOCKS;
                        if (int rc = write_block(*other, BS, b, make_tag(1, b, round * 100 + i + 1)); rc != 0)
                            fails.add("thin 1 write failed: " + std::to_string(rc));
                        if (i % 6 == 5) {
                            if (int rc = discard_sync(*other, 0, NBLOCKS * BS); rc != 0)
                                fails.add("thin 1 discard failed: " + std::to_string(rc));
                            if (int rc = flush_sync(*other); rc != 0) fails.add("thin 1 flush failed");
                        }
                    }
                });
                std::vector<pending_io> writes;
                for (std::uint64_t b = 0; b < NBLOCKS; ++b) {
                    ++gen[b];
                    if (b % 2 == 0) {
                        auto data = make_pattern(make_tag(0, b, gen[b]), b * BS, BS);
                        writes.push_back(pending_io::submit(*origin, io_op::write, b * BS, BS, data.data()));
                    } else {
                        auto data = make_pattern(make_tag(0, b, gen[b]), b * BS, BS / 2);
                        writes.push_back(pending_io::submit(*origin, io_op::write, b * BS, BS / 2, data.data()));
                    }
                    if (b == NBLOCKS / 2) {
                        // The snapshot goes away while sharing is still being broken.
                        try {
                            p->message("delete " + snap);
                        } catch (const pool_error& e) {
                            fails.add("delete " + snap + ": " + e.what());
                        }
                    }
                }
                for (auto& w : writes)
                    if (int rc = w.wait(); rc != 0) fails.add("origin write failed: " + std::to_string(rc));
                allocator.join();
            }
            stop = true;
            for (auto& th : readers) th.join();
        },
        RUN_DEADLINE);
    if (!finished) fail_hung_test("requests did not complete within the deadline");
    EXPECT_EQ(0u, fails.count()) << fails.text();
    for (std::uint64_t b = 0; b < NBLOCKS; ++b) {
        std::vector<std::uint8_t> buf;
        ASSERT_EQ(0, read_sync(*origin, b * BS, BS, buf));
        auto first = uniform_tag(buf.data(), b * BS, BS / 2);
        auto second = uniform_tag(buf.data() + BS / 2 * SECTOR, b * BS + BS / 2, BS / 2);
        EXPECT_EQ(std::optional<std::uint64_t>(make_tag(0, b, gen[b])), first) << b;
        EXPECT_EQ(std::optional<std::uint64_t>(b % 2 ? make_tag(0, b, 1) : make_tag(0, b, gen[b])), second) << b;
    }
}

// ================================================================================================
// 3. Snapshots of an active origin taken while writers run (pool.md §5.8; pool.h: create_snap
//    quiesces the origin).
// ================================================================================================

TEST(PoolConcurrency, SnapshotsTakenDuringWrites) {
    constexpr unsigned WRITERS = 8, PER_WRITER = 8, NSNAPS = 5;
    constexpr std::uint64_t NBLOCKS = WRITERS * PER_WRITER;
    memory_pool mp(4096, NBLOCKS * (NSNAPS + 3));
    mp.opts.commit_period = 50ms;
    auto p = mp.open();
    p->message("create_thin 0");
    auto origin = p->activate(0, NBLOCKS * BS);

    struct wrec {
        std::uint64_t tag, submit_seq, complete_seq;
    };
    // Per block, the writes in order (one writer per block, one write in flight per writer).
    std::vector<std::vector<wrec>> hist(NBLOCKS);
    std::vector<std::mutex> hist_mu(NBLOCKS);
    std::atomic<std::uint64_t> seq{1};
    std::atomic<bool> stop{false};
    std::atomic<unsigned> writes_done{0};
    failures fails;
    struct snap_window {
        std::uint64_t begin, end;
    };
    std::vector<snap_window> windows;

    bool finished = finishes_within(
        [&] {
            std::vector<std::thread> writers;
            for (unsigned w = 0; w < WRITERS; ++w)
                writers.emplace_back([&, w] {
                    std::mt19937_64 rng(5000 + w);
                    std::uint64_t n = 0;
                    while (!stop) {
                        std::uint64_t b = w * PER_WRITER + rng() % PER_WRITER;
                        std::uint64_t tag = make_tag(0, b, ++n);
                        auto data = make_pattern(tag, b * BS, BS);
                        std::uint64_t s = seq++;
                        {
                            std::lock_guard l(hist_mu[b]);
                            hist[b].push_back({tag, s, ~0ull});
                        }
                        int rc = pending_io::submit(*origin, io_op::write, b * BS, BS, data.data()).wait();
                        std::uint64_t c = seq++;
                        if (rc != 0) fails.add("write failed: " + std::to_string(rc));
                        std::lock_guard l(hist_mu[b]);
                        hist[b].back().complete_seq = c;
                        ++writes_done;
                    }
                });
            for (unsigned s = 1; s <= NSNAPS; ++s) {
                // Let some writes land between snapshots.
                unsigned target = writes_done + 40 / SCALE_DIV + 8;
                if (!wait_until([&] { return writes_done >= target || fails.count() > 0; }, 60s)) {
                    fails.add("writers made no progress");
                    break;
                }
                snap_window win;
                win.begin = seq++;
                try {
                    p->message("create_snap " + std::to_string(s) + " 0");
                } catch (const pool_error& e) {
                    fails.add(std::string("create_snap: ") + e.what());
                }
                win.end = seq++;
                windows.push_back(win);
            }
            stop = true;
            for (auto& th : writers) th.join();
        },
        RUN_DEADLINE);
    if (!finished) fail_hung_test("writers or snapshots did not complete within the deadline");
    ASSERT_EQ(0u, fails.count()) << fails.text();
    ASSERT_EQ(NSNAPS, windows.size());

    for (unsigned s = 1; s <= NSNAPS; ++s) {
        SCOPED_TRACE("snapshot " + std::to_string(s));
        auto win = windows[s - 1];
        auto snap = p->activate(s, NBLOCKS * BS);
        for (std::uint64_t b = 0; b < NBLOCKS; ++b) {
            std::string detail;
            int rc = 0;
            auto tag = read_block_tag(*snap, BS, b, &rc, &detail);
            ASSERT_EQ(0, rc);
            ASSERT_TRUE(tag) << "block " << b << " torn: " << detail;
            const auto& h = hist[b];
            // The newest write acknowledged before create_snap began.
            std::optional<std::size_t> must;
            for (std::size_t i = 0; i < h.size(); ++i)
                if (h[i].complete_seq < win.begin) must = i;
            if (*tag == 0) {
                EXPECT_FALSE(must) << "block " << b << ": the snapshot lost write #" << *must
                                   << " acknowledged before the snapshot began";
                continue;
            }
            std::optional<std::size_t> got;
            for (std::size_t i = 0; i < h.size(); ++i)
                if (h[i].tag == *tag) got = i;
            ASSERT_TRUE(got) << "block " << b << " holds a tag never written to it: " << *tag;
            EXPECT_LT(h[*got].submit_seq, win.end) << "block " << b << ": a write submitted after create_snap returned "
                                                   << "is in the snapshot";
            if (must) {
                EXPECT_GE(*got, *must) << "block " << b << ": the snapshot holds write #" << *got
                                       << " but write #" << *must << " was acknowledged before the snapshot began";
            }
        }
        snap->close();
    }
    // The origin holds every block's last write.
    for (std::uint64_t b = 0; b < NBLOCKS; ++b) {
        auto tag = read_block_tag(*origin, BS, b);
        EXPECT_EQ(hist[b].empty() ? std::optional<std::uint64_t>(0) : std::optional<std::uint64_t>(hist[b].back().tag),
                  tag)
            << "origin block " << b;
    }
}

// ================================================================================================
// 4. Many threads on many thins: random reads, writes (any size and alignment), discards and
//    flushes, checked against a model sector by sector.
// ================================================================================================

TEST(PoolConcurrency, OneThreadPerThinAnySizeAndAlignment) {
    constexpr unsigned NTHINS = 8;
    constexpr std::uint64_t NBLOCKS = 24, NSECT = NBLOCKS * BS;
    const unsigned ops = 500 / SCALE_DIV;
    memory_pool mp(4096, NTHINS * NBLOCKS + 32);
    mp.opts.commit_period = 25ms;
    auto p = mp.open();
    std::vector<std::shared_ptr<thin_device>> thins;
    for (unsigned i = 0; i < NTHINS; ++i) {
        p->message("create_thin " + std::to_string(i));
        thins.push_back(p->activate(i, NSECT));
    }
    std::vector<std::vector<std::uint64_t>> model(NTHINS, std::vector<std::uint64_t>(NSECT, 0));
    failures fails;

    auto worker = [&](unsigned id) {
        std::mt19937_64 rng(9000 + id);
        auto& m = model[id];
        auto& t = *thins[id];
        std::uint64_t n = 0;
        for (unsigned i = 0; i < ops && fails.count() < 5; ++i) {
            unsigned r = rng() % 100;
            std::uint64_t start = rng() % NSECT;
            std::uint64_t len = 1 + rng() % (2 * BS);
            if (rng() % 4 == 0) {  // block-aligned, so whole blocks get provisioned and discarded too
                start -= start % BS;
                len = BS * (1 + rng() % 3);
            }
            len = std::min(len, NSECT - start);
            if (r < 40) {
                std::uint64_t tag = make_tag(id, 0, ++n);
                std::vector<std::uint8_t> data(len * SECTOR);
                for (std::uint64_t s = 0; s < len; ++s) fill_sector(data.data() + s * SECTOR, tag, start + s);
                bool fua = rng() % 10 == 0;
                int rc = write_sync(t, start, data, fua);
                if (rc != 0) {
                    fails.add("thin " + std::to_string(id) + " write failed: " + std::to_string(rc));
                    continue;
                }
                for (std::uint64_t s = 0; s < len; ++s) m[start + s] = tag;
            } else if (r < 75) {
                std::vector<std::uint8_t> buf;
                int rc = read_sync(t, start, len, buf);
                if (rc != 0) {
                    fails.add("thin " + std::to_string(id) + " read failed: " + std::to_string(rc));
                    continue;
                }
                for (std::uint64_t s = 0; s < len; ++s) {
                    auto got = sector_tag(buf.data() + s * SECTOR, start + s);
                    if (got != std::optional<std::uint64_t>(m[start + s])) {
                        fails.add("thin " + std::to_string(id) + " sector " + std::to_string(start + s) +
                                  ": expected tag " + std::to_string(m[start + s]) + ", read " +
                                  describe_sectors(buf.data() + s * SECTOR, start + s, 1));
                        break;
                    }
                }
            } else if (r < 92) {
                int rc = discard_sync(t, start, len);
                if (rc != 0) {
                    fails.add("thin " + std::to_string(id) + " discard failed: " + std::to_string(rc));
                    continue;
                }
                std::uint64_t b0 = (start + BS - 1) / BS, b1 = (start + len) / BS;
                for (std::uint64_t b = b0; b < b1; ++b)
                    std::fill(m.begin() + b * BS, m.begin() + (b + 1) * BS, 0);
            } else {
                if (int rc = flush_sync(t); rc != 0)
                    fails.add("thin " + std::to_string(id) + " flush failed: " + std::to_string(rc));
            }
        }
    };

    run_threads_or_fail(NTHINS, worker, RUN_DEADLINE, "requests did not complete within the deadline");
    EXPECT_EQ(0u, fails.count()) << fails.text();

    // Final state, and the mapped counts agree with the model's non-zero blocks (a block the
    // model says is zero may still be mapped after a partial discard or a zero write).
    std::uint64_t total_mapped = 0;
    for (unsigned i = 0; i < NTHINS; ++i) {
        std::vector<std::uint8_t> buf;
        ASSERT_EQ(0, read_sync(*thins[i], 0, NSECT, buf));
        for (std::uint64_t s = 0; s < NSECT; ++s) {
            auto got = sector_tag(buf.data() + s * SECTOR, s);
            if (got != std::optional<std::uint64_t>(model[i][s])) {
                ADD_FAILURE() << "thin " << i << " sector " << s << ": expected tag " << model[i][s] << ", read "
                              << describe_sectors(buf.data() + s * SECTOR, s, 1);
                break;
            }
        }
        std::uint64_t nonzero_blocks = 0;
        for (std::uint64_t b = 0; b < NBLOCKS; ++b)
            if (std::any_of(model[i].begin() + b * BS, model[i].begin() + (b + 1) * BS, [](auto v) { return v != 0; }))
                ++nonzero_blocks;
        auto ts = thins[i]->status_info();
        EXPECT_GE(ts.mapped_sectors / BS, nonzero_blocks) << "thin " << i;
        total_mapped += ts.mapped_sectors / BS;
    }
    EXPECT_EQ(total_mapped, p->status_info().used_data_blocks);
    for (auto& t : thins) t->close();
    p->close();
    expect_image_checks_pass(*mp.md);
}

// 8 threads x 8 thins: every thread works on every thin; thread i owns the blocks b = i (mod 8) of
// each thin, so requests from all threads interleave on one thin (neighbouring blocks, shared
// b-tree leaves) while each block still has one writer and an exact model.
TEST(PoolConcurrency, ManyThreadsManyThins) {
    constexpr unsigned NTHREADS = 8, NTHINS = 8;
    constexpr std::uint64_t NBLOCKS = 32, NSECT = NBLOCKS * BS;
    const unsigned ops = 600 / SCALE_DIV;
    memory_pool mp(4096, NTHINS * NBLOCKS + 32);
    mp.opts.commit_period = 25ms;
    auto p = mp.open();
    std::vector<std::shared_ptr<thin_device>> thins;
    for (unsigned i = 0; i < NTHINS; ++i) {
        p->message("create_thin " + std::to_string(i));
        thins.push_back(p->activate(i, NSECT));
    }
    // model[thin][sector]; each sector is only touched by the thread owning its block.
    std::vector<std::vector<std::uint64_t>> model(NTHINS, std::vector<std::uint64_t>(NSECT, 0));
    failures fails;
    auto worker = [&](unsigned id) {
        std::mt19937_64 rng(7000 + id);
        std::uint64_t n = 0;
        for (unsigned i = 0; i < ops && fails.count() < 5; ++i) {
            unsigned th = rng() % NTHINS;
            auto& m = model[th];
            auto& t = *thins[th];
            std::uint64_t b = id + NTHREADS * (rng() % (NBLOCKS / NTHREADS));
            std::uint64_t off = rng() % BS, len = 1 + rng() % (BS - off);
            if (rng() % 3 == 0) {
                off = 0;
                len = BS;
            }
            std::uint64_t start = b * BS + off;
            unsigned r = rng() % 100;
            const std::string where = "thin " + std::to_string(th) + " block " + std::to_string(b);
            if (r < 40) {
                std::uint64_t tag = make_tag(th, b, (id << 20) | ++n);
                std::vector<std::uint8_t> data(len * SECTOR);
                fill_sectors(data.data(), tag, start, len);
                if (int rc = write_sync(t, start, data, rng() % 10 == 0); rc != 0) {
                    fails.add(where + ": write failed: " + std::to_string(rc));
                    continue;
                }
                std::fill(m.begin() + start, m.begin() + start + len, tag);
            } else if (r < 75) {
                std::vector<std::uint8_t> buf;
                if (int rc = read_sync(t, b * BS, BS, buf); rc != 0) {
                    fails.add(where + ": read failed: " + std::to_string(rc));
                    continue;
                }
                for (std::uint64_t s = 0; s < BS; ++s)
                    if (sector_tag(buf.data() + s * SECTOR, b * BS + s) != std::optional<std::uint64_t>(m[b * BS + s])) {
                        fails.add(where + " sector " + std::to_string(s) + ": expected tag " +
                                  std::to_string(m[b * BS + s]) + ", read " +
                                  describe_sectors(buf.data() + s * SECTOR, b * BS + s, 1));
                        break;
                    }
            } else if (r < 92) {
                if (int rc = discard_sync(t, start, len); rc != 0) {
                    fails.add(where + ": discard failed: " + std::to_string(rc));
                    continue;
                }
                if (len == BS) std::fill(m.begin() + b * BS, m.begin() + (b + 1) * BS, 0);
            } else if (int rc = flush_sync(t); rc != 0) {
                fails.add("thin " + std::to_string(th) + ": flush failed: " + std::to_string(rc));
            }
        }
    };
    run_threads_or_fail(NTHREADS, worker, RUN_DEADLINE, "requests did not complete within the deadline");
    EXPECT_EQ(0u, fails.count()) << fails.text();
    std::uint64_t total_mapped = 0;
    for (unsigned i = 0; i < NTHINS; ++i) {
        std::vector<std::uint8_t> buf;
        ASSERT_EQ(0, read_sync(*thins[i], 0, NSECT, buf));
        for (std::uint64_t s = 0; s < NSECT; ++s)
            if (sector_tag(buf.data() + s * SECTOR, s) != std::optional<std::uint64_t>(model[i][s])) {
                ADD_FAILURE() << "thin " << i << " sector " << s << ": expected tag " << model[i][s] << ", read "
                              << describe_sectors(buf.data() + s * SECTOR, s, 1);
                break;
            }
        total_mapped += thins[i]->status_info().mapped_sectors / BS;
    }
    EXPECT_EQ(total_mapped, p->status_info().used_data_blocks);
    for (auto& t : thins) t->close();
    p->close();
    expect_image_checks_pass(*mp.md);
}

// ================================================================================================
// 6. Discards against concurrent wipes of the same thin (discard_with_background_io) and
//    reserve/release of the metadata snapshot in between (metadata_snap_stress).
// ================================================================================================

TEST(PoolConcurrency, DiscardsWithBackgroundIoAndMetadataSnaps) {
    constexpr std::uint64_t NBLOCKS = 64;
    const unsigned passes = 6 / (SCALE_DIV > 1 ? 2 : 1);
    memory_pool mp(4096, NBLOCKS + 16);
    mp.opts.commit_period = 15ms;
    auto p = mp.open();
    p->message("create_thin 0");
    auto t = p->activate(0, NBLOCKS * BS);
    failures fails;
    std::atomic<bool> stop{false};
    bool finished = finishes_within(
        [&] {
            std::thread discarder([&] {
                std::mt19937_64 rng(31);
                while (!stop) {
                    std::uint64_t s = rng() % (NBLOCKS * BS);
                    std::uint64_t len = std::min<std::uint64_t>(1 + rng() % (4 * BS), NBLOCKS * BS - s);
                    if (int rc = discard_sync(*t, s, len); rc != 0) fails.add("discard failed: " + std::to_string(rc));
                }
            });
            std::thread snapper([&] {
                while (!stop) {
                    if (int e = pool_errno([&] { p->message("reserve_metadata_snap"); }); e != 0)
                        fails.add("reserve_metadata_snap: errno " + std::to_string(e));
                    p->status_info(true);
                    if (int e = pool_errno([&] { p->message("release_metadata_snap"); }); e != 0)
                        fails.add("release_metadata_snap: errno " + std::to_string(e));
                }
            });
            for (unsigned pass = 1; pass <= passes; ++pass) {
                std::vector<pending_io> q;
                for (std::uint64_t b = 0; b < NBLOCKS; ++b) {
                    auto data = make_pattern(make_tag(0, b, pass), b * BS, BS);
                    q.push_back(pending_io::submit(*t, io_op::write, b * BS, BS, data.data()));
                    if (q.size() >= 8) {
                        if (int rc = q.front().wait(); rc != 0) fails.add("wipe write failed: " + std::to_string(rc));
                        q.erase(q.begin());
                    }
                }
                for (auto& io : q)
                    if (int rc = io.wait(); rc != 0) fails.add("wipe write failed: " + std::to_string(rc));
            }
            stop = true;
            discarder.join();
            snapper.join();
        },
        RUN_DEADLINE);
    if (!finished) fail_hung_test("requests did not complete within the deadline");
    EXPECT_EQ(0u, fails.count()) << fails.text();
    // Every block is zeros or a whole write of some pass.
    std::uint64_t nonzero = 0;
    for (std::uint64_t b = 0; b < NBLOCKS; ++b) {
        std::string detail;
        auto tag = read_block_tag(*t, BS, b, nullptr, &detail);
        ASSERT_TRUE(tag) << "block " << b << ": " << detail;
        if (*tag) {
            EXPECT_TRUE(tag_is_for(*tag, 0, b)) << b;
            ++nonzero;
        }
    }
    EXPECT_EQ(nonzero, t->status_info().mapped_sectors / BS) << "a mapped block holds zeros";
    EXPECT_EQ(t->status_info().mapped_sectors / BS, p->status_info().used_data_blocks);
    t->close();
    p->close();
    expect_image_checks_pass(*mp.md);
}

// ================================================================================================
// 7. Discards (with passdown) of blocks shared with an active snapshot while the snapshot breaks
//    sharing and is read (rule 4: re-check sharing after removal, pin while the discard is in
//    flight; §5.5 net effect: a block another device maps is never passed down).
// ================================================================================================

TEST(PoolConcurrency, DiscardsOfSharedBlocksRacingTheOtherSharer) {
    constexpr std::uint64_t NBLOCKS = 32;
    const unsigned ops = 600 / SCALE_DIV;
    memory_pool mp(4096, 4 * NBLOCKS + 16);
    mp.opts.commit_period = 10ms;
    auto p = mp.open();
    p->message("create_thin 0");
    auto origin = p->activate(0, NBLOCKS * BS);
    for (std::uint64_t b = 0; b < NBLOCKS; ++b) ASSERT_EQ(0, write_block(*origin, BS, b, make_tag(0, b, 1)));
    p->message("create_snap 1 0");
    auto snap = p->activate(1, NBLOCKS * BS);
    // The snapshot's model: its own last write per block (0: still the origin's generation 1).
    std::vector<std::atomic<std::uint64_t>> snap_last(NBLOCKS);
    failures fails;
    std::atomic<bool> stop{false};
    auto snap_value_ok = [&](std::uint64_t b, std::uint64_t tag) {
        return tag == make_tag(0, b, 1) || tag_is_for(tag, 1, b);
    };
    bool finished = finishes_within(
        [&] {
            std::thread discarder([&] {
                std::mt19937_64 rng(11);
                std::uint64_t n = 1;
                while (!stop) {
                    std::uint64_t b = rng() % NBLOCKS, len = 1 + rng() % 4;
                    len = std::min(len, NBLOCKS - b);
                    if (int rc = discard_sync(*origin, b * BS, len * BS); rc != 0)
                        fails.add("origin discard failed: " + std::to_string(rc));
                    if (rng() % 2)
                        if (int rc = write_block(*origin, BS, b, make_tag(0, b, ++n)); rc != 0)
                            fails.add("origin write failed: " + std::to_string(rc));
                }
            });
            std::vector<std::thread> readers;
            for (int r = 0; r < 2; ++r)
                readers.emplace_back([&, r] {
                    std::mt19937_64 rng(20 + r);
                    while (!stop) {
                        std::uint64_t b = rng() % NBLOCKS;
                        std::string detail;
                        int rc = 0;
                        auto tag = read_block_tag(*snap, BS, b, &rc, &detail);
                        if (rc != 0) fails.add("snapshot read failed: " + std::to_string(rc));
                        else if (!tag || !snap_value_ok(b, *tag))
                            fails.add("snapshot block " + std::to_string(b) + " read " +
                                      (tag ? "tag " + std::to_string(*tag) : detail) +
                                      " (zeros or foreign data: a shared block was discarded or reused)");
                    }
                });
            std::mt19937_64 rng(30);
            for (unsigned i = 0; i < ops && fails.count() == 0; ++i) {
                std::uint64_t b = rng() % NBLOCKS;
                if (rng() % 3 == 0) {
                    std::uint64_t tag = make_tag(1, b, i + 1);
                    if (int rc = write_block(*snap, BS, b, tag); rc != 0) fails.add("snapshot write failed");
                    else snap_last[b] = tag;
                } else {
                    auto tag = read_block_tag(*snap, BS, b);
                    std::uint64_t want = snap_last[b] ? snap_last[b].load() : make_tag(0, b, 1);
                    if (tag != std::optional<std::uint64_t>(want))
                        fails.add("snapshot block " + std::to_string(b) + ": expected tag " + std::to_string(want) +
                                  ", read " + (tag ? std::to_string(*tag) : std::string("garbage")));
                }
            }
            stop = true;
            discarder.join();
            for (auto& th : readers) th.join();
        },
        RUN_DEADLINE);
    if (!finished) fail_hung_test("requests did not complete within the deadline");
    EXPECT_EQ(0u, fails.count()) << fails.text();
    for (std::uint64_t b = 0; b < NBLOCKS; ++b) {
        std::uint64_t want = snap_last[b] ? snap_last[b].load() : make_tag(0, b, 1);
        EXPECT_EQ(std::optional<std::uint64_t>(want), read_block_tag(*snap, BS, b)) << "snapshot block " << b;
        auto o = read_block_tag(*origin, BS, b);
        EXPECT_TRUE(o && (*o == 0 || tag_is_for(*o, 0, b))) << "origin block " << b;
    }
    origin->close();
    snap->close();
    p->close();
    expect_image_checks_pass(*mp.md);
}

// ================================================================================================
// 8. delete / activate / create_snap races (rule 10, 11). Last in the file: a hang here ends the
//    process (fail_hung_test), so the tests before it still report.
// ================================================================================================

TEST(PoolConcurrency, DeleteActivateRaces) {
    constexpr unsigned CYCLERS = 4;
    const unsigned cycles = 150 / SCALE_DIV;
    memory_pool mp(4096, 64);
    mp.opts.commit_period = 10ms;
    auto p = mp.open();
    for (unsigned i = 0; i < CYCLERS; ++i) p->message("create_thin " + std::to_string(i));
    p->message("create_thin 10");
    auto steady = p->activate(10, 8 * BS);

    // state[i]: a counter bumped at every hold/release by cycler i; odd while it holds device i.
    std::vector<std::atomic<std::uint64_t>> state(CYCLERS);
    // What each thread is doing, for the report when the run hangs.
    std::vector<std::atomic<const char*>> phase(CYCLERS + 2);
    for (auto& ph : phase) ph = "starting";
    std::vector<std::atomic<unsigned>> cycles_done(CYCLERS);
    std::atomic<unsigned> deleter_rounds{0}, steady_ios{0};
    std::atomic<bool> stop{false};
    std::atomic<unsigned> deletes_ok{0}, snaps_ok{0};
    failures fails;

    bool finished = finishes_within(
        [&] {
            std::vector<std::thread> ts;
            for (unsigned i = 0; i < CYCLERS; ++i)
                ts.emplace_back([&, i] {
                    std::uint64_t last_tag = 0, n = 0;
                    for (unsigned c = 0; c < cycles && fails.count() < 5; ++c) {
                        std::shared_ptr<thin_device> t;
                        bool recreated = false;
                        phase[i] = "activate/create_thin";
                        for (int attempt = 0; !t && attempt < 1000; ++attempt) {
                            try {
                                t = p->activate(i, 4 * BS);
                            } catch (const pool_error& e) {
                                if (e.error_code() != ENODATA) {
                                    fails.add("activate " + std::to_string(i) + ": " + e.what());
                                    return;
                                }
                                try {
                                    p->message("create_thin " + std::to_string(i));
                                    recreated = true;
                                } catch (const pool_error& e2) {
                                    fails.add("create_thin " + std::to_string(i) + ": " + e2.what());
                                    return;
                                }
                            }
                        }
                        if (!t) {
                            fails.add("could not activate " + std::to_string(i));
                            return;
                        }
                        ++state[i];  // odd: held
                        phase[i] = "I/O on its device";
                        std::uint64_t expect = recreated ? 0 : last_tag;
                        int rc = 0;
                        std::string detail;
                        auto got = read_block_tag(*t, BS, 0, &rc, &detail);
                        // Only this cycler creates device i: unless it re-created it, the device
                        // holds its last write.
                        if (rc != 0 || got != std::optional<std::uint64_t>(expect))
                            fails.add("device " + std::to_string(i) + " block 0: expected " + std::to_string(expect) +
                                      (recreated ? " (re-created)" : "") + ", rc " + std::to_string(rc) + " " +
                                      (got ? "tag " + std::to_string(*got) : detail));
                        last_tag = make_tag(i, 0, ++n);
                        if (int w = write_block(*t, BS, 0, last_tag); w != 0)
                            fails.add("write to held device " + std::to_string(i) + " failed: " + std::to_string(w));
                        if (read_block_tag(*t, BS, 0) != std::optional<std::uint64_t>(last_tag))
                            fails.add("device " + std::to_string(i) + " lost a write while held");
                        ++state[i];  // even: released (before close, so a delete racing close may fail EBUSY)
                        phase[i] = "thin_device::close()";
                        t->close();
                        ++cycles_done[i];
                    }
                    phase[i] = "done";
                });
            ts.emplace_back([&] {
                std::mt19937_64 rng(4242);
                while (!stop) {
                    unsigned i = rng() % CYCLERS;
                    std::uint64_t s1 = state[i];
                    phase[CYCLERS] = "message delete";
                    int err = pool_errno([&] { p->message("delete " + std::to_string(i)); });
                    std::uint64_t s2 = state[i];
                    if (err == 0) {
                        ++deletes_ok;
                        if (s1 == s2 && (s1 & 1))
                            fails.add("delete " + std::to_string(i) + " succeeded while the device was held");
                    } else if (err != EBUSY && err != ENODATA) {
                        fails.add("delete " + std::to_string(i) + ": errno " + std::to_string(err));
                    }
                    // Snapshots of possibly active origins, deleted again.
                    phase[CYCLERS] = "message create_snap of a cycler's device";
                    int e2 = pool_errno([&] { p->message("create_snap 20 " + std::to_string(i)); });
                    phase[CYCLERS] = "message delete 20";
                    ++deleter_rounds;
                    if (e2 == 0) {
                        ++snaps_ok;
                        if (int e3 = pool_errno([&] { p->message("delete 20"); }); e3 != 0)
                            fails.add("delete of inactive snapshot 20: errno " + std::to_string(e3));
                    } else if (e2 != ENODATA) {
                        fails.add("create_snap 20 " + std::to_string(i) + ": errno " + std::to_string(e2));
                    }
                }
            });
            // Steady I/O on an unrelated thin throughout.
            ts.emplace_back([&] {
                std::uint64_t n = 0;
                phase[CYCLERS + 1] = "I/O";
                while (!stop) {
                    std::uint64_t b = n % 8;
                    std::uint64_t tag = make_tag(10, b, ++n);
                    if (write_block(*steady, BS, b, tag) != 0) fails.add("steady write failed");
                    if (read_block_tag(*steady, BS, b) != std::optional<std::uint64_t>(tag))
                        fails.add("steady read mismatch");
                    if (n % 16 == 0 && flush_sync(*steady) != 0) fails.add("steady flush failed");
                    ++steady_ios;
                }
            });
            for (unsigned i = 0; i < CYCLERS; ++i) ts[i].join();
            stop = true;
            for (std::size_t i = CYCLERS; i < ts.size(); ++i) ts[i].join();
        },
        RUN_DEADLINE);
    if (!finished) {
        std::ostringstream os;
        os << "the race did not finish within the deadline;";
        for (unsigned i = 0; i < CYCLERS; ++i)
            os << " cycler " << i << ": " << cycles_done[i].load() << " cycles, now in " << phase[i].load() << ";";
        unsigned d0 = deleter_rounds, s0 = steady_ios;
        // Are the other threads stuck too, or still making progress?
        wait_until([&] { return deleter_rounds > d0 + 10 && steady_ios > s0 + 10; }, 5s);
        os << " deleter: " << deleter_rounds.load() - d0 << " more rounds in the last seconds, now in "
           << phase[CYCLERS].load() << "; steady I/O thread: " << steady_ios.load() - s0 << " more writes";
        fail_hung_test(os.str());
    }
    EXPECT_EQ(0u, fails.count()) << fails.text();
    EXPECT_GT(deletes_ok.load(), 0u) << "the deleter never won a race; the test did not test anything";
    EXPECT_GT(snaps_ok.load(), 0u);
    steady->close();
    p->close();
    expect_image_checks_pass(*mp.md);
}

} // namespace
