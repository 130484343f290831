#pragma once
// Damage generators for thin metadata images (the damage corpus, tests/tools/damage_corpus_test.cc).
//
// read_layout() walks valid metadata in a file (superblock -> details tree, both levels of the
// mapping tree, the metadata snapshot's trees, both space maps) and records where every block is and
// what it is: for each b-tree node its tree, depth, the key range its parent gives it, its parent
// slot, and for level-2 nodes every device (live or in the metadata snapshot) whose tree holds it;
// the index and bitmap blocks of both space maps; and the reference counts the space maps store.
//
// The damage functions then apply ONE damage to the image through an `image` (pread/pwrite of
// 4 KiB blocks). A damage meant to be semantic (a key out of order, a wrong count) re-stamps the
// block's checksum so that the checksum is not what a checker finds; a checksum damage does not.
// Each returns what it did: a description, the damaged block, and the keys it makes unreachable in
// which tree for which device (what a checker's report must name).
#include "persistent-data/btree/walk.h"
#include "persistent-data/checksum.h"
#include "thin/metadata/mapping.h"
#include "thin/metadata/superblock.h"

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace thinpool_test::damage {

using pdata::block_address;
using pdata::btree::key_range;
using thin::dev_id;

enum class tree_kind { details, mapping_top, mapping_bottom, metadata_overflow, data_index, data_overflow };
const char* to_string(tree_kind t);

// One appearance of a level-2 node in one device's mapping tree.
struct owner {
    dev_id dev = 0;
    key_range range;        // the keys the parent gives the node there ([0, -] for the root)
    bool snapshot = false;  // reached through the metadata snapshot's superblock copy
    bool operator<(const owner& o) const {
        return std::tie(dev, snapshot, range.begin, range.end) < std::tie(o.dev, o.snapshot, o.range.begin, o.range.end);
    }
};

struct node_info {
    block_address block = 0;
    tree_kind tree{};
    bool leaf = false;
    unsigned depth = 0;   // 0 = root of its tree
    unsigned height = 0;  // levels below it (0 = leaf)
    std::uint32_t nr_entries = 0;
    std::uint32_t max_entries = 0;
    std::uint32_t value_size = 0;
    std::uint64_t first_key = 0, last_key = 0;  // when nr_entries > 0
    // First appearance: the key range the parent gives it, the parent and the slot in it.
    key_range range;
    std::optional<block_address> parent;
    unsigned slot = 0;
    // Distinct referencing slots (parent node slots, superblock root fields).
    std::set<std::pair<block_address, unsigned>> referrers;
    std::set<owner> owners;  // level-2 nodes only
    bool live = false;       // reachable from block 0's trees
    bool snapshot = false;   // reachable from the metadata snapshot's trees
};

// A metadata file opened read-write; blocks read beyond the end of the file are zeros.
class image {
public:
    explicit image(const std::string& path);
    ~image();
    image(const image&) = delete;
    image& operator=(const image&) = delete;

    block_address nr_blocks() const;
    std::vector<std::uint8_t> read(block_address b) const;
    void write(block_address b, const std::vector<std::uint8_t>& block);
    // Recomputes the checksum of block b for its kind (the blocknr field is kept as it is).
    void restamp(block_address b, pdata::block_salt salt);

private:
    std::string path_;
    int fd_ = -1;
};

struct layout {
    thin::superblock sb;
    std::optional<thin::superblock> snap;  // the metadata snapshot's superblock copy
    std::uint64_t nr_metadata_blocks = 0;  // metadata space map nr_blocks
    std::uint64_t nr_data_blocks = 0;      // data space map nr_blocks

    std::map<block_address, node_info> nodes;
    block_address metadata_index = 0;
    std::vector<block_address> metadata_bitmaps;  // by bitmap index
    std::vector<block_address> data_bitmaps;
    std::map<dev_id, block_address> roots, snap_roots;  // level-2 roots
    std::map<dev_id, thin::device_details> details, snap_details;

    std::vector<std::uint32_t> metadata_counts;  // as stored in the metadata space map
    std::vector<std::uint32_t> data_counts;      // as stored in the data space map

    const node_info* node(block_address b) const;
    // Salt of block b's kind (superblock copies, nodes, index, bitmaps); nullopt for other blocks.
    std::optional<pdata::block_salt> salt_of(block_address b) const;
    // The nodes of a tree kind, in block order; leaf: only leaves (true) or internal nodes (false).
    std::vector<const node_info*> nodes_of(tree_kind t, std::optional<bool> leaf = std::nullopt) const;
};

// Walks valid metadata; throws std::runtime_error on anything it cannot read.
layout read_layout(const std::string& path);

// What a damage makes unreachable: the keys `range` of `tree` (for level-2 trees, of device
// `dev`, in the live trees or the metadata snapshot's).
struct lost_keys {
    tree_kind tree{};
    dev_id dev = 0;
    key_range range;
    bool snapshot = false;
};

struct applied {
    std::string what;
    block_address block = 0;      // the damaged block
    std::vector<lost_keys> lost;  // empty when no tree loses keys (space maps, counts, ...)
};

// ---- damage to any checksummed block ----
// Flips bits of the stored checksum.
applied bad_checksum(image& img, const layout& l, block_address b);
// Writes another block number into the blocknr field and re-stamps the checksum.
applied wrong_blocknr(image& img, const layout& l, block_address b);

// ---- b-tree nodes ----
enum class header_damage {
    flags,            // neither leaf nor internal
    nr_entries,       // nr_entries > max_entries
    value_size,       // a value size the tree does not use
    max_entries,      // max_entries that does not fit in a block
};
const char* to_string(header_damage h);
applied bad_node_header(image& img, const layout& l, block_address b, header_damage h);
// Swaps two adjacent keys in the middle of the node (needs 2 entries).
applied keys_out_of_order(image& img, const layout& l, block_address b);
// Raises the node's last key to the next key of its parent (the node must not be its tree's last).
applied child_key_beyond_parent(image& img, const layout& l, block_address b);
// Raises the parent's key for the node above the node's first key (the node needs 2 entries).
applied parent_key_above_child(image& img, const layout& l, block_address b);
// Points slot+1 of an internal node at the child of slot: one node twice in one tree.
applied duplicate_child(image& img, const layout& l, block_address internal, unsigned slot);
// An internal node of one entry whose only child is itself.
applied self_loop(image& img, const layout& l, block_address internal);
// Points a slot of an internal node (or a level-1 leaf) at an arbitrary block: another tree's
// node, a block of another kind, a free block, a block beyond the end.
applied graft(image& img, const layout& l, block_address node, unsigned slot, block_address target);
// Moves entries from the node into a sibling under the same parent until it holds max/3 - 1
// (fixing the parent's key): the tree keeps every key and every count, one node is under-full.
// The node, the sibling and the parent must not be shared.
applied make_under_full(image& img, const layout& l, block_address b);
// Rewrites the node with max_entries 3k+1 (values moved accordingly).
applied max_entries_not_multiple_of_3(image& img, const layout& l, block_address b);

// Rewrites entry `slot` of a leaf: its key and/or its value (8-byte values only).
applied set_leaf_entry(image& img, const layout& l, block_address leaf, unsigned slot, std::optional<std::uint64_t> key,
                       std::optional<std::uint64_t> value);

// ---- devices ----
// Rewrites a device's details (live trees).
applied set_details(image& img, const layout& l, dev_id d, const thin::device_details& details);
// Changes a device's id in both the details tree and the level-1 tree (the new id must keep the
// key order of both leaves, e.g. the last device renumbered upwards).
applied renumber_device(image& img, const layout& l, dev_id from, dev_id to);

// ---- the level-1 tree ----
// Device a's level-2 root becomes device b's (counts left as they were).
applied alias_device(image& img, const layout& l, dev_id a, dev_id b);
applied set_device_root(image& img, const layout& l, dev_id d, block_address root);

// ---- space maps ----
// Changes the stored count of a metadata / data block by delta (bitmap entry, or overflow-tree
// value); the count must stay within what the structure holds without adding or removing an
// overflow entry (0..2 in a bitmap, >= 3 in the overflow tree).
applied adjust_metadata_count(image& img, const layout& l, block_address b, int delta);
applied adjust_data_count(image& img, const layout& l, std::uint64_t b, int delta);

// ---- superblock ----
enum class sb_field {
    data_mapping_root, device_details_root, metadata_snap,
    metadata_sm_bitmap_root, metadata_sm_ref_count_root, data_sm_bitmap_root, data_sm_ref_count_root,
    metadata_sm_nr_blocks, data_sm_nr_blocks,
    data_block_size,  // u32
};
const char* to_string(sb_field f);
applied set_superblock_field(image& img, const layout& l, sb_field f, std::uint64_t value);

// ---- whole files ----
void truncate_file(const std::string& path, std::uint64_t bytes);
void write_zero_file(const std::string& path, std::uint64_t bytes);
void write_random_file(const std::string& path, std::uint64_t bytes, std::uint64_t seed);
// Copies a file, keeping holes.
void sparse_copy(const std::string& from, const std::string& to);

} // namespace thinpool_test::damage
