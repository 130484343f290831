#include "thin/restore/event_pipe.h"

#include "thin/restore/xml_parser.h"

#include <exception>

namespace thin::restore {

static_assert(sizeof(xml_event) == 48, "the ring's size is documented in events of 48 bytes");

void apply_events(const event_batch& batch, emitter& out, const std::string& source) {
    for (std::size_t i = 0; i < batch.size; ++i) {
        const xml_event& e = batch.events[i];
        try {
            switch (e.kind) {
            case event_kind::range_map:
                out.range_map(e.a, e.b, e.c, e.t0);
                break;
            case event_kind::begin_device: {
                device_info d;
                d.dev_id = e.a;
                d.mapped_blocks = e.b;
                d.transaction = e.c;
                d.creation_time = e.t0;
                d.snap_time = e.t1;
                out.begin_device(d);
                break;
            }
            case event_kind::end_device:
                out.end_device();
                break;
            case event_kind::begin_superblock:
                out.begin_superblock(batch.superblock);
                break;
            case event_kind::end_superblock:
                out.end_superblock();
                break;
            }
        } catch (const xml_error&) {
            throw;
        } catch (const std::exception& ex) {
            throw xml_error(source, e.line, e.column, ex.what());
        }
    }
}

event_pipe::event_pipe(std::size_t batches, std::size_t events_per_batch) {
    if (batches < 2) batches = 2;  // one being filled while another is applied
    if (events_per_batch < 1) events_per_batch = 1;
    storage_.reserve(batches);
    free_.reserve(batches);
    full_.assign(batches, nullptr);
    for (std::size_t i = 0; i < batches; ++i) {
        storage_.push_back(std::make_unique<event_batch>(events_per_batch));
        free_.push_back(storage_.back().get());
    }
}

event_batch* event_pipe::take_free_locked(std::unique_lock<std::mutex>& lock) {
    free_ready_.wait(lock, [&] { return stopped_ || !free_.empty(); });
    if (stopped_) return nullptr;
    event_batch* b = free_.back();
    free_.pop_back();
    b->size = 0;
    return b;
}

event_batch* event_pipe::first() {
    std::unique_lock lock(mutex_);
    return take_free_locked(lock);
}

event_batch* event_pipe::exchange(event_batch* full) {
    std::unique_lock lock(mutex_);
    if (stopped_) return nullptr;
    full_[(full_head_ + full_count_) % full_.size()] = full;
    ++full_count_;
    full_ready_.notify_one();
    return take_free_locked(lock);
}

void event_pipe::close(event_batch* last) noexcept {
    std::lock_guard lock(mutex_);
    if (!stopped_ && last && last->size > 0) {
        full_[(full_head_ + full_count_) % full_.size()] = last;
        ++full_count_;
    }
    closed_ = true;
    full_ready_.notify_one();
}

event_batch* event_pipe::take() {
    std::unique_lock lock(mutex_);
    full_ready_.wait(lock, [&] { return full_count_ > 0 || closed_ || stopped_; });
    if (stopped_ || full_count_ == 0) return nullptr;
    event_batch* b = full_[full_head_];
    full_head_ = (full_head_ + 1) % full_.size();
    --full_count_;
    return b;
}

void event_pipe::give_back(event_batch* b) {
    std::lock_guard lock(mutex_);
    free_.push_back(b);
    free_ready_.notify_one();
}

void event_pipe::stop() noexcept {
    std::lock_guard lock(mutex_);
    stopped_ = true;
    free_ready_.notify_all();
    full_ready_.notify_all();
}

} // namespace thin::restore
