// Crash tests of the pool runtime (design.md §4: SQLite's power-loss testing; pool.md §5.3, §5.6,
// §7.3 rule 6): a mixed workload (writes of any size, rewrites, snapshots, discards, deletes,
// flushes, transaction ids) runs on a memory metadata engine behind pdata::fault_engine and a
// memory_data_device with a volatile write cache. The machine "loses power" at a seeded point:
//
//   - metadata crash points: the nth metadata write from the start of the workload fails and the
//     machine is dead; the data device crashes at the same moment (its unflushed writes are kept
//     or lost at random);
//   - data crash points: between two operations both devices crash.
//
// The metadata image that survives is what was written up to the last metadata flush plus a
// random subset of the writes after it (a volatile cache). Then: both thin_checks (ours and
// Debian's) accept the image, the pool reopens from it, and every thin reads back, sector by
// sector, either its contents at its last durability point (a completed flush of that thin, or a
// completed message, which commits) or a value written after that point (or zeros, where a discard
// happened after it) - never anything else. Finally the recovered pool takes new writes and
// thin_check accepts the result.
#include "tests/support/pool_support.h"
#include "tests/support/sector_model.h"
#include "tests/support/reference_tools.h"

#include "persistent-data/io/fault_engine.h"
#include "thin/pool/data_device.h"
#include "thin/pool/pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace thinpool_test;
using namespace std::chrono_literals;
using thin::pool::io_op;
using thin::pool::pool_error;
using thin::pool::pool_mode;
using thin::pool::thin_device;

constexpr std::uint32_t BS = 128;
constexpr std::uint64_t THIN_BLOCKS = 16, THIN_SECTORS = THIN_BLOCKS * BS;
constexpr std::uint64_t DATA_BLOCKS = 160;
constexpr pdata::block_address METADATA_BLOCKS = 1024;
constexpr unsigned MAX_DEVICES = 6;
constexpr unsigned WORKLOAD_OPS = 140;

// Forwards to a fault_engine; the first time it finds the fault engine crashed (a write or flush
// was dropped), it runs on_crash - which crashes the data device at the same moment.
class linked_engine : public pdata::io_engine {
public:
    linked_engine(std::shared_ptr<pdata::fault_engine> f, std::function<void()> on_crash)
        : f_(std::move(f)), on_crash_(std::move(on_crash)) {}
    pdata::block_address nr_blocks() override { return f_->nr_blocks(); }
    void read(pdata::block_address b, void* buf) override { f_->read(b, buf); }
    void write(pdata::block_address b, const void* buf) override {
        try {
            f_->write(b, buf);
        } catch (...) {
            check();
            throw;
        }
    }
    void flush() override {
        try {
            f_->flush();
        } catch (...) {
            check();
            throw;
        }
    }
    std::string name() const override { return "linked(" + f_->name() + ")"; }
    bool fired() const { return fired_; }

private:
    void check() {
        if (f_->crashed() && !fired_.exchange(true)) on_crash_();
    }
    std::shared_ptr<pdata::fault_engine> f_;
    std::function<void()> on_crash_;
    std::atomic<bool> fired_{false};
};

// ---- the model -----------------------------------------------------------------------------------

struct thin_model : sector_model {
    thin_model() : sector_model(THIN_BLOCKS, BS) {}
    std::shared_ptr<thin_device> dev;
};

struct model {
    std::map<thin::dev_id, thin_model> thins;
    std::set<thin::dev_id> maybe_created;   // a create was in flight at the crash
    std::set<thin::dev_id> deleted;
    std::set<std::uint64_t> trans_ids{0};   // allowed transaction ids after the crash
    std::uint64_t trans_id = 0;
    thin::dev_id next_id = 3;

    void all_durable() {
        for (auto& [id, t] : thins) t.make_durable();
        trans_ids = {trans_id};
    }
};

// ---- one run -------------------------------------------------------------------------------------

struct crash_plan {
    bool metadata = true;             // crash at a metadata write (else between two operations)
    std::uint64_t metadata_write = 0;  // 1-based, counted from the start of the workload
    unsigned op = 0;                  // data crash point: before this operation
    bool flush_all_first = false;     // at the data crash point, flush every thin first
};

class world {
public:
    explicit world(std::uint64_t seed)
        : seed_(seed), rng_(seed), keep_rng_(seed * 7919 + 1),
          inner_(std::make_shared<pdata::memory_engine>(METADATA_BLOCKS)),
          fault_(std::make_shared<pdata::fault_engine>(inner_)),
          data_(std::make_shared<thin::pool::memory_data_device>(DATA_BLOCKS * BS)) {
        link_ = std::make_shared<linked_engine>(fault_, [this] { crash_data(); });
        opts_ = quiet_options();
        opts_.metadata_engine = link_;
        opts_.data_engine = data_;
        opts_.data_block_size = BS;
        opts_.features.error_if_no_space = true;  // running out would be a test bug: fail fast
    }

    // Formats, creates thins 0-2 and closes; the metadata then is the base image the write log
    // starts from.
    void setup() {
        {
            auto p = open_pool(opts_);
            for (int i = 0; i < 3; ++i) p->message("create_thin " + std::to_string(i));
        }
        for (int i = 0; i < 3; ++i) m_.thins[i];
        base_.resize(METADATA_BLOCKS * pdata::MD_BLOCK_SIZE);
        for (pdata::block_address b = 0; b < METADATA_BLOCKS; ++b)
            std::memcpy(base_.data() + b * pdata::MD_BLOCK_SIZE, inner_->raw(b), pdata::MD_BLOCK_SIZE);
        fault_->clear_log();
        fault_->record(true);
    }

    // Runs the workload until it ends or the machine crashes. Returns the number of metadata
    // writes the workload made (meaningful for a run without a crash).
    std::uint64_t run(const crash_plan* plan, std::string& failure) {
        pool_ = open_pool(opts_);
        for (auto& [id, t] : m_.thins) t.dev = pool_->activate(id, THIN_SECTORS);
        std::uint64_t writes_at_start = fault_->writes();
        if (plan && plan->metadata) fault_->crash_after_writes(plan->metadata_write - 1);
        for (unsigned i = 0; i < WORKLOAD_OPS; ++i) {
            if (plan && !plan->metadata && i == plan->op) {
                if (plan->flush_all_first)
                    for (auto& [id, t] : m_.thins) {
                        int rc = flush_sync(*t.dev);
                        note("flush thin " + std::to_string(id) + " -> " + std::to_string(rc));
                        if (rc != 0) failure = "final flush of thin " + std::to_string(id) + " failed";
                        else t.make_durable();
                    }
                crash_now();
            }
            if (crashed_) break;
            step(i, failure);
            if (!failure.empty()) break;
        }
        std::uint64_t writes = fault_->writes() - writes_at_start;
        // Power is gone (or the run ended): tear the pool down.
        for (auto& [id, t] : m_.thins)
            if (t.dev) {
                auto d = t.dev;
                t.dev.reset();
                if (!finishes_within([d] { d->close(); }, 30s)) {
                    abandon(d);
                    failure += "closing a thin device hung; ";
                }
            }
        auto* raw = pool_.release();
        if (!finishes_within([raw] { delete raw; }, 30s)) failure += "closing the crashed pool hung; ";
        return writes;
    }

    bool crashed() const { return crashed_; }

    // Both devices lose power now.
    void crash_now() {
        fault_->crash_after_writes(0);
        crash_data();
    }

    // Builds the surviving metadata image and reboots the data device.
    std::shared_ptr<pdata::memory_engine> survivor() {
        auto log = fault_->take_log();
        auto img = std::make_shared<pdata::memory_engine>(METADATA_BLOCKS);
        for (pdata::block_address b = 0; b < METADATA_BLOCKS; ++b)
            std::memcpy(img->raw(b), base_.data() + b * pdata::MD_BLOCK_SIZE, pdata::MD_BLOCK_SIZE);
        auto fps = pdata::fault_engine::flush_points(log);
        std::size_t durable = fps.empty() ? 0 : fps.back();
        std::vector<bool> keep(log.size());
        for (std::size_t i = 0; i < log.size(); ++i) keep[i] = i < durable || keep_rng_() % 2 == 0;
        pdata::fault_engine::replay_selected(log, keep, *img);
        log_entries_ = log.size();
        durable_entries_ = durable;
        data_->reboot();
        return img;
    }

    std::string describe_run() const {
        std::ostringstream os;
        os << "seed " << seed_ << ", " << ops_done_ << " operations done, metadata log " << log_entries_
           << " entries (durable prefix " << durable_entries_ << "), last operations:";
        for (auto& s : history_) os << "\n  " << s;
        return os.str();
    }

    model& the_model() { return m_; }
    const thin::pool::pool_options& options() const { return opts_; }
    std::shared_ptr<thin::pool::memory_data_device> data() const { return data_; }

private:
    void crash_data() {
        if (crashed_.exchange(true)) return;
        data_->crash([this](std::size_t) { return keep_rng_() % 2 == 0; });
    }

    void note(const std::string& s) {
        history_.push_back(s);
        if (history_.size() > 12) history_.erase(history_.begin());
    }

    thin_model& random_thin(thin::dev_id* id) {
        auto it = m_.thins.begin();
        std::advance(it, rng_() % m_.thins.size());
        *id = it->first;
        return it->second;
    }

    // One operation; a failure without a crash is a test failure.
    void step(unsigned i, std::string& failure) {
        ++ops_done_;
        unsigned r = rng_() % 100;
        thin::dev_id id;
        thin_model& t = random_thin(&id);
        auto check_rc = [&](int rc, const std::string& what) {
            note(what + " -> " + std::to_string(rc));
            if (rc != 0 && !crashed_) failure = "op " + std::to_string(i) + ": " + what + " failed with " +
                                                std::to_string(rc) + " before any crash";
        };
        if (r < 50) {
            auto [start, len] = random_write_extent(rng_, THIN_SECTORS, BS);
            std::uint64_t tag = ++tag_;
            std::vector<std::uint8_t> data(len * SECTOR);
            fill_sectors(data.data(), tag, start, len);
            bool fua = rng_() % 8 == 0;
            for (std::uint64_t s = start; s < start + len; ++s) t.post[s].push_back(tag);
            int rc = write_sync(*t.dev, start, data, fua);
            check_rc(rc, "write thin " + std::to_string(id) + " [" + std::to_string(start) + "+" + std::to_string(len) +
                             ")" + (fua ? " fua" : "") + " tag " + std::to_string(tag));
            if (rc == 0) {
                for (std::uint64_t s = start; s < start + len; ++s) t.current[s] = tag;
                if (fua) {
                    // A FUA write is durable when acknowledged (data flushed, mapping committed),
                    // but only for its own sectors; keep it simple: its sectors' durable value.
                    for (std::uint64_t s = start; s < start + len; ++s) t.durable[s] = tag;
                }
            }
        } else if (r < 62) {
            std::uint64_t start = rng_() % THIN_SECTORS;
            std::uint64_t len = std::min<std::uint64_t>(1 + rng_() % (3 * BS), THIN_SECTORS - start);
            std::uint64_t b0 = (start + BS - 1) / BS, b1 = (start + len) / BS;
            for (std::uint64_t b = b0; b < b1; ++b) t.zero_ok[b] = true;
            int rc = discard_sync(*t.dev, start, len);
            check_rc(rc, "discard thin " + std::to_string(id) + " [" + std::to_string(start) + "+" +
                             std::to_string(len) + ")");
            if (rc == 0)
                for (std::uint64_t b = b0; b < b1; ++b) std::fill(t.current.begin() + b * BS, t.current.begin() + (b + 1) * BS, 0);
        } else if (r < 80) {
            int rc = flush_sync(*t.dev);
            check_rc(rc, "flush thin " + std::to_string(id));
            if (rc == 0) t.make_durable();
        } else if (r < 88) {
            if (m_.thins.size() >= MAX_DEVICES) {
                delete_device(i, failure);
                return;
            }
            thin::dev_id s = m_.next_id++;
            int err = message("create_snap " + std::to_string(s) + " " + std::to_string(id));
            check_rc(err ? -err : 0, "create_snap " + std::to_string(s) + " " + std::to_string(id));
            if (err == 0) {
                m_.all_durable();
                thin_model snap;
                snap.current = m_.thins[id].current;
                snap.make_durable();
                snap.dev = pool_->activate(s, THIN_SECTORS);
                m_.thins.emplace(s, std::move(snap));
            } else {
                m_.maybe_created.insert(s);
            }
        } else if (r < 93) {
            delete_device(i, failure);
        } else if (r < 96) {
            std::uint64_t next = m_.trans_id + 1 + rng_() % 5;
            int err = message("set_transaction_id " + std::to_string(m_.trans_id) + " " + std::to_string(next));
            check_rc(err ? -err : 0, "set_transaction_id -> " + std::to_string(next));
            if (err == 0) {
                m_.trans_id = next;
                m_.all_durable();
            } else {
                m_.trans_ids.insert(next);
            }
        } else {
            thin::dev_id n = m_.next_id++;
            if (m_.thins.size() >= MAX_DEVICES) {
                delete_device(i, failure);
                return;
            }
            int err = message("create_thin " + std::to_string(n));
            check_rc(err ? -err : 0, "create_thin " + std::to_string(n));
            if (err == 0) {
                m_.all_durable();
                thin_model fresh;
                fresh.dev = pool_->activate(n, THIN_SECTORS);
                m_.thins.emplace(n, std::move(fresh));
            } else {
                m_.maybe_created.insert(n);
            }
        }
    }

    void delete_device(unsigned i, std::string& failure) {
        if (m_.thins.size() <= 1) return;
        thin::dev_id id;
        thin_model& t = random_thin(&id);
        t.dev->close();
        t.dev.reset();
        int err = message("delete " + std::to_string(id));
        note("delete " + std::to_string(id) + " -> " + std::to_string(err));
        if (err == 0) {
            m_.thins.erase(id);
            m_.deleted.insert(id);
            m_.all_durable();
        } else if (crashed_) {
            t.maybe_deleted = true;
        } else {
            failure = "op " + std::to_string(i) + ": delete " + std::to_string(id) + " failed with errno " +
                      std::to_string(err) + " before any crash";
        }
    }

    int message(const std::string& msg) {
        return pool_errno([&] { pool_->message(msg); });
    }

    std::uint64_t seed_;
    std::mt19937_64 rng_, keep_rng_;
    std::shared_ptr<pdata::memory_engine> inner_;
    std::shared_ptr<pdata::fault_engine> fault_;
    std::shared_ptr<linked_engine> link_;
    std::shared_ptr<thin::pool::memory_data_device> data_;
    thin::pool::pool_options opts_;
    pool_ptr pool_;
    model m_;
    std::vector<std::uint8_t> base_;
    std::atomic<bool> crashed_{false};
    std::uint64_t tag_ = 0;
    unsigned ops_done_ = 0;
    std::size_t log_entries_ = 0, durable_entries_ = 0;
    std::vector<std::string> history_;
};

// Checks the recovered pool against the model, then uses it.
void verify_recovery(world& w, const std::shared_ptr<pdata::memory_engine>& img, bool check_after_use = true) {
    auto& m = w.the_model();
    scratch_dir dir;
    const std::string file = dir.file("metadata");
    save_image(*img, file);
    auto ours = run_ours("thin_check", {file});
    EXPECT_EQ(0, ours.exit_code) << "our thin_check rejects the crashed metadata: " << describe(ours) << "\n"
                                 << w.describe_run();
    if (reference_tools_available()) {
        auto theirs = run_theirs("thin_check", {file});
        EXPECT_EQ(0, theirs.exit_code) << "Debian's thin_check rejects the crashed metadata: " << describe(theirs)
                                       << "\n"
                                       << w.describe_run();
    }

    auto o = w.options();
    o.metadata_engine = img;
    pool_ptr p;
    try {
        p = open_pool(o);
    } catch (const std::exception& e) {
        FAIL() << "the pool does not open from the crashed images: " << e.what() << "\n" << w.describe_run();
    }
    auto st = p->status_info();
    EXPECT_TRUE(m.trans_ids.count(st.transaction_id))
        << "transaction id " << st.transaction_id << " after the crash; expected " << m.trans_id << "\n"
        << w.describe_run();
    EXPECT_FALSE(st.needs_check);

    for (auto id : m.deleted)
        EXPECT_EQ(ENODATA, pool_errno([&] { p->activate(id, THIN_SECTORS); }))
            << "device " << id << " was deleted by a completed message\n"
            << w.describe_run();

    std::vector<std::pair<thin::dev_id, std::shared_ptr<thin_device>>> alive;
    for (auto& [id, t] : m.thins) {
        std::shared_ptr<thin_device> dev;
        int err = pool_errno([&] { dev = p->activate(id, THIN_SECTORS); });
        if (err == ENODATA && t.maybe_deleted) continue;
        ASSERT_EQ(0, err) << "device " << id << " does not activate after the crash\n" << w.describe_run();
        std::vector<std::uint8_t> buf;
        ASSERT_EQ(0, read_sync(*dev, 0, THIN_SECTORS, buf));
        unsigned bad = 0;
        for (std::uint64_t s = 0; s < THIN_SECTORS && bad < 3; ++s) {
            auto got = sector_tag(buf.data() + s * SECTOR, s);
            if (got && t.allowed(s, *got)) continue;
            ++bad;
            std::ostringstream allowed;
            allowed << "durable " << t.durable[s];
            for (auto v : t.post[s]) allowed << ", " << v;
            if (t.zero_ok[s / BS]) allowed << ", zeros";
            ADD_FAILURE() << "device " << id << " sector " << s << " (block " << s / BS << ") reads "
                          << describe_sectors(buf.data() + s * SECTOR, s, 1) << "; allowed: " << allowed.str()
                          << "\n"
                          << w.describe_run();
        }
        alive.emplace_back(id, dev);
    }
    // The recovered pool works: rewrite everything, flush, read back.
    for (auto& [id, dev] : alive) {
        for (std::uint64_t b = 0; b < THIN_BLOCKS; ++b)
            ASSERT_EQ(0, write_block(*dev, BS, b, 0xc0000000ull + id * 1000 + b)) << "device " << id << " block " << b;
        ASSERT_EQ(0, flush_sync(*dev));
        for (std::uint64_t b = 0; b < THIN_BLOCKS; ++b)
            EXPECT_EQ(std::optional<std::uint64_t>(0xc0000000ull + id * 1000 + b), read_block_tag(*dev, BS, b));
        dev->close();
    }
    p.reset();
    if (!check_after_use) return;
    save_image(*img, file);
    auto after = run_ours("thin_check", {file});
    EXPECT_EQ(0, after.exit_code) << "thin_check after using the recovered pool: " << describe(after) << "\n"
                                  << w.describe_run();
}

// ---- the cases -----------------------------------------------------------------------------------

constexpr unsigned METADATA_POINTS = 30, DATA_POINTS = 30;

class MetadataCrash : public ::testing::TestWithParam<unsigned> {};

TEST_P(MetadataCrash, RecoversEverythingFlushed) {
    const std::uint64_t seed = 100 + GetParam();
    // A dry run with the same seed counts the workload's metadata writes.
    std::uint64_t total = 0;
    {
        world dry(seed);
        dry.setup();
        std::string failure;
        total = dry.run(nullptr, failure);
        ASSERT_TRUE(failure.empty()) << failure << "\n" << dry.describe_run();
        ASSERT_GT(total, 0u);
    }
    world w(seed);
    w.setup();
    crash_plan plan;
    plan.metadata = true;
    std::mt19937_64 rng(seed * 31);
    plan.metadata_write = 1 + rng() % total;
    std::string failure;
    w.run(&plan, failure);
    ASSERT_TRUE(failure.empty()) << failure << "\n" << w.describe_run();
    if (!w.crashed()) {
        // Timing made this run write less than the dry run: crash after it instead.
        w.crash_now();
    }
    auto img = w.survivor();
    verify_recovery(w, img, GetParam() % 4 == 0);
}

INSTANTIATE_TEST_SUITE_P(PoolCrash, MetadataCrash, ::testing::Range(0u, METADATA_POINTS));

class DataCrash : public ::testing::TestWithParam<unsigned> {};

TEST_P(DataCrash, RecoversEverythingFlushed) {
    const std::uint64_t seed = 500 + GetParam();
    world w(seed);
    w.setup();
    crash_plan plan;
    plan.metadata = false;
    std::mt19937_64 rng(seed * 17);
    plan.op = 1 + rng() % (WORKLOAD_OPS - 1);
    std::string failure;
    w.run(&plan, failure);
    ASSERT_TRUE(failure.empty()) << failure << "\n" << w.describe_run();
    ASSERT_TRUE(w.crashed());
    auto img = w.survivor();
    verify_recovery(w, img, GetParam() % 4 == 0);
}

INSTANTIATE_TEST_SUITE_P(PoolCrash, DataCrash, ::testing::Range(0u, DATA_POINTS));

// A crash right after every thin was flushed loses nothing at all: the model's allowed values are
// then exactly the acknowledged contents.
TEST(PoolCrash, CrashRightAfterFlushingEverythingLosesNothing) {
    for (std::uint64_t seed : {4242, 4243, 4244}) {
        SCOPED_TRACE("seed " + std::to_string(seed));
        world w(seed);
        w.setup();
        crash_plan plan;
        plan.metadata = false;
        plan.op = WORKLOAD_OPS / 2 + seed % 40;
        plan.flush_all_first = true;
        std::string failure;
        w.run(&plan, failure);
        ASSERT_TRUE(failure.empty()) << failure << "\n" << w.describe_run();
        for (auto& [id, t] : w.the_model().thins)
            for (std::uint64_t s = 0; s < THIN_SECTORS; ++s) ASSERT_TRUE(t.post[s].empty());
        auto img = w.survivor();
        verify_recovery(w, img);
    }
}

// ---- targeted crash scenarios ----------------------------------------------------------------------

std::uint64_t tag_of(std::uint64_t dev, std::uint64_t vblock) { return ((dev + 1) << 20) | (vblock + 1); }

// Fills the whole data device with a pattern no thin ever writes (as a reused disk would hold):
// exposed stale data then reads back as garbage, not as zeros.
void fill_with_junk(thin::pool::memory_data_device& d, std::uint64_t blocks) {
    for (std::uint64_t b = 0; b < blocks; ++b) d.set_contents(b * BS, make_pattern(0xdead0000 + b, 0, BS));
}

// Closes a pool whose devices crashed, then reboots both devices.
void power_cycle(pool_ptr& p, std::vector<std::shared_ptr<thin_device>>& devs, memory_pool& mp) {
    auto* raw = p.release();
    auto list = devs;
    devs.clear();
    if (!finishes_within(
            [raw, list] {
                for (auto& d : list) d->close();
                delete raw;
            },
            30s))
        fail_hung_test("closing a crashed pool hung");
    mp.fault->reboot();
    mp.data->reboot();
}

// pool.md §7.3 rule 6: a commit triggered by one thin's flush publishes every thin's new
// mappings, so it must make their data durable first.
TEST(PoolCrashRules, CommitFlushesDataOfEveryThinFirst) {
    memory_pool mp(1024, 16);
    fill_with_junk(*mp.data, 16);
    auto p = mp.open();
    p->message("create_thin 0");
    p->message("create_thin 1");
    std::vector<std::shared_ptr<thin_device>> devs{p->activate(0, 4 * BS), p->activate(1, 4 * BS)};
    ASSERT_EQ(0, write_block(*devs[0], BS, 0, 0xa));           // provisions; data still volatile
    ASSERT_EQ(0, write_sync(*devs[0], BS + 8, make_pattern(0xb, BS + 8, 8)));  // provisions with zeroing
    ASSERT_EQ(0, write_block(*devs[1], BS, 0, 0xc));
    ASSERT_EQ(0, flush_sync(*devs[1]));  // commits the whole pool, thin 0's mappings included
    mp.fault->crash_after_writes(0);
    mp.data->crash();  // every write since the last data flush is lost
    power_cycle(p, devs, mp);

    auto p2 = mp.open();
    auto t0 = p2->activate(0, 4 * BS);
    auto t1 = p2->activate(1, 4 * BS);
    std::string detail;
    EXPECT_EQ(std::optional<std::uint64_t>(0xc), read_block_tag(*t1, BS, 0, nullptr, &detail)) << detail;
    EXPECT_EQ(std::optional<std::uint64_t>(0xa), read_block_tag(*t0, BS, 0, nullptr, &detail))
        << "thin 0's committed mapping points at data that never reached the disk: " << detail;
    std::vector<std::uint8_t> buf;
    ASSERT_EQ(0, read_sync(*t0, BS, BS, buf));
    for (std::uint64_t i = 0; i < BS; ++i)
        ASSERT_EQ(std::optional<std::uint64_t>(i >= 8 && i < 16 ? 0xb : 0), sector_tag(buf.data() + i * SECTOR, BS + i))
            << "sector " << i << " of block 1 (zeroing and the partial write must be durable before the commit): "
            << describe_sectors(buf.data(), BS, BS);
}

// pool.md §5.7, §7.3 rule 5: a block freed in the open transaction is not reused before the
// commit - the committed metadata still maps it.
TEST(PoolCrashRules, BlocksFreedInATransactionAreNotReusedBeforeCommit) {
    memory_pool mp(1024, 8);
    mp.opts.features.no_discard_passdown = true;  // the freed block keeps its contents
    auto p = mp.open();
    p->message("create_thin 0");
    p->message("create_thin 1");
    std::vector<std::shared_ptr<thin_device>> devs{p->activate(0, 8 * BS), p->activate(1, 8 * BS)};
    for (std::uint64_t b = 0; b < 4; ++b) ASSERT_EQ(0, write_block(*devs[0], BS, b, tag_of(0, b)));
    ASSERT_EQ(0, flush_sync(*devs[0]));
    const std::uint64_t commits = p->nr_commits();
    ASSERT_EQ(0, discard_sync(*devs[0], 0, 4 * BS));  // frees 4 blocks in the open transaction
    // Four free blocks remain that were free at the last commit; thin 1 must get those.
    for (std::uint64_t b = 0; b < 4; ++b) ASSERT_EQ(0, write_block(*devs[1], BS, b, tag_of(1, b)));
    // (Had the pool committed meanwhile, the discard would be durable and reuse legitimate.)
    const bool committed = p->nr_commits() != commits;
    mp.fault->crash_after_writes(0);
    mp.data->crash([](std::size_t) { return true; });  // every data write survives
    power_cycle(p, devs, mp);

    auto p2 = mp.open();
    auto t0 = p2->activate(0, 8 * BS);
    for (std::uint64_t b = 0; b < 4; ++b) {
        std::string detail;
        EXPECT_EQ(std::optional<std::uint64_t>(committed ? 0 : tag_of(0, b)), read_block_tag(*t0, BS, b, nullptr, &detail))
            << "block " << b << ": the discard was not committed, so the committed mapping's data block must "
            << "not have been handed to thin 1: " << detail;
    }
}

// Every crash point inside one commit: the metadata image is the base plus a prefix of the
// commit's writes (plus, after the prefix's last flush, a random subset of the rest).
TEST(PoolCrashRules, EveryCrashPointOfOneCommit) {
    memory_pool mp(1024, 64);
    std::vector<std::uint8_t> base;
    {
        auto p = mp.open();
        for (int i = 0; i < 3; ++i) p->message("create_thin " + std::to_string(i));
        auto t = p->activate(0, 16 * BS);
        for (std::uint64_t b = 0; b < 8; ++b) ASSERT_EQ(0, write_block(*t, BS, b, tag_of(0, b)));
        ASSERT_EQ(0, flush_sync(*t));
        t->close();
    }
    base.resize(1024 * pdata::MD_BLOCK_SIZE);
    std::memcpy(base.data(), mp.md->raw(0), base.size());
    mp.fault->clear_log();
    mp.fault->record(true);
    {
        auto p = mp.open();
        std::vector<std::shared_ptr<thin_device>> devs;
        for (int i = 0; i < 3; ++i) devs.push_back(p->activate(i, 16 * BS));
        for (std::uint64_t b = 0; b < 16; ++b) ASSERT_EQ(0, write_block(*devs[1], BS, b, tag_of(1, b)));
        ASSERT_EQ(0, discard_sync(*devs[0], 2 * BS, 3 * BS));
        for (std::uint64_t b = 0; b < 16; b += 5) ASSERT_EQ(0, write_block(*devs[2], BS, b, tag_of(2, b)));
        ASSERT_EQ(0, flush_sync(*devs[1]));
        for (auto& d : devs) d->close();
    }
    mp.fault->record(false);
    auto log = mp.fault->take_log();
    std::vector<std::size_t> writes;
    for (std::size_t i = 0; i < log.size(); ++i)
        if (!log[i].is_flush()) writes.push_back(i);
    ASSERT_GE(writes.size(), 3u) << "the commit wrote almost nothing";
    std::mt19937_64 rng(99);
    for (std::size_t k = 0; k <= writes.size(); ++k) {
        SCOPED_TRACE("crash after " + std::to_string(k) + " of " + std::to_string(writes.size()) + " metadata writes");
        std::size_t upto = k == writes.size() ? log.size() : writes[k];  // entries before the (k+1)th write
        std::vector<std::size_t> prefix_fps;
        for (std::size_t i = 0; i < upto; ++i)
            if (log[i].is_flush()) prefix_fps.push_back(i + 1);
        std::size_t durable = prefix_fps.empty() ? 0 : prefix_fps.back();
        std::vector<bool> keep(log.size(), false);
        for (std::size_t i = 0; i < upto; ++i) keep[i] = i < durable || rng() % 2 == 0;
        auto img = std::make_shared<pdata::memory_engine>(1024);
        std::memcpy(img->raw(0), base.data(), base.size());
        pdata::fault_engine::replay_selected(log, keep, *img);
        if (k % 3 == 0 || k == writes.size()) {
            scratch_dir d;
            save_image(*img, d.file("metadata"));
            auto r = run_ours("thin_check", {d.file("metadata")});
            EXPECT_EQ(0, r.exit_code) << describe(r);
            if (reference_tools_available() && k % 6 == 0) {
                auto r2 = run_theirs("thin_check", {d.file("metadata")});
                EXPECT_EQ(0, r2.exit_code) << describe(r2);
            }
        }
        auto o = mp.opts;
        o.metadata_engine = img;
        auto p = open_pool(o);
        // Either the old state or the new one, per device, never a mix inside the old state.
        auto t0 = p->activate(0, 16 * BS);
        auto t1 = p->activate(1, 16 * BS);
        auto t2 = p->activate(2, 16 * BS);
        bool new_state = read_block_tag(*t1, BS, 0) == std::optional<std::uint64_t>(tag_of(1, 0));
        for (std::uint64_t b = 0; b < 16; ++b) {
            auto want1 = new_state ? tag_of(1, b) : 0;
            EXPECT_EQ(std::optional<std::uint64_t>(want1), read_block_tag(*t1, BS, b)) << "thin 1 block " << b;
            // The discarded blocks 2-4 were passed down before the commit: in the old state they
            // are still mapped but their contents may be gone (zeros), as after the kernel's.
            auto got0 = read_block_tag(*t0, BS, b);
            if (b >= 2 && b < 5 && !new_state) {
                EXPECT_TRUE(got0 == std::optional<std::uint64_t>(tag_of(0, b)) || got0 == std::optional<std::uint64_t>(0))
                    << "thin 0 block " << b;
            } else {
                std::uint64_t want0 = b < 8 && !(b >= 2 && b < 5) ? tag_of(0, b) : 0;
                EXPECT_EQ(std::optional<std::uint64_t>(want0), got0) << "thin 0 block " << b;
            }
            std::uint64_t want2 = new_state && b % 5 == 0 ? tag_of(2, b) : 0;
            EXPECT_EQ(std::optional<std::uint64_t>(want2), read_block_tag(*t2, BS, b)) << "thin 2 block " << b;
        }
        if (k == writes.size()) {
            EXPECT_TRUE(new_state) << "the complete commit was lost";
        }
        t0->close();
        t1->close();
        t2->close();
        p->close();
        if (HasFailure()) break;
    }
}

} // namespace
