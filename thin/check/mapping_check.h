#pragma once
// The fast check of the mapping trees' bottom level (design.md §2; format.md §5.2, §6.4, §7.1).
//
// Level-2 trees hold nearly all the metadata, and almost all of it is leaves. So:
//  1. add_tree() walks the upper levels of each device's tree depth first through the block
//     manager (internal nodes, plus the first child of an internal node to learn whether its
//     children are leaves) and lists the leaves without reading them;
//  2. read_leaves() reads the listed leaves in block order, in batches, on up to two threads: each
//     thread validates its batch (checksum, header, key order) in parallel and counts data
//     references into the shared byte counts under a lock;
//  3. evaluate() then checks every reference of each device's tree against the in-memory summary
//     of the nodes (key ranges given by the parents, all leaves at one depth) and counts the
//     device's mappings. A subtree found clean is remembered (mapping count, key span, height), so
//     a snapshot sharing most of its origin's tree costs little.
// Memory: per distinct level-2 node about 40 bytes (plus 12 bytes per child slot of an internal
// node) and a u32 index per metadata block; leaves are streamed through fixed buffers.
#include "thin/check/counts.h"

#include "persistent-data/block_manager.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace thin::check {

// Problems of a single node that need no context (format.md §6.4 a-c, value size, key order):
// empty when the node is good. leaf_value_size is the value size its leaves must have.
std::string node_problem(const std::uint8_t* data, block_address b, std::uint32_t leaf_value_size);

struct tree_damage {
    std::uint64_t begin = 0;
    std::optional<std::uint64_t> end;  // nullopt: to the end of the key space
    block_address block = 0;
    std::string what;
};

struct tree_summary {
    std::uint64_t mappings = 0;             // mappings reachable through good nodes
    std::uint64_t out_of_range = 0;         // of which map data blocks >= nr_data_blocks
    std::vector<tree_damage> damage;        // fatal: key ranges lost
    std::vector<std::string> warnings;      // non-fatal: under-full nodes, max_entries % 3
};

class mapping_checker {
public:
    // md: metadata references (each distinct internal node adds one per child). data: counts of
    // data references (one per slot of each distinct leaf) or nullptr to count nothing.
    // nr_data_blocks: mappings to blocks at or above it are out of range (0 = do not check).
    mapping_checker(pdata::block_manager& bm, metadata_refs* md, data_counts* data,
                    std::uint64_t nr_data_blocks, unsigned threads);
    ~mapping_checker();

    // Registers the level-2 tree at root (reading its upper levels); returns its handle.
    unsigned add_tree(block_address root);
    // Reads every listed leaf. progress(done, total) is called now and then (from any thread,
    // never concurrently).
    void read_leaves(const std::function<void(std::uint64_t, std::uint64_t)>& progress = {});
    // Checks a tree registered with add_tree (after read_leaves).
    tree_summary evaluate(unsigned tree);

    std::uint64_t nr_leaves() const { return nr_leaves_; }

private:
    enum class kind : std::uint8_t { pending, internal, leaf, bad };
    enum : std::uint8_t { UNDER_FULL = 1, MAX_NOT_MULTIPLE_OF_3 = 2, WARNED_UNDER_FULL = 4, WARNED_MAX = 8 };
    struct node {
        block_address block = 0;
        std::uint64_t first_key = 0;
        std::uint64_t last_key = 0;
        std::uint32_t nr_entries = 0;
        std::uint32_t aux = 0;  // internal: index into internals_; bad: into errors_; leaf: out-of-range count
        std::uint32_t max_entries = 0;
        kind k = kind::pending;
        std::uint8_t flags = 0;
    };
    struct internal {
        std::uint32_t first_child = 0;  // into child_keys_ / child_nodes_
        // Memo of a clean evaluation.
        bool clean = false;
        std::uint32_t height = 0;
        std::uint64_t max_key = 0;
        bool has_keys = false;
        std::uint64_t mappings = 0;
        std::uint64_t out_of_range = 0;
    };
    struct eval_state;
    struct eval_result {
        std::uint64_t mappings = 0;
        std::uint64_t out_of_range = 0;
        bool has_keys = false;
        std::uint64_t max_key = 0;
    };

    std::uint32_t discover(block_address b);
    std::uint32_t new_node(block_address b, kind k);
    std::uint32_t bad_node(block_address b, const std::string& what, bool indexed);
    // Fills n from a good leaf's data (no counting).
    void inspect_leaf(const std::uint8_t* data, node& n);
    void count_leaf(const std::uint8_t* data, const node& n);
    void finish_leaf(const std::uint8_t* data, std::uint32_t idx);
    eval_result eval(eval_state& st, std::uint32_t idx, std::uint64_t lo, std::optional<std::uint64_t> hi,
                     unsigned depth);

    pdata::block_manager& bm_;
    metadata_refs* md_;
    data_counts* data_;
    std::uint64_t nr_data_blocks_;
    unsigned threads_;
    block_address nr_md_blocks_;

    // metadata block -> node index + 1 (0 when not met); calloc'd, so untouched pages cost nothing.
    calloc_array<std::uint32_t> index_{0};
    std::vector<node> nodes_;
    std::vector<internal> internals_;
    std::vector<std::uint64_t> child_keys_;
    std::vector<std::uint32_t> child_nodes_;
    std::vector<std::string> errors_;
    std::vector<std::uint32_t> pending_;  // nodes to read in the leaf phase
    std::uint64_t nr_leaves_ = 0;
    unsigned depth_ = 0;  // of the discovery recursion
};

} // namespace thin::check
