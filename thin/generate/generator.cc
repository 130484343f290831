#include "thin/generate/generator.h"

#include "thin/metadata/metadata.h"

#include "persistent-data/io_engine.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace thin::generate {

// ---------------------------------------------------------------------------------------------
// rng

namespace {
std::uint64_t splitmix64(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
} // namespace

rng::rng(std::uint64_t seed) {
    for (auto& w : s_)
        w = splitmix64(seed);
}

std::uint64_t rng::next() {
    std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
}

std::uint64_t rng::below(std::uint64_t n) {
    // Multiply-shift; the tiny bias is irrelevant here and the sequence is fixed.
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
}

bool rng::chance(double p) {
    if (p <= 0)
        return false;
    return static_cast<double>(next() >> 11) * 0x1.0p-53 < p;
}

// ---------------------------------------------------------------------------------------------
// generator

generator::generator(const shape& s, thin::metadata* md) : shape_(resolve(s)), md_(md), rng_(shape_.seed) {
    live_.data_block_size = shape_.data_block_size;
    live_.nr_data_blocks = shape_.nr_data_blocks;
    if (md_) {
        if (md_->data_block_size() != shape_.data_block_size)
            throw generate_error("metadata data block size " + std::to_string(md_->data_block_size()) +
                                 " differs from the shape's " + std::to_string(shape_.data_block_size));
        if (md_->nr_data_blocks() != shape_.nr_data_blocks)
            throw generate_error("metadata has " + std::to_string(md_->nr_data_blocks()) +
                                 " data blocks, the shape " + std::to_string(shape_.nr_data_blocks));
        if (!md_->devices().empty())
            throw generate_error("the metadata already has devices");
        const superblock& sb = md_->current_superblock();
        live_.time = sb.time;
        live_.transaction = sb.trans_id;
        live_.flags = sb.flags;
        live_.version = sb.version;
    }
    next_id_ = rng_.below(3);
}

dev_id generator::new_dev_id() {
    dev_id id = next_id_;
    if (id > MAX_DEV_ID)
        throw generate_error("out of device ids");
    next_id_ += 1 + rng_.below(3);
    return id;
}

std::uint64_t generator::burst_length(std::uint64_t limit) {
    return std::min<std::uint64_t>(limit, 1 + rng_.below(shape_.max_burst));
}

void generator::op_done() {
    ++ops_;
    if (shape_.commit_interval && ops_ % shape_.commit_interval == 0)
        commit();
}

void generator::commit() {
    if (md_) {
        md_->set_transaction_id(live_.transaction, live_.transaction + 1);
        md_->commit();
    }
    ++live_.transaction;
    ++stats_.commits;
}

std::uint64_t generator::alloc() {
    if (md_) {
        auto b = md_->alloc_data_block();
        if (!b)
            throw generate_error("data space exhausted after " + std::to_string(stats_.allocations) +
                                 " allocations (" + std::to_string(shape_.nr_data_blocks) + " data blocks)");
        return *b;
    }
    if (model_next_block_ >= shape_.nr_data_blocks)
        throw generate_error("data space exhausted after " + std::to_string(stats_.allocations) +
                             " allocations (" + std::to_string(shape_.nr_data_blocks) + " data blocks)");
    return model_next_block_++;
}

void generator::create_origin() {
    dev_id id = new_dev_id();
    if (md_)
        md_->create_thin(id);
    device_expectation& e = live_.devices[id];
    e.details.transaction_id = live_.transaction;
    e.details.creation_time = e.details.snapshotted_time = live_.time;
    state_[id] = device_state{0, 0, shape_.writes_per_origin};
    op_done();
}

void generator::create_snapshot() {
    std::vector<dev_id> eligible;
    for (const auto& [id, st] : state_)
        if (st.depth < shape_.snapshot_depth)
            eligible.push_back(id);
    if (eligible.empty())
        throw generate_error("no device left to snapshot");
    // Newest eligible device half of the time, so chains grow as deep as allowed.
    dev_id parent = rng_.chance(0.5) ? eligible.back() : eligible[rng_.below(eligible.size())];
    dev_id id = new_dev_id();
    if (live_.time >= MAX_TIME)
        throw generate_error("the 24-bit time would overflow");
    ++live_.time;
    if (md_) {
        md_->create_snap(id, parent);
        if (md_->time() != live_.time)
            throw generate_error("after create_snap the metadata time is " + std::to_string(md_->time()) +
                                 ", expected " + std::to_string(live_.time));
    }
    device_expectation& origin = live_.devices.at(parent);
    origin.details.snapshotted_time = live_.time;
    device_expectation snap;
    snap.mappings = origin.mappings;
    snap.details.mapped_blocks = origin.details.mapped_blocks;
    snap.details.transaction_id = live_.transaction;
    snap.details.creation_time = snap.details.snapshotted_time = live_.time;
    live_.devices.emplace(id, std::move(snap));
    state_[id] = device_state{state_.at(parent).depth + 1, 0, 0};
    ++stats_.snapshots;
    op_done();

    std::uint64_t remaining = shape_.writes_per_snapshot;
    while (remaining) {
        dev_id target = rng_.chance(0.5) ? id : parent;
        if (rng_.chance(shape_.discard_probability)) {
            discard(target);
            continue;
        }
        std::uint64_t len = burst_length(remaining);
        write_burst(target, rng_.below(shape_.virtual_blocks), len);
        remaining -= len;
    }
}

void generator::write_burst(dev_id d, std::uint64_t vblock, std::uint64_t len) {
    for (std::uint64_t i = 0; i < len; ++i)
        write_block(d, (vblock + i) % shape_.virtual_blocks);
}

void generator::write_block(dev_id d, std::uint64_t vblock) {
    device_expectation& dev = live_.devices.at(d);
    auto cur = dev.mappings.get(vblock);
    bool shared = cur && cur->time < dev.details.snapshotted_time;
    if (md_ && shape_.check_lookups) {
        auto l = md_->lookup(d, vblock);
        bool same = bool(l) == bool(cur) &&
                    (!l || (l->data_block == cur->data_block && l->time == cur->time && l->shared == shared));
        if (!same) {
            auto show = [](bool mapped, std::uint64_t b, std::uint32_t t, bool sh) {
                return mapped ? "data block " + std::to_string(b) + " time " + std::to_string(t) +
                                    (sh ? " (shared)" : " (exclusive)")
                              : std::string("unmapped");
            };
            throw generate_error("device " + std::to_string(d) + " block " + std::to_string(vblock) +
                                 ": lookup says " +
                                 show(bool(l), l ? l->data_block : 0, l ? l->time : 0, l && l->shared) +
                                 ", expected " + show(bool(cur), cur ? cur->data_block : 0, cur ? cur->time : 0, shared));
        }
    }
    ++stats_.writes;
    if (cur && !shared) {
        op_done();
        return;  // an exclusive block is overwritten in place
    }
    std::uint64_t b = alloc();
    if (md_)
        md_->insert(d, vblock, b);
    if (dev.mappings.set(vblock, block_time{b, live_.time}))
        ++dev.details.mapped_blocks;
    ++stats_.allocations;
    op_done();
}

void generator::discard(dev_id d) {
    std::uint64_t begin = rng_.below(shape_.virtual_blocks);
    std::uint64_t end = std::min(shape_.virtual_blocks, begin + 1 + rng_.below(shape_.max_discard));
    device_expectation& dev = live_.devices.at(d);
    std::uint64_t expected = dev.mappings.erase_range(begin, end);
    dev.details.mapped_blocks -= expected;
    if (md_) {
        std::uint64_t removed = md_->remove_range(d, begin, end);
        if (removed != expected)
            throw generate_error("device " + std::to_string(d) + ": remove_range [" + std::to_string(begin) +
                                 ", " + std::to_string(end) + ") removed " + std::to_string(removed) +
                                 " mappings, expected " + std::to_string(expected));
    }
    ++stats_.discards;
    stats_.discarded += expected;
    op_done();
}

void generator::delete_device(dev_id d) {
    if (md_)
        md_->delete_device(d);
    live_.devices.erase(d);
    state_.erase(d);
    ++stats_.deletes;
    op_done();
}

dev_id generator::pick_device() {
    auto it = state_.begin();
    std::advance(it, static_cast<long>(rng_.below(state_.size())));
    return it->first;
}

void generator::hold() {
    commit();
    if (md_)
        md_->reserve_metadata_snap();
    held_ = live_;
    held_->nr_data_blocks = 0;
}

void generator::run() {
    for (unsigned i = 0; i < shape_.origins; ++i)
        create_origin();
    commit();

    // Origin writes: bursts to a randomly chosen origin that still has writes to do.
    std::vector<dev_id> busy;
    for (const auto& [id, st] : state_)
        if (st.remaining)
            busy.push_back(id);
    while (!busy.empty()) {
        std::size_t k = rng_.below(busy.size());
        dev_id d = busy[k];
        device_state& st = state_.at(d);
        if (rng_.chance(shape_.discard_probability)) {
            discard(d);
            continue;
        }
        std::uint64_t len = burst_length(st.remaining);
        std::uint64_t start = shape_.random ? rng_.below(shape_.virtual_blocks) : st.cursor;
        write_burst(d, start, len);
        st.cursor = (start + len) % shape_.virtual_blocks;
        st.remaining -= len;
        if (!st.remaining) {
            busy[k] = busy.back();
            busy.pop_back();
        }
    }
    commit();

    for (unsigned i = 0; i < shape_.snapshots; ++i)
        create_snapshot();
    if (shape_.snapshots)
        commit();

    if (shape_.hold_metadata_snap) {
        hold();
        std::uint64_t remaining = shape_.writes_after_hold;
        while (remaining && !state_.empty()) {
            dev_id d = pick_device();
            if (rng_.chance(shape_.discard_probability)) {
                discard(d);
                continue;
            }
            std::uint64_t len = burst_length(remaining);
            write_burst(d, rng_.below(shape_.virtual_blocks), len);
            remaining -= len;
        }
    }

    for (unsigned i = 0; i < shape_.deletes && !state_.empty(); ++i)
        delete_device(pick_device());

    std::uint64_t final_trans = shape_.final_transaction ? *shape_.final_transaction : live_.transaction + 1;
    if (md_) {
        if (final_trans != live_.transaction)
            md_->set_transaction_id(live_.transaction, final_trans);
        md_->commit();
    }
    live_.transaction = final_trans;
    ++stats_.commits;
}

// ---------------------------------------------------------------------------------------------

void verify(const thin::metadata& md, const pool_record& expected) {
    auto fail = [](const std::string& what) { throw generate_error(what); };
    if (md.time() != expected.time)
        fail("superblock time " + std::to_string(md.time()) + ", expected " + std::to_string(expected.time));
    if (md.transaction_id() != expected.transaction)
        fail("transaction id " + std::to_string(md.transaction_id()) + ", expected " +
             std::to_string(expected.transaction));
    if (md.data_block_size() != expected.data_block_size)
        fail("data block size " + std::to_string(md.data_block_size()) + ", expected " +
             std::to_string(expected.data_block_size));
    if (expected.nr_data_blocks && md.nr_data_blocks() != expected.nr_data_blocks)
        fail("nr_data_blocks " + std::to_string(md.nr_data_blocks()) + ", expected " +
             std::to_string(expected.nr_data_blocks));

    std::vector<dev_id> want;
    for (const auto& [id, dev] : expected.devices)
        want.push_back(id);
    std::vector<dev_id> have = md.devices();
    std::sort(have.begin(), have.end());
    if (have != want) {
        std::string h, w;
        for (auto d : have) {
            h += ' ';
            h += std::to_string(d);
        }
        for (auto d : want) {
            w += ' ';
            w += std::to_string(d);
        }
        fail("devices [" + h + " ], expected [" + w + " ]");
    }
    for (const auto& [id, dev] : expected.devices) {
        std::string name = "device " + std::to_string(id);
        device_details d = md.details(id);
        if (!(d == dev.details))
            fail(name + ": details (mapped " + std::to_string(d.mapped_blocks) + ", transaction " +
                 std::to_string(d.transaction_id) + ", creation " + std::to_string(d.creation_time) +
                 ", snap " + std::to_string(d.snapshotted_time) + "), expected (mapped " +
                 std::to_string(dev.details.mapped_blocks) + ", transaction " +
                 std::to_string(dev.details.transaction_id) + ", creation " +
                 std::to_string(dev.details.creation_time) + ", snap " +
                 std::to_string(dev.details.snapshotted_time) + ")");
        std::uint64_t count = 0;
        std::string problem;
        md.for_each_mapping(id, [&](std::uint64_t vb, block_time bt) {
            auto e = dev.mappings.get(vb);
            if (!e || !(*e == bt)) {
                problem = name + " block " + std::to_string(vb) + ": maps to data block " +
                          std::to_string(bt.data_block) + " time " + std::to_string(bt.time) + ", expected " +
                          (e ? "data block " + std::to_string(e->data_block) + " time " + std::to_string(e->time)
                             : std::string("unmapped"));
                return false;
            }
            ++count;
            return true;
        });
        if (!problem.empty())
            fail(problem);
        if (count != dev.mappings.size())
            fail(name + ": " + std::to_string(count) + " mappings, expected " + std::to_string(dev.mappings.size()));
    }
}

// ---------------------------------------------------------------------------------------------

namespace {
void prepare_file(const std::string& path, std::uint64_t nr_blocks) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode))
        return;
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        throw std::runtime_error(path + ": cannot create: " + std::strerror(errno));
    if (::ftruncate(fd, static_cast<off_t>(nr_blocks * pdata::MD_BLOCK_SIZE)) != 0) {
        int e = errno;
        ::close(fd);
        throw std::runtime_error(path + ": cannot set the size to " + std::to_string(nr_blocks) +
                                 " blocks: " + std::strerror(e));
    }
    ::close(fd);
}
} // namespace

generated_file generate_file(const std::string& path, const shape& shape) {
    thin::generate::shape s = resolve(shape);
    prepare_file(path, s.metadata_blocks);
    std::shared_ptr<pdata::io_engine> engine =
        pdata::open_sync_engine(path, {pdata::open_mode::read_write, true});
    auto md = thin::metadata::format(engine, s.data_block_size, s.nr_data_blocks);
    generated_file out;
    out.gen = std::make_unique<generator>(s, md.get());
    out.gen->run();
    out.metadata_blocks = md->nr_metadata_blocks();
    out.metadata_blocks_used = out.metadata_blocks - md->nr_free_metadata_blocks();
    out.data_blocks_used = md->nr_data_blocks() - md->nr_free_data_blocks();
    return out;
}

} // namespace thin::generate
