// Write-log crash replay of the pool runtime (issue 6; design.md §4; pool.md §5.3, §5.6, §7.3
// rule 6). Where crash_test.cc re-runs a workload per crash point, this runs ONE long mixed
// workload (writes of any size, rewrites, FUA, discards, snapshots of snapshots, deletes,
// transaction ids, metadata snapshots, data and metadata growth, flushes) while both devices log
// every write and flush on one timeline (tests/support/crash_log.h), and the workload logs what
// each thin must read back. Then it replays crashes at many points of that timeline:
//
//   - flush points: just after each metadata flush (sampled when there are more than two thirds
//     of the budget), every metadata write before it durable;
//   - torn points: anywhere else (half of them inside a commit, just after a metadata write), with
//     a random subset of the metadata writes since the last flush - later ones kept while earlier
//     ones are lost.
//
// At every point the data device holds what the completed data flushes covered plus a random
// subset of the later data writes, completed or in flight. Checks per point: our thin_check
// accepts the metadata with nothing leaked (Debian's too, on every 10th point), the pool opens,
// the transaction id is one the model allows, deleted thins stay deleted, nothing exists that was
// never created, and every thin reads back, sector by sector, its contents at its last durability
// point or a value written after it (zeros where a discard came after it) - never anything else.
// Every 10th point the recovered pool also takes new writes and thin_check accepts the result.
//
// THINPOOL_CRASH_POINTS (default 600), THINPOOL_CRASH_SEED (default 1) and THINPOOL_CRASH_OPS
// (default 480) size the run; scripts/crash-soak runs the long version.
#include "tests/support/crash_log.h"
#include "tests/support/pool_support.h"
#include "tests/support/sector_model.h"
#include "tests/support/reference_tools.h"

#include "persistent-data/io/fault_engine.h"
#include "thin/pool/data_device.h"
#include "thin/pool/pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using namespace thinpool_test;
using thin::pool::thin_device;

constexpr std::uint32_t BS = 128;
constexpr std::uint64_t THIN_BLOCKS = 16, THIN_SECTORS = THIN_BLOCKS * BS;
constexpr std::uint64_t DATA_BLOCKS = 160, DATA_BLOCKS_MAX = 256, DATA_GROWTH = 16;
// Small metadata devices keep the per-point image copies and tool runs cheap.
constexpr pdata::block_address MD_BLOCKS = 256, MD_BLOCKS_MAX = 512, MD_GROWTH = 64;
constexpr unsigned MAX_DEVICES = 7;
constexpr unsigned SAMPLE_EVERY = 10;  // Debian's thin_check and reuse of the recovered pool

// ---- the model -----------------------------------------------------------------------------------

struct thin_model : sector_model {
    thin_model() : sector_model(THIN_BLOCKS, BS) {}
};

struct model {
    std::map<thin::dev_id, thin_model> thins;
    // Creations in progress: what the device may read if it exists after the crash (a snapshot:
    // anything its origin may read; a new thin: zeros).
    std::map<thin::dev_id, thin_model> maybe_created;
    std::set<thin::dev_id> deleted;
    std::set<std::uint64_t> trans_ids{0};  // allowed after a crash
    std::uint64_t trans_id = 0;

    // A completed message commits everything.
    void all_durable() {
        for (auto& [id, t] : thins) t.make_durable();
        trans_ids = {trans_id};
    }
};

// A change of the model that holds for crash points after timeline position `from`.
struct model_change {
    std::size_t from;
    std::function<void(model&)> apply;
};

// ---- the recorded workload -------------------------------------------------------------------------

struct recording {
    std::vector<crash_event> events;
    pdata::write_log md_log;
    std::vector<std::uint8_t> md_base;
    std::vector<recorded_data_write> data_writes;
    std::vector<std::size_t> flush_coverage;
    std::vector<model_change> changes;
    std::vector<std::string> op_names;  // by operation number, for failure messages
    std::vector<std::size_t> op_starts; // timeline position of each operation's start
};

class workload {
public:
    workload(std::uint64_t seed, unsigned ops) : seed_(seed), ops_(ops), rng_(seed) {}

    // Runs everything; returns an empty string or what failed (before any crash, nothing may).
    std::string run(recording& out) {
        setup(out);
        std::string failure = run_ops();
        for (auto& [id, d] : devs_) d->close();
        devs_.clear();
        try {
            pool_->close();
        } catch (const std::exception& e) {
            failure += std::string("closing the pool: ") + e.what();
        }
        pool_.reset();
        data_rec_->drain();
        out.events = timeline_.events();
        out.md_log = fault_->take_log();
        out.data_writes = data_rec_->writes();
        out.flush_coverage = data_rec_->flush_coverage();
        out.changes = std::move(changes_);
        out.op_names = std::move(op_names_);
        out.op_starts = std::move(op_starts_);
        return failure;
    }

private:
    thin::pool::pool_options options(std::shared_ptr<pdata::io_engine> md, std::shared_ptr<thin::pool::data_device> d) {
        auto o = quiet_options();
        o.metadata_engine = std::move(md);
        o.data_engine = std::move(d);
        o.data_block_size = BS;
        o.features.error_if_no_space = true;  // running out would be a test bug: fail fast
        return o;
    }

    // Formats and creates thins 0-2 through throwaway recorders; the metadata then is the base
    // image the log starts from (no data has been written yet).
    void setup(recording& out) {
        md_ = std::make_shared<pdata::memory_engine>(MD_BLOCKS_MAX);
        data_ = std::make_shared<thin::pool::memory_data_device>(DATA_BLOCKS_MAX * BS, true, seed_);
        {
            crash_timeline scratch;
            auto md = std::make_shared<recording_metadata_engine>(std::make_shared<pdata::fault_engine>(md_), scratch,
                                                                  MD_BLOCKS);
            auto d = std::make_shared<recording_data_device>(data_, scratch, DATA_BLOCKS * BS);
            auto p = open_pool(options(md, d));
            for (int i = 0; i < 3; ++i) p->message("create_thin " + std::to_string(i));
        }
        out.md_base.assign(md_->raw(0), md_->raw(0) + MD_BLOCKS_MAX * pdata::MD_BLOCK_SIZE);
        fault_ = std::make_shared<pdata::fault_engine>(md_);
        md_rec_ = std::make_shared<recording_metadata_engine>(fault_, timeline_, MD_BLOCKS);
        data_rec_ = std::make_shared<recording_data_device>(data_, timeline_, DATA_BLOCKS * BS);
        pool_ = open_pool(options(md_rec_, data_rec_));
        for (thin::dev_id id = 0; id < 3; ++id) {
            live_.thins[id];
            devs_[id] = pool_->activate(id, THIN_SECTORS);
        }
    }

    std::string run_ops() {
        for (unsigned i = 0; i < ops_; ++i) {
            std::string f = step();
            if (!f.empty()) return "operation " + std::to_string(i) + " (" + op_names_.back() + "): " + f;
        }
        return {};
    }

    // Records a model change at the current timeline position and applies it to the live model.
    void change(std::function<void(model&)> fn) {
        std::size_t at = timeline_.mark(op_names_.size());
        fn(live_);
        changes_.push_back({at + 1, std::move(fn)});
    }

    void begin(const std::string& name) {
        op_names_.push_back(name);
        op_starts_.push_back(timeline_.mark(op_names_.size() - 1));
    }

    thin::dev_id random_thin() {
        auto it = live_.thins.begin();
        std::advance(it, rng_() % live_.thins.size());
        return it->first;
    }

    int message(const std::string& msg) {
        return pool_errno([&] { pool_->message(msg); });
    }

    static std::string rc_failure(int rc) { return rc == 0 ? std::string() : "failed with " + std::to_string(rc); }

    std::string step() {
        unsigned r = rng_() % 100;
        thin::dev_id id = random_thin();
        if (r < 46) return write(id);
        if (r < 56) return discard(id);
        if (r < 72) return flush(id);
        if (r < 80) return live_.thins.size() >= MAX_DEVICES ? delete_thin() : snapshot(id);
        if (r < 85) return delete_thin();
        if (r < 88) return live_.thins.size() >= MAX_DEVICES ? delete_thin() : create_thin();
        if (r < 91) return set_transaction_id();
        if (r < 95) return metadata_snap();
        if (r < 98) return grow_data();
        return grow_metadata();
    }

    std::string write(thin::dev_id id) {
        auto [start, len] = random_write_extent(rng_, THIN_SECTORS, BS);
        std::uint64_t tag = ++tag_;
        bool fua = rng_() % 8 == 0;
        begin("write thin " + std::to_string(id) + " [" + std::to_string(start) + "+" + std::to_string(len) + ")" +
              (fua ? " fua" : "") + " tag " + std::to_string(tag));
        change([=](model& m) {
            for (std::uint64_t s = start; s < start + len; ++s) m.thins[id].post[s].push_back(tag);
        });
        int rc = write_sync(*devs_[id], start, make_pattern(tag, start, len), fua);
        if (rc != 0) return rc_failure(rc);
        change([=](model& m) {
            auto& t = m.thins[id];
            for (std::uint64_t s = start; s < start + len; ++s) {
                t.current[s] = tag;
                if (fua) {
                    // Acknowledged FUA: these sectors hold the tag durably; nothing older can
                    // come back.
                    t.durable[s] = tag;
                    t.post[s].clear();
                }
            }
        });
        return {};
    }

    std::string discard(thin::dev_id id) {
        std::uint64_t start = rng_() % THIN_SECTORS;
        std::uint64_t len = std::min<std::uint64_t>(1 + rng_() % (3 * BS), THIN_SECTORS - start);
        std::uint64_t b0 = (start + BS - 1) / BS, b1 = (start + len) / BS;
        begin("discard thin " + std::to_string(id) + " [" + std::to_string(start) + "+" + std::to_string(len) + ")");
        change([=](model& m) {
            for (std::uint64_t b = b0; b < b1; ++b) m.thins[id].zero_ok[b] = true;
        });
        int rc = discard_sync(*devs_[id], start, len);
        if (rc != 0) return rc_failure(rc);
        change([=](model& m) {
            auto& c = m.thins[id].current;
            for (std::uint64_t b = b0; b < b1; ++b) std::fill(c.begin() + b * BS, c.begin() + (b + 1) * BS, 0);
        });
        return {};
    }

    std::string flush(thin::dev_id id) {
        begin("flush thin " + std::to_string(id));
        int rc = flush_sync(*devs_[id]);
        if (rc != 0) return rc_failure(rc);
        change([=](model& m) { m.thins[id].make_durable(); });
        return {};
    }

    std::string snapshot(thin::dev_id origin) {
        thin::dev_id s = next_id_++;
        begin("create_snap " + std::to_string(s) + " " + std::to_string(origin));
        change([=](model& m) { m.maybe_created[s] = m.thins[origin]; });
        int err = message("create_snap " + std::to_string(s) + " " + std::to_string(origin));
        if (err) return rc_failure(-err);
        change([=](model& m) {
            m.maybe_created.erase(s);
            thin_model snap;
            snap.current = m.thins[origin].current;
            m.thins[s] = std::move(snap);
            m.all_durable();
        });
        devs_[s] = pool_->activate(s, THIN_SECTORS);
        return {};
    }

    std::string create_thin() {
        thin::dev_id n = next_id_++;
        begin("create_thin " + std::to_string(n));
        change([=](model& m) { m.maybe_created[n] = thin_model{}; });
        int err = message("create_thin " + std::to_string(n));
        if (err) return rc_failure(-err);
        change([=](model& m) {
            m.maybe_created.erase(n);
            m.thins[n];
            m.all_durable();
        });
        devs_[n] = pool_->activate(n, THIN_SECTORS);
        return {};
    }

    std::string delete_thin() {
        if (live_.thins.size() <= 1) return {};
        thin::dev_id id = random_thin();
        begin("delete " + std::to_string(id));
        devs_[id]->close();
        devs_.erase(id);
        change([=](model& m) { m.thins[id].maybe_deleted = true; });
        int err = message("delete " + std::to_string(id));
        if (err) return rc_failure(-err);
        change([=](model& m) {
            m.thins.erase(id);
            m.deleted.insert(id);
            m.all_durable();
        });
        return {};
    }

    std::string set_transaction_id() {
        std::uint64_t next = live_.trans_id + 1 + rng_() % 5, cur = live_.trans_id;
        begin("set_transaction_id " + std::to_string(cur) + " " + std::to_string(next));
        change([=](model& m) { m.trans_ids.insert(next); });
        int err = message("set_transaction_id " + std::to_string(cur) + " " + std::to_string(next));
        if (err) return rc_failure(-err);
        change([=](model& m) {
            m.trans_id = next;
            m.all_durable();
        });
        return {};
    }

    std::string metadata_snap() {
        const char* msg = held_ ? "release_metadata_snap" : "reserve_metadata_snap";
        begin(msg);
        int err = message(msg);
        if (err) return rc_failure(-err);
        held_ = !held_;
        change([](model& m) { m.all_durable(); });
        return {};
    }

    std::string grow_data() {
        if (data_blocks_ + DATA_GROWTH > DATA_BLOCKS_MAX) return {};
        data_blocks_ += DATA_GROWTH;
        begin("resize_data to " + std::to_string(data_blocks_) + " blocks");
        data_rec_->grow(data_blocks_ * BS);
        int err = pool_errno([&] { pool_->resize_data(); });
        return rc_failure(-err);
    }

    std::string grow_metadata() {
        if (md_blocks_ + MD_GROWTH > MD_BLOCKS_MAX) return {};
        md_blocks_ += MD_GROWTH;
        begin("resize_metadata to " + std::to_string(md_blocks_) + " blocks");
        md_rec_->grow(md_blocks_);
        int err = pool_errno([&] { pool_->resize_metadata(); });
        return rc_failure(-err);
    }

    std::uint64_t seed_;
    unsigned ops_;
    std::mt19937_64 rng_;
    std::shared_ptr<pdata::memory_engine> md_;
    std::shared_ptr<thin::pool::memory_data_device> data_;
    crash_timeline timeline_;
    std::shared_ptr<pdata::fault_engine> fault_;
    std::shared_ptr<recording_metadata_engine> md_rec_;
    std::shared_ptr<recording_data_device> data_rec_;
    pool_ptr pool_;
    std::map<thin::dev_id, std::shared_ptr<thin_device>> devs_;
    model live_;
    std::vector<model_change> changes_;
    std::vector<std::string> op_names_;
    std::vector<std::size_t> op_starts_;
    thin::dev_id next_id_ = 3;
    std::uint64_t tag_ = 0;
    bool held_ = false;
    std::uint64_t data_blocks_ = DATA_BLOCKS;
    pdata::block_address md_blocks_ = MD_BLOCKS;
};

// ---- crash points ------------------------------------------------------------------------------------

struct crash_point {
    std::size_t at;  // the first `at` timeline events happened
    bool flush_point;
};

// Flush points (all of them when they fit in two thirds of the budget, else evenly sampled), then
// torn points: half just after a metadata write, half anywhere. Sorted by position.
std::vector<crash_point> choose_points(const std::vector<crash_event>& events, std::size_t budget,
                                       std::mt19937_64& rng) {
    std::vector<std::size_t> flushes, md_writes;
    for (std::size_t i = 0; i < events.size(); ++i) {
        if (events[i].type == crash_event::kind::md_flush) flushes.push_back(i + 1);
        if (events[i].type == crash_event::kind::md_write) md_writes.push_back(i + 1);
    }
    std::vector<crash_point> points;
    if (events.empty()) return points;
    std::size_t nf = std::min(flushes.size(), budget - budget / 3);
    for (std::size_t k = 0; k < nf; ++k) points.push_back({flushes[k * flushes.size() / nf], true});
    for (std::size_t k = nf; k < budget; ++k) {
        bool in_commit = k % 2 == 0 && !md_writes.empty();
        std::size_t at = in_commit ? md_writes[rng() % md_writes.size()] : 1 + rng() % events.size();
        points.push_back({at, false});
    }
    std::stable_sort(points.begin(), points.end(), [](auto& a, auto& b) { return a.at < b.at; });
    return points;
}

// A scratch directory in memory (/dev/shm) when there is one: every point writes an image, and
// a file system's write path would cost more than the checks.
class image_dir {
public:
    image_dir() {
        std::error_code ec;
        std::filesystem::path base = "/dev/shm";
        if (!std::filesystem::is_directory(base, ec) || ::access(base.c_str(), W_OK) != 0)
            base = std::filesystem::temp_directory_path();
        std::string tmpl = (base / "thinpool-crash-XXXXXX").string();
        if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + ": " + std::strerror(errno));
        path_ = tmpl;
    }
    ~image_dir() {
        std::error_code ec;
        if (!keep_ && !std::getenv("THINPOOL_KEEP_TEMP")) std::filesystem::remove_all(path_, ec);
    }
    void keep() { keep_ = true; }
    image_dir(const image_dir&) = delete;
    image_dir& operator=(const image_dir&) = delete;
    std::string file(const std::string& name) const { return (path_ / name).string(); }

private:
    std::filesystem::path path_;
    bool keep_ = false;
};

// ---- checks at one point -----------------------------------------------------------------------------

class point_checker {
public:
    point_checker(const recording& rec, std::uint64_t seed) : rec_(rec), seed_(seed) {}

    // What failed at this point, with where it is (empty: it recovered).
    std::string check(std::size_t index, const crash_point& pt, const model& m,
                                   crash_replayer::image& img) {
        failures_.clear();
        std::ostringstream where;
        where << "seed " << seed_ << ", point #" << index << " at timeline position " << pt.at << " ("
              << (pt.flush_point ? "flush point" : "torn") << ", " << img.md_torn_kept << "/" << img.md_torn_candidates
              << " metadata writes after the last flush kept, " << img.data_torn_kept << "/" << img.data_torn_candidates
              << " unflushed data writes kept), during: " << operation_at(pt.at);
        where_ = where.str();
        const bool sample = index % SAMPLE_EVERY == 0;
        // The tools run on a copy taken before the pool opens (opening grows the metadata and
        // commits); they mostly wait (exec, io_destroy), so they overlap the pool checks.
        const std::string file = dir_.file("metadata");
        save_image(*img.metadata, file);
        auto tools = std::async(std::launch::async, [file, sample] { return check_tools(file, sample); });
        check_pool(m, img, sample);
        for (auto& f : tools.get()) fail(f);
        if (failures_.empty()) return {};
        std::string report;
        for (auto& f : failures_) report += f + "\n";
        return report + "  at " + where_ + keep_image(file, index);
    }

private:
    void fail(const std::string& what) { failures_.push_back(what); }

    // Keeps the failing point's metadata image (as it was before the pool opened) for inspection.
    std::string keep_image(const std::string& file, std::size_t index) {
        std::string kept = dir_.file("point-" + std::to_string(index) + ".metadata");
        std::error_code ec;
        std::filesystem::copy_file(file, kept, std::filesystem::copy_options::overwrite_existing, ec);
        if (ec) return {};
        dir_.keep();
        return "\n  metadata image kept in " + kept;
    }

    std::string operation_at(std::size_t at) const {
        auto it = std::upper_bound(rec_.op_starts.begin(), rec_.op_starts.end(), at - 1);
        if (it == rec_.op_starts.begin()) return "(before the first operation)";
        std::size_t op = static_cast<std::size_t>(it - rec_.op_starts.begin()) - 1;
        return "operation " + std::to_string(op) + " " + rec_.op_names[op];
    }

    static std::vector<std::string> check_tools(const std::string& file, bool theirs_too) {
        std::vector<std::string> failures;
        auto ours = run_ours("thin_check", {file});
        if (ours.exit_code != 0 || (ours.out + ours.err).find("leak") != std::string::npos)
            failures.push_back("our thin_check rejects the metadata or finds leaks: " + describe(ours));
        if (theirs_too && reference_tools_available()) {
            auto theirs = run_theirs("thin_check", {file});
            if (theirs.exit_code != 0) failures.push_back("Debian's thin_check rejects the metadata: " + describe(theirs));
        }
        return failures;
    }

    void check_pool(const model& m, crash_replayer::image& img, bool reuse) {
        auto o = quiet_options();
        o.metadata_engine = img.metadata;
        o.data_engine = img.data;
        o.data_block_size = BS;
        pool_ptr p;
        try {
            p = open_pool(o);
        } catch (const std::exception& e) {
            fail(std::string("the pool does not open: ") + e.what());
            return;
        }
        auto st = p->status_info();
        if (!m.trans_ids.count(st.transaction_id))
            fail("transaction id " + std::to_string(st.transaction_id) + ", expected " + std::to_string(m.trans_id));
        if (st.needs_check) fail("needs_check is set");
        check_devices(*p, m);
        std::vector<std::pair<thin::dev_id, std::shared_ptr<thin_device>>> alive;
        for (auto& [id, t] : m.thins) read_back(*p, id, t, alive);
        for (auto& [id, t] : m.maybe_created) read_back(*p, id, t, alive, true);
        if (reuse && failures_.empty()) use_recovered(alive);
        for (auto& [id, d] : alive) d->close();
        p.reset();
        if (reuse && failures_.empty()) {
            save_image(*img.metadata, dir_.file("after"));
            auto after = run_ours("thin_check", {dir_.file("after")});
            if (after.exit_code != 0) fail("thin_check after using the recovered pool: " + describe(after));
        }
    }

    // Deleted devices stay deleted; no device exists that was never created.
    void check_devices(thin::pool::pool& p, const model& m) {
        for (auto& d : p.devices())
            if (!m.thins.count(d.id) && !m.maybe_created.count(d.id))
                fail("device " + std::to_string(d.id) + " exists but " +
                     (m.deleted.count(d.id) ? "was deleted by a completed message" : "was never created"));
        for (auto id : m.deleted)
            if (pool_errno([&] { p.activate(id, THIN_SECTORS); }) != ENODATA)
                fail("deleted device " + std::to_string(id) + " does not fail to activate with ENODATA");
    }

    void read_back(thin::pool::pool& p, thin::dev_id id, const thin_model& t,
                   std::vector<std::pair<thin::dev_id, std::shared_ptr<thin_device>>>& alive, bool optional = false) {
        std::shared_ptr<thin_device> dev;
        int err = pool_errno([&] { dev = p.activate(id, THIN_SECTORS); });
        if (err == ENODATA && (optional || t.maybe_deleted)) return;
        if (err != 0) {
            fail("device " + std::to_string(id) + " does not activate: errno " + std::to_string(err));
            return;
        }
        alive.emplace_back(id, dev);
        std::vector<std::uint8_t> buf;
        int rc = read_sync(*dev, 0, THIN_SECTORS, buf);
        if (rc != 0) {
            fail("reading device " + std::to_string(id) + " failed with " + std::to_string(rc));
            return;
        }
        unsigned bad = 0;
        for (std::uint64_t s = 0; s < THIN_SECTORS && bad < 3; ++s) {
            auto got = sector_tag(buf.data() + s * SECTOR, s);
            if (got && t.allowed(s, *got)) continue;
            ++bad;
            fail("device " + std::to_string(id) + (optional ? " (created at the crash)" : "") + " sector " +
                 std::to_string(s) + " (block " + std::to_string(s / BS) + ") reads " +
                 describe_sectors(buf.data() + s * SECTOR, s, 1) + "; allowed: " + t.allowed_list(s));
        }
    }

    // The recovered pool works: rewrite every block, flush, read back.
    void use_recovered(std::vector<std::pair<thin::dev_id, std::shared_ptr<thin_device>>>& alive) {
        for (auto& [id, dev] : alive) {
            for (std::uint64_t b = 0; b < THIN_BLOCKS; ++b) {
                int rc = write_block(*dev, BS, b, 0xc0000000ull + id * 1000 + b);
                if (rc != 0) return fail("writing to the recovered device " + std::to_string(id) + " failed");
            }
            if (flush_sync(*dev) != 0) return fail("flushing the recovered device " + std::to_string(id) + " failed");
            for (std::uint64_t b = 0; b < THIN_BLOCKS; ++b)
                if (read_block_tag(*dev, BS, b) != std::optional<std::uint64_t>(0xc0000000ull + id * 1000 + b))
                    return fail("the recovered device " + std::to_string(id) + " does not read back block " +
                                std::to_string(b) + " just written");
        }
    }

    const recording& rec_;
    std::uint64_t seed_;
    image_dir dir_;
    std::string where_;
    std::vector<std::string> failures_;
};

std::uint64_t env_number(const char* name, std::uint64_t fallback, std::string& error) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(v, &end, 10);
    if (errno || *end || v[0] == '-') error = std::string(name) + "=" + v + " is not a number";
    return n;
}

TEST(CrashReplay, EveryPointOfOneLongWorkloadRecovers) {
    std::string error;
    const std::uint64_t budget = env_number("THINPOOL_CRASH_POINTS", 600, error);
    const std::uint64_t seed = env_number("THINPOOL_CRASH_SEED", 1, error);
    const std::uint64_t ops = env_number("THINPOOL_CRASH_OPS", 480, error);
    ASSERT_TRUE(error.empty()) << error;
    ASSERT_GT(budget, 0u) << "THINPOOL_CRASH_POINTS must be positive";
    const auto t0 = std::chrono::steady_clock::now();

    recording rec;
    {
        workload w(seed, static_cast<unsigned>(ops));
        std::string failure = w.run(rec);
        ASSERT_TRUE(failure.empty()) << "the workload failed before any crash (seed " << seed << "): " << failure;
    }
    std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + 17);
    auto points = choose_points(rec.events, budget, rng);
    crash_replayer replayer(rec.events, rec.md_log, rec.md_base, MD_BLOCKS_MAX, rec.data_writes, rec.flush_coverage,
                            DATA_BLOCKS_MAX * BS);
    point_checker checker(rec, seed);
    model m;
    for (thin::dev_id id = 0; id < 3; ++id) m.thins[id];
    std::size_t next_change = 0, flush_points = 0, torn_in_commit = 0, failed_points = 0;
    for (std::size_t i = 0; i < points.size(); ++i) {
        const auto& pt = points[i];
        while (next_change < rec.changes.size() && rec.changes[next_change].from <= pt.at)
            rec.changes[next_change++].apply(m);
        std::mt19937_64 point_rng(seed ^ (0x5851f42d4c957f2dull * (i + 1)));
        auto img = replayer.at(pt.at, point_rng);
        flush_points += pt.flush_point;
        torn_in_commit += img.md_torn_candidates > 0;
        std::string failure = checker.check(i, pt, m, img);
        if (failure.empty()) continue;
        if (++failed_points <= 5) ADD_FAILURE() << failure;
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::size_t md_flushes = 0;
    for (auto& e : rec.md_log) md_flushes += e.is_flush();
    std::map<std::string, unsigned> kinds;
    for (auto& name : rec.op_names) ++kinds[name.substr(0, name.find(' '))];
    std::ostringstream mix;
    for (auto& [k, n] : kinds) mix << (mix.tellp() ? ", " : "") << k << " " << n;
    std::cout << "crash replay: " << points.size() << " points (" << flush_points << " flush points, "
              << points.size() - flush_points << " torn), " << failed_points << " failures; " << torn_in_commit
              << " points inside a commit; seed " << seed << ", " << ops << " operations, " << rec.events.size()
              << " timeline events, " << rec.md_log.size()
              << " metadata log entries (" << md_flushes << " flushes), " << rec.data_writes.size()
              << " data writes, " << rec.flush_coverage.size() << " data flushes, " << secs << " s" << std::endl;
    std::cout << "crash replay workload: " << mix.str() << std::endl;
    EXPECT_EQ(0u, failed_points) << "points failed (the first 5 are reported above)";
}

} // namespace
