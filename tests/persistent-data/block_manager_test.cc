// Tests of persistent-data/block_manager: references, validation, bounded caching, write-back.
#include "persistent-data/block_manager.h"
#include "persistent-data/endian.h"
#include "persistent-data/io/fault_engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

using namespace pdata;

namespace {

const checksummed_validator& node_validator() {
    static const checksummed_validator v("test node", block_salt::btree_node);
    return v;
}

// The payload (past the 16-byte checksum/blocknr header) of block b in generation seed.
void fill_payload(std::uint8_t* data, block_address b, unsigned seed) {
    for (std::size_t i = 16; i < MD_BLOCK_SIZE; ++i)
        data[i] = static_cast<std::uint8_t>((b * 131 + seed * 7 + i) ^ (i >> 8));
}

bool payload_is(const std::uint8_t* data, block_address b, unsigned seed) {
    std::vector<std::uint8_t> want(MD_BLOCK_SIZE);
    fill_payload(want.data(), b, seed);
    return std::memcmp(data + 16, want.data() + 16, MD_BLOCK_SIZE - 16) == 0;
}

struct fixture {
    explicit fixture(block_address nr_blocks = 256, std::size_t cache = 64)
        : mem(std::make_shared<memory_engine>(nr_blocks)), fe(std::make_shared<fault_engine>(mem)),
          bm(std::make_unique<block_manager>(fe, cache)) {}

    void write_block(block_address b, unsigned seed, const validator& v = node_validator()) {
        auto w = bm->write_lock_zero(b, v);
        fill_payload(w.data(), b, seed);
    }

    // A fresh block manager over the same device: everything comes from the device again.
    void reopen(std::size_t cache = 64) {
        bm.reset();
        bm = std::make_unique<block_manager>(fe, cache);
    }

    std::shared_ptr<memory_engine> mem;
    std::shared_ptr<fault_engine> fe;
    std::unique_ptr<block_manager> bm;
};

TEST(block_manager, what_is_written_is_read_back) {
    fixture f;
    f.write_block(5, 1);
    {
        auto r = f.bm->read_lock(5, node_validator());
        EXPECT_EQ(r.location(), 5u);
        EXPECT_TRUE(payload_is(r.data(), 5, 1));
    }
    EXPECT_EQ(f.mem->writes(), 0u);  // write-back, not write-through
    f.bm->flush();
    EXPECT_EQ(f.mem->writes(), 1u);
    EXPECT_EQ(f.mem->flushes(), 1u);
    f.reopen();
    auto r = f.bm->read_lock(5, node_validator());
    EXPECT_TRUE(payload_is(r.data(), 5, 1));
}

TEST(block_manager, write_back_stamps_blocknr_and_checksum) {
    fixture f;
    f.write_block(7, 2);
    f.bm->flush();
    const std::uint8_t* raw = f.mem->raw(7);
    EXPECT_EQ(load_le64(raw + 8), 7u);
    EXPECT_EQ(load_le32(raw), block_checksum(raw, block_salt::btree_node));
    EXPECT_NO_THROW(node_validator().check(raw, 7));
    // The noop validator stamps nothing.
    {
        auto w = f.bm->write_lock_zero(8, noop_validator());
        std::memset(w.data(), 0x5A, MD_BLOCK_SIZE);
    }
    f.bm->flush();
    EXPECT_EQ(f.mem->raw(8)[0], 0x5A);
    EXPECT_EQ(f.mem->raw(8)[8], 0x5A);
}

TEST(block_manager, corruption_is_detected_on_read_and_names_the_block) {
    fixture f;
    f.write_block(12, 3);
    f.write_block(13, 3);
    f.bm->flush();
    f.mem->raw(12)[2000] ^= 0x10;
    f.reopen();
    try {
        f.bm->read_lock(12, node_validator());
        FAIL() << "a flipped bit went unnoticed";
    } catch (const corrupt_block& e) {
        EXPECT_EQ(e.block(), 12u);
        EXPECT_NE(std::string(e.what()).find("metadata block 12"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
    }
    // Not cached as if it were good: it fails again, and the write lock path checks too.
    EXPECT_THROW(f.bm->read_lock(12, node_validator()), corrupt_block);
    EXPECT_THROW(f.bm->write_lock(12, node_validator()), corrupt_block);
    // A raw read still sees it.
    EXPECT_NO_THROW(f.bm->read_lock(12, noop_validator()));
    // The same bytes at another location: the self-location check catches a misdirected write.
    std::memcpy(f.mem->raw(20), f.mem->raw(13), MD_BLOCK_SIZE);
    try {
        f.bm->read_lock(20, node_validator());
        FAIL() << "a block at the wrong place went unnoticed";
    } catch (const corrupt_block& e) {
        EXPECT_EQ(e.block(), 20u);
        EXPECT_NE(std::string(e.what()).find("blocknr"), std::string::npos) << e.what();
    }
    // The right salt matters: a node is not a bitmap.
    EXPECT_THROW(f.bm->read_lock(13, bitmap_validator()), corrupt_block);
    EXPECT_NO_THROW(f.bm->read_lock(13, node_validator()));
}

TEST(block_manager, a_cached_block_is_checked_again_under_another_validator) {
    fixture f;
    f.write_block(3, 1);
    f.bm->flush();
    f.reopen();
    { auto r = f.bm->read_lock(3, noop_validator()); }  // cached, checked as raw only
    f.mem->raw(3)[100] ^= 1;                             // does not matter: it is cached
    EXPECT_NO_THROW(f.bm->read_lock(3, node_validator()));
    f.bm->invalidate_clean();
    EXPECT_THROW(f.bm->read_lock(3, node_validator()), corrupt_block);
}

TEST(block_manager, lock_conflicts_are_logic_errors) {
    fixture f;
    f.write_block(1, 1);
    f.write_block(2, 1);
    {
        auto r1 = f.bm->read_lock(1, node_validator());
        auto r2 = f.bm->read_lock(1, node_validator());  // many readers are fine
        EXPECT_THROW(f.bm->write_lock(1, node_validator()), std::logic_error);
        EXPECT_THROW(f.bm->write_lock_zero(1, node_validator()), std::logic_error);
        r1.release();
        EXPECT_THROW(f.bm->write_lock(1, node_validator()), std::logic_error);
    }
    {
        auto w = f.bm->write_lock(2, node_validator());
        EXPECT_THROW(f.bm->read_lock(2, node_validator()), std::logic_error);
        EXPECT_THROW(f.bm->write_lock(2, node_validator()), std::logic_error);
        EXPECT_THROW(f.bm->flush(), std::logic_error);  // a held write lock cannot be written back
        // Moving the reference keeps the lock.
        write_ref moved = std::move(w);
        EXPECT_FALSE(w);
        EXPECT_TRUE(moved);
        EXPECT_THROW(f.bm->read_lock(2, node_validator()), std::logic_error);
    }
    // Released: both lock kinds work again.
    { auto w = f.bm->write_lock(1, node_validator()); }
    { auto r = f.bm->read_lock(2, node_validator()); }
    f.bm->flush();
}

TEST(block_manager, the_cache_stays_bounded) {
    const std::size_t max = 64;
    fixture f(2000, max);
    const block_address n = 10 * max;
    for (block_address b = 0; b < n; ++b) {
        f.write_block(b, 5);
        ASSERT_LE(f.bm->cached_blocks(), max + 1) << "after writing block " << b;
    }
    // Dirty blocks were evicted, hence written, before any flush.
    EXPECT_GT(f.mem->writes(), 0u);
    EXPECT_EQ(f.mem->flushes(), 0u);
    // Every block reads back, whether it is still cached or was evicted (validated on the way in).
    for (block_address b = 0; b < n; ++b) {
        auto r = f.bm->read_lock(b, node_validator());
        ASSERT_TRUE(payload_is(r.data(), b, 5)) << "block " << b;
        r.release();
        ASSERT_LE(f.bm->cached_blocks(), max + 1);
    }
    f.bm->flush();
    for (block_address b = 0; b < n; ++b) ASSERT_NO_THROW(node_validator().check(f.mem->raw(b), b));

    // Reading 10x the cache, in random order, from a fresh manager.
    f.reopen(max);
    std::vector<block_address> order(n);
    for (block_address b = 0; b < n; ++b) order[b] = b;
    std::shuffle(order.begin(), order.end(), std::mt19937(42));
    for (auto b : order) {
        auto r = f.bm->read_lock(b, node_validator());
        ASSERT_TRUE(payload_is(r.data(), b, 5));
        ASSERT_LE(f.bm->cached_blocks(), max + 1);
    }
}

TEST(block_manager, referenced_blocks_are_never_evicted) {
    const std::size_t max = 16;
    fixture f(200, max);
    for (block_address b = 0; b < 100; ++b) f.write_block(b, 1);
    std::vector<read_ref> held;
    for (block_address b = 0; b < 20; ++b) held.push_back(f.bm->read_lock(b, node_validator()));
    for (block_address b = 20; b < 100; ++b) {
        auto r = f.bm->read_lock(b, node_validator());
        ASSERT_TRUE(payload_is(r.data(), b, 1));
    }
    // More than max are cached while more than max are held, but not many more.
    EXPECT_LE(f.bm->cached_blocks(), held.size() + 2);
    for (block_address b = 0; b < 20; ++b) EXPECT_TRUE(payload_is(held[b].data(), b, 1));
}

TEST(block_manager, discard_dirty_drops_unflushed_writes) {
    fixture f;
    f.write_block(2, 1);
    f.write_block(3, 1);
    f.bm->flush();
    auto writes = f.mem->writes();
    {
        auto w = f.bm->write_lock(2, node_validator());
        fill_payload(w.data(), 2, 9);
    }
    f.write_block(10, 9);
    {
        auto r = f.bm->read_lock(2, node_validator());
        EXPECT_TRUE(payload_is(r.data(), 2, 9));
        auto cached = f.bm->cached_blocks();
        EXPECT_THROW(f.bm->discard_dirty(), std::logic_error);  // still referenced
        EXPECT_EQ(f.bm->cached_blocks(), cached);                // and nothing was dropped
    }
    f.bm->discard_dirty();
    EXPECT_EQ(f.mem->writes(), writes);
    {
        auto r = f.bm->read_lock(2, node_validator());
        EXPECT_TRUE(payload_is(r.data(), 2, 1));
    }
    // Block 10 was never written: the device still holds zeroes.
    EXPECT_THROW(f.bm->read_lock(10, node_validator()), corrupt_block);
    f.bm->flush();
    EXPECT_EQ(f.mem->writes(), writes);
    // Clean blocks survive the discard.
    auto r = f.bm->read_lock(3, node_validator());
    EXPECT_TRUE(payload_is(r.data(), 3, 1));
}

TEST(block_manager, flush_writes_in_block_order_then_flushes) {
    fixture f;
    f.fe->record(true);
    for (block_address b : {50, 3, 200, 20, 7, 1, 199}) f.write_block(b, 4);
    f.bm->flush();
    const write_log& log = f.fe->log();
    ASSERT_EQ(log.size(), 8u);
    std::vector<block_address> order;
    for (std::size_t i = 0; i + 1 < log.size(); ++i) {
        ASSERT_FALSE(log[i].is_flush());
        order.push_back(log[i].block);
        // What went to the device was stamped.
        EXPECT_NO_THROW(node_validator().check(log[i].data.data(), log[i].block));
    }
    EXPECT_EQ(order, (std::vector<block_address>{1, 3, 7, 20, 50, 199, 200}));
    EXPECT_TRUE(log.back().is_flush());
    // Nothing dirty: a second flush writes nothing.
    f.fe->clear_log();
    f.bm->flush();
    ASSERT_EQ(f.fe->log().size(), 1u);
    EXPECT_TRUE(f.fe->log()[0].is_flush());
}

TEST(block_manager, a_failed_write_back_keeps_the_block_dirty) {
    fixture f;
    f.write_block(4, 1);
    f.fe->fail_write_at(1);
    EXPECT_THROW(f.bm->flush(), io_error);
    f.bm->flush();
    f.reopen();
    auto r = f.bm->read_lock(4, node_validator());
    EXPECT_TRUE(payload_is(r.data(), 4, 1));
}

TEST(block_manager, a_failed_read_caches_nothing) {
    fixture f;
    f.write_block(6, 1);
    f.bm->flush();
    f.reopen();
    f.fe->fail_read_at(1);
    EXPECT_THROW(f.bm->read_lock(6, node_validator()), io_error);
    EXPECT_EQ(f.bm->cached_blocks(), 0u);
    auto r = f.bm->read_lock(6, node_validator());
    EXPECT_TRUE(payload_is(r.data(), 6, 1));
}

TEST(block_manager, blocks_beyond_the_end_are_refused_until_the_device_grows) {
    fixture f(32);
    EXPECT_EQ(f.bm->nr_blocks(), 32u);
    try {
        f.bm->read_lock(40, noop_validator());
        FAIL();
    } catch (const corrupt_block& e) {
        EXPECT_EQ(e.block(), 40u);
    }
    f.mem->resize(64);
    EXPECT_NO_THROW(f.bm->read_lock(40, noop_validator()));
    EXPECT_EQ(f.bm->nr_blocks(), 64u);
}

TEST(block_manager, prefetch_reads_once_and_validates_at_lock) {
    fixture f;
    for (block_address b = 0; b < 20; ++b) f.write_block(b, 2);
    f.bm->flush();
    f.mem->raw(9)[300] ^= 0xFF;
    f.reopen();
    auto before = f.fe->reads();
    std::vector<block_address> want{5, 3, 9, 3, 17, 5};
    f.bm->prefetch(want);
    EXPECT_EQ(f.fe->reads() - before, 4u);  // 3, 5, 9, 17 once each
    EXPECT_EQ(f.bm->cached_blocks(), 4u);
    for (block_address b : {3, 5, 17}) {
        auto r = f.bm->read_lock(b, node_validator());
        EXPECT_TRUE(payload_is(r.data(), b, 2));
    }
    EXPECT_EQ(f.fe->reads() - before, 4u);  // served from the cache
    EXPECT_EQ(f.bm->reads(), 4u);
    // Prefetched corruption is still caught when the block is locked.
    EXPECT_THROW(f.bm->read_lock(9, node_validator()), corrupt_block);
    // Already cached: nothing to read.
    f.bm->prefetch(std::vector<block_address>{3, 5});
    EXPECT_EQ(f.fe->reads() - before, 4u);
    // A block beyond the end.
    EXPECT_THROW(f.bm->prefetch(std::vector<block_address>{1000}), corrupt_block);
}

TEST(block_manager, prefetch_keeps_within_the_cache) {
    const std::size_t max = 32;
    fixture f(500, max);
    std::vector<block_address> all;
    for (block_address b = 0; b < 400; ++b) all.push_back(b);
    f.bm->prefetch(all);
    EXPECT_LE(f.bm->cached_blocks(), max + 1);
}

TEST(block_manager, a_dirty_block_read_under_another_validator_keeps_its_own_stamp) {
    // Reading a block raw while it is dirty must not change how it is stamped at write-back.
    fixture f;
    f.write_block(11, 3);
    { auto r = f.bm->read_lock(11, noop_validator()); }
    f.bm->flush();
    EXPECT_NO_THROW(node_validator().check(f.mem->raw(11), 11));
}

} // namespace
