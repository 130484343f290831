#include "tests/support/crash_log.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace thinpool_test {

namespace tp = thin::pool;
using ek = crash_event::kind;

constexpr std::uint64_t SECTOR_BYTES = 512;
constexpr std::uint64_t CHUNK_SECTORS = 128;  // durable data image granularity (64 KiB)

// ---- timeline ------------------------------------------------------------------------------------

std::size_t crash_timeline::add(crash_event::kind k, std::uint64_t id) {
    std::lock_guard lk(mutex_);
    return add_locked(k, id);
}

std::size_t crash_timeline::add_locked(crash_event::kind k, std::uint64_t id) {
    events_.push_back({k, id});
    return events_.size() - 1;
}

std::size_t crash_timeline::size() const {
    std::lock_guard lk(mutex_);
    return events_.size();
}

// ---- metadata --------------------------------------------------------------------------------------

recording_metadata_engine::recording_metadata_engine(std::shared_ptr<pdata::fault_engine> f, crash_timeline& t,
                                                     pdata::block_address visible_blocks)
    : f_(std::move(f)), t_(t), visible_(visible_blocks) {
    if (visible_blocks > f_->nr_blocks())
        throw std::invalid_argument("recording_metadata_engine: visible size beyond the engine");
    f_->record(true);
}

void recording_metadata_engine::write(pdata::block_address b, const void* buf) {
    std::lock_guard lk(mutex_);
    f_->write(b, buf);
    t_.add(ek::md_write, next_entry_++);
}

void recording_metadata_engine::flush() {
    std::lock_guard lk(mutex_);
    f_->flush();
    t_.add(ek::md_flush, next_entry_++);
}

// ---- data --------------------------------------------------------------------------------------------

recording_data_device::recording_data_device(std::shared_ptr<tp::data_device> inner, crash_timeline& t,
                                             std::uint64_t visible_sectors)
    : inner_(std::move(inner)), t_(t), visible_(visible_sectors) {}

recording_data_device::~recording_data_device() { drain(); }

tp::io_callback recording_data_device::tracked(tp::io_callback done) {
    {
        std::lock_guard lk(drain_mutex_);
        ++outstanding_;
    }
    return [this, done = std::move(done)](int r) {
        done(r);
        std::lock_guard lk(drain_mutex_);
        if (--outstanding_ == 0) drained_.notify_all();
    };
}

void recording_data_device::read(std::uint64_t sector, std::uint64_t n, void* buf, tp::io_callback done) {
    inner_->read(sector, n, buf, tracked(std::move(done)));
}

void recording_data_device::record_write(std::uint64_t sector, std::uint64_t n, const void* buf,
                                         tp::io_callback done, bool discard) {
    std::uint64_t id;
    {
        std::lock_guard lk(t_.mutex());
        id = writes_.size();
        recorded_data_write w{sector, n, {}};
        if (buf) {
            auto p = static_cast<const std::uint8_t*>(buf);
            w.bytes.assign(p, p + n * SECTOR_BYTES);
        }
        writes_.push_back(std::move(w));
        t_.add_locked(ek::data_submit, id);
    }
    auto cb = tracked([this, id, done = std::move(done)](int r) {
        if (r == 0) {
            std::lock_guard lk(t_.mutex());
            ++completed_;
            t_.add_locked(ek::data_complete, id);
        }
        done(r);
    });
    if (discard) inner_->discard(sector, n, std::move(cb));
    else if (buf) inner_->write(sector, n, buf, std::move(cb));
    else inner_->write_zeroes(sector, n, std::move(cb));
}

void recording_data_device::write(std::uint64_t sector, std::uint64_t n, const void* buf, tp::io_callback done) {
    record_write(sector, n, buf, std::move(done), false);
}

void recording_data_device::write_zeroes(std::uint64_t sector, std::uint64_t n, tp::io_callback done) {
    record_write(sector, n, nullptr, std::move(done), false);
}

void recording_data_device::discard(std::uint64_t sector, std::uint64_t n, tp::io_callback done) {
    record_write(sector, n, nullptr, std::move(done), true);
}

void recording_data_device::copy(data_device& from, std::uint64_t from_sector, std::uint64_t to_sector,
                                 std::uint64_t n, tp::io_callback done) {
    auto buf = std::make_shared<std::vector<std::uint8_t>>(n * SECTOR_BYTES);
    data_device& src = &from == this ? *inner_ : from;
    src.read(from_sector, n, buf->data(), tracked([this, buf, to_sector, n, done = std::move(done)](int r) {
                 if (r != 0) {
                     done(r);
                     return;
                 }
                 record_write(to_sector, n, buf->data(), [buf, done](int r2) { done(r2); }, false);
             }));
}

void recording_data_device::flush(tp::io_callback done) {
    std::uint64_t id;
    {
        std::lock_guard lk(t_.mutex());
        id = flush_coverage_.size();
        flush_coverage_.push_back(completed_);
        t_.add_locked(ek::data_flush_call, id);
    }
    inner_->flush(tracked([this, id, done = std::move(done)](int r) {
        if (r == 0) t_.add(ek::data_flush_done, id);
        done(r);
    }));
}

void recording_data_device::drain() {
    {
        std::unique_lock lk(drain_mutex_);
        drained_.wait(lk, [this] { return outstanding_ == 0; });
    }
    inner_->drain();
}

// ---- replay ------------------------------------------------------------------------------------------

crash_replayer::crash_replayer(const std::vector<crash_event>& events, const pdata::write_log& md_log,
                               const std::vector<std::uint8_t>& md_base, pdata::block_address md_blocks,
                               const std::vector<recorded_data_write>& data_writes,
                               const std::vector<std::size_t>& flush_coverage, std::uint64_t data_sectors)
    : events_(events), md_log_(md_log), data_writes_(data_writes), flush_coverage_(flush_coverage),
      md_blocks_(md_blocks), data_sectors_(data_sectors),
      md_durable_image_(std::make_shared<pdata::memory_engine>(md_blocks)), completed_(data_writes.size(), false) {
    if (md_base.size() > md_blocks * pdata::MD_BLOCK_SIZE)
        throw std::invalid_argument("crash_replayer: base image larger than the metadata device");
    std::memcpy(md_durable_image_->raw(0), md_base.data(), md_base.size());
}

void crash_replayer::apply_data(std::map<std::uint64_t, std::vector<std::uint8_t>>& chunks,
                                const recorded_data_write& w) const {
    for (std::uint64_t s = w.sector; s < w.sector + w.nr_sectors;) {
        std::uint64_t c = s / CHUNK_SECTORS, off = s % CHUNK_SECTORS;
        std::uint64_t len = std::min(CHUNK_SECTORS - off, w.sector + w.nr_sectors - s);
        auto& chunk = chunks[c];
        if (chunk.empty()) chunk.assign(CHUNK_SECTORS * SECTOR_BYTES, 0);
        std::uint8_t* dst = chunk.data() + off * SECTOR_BYTES;
        if (w.bytes.empty()) std::memset(dst, 0, len * SECTOR_BYTES);
        else std::memcpy(dst, w.bytes.data() + (s - w.sector) * SECTOR_BYTES, len * SECTOR_BYTES);
        s += len;
    }
}

namespace {
// A replay_selected selection of the entries [from, to).
std::vector<bool> in_range(std::size_t from, std::size_t to) {
    std::vector<bool> keep(to, false);
    std::fill(keep.begin() + static_cast<std::ptrdiff_t>(from), keep.end(), true);
    return keep;
}
} // namespace

void crash_replayer::advance(std::size_t p) {
    if (p < pos_) throw std::logic_error("crash_replayer: points must be replayed in timeline order");
    if (p > events_.size()) throw std::out_of_range("crash_replayer: point beyond the timeline");
    for (; pos_ < p; ++pos_) {
        const crash_event& e = events_[pos_];
        switch (e.type) {
        case ek::md_write:
            md_seen_ = e.id + 1;
            break;
        case ek::md_flush:
            md_seen_ = e.id + 1;
            pdata::fault_engine::replay_selected(md_log_, in_range(md_durable_, md_seen_), *md_durable_image_);
            md_durable_ = md_seen_;
            break;
        case ek::data_submit:
            in_flight_.push_back(e.id);
            break;
        case ek::data_complete:
            completed_[e.id] = true;
            completion_order_.push_back(e.id);
            break;
        case ek::data_flush_done: {
            std::size_t cover = flush_coverage_[e.id];
            data_durable_ = std::max(data_durable_, cover);
            for (; data_applied_ < data_durable_; ++data_applied_)
                apply_data(durable_chunks_, data_writes_[completion_order_[data_applied_]]);
            break;
        }
        case ek::data_flush_call:
        case ek::mark:
            break;
        }
    }
    std::erase_if(in_flight_, [this](std::uint64_t id) { return completed_[id]; });
}

crash_replayer::image crash_replayer::at(std::size_t p, std::mt19937_64& rng) {
    advance(p);
    image img;
    img.metadata = std::make_shared<pdata::memory_engine>(md_blocks_);
    std::memcpy(img.metadata->raw(0), md_durable_image_->raw(0), md_blocks_ * pdata::MD_BLOCK_SIZE);
    std::vector<bool> keep(md_seen_, false);
    for (std::size_t i = md_durable_; i < md_seen_; ++i) {
        if (md_log_[i].is_flush()) continue;
        ++img.md_torn_candidates;
        keep[i] = rng() % 2 == 0;
        img.md_torn_kept += keep[i];
    }
    pdata::fault_engine::replay_selected(md_log_, keep, *img.metadata);

    img.data = std::make_shared<tp::memory_data_device>(data_sectors_);
    for (auto& [c, bytes] : durable_chunks_) img.data->set_contents(c * CHUNK_SECTORS, bytes);
    auto maybe_apply = [&](std::uint64_t id) {
        ++img.data_torn_candidates;
        if (rng() % 2) return;
        ++img.data_torn_kept;
        const auto& w = data_writes_[id];
        img.data->set_contents(w.sector, w.bytes.empty() ? std::vector<std::uint8_t>(w.nr_sectors * SECTOR_BYTES, 0)
                                                         : w.bytes);
    };
    for (std::size_t i = data_durable_; i < completion_order_.size(); ++i) maybe_apply(completion_order_[i]);
    for (auto id : in_flight_) maybe_apply(id);
    return img;
}

} // namespace thinpool_test
