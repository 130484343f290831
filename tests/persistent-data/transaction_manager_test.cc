// Tests of persistent-data/transaction_manager with the core space map: new blocks, shadowing
// (in place, copied, shared), no reuse of freed blocks within a transaction, the commit order.
#include "persistent-data/io/fault_engine.h"
#include "persistent-data/space-maps/core.h"
#include "persistent-data/transaction_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <set>

using namespace pdata;

namespace {

const checksummed_validator& node_validator() {
    static const checksummed_validator v("test node", block_salt::btree_node);
    return v;
}

constexpr block_address SUPERBLOCK = 0;

void fill_payload(std::uint8_t* data, unsigned seed) {
    for (std::size_t i = 16; i < MD_BLOCK_SIZE; ++i) data[i] = static_cast<std::uint8_t>(seed * 13 + i);
}

bool payload_is(const std::uint8_t* data, unsigned seed) {
    for (std::size_t i = 16; i < MD_BLOCK_SIZE; ++i)
        if (data[i] != static_cast<std::uint8_t>(seed * 13 + i)) return false;
    return true;
}

struct fixture {
    explicit fixture(block_address nr_blocks = 64)
        : mem(std::make_shared<memory_engine>(nr_blocks)), fe(std::make_shared<fault_engine>(mem)),
          bm(fe, 32), sm(nr_blocks), tm(std::make_unique<transaction_manager>(bm, sm)) {
        sm.inc(SUPERBLOCK);  // the superblock is never handed out
    }

    block_address new_block(unsigned seed) {
        auto w = tm->new_block(node_validator());
        fill_payload(w.data(), seed);
        return w.location();
    }

    // The owner's side of format.md §8.1: space maps, everything else, flush, superblock, flush.
    void commit() {
        sm.commit();
        tm->pre_commit();
        auto sb = bm.write_lock_zero(SUPERBLOCK, noop_validator());
        std::memcpy(sb.data(), "superblock", 10);
        tm->commit(std::move(sb));
    }

    std::shared_ptr<memory_engine> mem;
    std::shared_ptr<fault_engine> fe;
    block_manager bm;
    core_space_map sm;
    std::unique_ptr<transaction_manager> tm;
};

TEST(transaction_manager, a_new_block_has_count_one_and_is_zeroed) {
    fixture f;
    // Leave something on the device where the block will land: it must not show through.
    std::memset(f.mem->raw(1), 0xCC, MD_BLOCK_SIZE);
    auto free_before = f.sm.nr_free();
    auto w = f.tm->new_block(node_validator());
    block_address b = w.location();
    EXPECT_NE(b, SUPERBLOCK);
    EXPECT_EQ(f.tm->ref_count(b), 1u);
    EXPECT_EQ(f.sm.nr_free(), free_before - 1);
    EXPECT_TRUE(f.tm->is_shadow(b));
    EXPECT_TRUE(std::all_of(w.data(), w.data() + MD_BLOCK_SIZE, [](std::uint8_t c) { return c == 0; }));
    // Distinct blocks.
    w.release();
    std::set<block_address> seen{b};
    for (int i = 0; i < 10; ++i) EXPECT_TRUE(seen.insert(f.new_block(i)).second);
}

TEST(transaction_manager, shadowing_a_block_of_this_transaction_is_in_place) {
    fixture f;
    block_address b = f.new_block(1);
    auto free_before = f.sm.nr_free();
    bool inc_children = true;
    {
        auto w = f.tm->shadow(b, node_validator(), inc_children);
        EXPECT_EQ(w.location(), b);
        EXPECT_TRUE(payload_is(w.data(), 1));
        fill_payload(w.data(), 2);
    }
    EXPECT_FALSE(inc_children);
    EXPECT_EQ(f.tm->ref_count(b), 1u);
    EXPECT_EQ(f.sm.nr_free(), free_before);
    // A shadow of a shadow is free too.
    auto w = f.tm->shadow(b, node_validator(), inc_children);
    EXPECT_EQ(w.location(), b);
    EXPECT_TRUE(payload_is(w.data(), 2));
}

TEST(transaction_manager, shadowing_a_committed_block_copies_it) {
    fixture f;
    block_address b = f.new_block(3);
    f.commit();
    EXPECT_FALSE(f.tm->is_shadow(b));
    bool inc_children = true;
    block_address copy;
    {
        auto w = f.tm->shadow(b, node_validator(), inc_children);
        copy = w.location();
        EXPECT_NE(copy, b);
        EXPECT_TRUE(payload_is(w.data(), 3));
        fill_payload(w.data(), 4);
    }
    EXPECT_FALSE(inc_children);
    EXPECT_EQ(f.tm->ref_count(b), 0u);
    EXPECT_EQ(f.tm->ref_count(copy), 1u);
    EXPECT_TRUE(f.tm->is_shadow(copy));
    // The copy is now shadowed in place; the committed original is untouched, even on disk.
    bool again = true;
    EXPECT_EQ(f.tm->shadow(copy, node_validator(), again).location(), copy);
    EXPECT_FALSE(again);
    f.tm->pre_commit();
    EXPECT_TRUE(payload_is(f.mem->raw(b), 3));
    EXPECT_TRUE(payload_is(f.mem->raw(copy), 4));
    auto r = f.tm->read_lock(b, node_validator());
    EXPECT_TRUE(payload_is(r.data(), 3));
}

TEST(transaction_manager, shadowing_a_shared_block_sets_inc_children) {
    fixture f;
    block_address b = f.new_block(5);
    f.tm->inc(b);  // shared, say by a snapshot
    f.commit();
    bool inc_children = false;
    block_address copy;
    {
        auto w = f.tm->shadow(b, node_validator(), inc_children);
        copy = w.location();
        EXPECT_TRUE(payload_is(w.data(), 5));
    }
    EXPECT_NE(copy, b);
    EXPECT_TRUE(inc_children);
    EXPECT_EQ(f.tm->ref_count(b), 1u);  // the other owner keeps it
    EXPECT_EQ(f.tm->ref_count(copy), 1u);
}

TEST(transaction_manager, a_block_of_this_transaction_that_is_shared_is_copied) {
    fixture f;
    block_address b = f.new_block(6);
    f.tm->inc(b);
    bool inc_children = false;
    auto w = f.tm->shadow(b, node_validator(), inc_children);
    EXPECT_NE(w.location(), b);
    EXPECT_TRUE(inc_children);
    EXPECT_EQ(f.tm->ref_count(b), 1u);
    EXPECT_TRUE(payload_is(w.data(), 6));
}

TEST(transaction_manager, freed_blocks_are_not_reused_before_the_commit) {
    const block_address n = 24;
    fixture f(n);
    std::vector<block_address> committed;
    for (int i = 0; i < 4; ++i) committed.push_back(f.new_block(i));
    f.commit();

    // Free two committed blocks, one by dec, one by shadowing it.
    f.tm->dec(committed[0]);
    bool inc_children;
    block_address copy = f.tm->shadow(committed[1], node_validator(), inc_children).location();
    EXPECT_EQ(f.tm->ref_count(committed[0]), 0u);
    EXPECT_EQ(f.tm->ref_count(committed[1]), 0u);

    // Use up the device: neither freed block is handed out.
    std::set<block_address> got{copy};
    for (;;) {
        try {
            got.insert(f.new_block(9));
        } catch (const no_space& e) {
            EXPECT_NE(std::string(e.what()).find("metadata"), std::string::npos);
            break;
        }
    }
    EXPECT_EQ(got.count(committed[0]), 0u);
    EXPECT_EQ(got.count(committed[1]), 0u);
    EXPECT_EQ(got.size() + 1 /* superblock */ + 2 /* committed[2,3] */ + 2 /* freed */, n);
    // Shadowing also needs a block, so it fails the same way, leaving the original alone.
    EXPECT_THROW(f.tm->shadow(committed[2], node_validator(), inc_children), no_space);
    EXPECT_EQ(f.tm->ref_count(committed[2]), 1u);

    // After the commit they are free for the next transaction.
    f.commit();
    std::set<block_address> next{f.new_block(10), f.new_block(11)};
    EXPECT_EQ(next, (std::set<block_address>{committed[0], committed[1]}));
    EXPECT_THROW(f.new_block(12), no_space);
}

TEST(transaction_manager, reuse_needs_a_space_map_commit_not_just_a_new_transaction_manager) {
    fixture f(8);
    block_address b = f.new_block(1);
    f.commit();
    f.tm->dec(b);
    // A new transaction manager alone does not make b reusable; the space map's commit does.
    f.tm = std::make_unique<transaction_manager>(f.bm, f.sm);
    std::set<block_address> got;
    while (f.sm.nr_free() > 1) got.insert(f.new_block(2));
    EXPECT_EQ(got.count(b), 0u);
    EXPECT_THROW(f.new_block(3), no_space);
    f.sm.commit();
    f.tm = std::make_unique<transaction_manager>(f.bm, f.sm);
    EXPECT_EQ(f.new_block(4), b);
}

TEST(transaction_manager, shadowing_a_free_block_is_an_error) {
    fixture f;
    bool inc_children;
    EXPECT_THROW(f.tm->shadow(7, node_validator(), inc_children), corrupt_block);
}

TEST(transaction_manager, shadowing_a_corrupt_block_allocates_nothing) {
    fixture f;
    block_address b = f.new_block(1);
    f.commit();
    f.mem->raw(b)[1000] ^= 1;
    f.bm.invalidate_clean();
    auto free_before = f.sm.nr_free();
    bool inc_children;
    try {
        f.tm->shadow(b, node_validator(), inc_children);
        FAIL();
    } catch (const corrupt_block& e) {
        EXPECT_EQ(e.block(), b);
    }
    EXPECT_EQ(f.sm.nr_free(), free_before);
    EXPECT_EQ(f.tm->ref_count(b), 1u);
}

TEST(transaction_manager, commit_writes_the_superblock_last_between_flushes) {
    fixture f;
    f.fe->record(true);
    for (int i = 0; i < 5; ++i) f.new_block(i);
    f.commit();
    const write_log& log = f.fe->log();
    ASSERT_EQ(log.size(), 5u + 1 + 1 + 1);
    for (int i = 0; i < 5; ++i) {
        EXPECT_FALSE(log[i].is_flush());
        EXPECT_NE(log[i].block, SUPERBLOCK);
    }
    EXPECT_TRUE(log[5].is_flush());
    EXPECT_EQ(log[6].block, SUPERBLOCK);
    EXPECT_EQ(std::memcmp(log[6].data.data(), "superblock", 10), 0);
    EXPECT_TRUE(log[7].is_flush());
    // A new transaction: nothing is a shadow any more.
    for (int i = 0; i < 5; ++i) EXPECT_FALSE(f.tm->is_shadow(log[i].block));
}

TEST(transaction_manager, abort_forgets_the_open_transaction) {
    fixture f;
    block_address b = f.new_block(1);
    f.commit();
    bool inc_children;
    block_address copy;
    {
        auto w = f.tm->shadow(b, node_validator(), inc_children);
        copy = w.location();
        fill_payload(w.data(), 2);
    }
    auto writes = f.mem->writes();
    f.tm->abort();
    EXPECT_FALSE(f.tm->is_shadow(copy));
    f.bm.flush();
    EXPECT_EQ(f.mem->writes(), writes);
    auto r = f.tm->read_lock(b, node_validator());
    EXPECT_TRUE(payload_is(r.data(), 1));
}

} // namespace
