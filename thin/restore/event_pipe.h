#pragma once
// The two stages of a restore (design.md §2): the XML parser turns elements into compact events
// and hands them over in fixed-size batches; the emitter stage applies them, in document order,
// on another thread. A small ring of batches is allocated once, so memory stays flat however
// large the input is, and the parser never runs more than the ring's size ahead.
//
// Every event carries the line and column of its element, taken by the parser as it sees the
// element, so an error found by the emitter stage names the element exactly as if the emitter
// had been called from the parser's callback.
#include "thin/ir/emitter.h"

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace thin::restore {

enum class event_kind : std::uint8_t { begin_superblock, end_superblock, begin_device, end_device, range_map };

// 48 bytes. range_map: a = vbegin, b = dbegin, c = len, t0 = time. begin_device: a = dev_id,
// b = mapped_blocks, c = transaction, t0 = creation_time, t1 = snap_time. begin_superblock: the
// values are in the batch's superblock (there is at most one per document).
struct xml_event {
    std::uint64_t a, b, c;
    std::uint64_t line;
    std::uint32_t t0, t1;
    std::uint32_t column;  // 1-based
    event_kind kind;
};

struct event_batch {
    explicit event_batch(std::size_t capacity) : events(new xml_event[capacity]), capacity(capacity) {}
    std::unique_ptr<xml_event[]> events;
    std::size_t capacity;
    std::size_t size = 0;
    superblock_info superblock;  // for a begin_superblock event in this batch

    bool full() const { return size == capacity; }
};

// Applies a batch to out, in order. An exception from out becomes an xml_error naming the
// event's line and column (an xml_error passes through as it is).
void apply_events(const event_batch& batch, emitter& out, const std::string& source);

// The ring between the parser (producer) and the emitter stage (consumer): batches go round
// from the free list to the producer, to the full queue, to the consumer and back. Blocking
// calls return nullptr instead of waiting once the other side can no longer answer (the
// producer closed, or the consumer stopped), so neither side can hang on the other.
class event_pipe {
public:
    event_pipe(std::size_t batches, std::size_t events_per_batch);
    event_pipe(const event_pipe&) = delete;
    event_pipe& operator=(const event_pipe&) = delete;

    // Producer: the first empty batch; nullptr once stopped.
    event_batch* first();
    // Producer: hands over a full batch and waits for an empty one; nullptr once stopped.
    event_batch* exchange(event_batch* full);
    // Producer: no more events after `last` (which may be empty or nullptr). Never blocks.
    void close(event_batch* last) noexcept;

    // Consumer: the next full batch in order; nullptr when the producer closed and all were taken.
    event_batch* take();
    // Consumer: returns a batch it has applied.
    void give_back(event_batch* b);
    // Consumer: gives up (after an error); wakes and stops the producer. Never blocks.
    void stop() noexcept;

private:
    event_batch* take_free_locked(std::unique_lock<std::mutex>& lock);

    std::vector<std::unique_ptr<event_batch>> storage_;
    std::mutex mutex_;
    std::condition_variable free_ready_, full_ready_;
    std::vector<event_batch*> free_;  // stack
    std::vector<event_batch*> full_;  // ring buffer of size storage_.size()
    std::size_t full_head_ = 0, full_count_ = 0;
    bool closed_ = false, stopped_ = false;
};

} // namespace thin::restore
