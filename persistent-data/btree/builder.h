#pragma once
// Bottom-up construction of a single-level b-tree from sorted input (restore, repair): leaves are
// filled to max_entries, written as they fill, and the last two nodes of each level are
// rebalanced so no non-root node is under 1/3 full. Memory stays flat as input grows.
#include "persistent-data/btree/btree.h"

#include <memory>
#include <vector>

namespace pdata::btree {

class builder {
public:
    // The tree takes over the caller's references to the values pushed (no vt.inc is called).
    builder(transaction_manager& tm, std::uint32_t value_size);
    ~builder();
    builder(const builder&) = delete;
    builder& operator=(const builder&) = delete;

    // Keys must be strictly increasing; throws std::invalid_argument otherwise.
    void push_back(std::uint64_t key, const std::uint8_t* value);
    // Root of the finished tree (an empty leaf when nothing was pushed). Call once.
    block_address finish();

    std::uint64_t size() const { return count_; }

private:
    struct level;
    transaction_manager& tm_;
    std::uint32_t value_size_;
    std::vector<std::unique_ptr<level>> levels_;
    std::uint64_t count_ = 0;
    std::uint64_t last_key_ = 0;
    bool finished_ = false;
    void add(unsigned lvl, std::uint64_t key, const std::uint8_t* value);
    void pass_up(unsigned lvl, write_ref& node);
    void rebalance(level& l);
};

} // namespace pdata::btree
